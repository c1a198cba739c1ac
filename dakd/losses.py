"""Token-level divergences between a teacher distribution p and a student distribution q.

BDL follows DA-KD (He et al., ICML 2025, Eq. 4); the skew losses follow DistiLLM (Ko et al.,
ICML 2024); the generalized JSD follows GKD (Agarwal et al., ICLR 2024). Every loss comes in two
forms with one signature:
    <name>(student_logits, teacher_logits, mask, **params)           -> [] mean over masked tokens
    <name>_per_token(student_logits, teacher_logits, mask, **params) -> [B, T], 0 off the mask
Logits are [B, T, V] of any float dtype and already aligned (position t of both predicts the same
token). Everything is computed in float32 (float64 if an input is float64) from the softmax (the
log-softmax for forward and reverse KL), over the masked rows only, in chunks of tokens; a logit of
-inf (a banned token) is an exact zero probability. Value and gradient are computed together from
closed forms (one pass, no autograd graph), the gradient rows kept for backward: measured faster
than autograd over the same formulas and than TRL's generalized JSD, at a fraction of their memory
(benchmarks/loss_kernels.py). Units: nats per token.
"""

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# tokens per chunk: the [chunk, V] float32 intermediates of one chunk are all that is held besides
# the inputs, the per-token output and (when a gradient is needed) the gradient rows.
CHUNK_SIZE = 256


# ---- row kernels -------------------------------------------------------------------------------
# A kernel gets one chunk of rows ([M, V] logits of the student s and the teacher t, in the compute
# dtype) and returns the per-row loss [M] and the gradients with respect to the student's and the
# teacher's logits ([M, V], or None where not asked for). Gradients come from closed forms in the
# same pass as the value: no autograd graph is built and nothing is recomputed in backward, which
# is what makes these kernels faster than autograd over the same formulas (benchmarks/loss_kernels.py).
# Through a softmax, dL/ds_j = q_j c_j - q_j sum_x q_x c_x with c = dL/dq (any constant added to c
# cancels); `_softmax_grad` takes the product q * c.

def _softmax_grad(prob, pc):
    """dL/dlogits [M, V] from pc = prob * dL/dprob: pc - prob * sum(pc). Forming prob * c first
    measured up to 10x closer to float64 than prob * (c - sum(prob * c)) at V = 49152."""
    return torch.addcmul(pc, prob, pc.sum(-1, keepdim=True), value=-1.0)


def _lin(w, p, q):
    """w[0] p + w[1] q for weights that sum to 1, as one fused lerp; p or q itself at the ends."""
    if w[1] == 0.0:
        return p
    if w[1] == 1.0:
        return q
    return torch.lerp(p, q, w[1])


def _mix_k(terms):
    """Kernel of sum_i w_i KL(A_i || B_i), A_i = a_i[0] p + a_i[1] q, B_i = b_i[0] p + b_i[1] q
    (probabilities), terms = [(w_i, a_i, b_i)], each pair of weights summing to 1, with B_i > 0
    wherever A_i > 0.

    With z = A / B: dKL/dq = a1 (log z + 1) - b1 z and dKL/dp = a0 (log z + 1) - b0 z (for BDL this
    is the coefficient C of DA-KD Eq. 5-7), used up to a constant (the softmax cancels it). A term
    where A = 0 is exactly 0 and so is its gradient; a term with A = B (lam = 0.5) is skipped."""
    def kernel(s, t, need_s, need_t):
        q, p = F.softmax(s, -1), F.softmax(t, -1)
        tiny = torch.finfo(q.dtype).tiny
        loss, pcs = 0.0, [None, None]
        for w, a, b in terms:
            if w == 0.0 or a == b:  # skipped: 0 * inf would be nan; KL(A || A) is exactly 0
                continue
            A = _lin(a, p, q)
            # B = 0 only where p = q = 0, where A = 0 too: z = 0 there, not 0 / 0
            z = A / _lin(b, p, q).clamp_min(tiny)
            # log z is only ever multiplied by A or by a probability that is 0 where A is 0: the
            # clamp turns those 0 * -inf into 0 * -87 = 0 and changes no other value
            logz = z.clamp_min(tiny).log_()
            loss = loss + w * (A * logz).sum(-1)
            for side, (need, prob, wa, wb) in enumerate(((need_s, q, a[1], b[1]), (need_t, p, a[0], b[0]))):
                if not need:
                    continue
                # prob * c with c = wa log z - wb (z - 1): the constant wb makes c exactly 0 where
                # z = 1 (BDL(p, p) has an exactly zero gradient); with wa = 0 it is left out
                # (measured closer to float64 for the skew losses)
                if wa:
                    pc = (logz * wa).sub_(z, alpha=wb).add_(wb).mul_(prob)
                else:
                    pc = (z * -wb).mul_(prob)
                if w != 1.0:
                    pc.mul_(w)
                pcs[side] = pc if pcs[side] is None else pcs[side].add_(pc)
        if isinstance(loss, float):  # every term skipped: identically 0
            loss = s.new_zeros(s.shape[0])
        pcs = [torch.zeros_like(q) if pc is None else pc for pc in pcs]
        return loss, (_softmax_grad(q, pcs[0]) if need_s else None), (_softmax_grad(p, pcs[1]) if need_t else None)
    return kernel


def _fkl_k(s, t, need_s, need_t):
    """Forward KL(p || q) = sum p (log p - log q): dL/ds = q - p; dL/dp = log p - log q (+ 1)."""
    lq, lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
    p = lp.exp()
    # p (log p - log q), 0 where p = 0 from a -inf logit (0 log 0 = 0); nan kept. It is also
    # p * dL/dp, so the teacher's gradient reuses it
    terms = (lp - lq).mul_(p).masked_fill_(torch.isneginf(lp), 0.0)
    loss = terms.sum(-1)
    gt = _softmax_grad(p, terms) if need_t else None
    gs = lq.exp_().sub_(p) if need_s else None  # lq is not read after this
    return loss, gs, gt


def _rkl_k(s, t, need_s, need_t):
    """Reverse KL(q || p): forward KL with the roles swapped."""
    loss, gt, gs = _fkl_k(t, s, need_t, need_s)
    return loss, gs, gt


def _tv_k(s, t, need_s, need_t):
    """0.5 sum |p - q|: dL/dq = 0.5 sign(q - p) (0 where equal, as autograd's abs)."""
    q, p = F.softmax(s, -1), F.softmax(t, -1)
    d = q - p
    loss = 0.5 * d.abs().sum(-1)
    half_sign = d.sign_().mul_(0.5)
    gs = _softmax_grad(q, q * half_sign) if need_s else None
    gt = _softmax_grad(p, -p * half_sign) if need_t else None
    return loss, gs, gt


def _check_weight(name, w):
    if not 0.0 <= w <= 1.0:  # also rejects nan
        raise ValueError(f"{name} must lie in [0, 1], got {w}")
    return float(w)


def _segments(mask, chunk_size):
    """Runs of consecutive True positions of a [B, T] mask, cut to at most chunk_size tokens:
    a list of (b, start, stop). A response is one run per sequence, so each chunk is a view of the
    logits (no gather copy)."""
    m = mask.detach().to("cpu", torch.bool)
    out = []
    for b in range(m.shape[0]):
        pos = m[b].nonzero().squeeze(1).tolist()
        if not pos:
            continue
        start = prev = pos[0]
        for p in pos[1:] + [None]:
            if p is not None and p == prev + 1 and p - start < chunk_size:
                prev = p
                continue
            out.append((b, start, prev + 1))
            if p is not None:
                start = prev = p
    return out


class _Divergence(torch.autograd.Function):
    """Per-token divergence over the masked positions, value and gradient in one chunked pass.

    forward(s [B, T, V], t [B, T, V], segments [(b, start, stop)], kernel, dtype) -> [B, T] in
    `dtype`, 0 off the segments. When a gradient is needed it is written, chunk by chunk, into a
    [B, T, V] tensor of the input's dtype (0 off the mask); backward only scales it by the
    incoming per-token gradient."""

    @staticmethod
    def forward(ctx, s, t, segments, kernel, dtype):
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        out = torch.zeros(s.shape[:2], dtype=dtype, device=s.device)
        gs = torch.zeros_like(s, memory_format=torch.contiguous_format) if need_s else None
        gt = torch.zeros_like(t, memory_format=torch.contiguous_format) if need_t else None
        for b, i, j in segments:
            loss, g_s, g_t = kernel(s[b, i:j].to(dtype), t[b, i:j].to(dtype), need_s, need_t)
            out[b, i:j] = loss
            if need_s:
                gs[b, i:j] = g_s
            if need_t:
                gt[b, i:j] = g_t
        ctx.save_for_backward(gs, gt)
        return out

    @staticmethod
    def backward(ctx, g):
        gs, gt = ctx.saved_tensors
        w = g.unsqueeze(-1)
        return (None if gs is None else gs * w.to(gs.dtype), None if gt is None else gt * w.to(gt.dtype),
                None, None, None)


def _per_token(kernel, student_logits, teacher_logits, mask, chunk_size):
    s, t = student_logits, teacher_logits
    if s.dim() != 3 or s.shape != t.shape:
        raise ValueError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} "
                         "must both be [B, T, V] with the same vocabulary "
                         "(slice padding rows first)")
    if mask is None:
        mask = torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)
    if mask.shape != s.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match logits {tuple(s.shape)}: "
                         "expected [B, T]")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = torch.float64 if torch.float64 in (s.dtype, t.dtype) else torch.float32
    # prompt and padding positions are never read: they cost nothing and a nan there changes nothing
    return _Divergence.apply(s, t, _segments(mask, chunk_size), kernel, dtype)


_CONTRACT = """
    Args:
        student_logits, teacher_logits: [B, T, V], any float dtype, aligned; the gradient reaches
            both (pass detached teacher logits to train the student only).
        mask: [B, T] bool (or 0/1), True on response tokens; None means every token.
        chunk_size: tokens per chunk; only one chunk's [chunk_size, V] float32 intermediates are
            alive at a time (the value and its gradient are computed together, chunk by chunk).
    Returns:
        {returns}
    Raises:
        ValueError: a weight outside [0, 1], logits of different shapes (vocabularies included),
            a mask that is not [B, T], or chunk_size < 1.
    """
_PER_TOKEN = "[B, T] float32 (float64 for float64 input), nats per token, 0 where mask is False."
_SCALAR = ("[] float32 (float64 for float64 input), the mean over masked tokens of the per-token\n"
           "        value, in nats per token; 0 with a zero gradient if no token is masked.")


def _documented(fn):
    fn.__doc__ = fn.__doc__.rstrip() + "\n" + _CONTRACT.format(returns=_PER_TOKEN)
    return fn


def _scalar(per_token):
    """Scalar form of a per-token loss: the mean over the masked tokens."""
    @functools.wraps(per_token)
    def loss(student_logits, teacher_logits, mask=None, **params):
        tok = per_token(student_logits, teacher_logits, mask, **params)
        count = tok.numel() if mask is None else mask.bool().sum().item()
        # max(., 1): a batch without response tokens gives 0 (tok is all zeros), not 0 / 0 = nan
        return tok.sum() / max(count, 1)
    loss.__name__ = loss.__qualname__ = per_token.__name__.removesuffix("_per_token")
    loss.__doc__ = (per_token.__doc__ or "").replace(_PER_TOKEN, _SCALAR)
    return loss


@_documented
def forward_kl_per_token(student_logits, teacher_logits, mask=None, chunk_size=CHUNK_SIZE):
    """Forward KL(p || q) = sum_v p log(p / q), the usual KD loss (KD-KL baseline; Hinton et al.).

    Teacher zero probability (-inf logit) where the student allows the token: finite (the term is
    0). Student zero probability where the teacher allows it: +inf. Banned in both: finite.
    """
    return _per_token(_fkl_k, student_logits, teacher_logits, mask, chunk_size)


@_documented
def reverse_kl_per_token(student_logits, teacher_logits, mask=None, chunk_size=CHUNK_SIZE):
    """Reverse KL(q || p) = sum_v q log(q / p), mode-seeking (KD-RKL baseline; MiniLLM, Gu et al.).

    Teacher zero probability (-inf logit) where the student allows the token: +inf. Student zero
    probability where the teacher allows it: finite. Banned in both: finite.
    """
    return _per_token(_rkl_k, student_logits, teacher_logits, mask, chunk_size)


@_documented
def js_divergence_per_token(student_logits, teacher_logits, mask=None, beta=0.5,
                            chunk_size=CHUNK_SIZE):
    """Generalized JSD(beta) = beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q
    (GKD, Agarwal et al. 2024, the convention of TRL's generalized_jsd_loss away from the ends).

    beta = 0.5 is the Jensen-Shannon divergence, bounded by log 2. Unlike TRL, beta = 0 and 1 are
    not turned into forward and reverse KL: the formula gives exactly 0 there. A zero probability
    in either model keeps the loss finite for 0 < beta < 1.
    """
    beta = _check_weight("beta", beta)
    m = (beta, 1.0 - beta)
    kernel = _mix_k([(beta, (1.0, 0.0), m), (1.0 - beta, (0.0, 1.0), m)])
    return _per_token(kernel, student_logits, teacher_logits, mask, chunk_size)


@_documented
def tv_distance_per_token(student_logits, teacher_logits, mask=None, chunk_size=CHUNK_SIZE):
    """Total variation distance 0.5 sum_v |p - q|, in [0, 1] (a divergence DistiLLM compares).

    Always finite, whatever either model bans. Its gradient is 0 on tokens where p = q exactly.
    """
    return _per_token(_tv_k, student_logits, teacher_logits, mask, chunk_size)


@_documented
def skew_kl_per_token(student_logits, teacher_logits, mask=None, alpha=0.1, chunk_size=CHUNK_SIZE):
    """Skew KL = KL(p || alpha p + (1 - alpha) q) (DistiLLM, Ko et al. 2024; alpha = 0.1).

    alpha = 0 is forward KL, alpha = 1 gives 0; bounded by log(1 / alpha). A zero probability in
    either model keeps it finite for 0 < alpha (teacher-only zeros for any alpha).
    """
    alpha = _check_weight("alpha", alpha)
    kernel = _fkl_k if alpha == 0.0 else _mix_k([(1.0, (1.0, 0.0), (alpha, 1.0 - alpha))])
    return _per_token(kernel, student_logits, teacher_logits, mask, chunk_size)


@_documented
def skew_reverse_kl_per_token(student_logits, teacher_logits, mask=None, alpha=0.1,
                              chunk_size=CHUNK_SIZE):
    """Skew reverse KL = KL(q || alpha q + (1 - alpha) p) (DistiLLM, Ko et al. 2024; alpha = 0.1).

    alpha = 0 is reverse KL, alpha = 1 gives 0; bounded by log(1 / alpha). A zero probability in
    either model keeps it finite for 0 < alpha (student-only zeros for any alpha).
    """
    alpha = _check_weight("alpha", alpha)
    kernel = _rkl_k if alpha == 0.0 else _mix_k([(1.0, (0.0, 1.0), (1.0 - alpha, alpha))])
    return _per_token(kernel, student_logits, teacher_logits, mask, chunk_size)


@_documented
def bdl_per_token(student_logits, teacher_logits, mask=None, lam=0.9, chunk_size=CHUNK_SIZE):
    """Bidirectional discrepancy loss KL(P_m || Q_m), P_m = (1 - lam) p + lam q,
    Q_m = lam p + (1 - lam) q (DA-KD, He et al. 2025, Eq. 4; lam = 0.9 in the paper).

    lam = 0 is exactly forward KL, lam = 1 exactly reverse KL, lam = 0.5 exactly 0. For
    0.5 < lam < 1 each token lies in [0, log(lam / (1 - lam))] (2.197 nats at 0.9) and the gradient
    coefficient of Eq. 5-7 is bounded by lam alone, so no clipping is needed. For 0 < lam < 1 a
    zero probability (-inf logit) in either model alone keeps the loss and its gradient finite (at
    lam = 0 and 1 it behaves as forward and reverse KL); a token banned in both is always finite.
    """
    lam = _check_weight("lam", lam)
    if lam in (0.0, 1.0):  # the exact forward / reverse KL kernels, infinities included
        kernel = _fkl_k if lam == 0.0 else _rkl_k
    else:
        kernel = _mix_k([(1.0, (1.0 - lam, lam), (lam, 1.0 - lam))])
    return _per_token(kernel, student_logits, teacher_logits, mask, chunk_size)


# ---- the registry ------------------------------------------------------------------------------
# Every loss the training loop can use is declared once here: its per-token function, the config
# field that holds its weight (passed to the function under the same name), the paper's short label
# and its aliases. `register_loss` is the one way to add one; the training loop, config validation,
# run labels and the top-k cache all read this table.


@dataclass(frozen=True)
class LossSpec:
    """One registered loss.

    name: canonical name (``cfg.loss``); per_token: ``fn(student_logits, teacher_logits, mask,
    **{weight: value}) -> [B, T]`` float nats, 0 off the mask, differentiable in the student logits
    (plain autograd is enough; the closed-form kernels above are the optional fast path); weight:
    the `dakd.config.DistillConfig` field with its weight ("lam", "alpha", "beta") or None; label:
    the paper's short name (Tables 1, 5); aliases: other accepted names (lower case)."""
    name: str
    per_token: object
    weight: str | None
    label: str
    aliases: tuple[str, ...] = ()


LOSS_SPECS: dict[str, LossSpec] = {}
LOSSES: dict = {}
PER_TOKEN_LOSSES: dict = {}
ALIASES: dict[str, str] = {}


def register_loss(name: str, per_token, *, label: str, weight: str | None = None,
                  aliases: tuple[str, ...] = ()) -> LossSpec:
    """Declare a training loss (the one registry line a new loss needs).

    Args:
        name: canonical name, lower case; becomes a valid ``DistillConfig.loss``.
        per_token: ``fn(student_logits [B, T, V], teacher_logits [B, T, V], mask [B, T] bool or None,
            **params) -> [B, T]`` nats per token, 0 off the mask. Any differentiable torch code
            works; logits may be ``[1, M, V]`` response rows (the loop passes those).
        label: the paper's short name (e.g. "BDL"), used in run labels and tables.
        weight: the config field holding the loss's weight, passed as a keyword of the same name.
        aliases: other names accepted for it.

    Returns:
        The `LossSpec`; the scalar form (mean over masked tokens) is added to ``LOSSES``.

    Raises:
        ValueError: the name or an alias is taken, or ``weight`` is not a config field that
            holds a float weight ("lam", "alpha", "beta").
    """
    name = name.lower()
    taken = set(LOSS_SPECS) | set(ALIASES)
    clash = [a for a in (name, *aliases) if a in taken]
    if clash:
        raise ValueError(f"loss names already registered: {clash}")
    if weight not in (None, "lam", "alpha", "beta"):
        raise ValueError(f"weight must be None or one of the config fields lam, alpha, beta, got {weight!r}")
    spec = LossSpec(name, per_token, weight, label, tuple(a.lower() for a in aliases))
    LOSS_SPECS[name] = spec
    PER_TOKEN_LOSSES[name] = per_token
    LOSSES[name] = _scalar(per_token)
    LOSSES[name].__name__ = name
    ALIASES.update({a: name for a in spec.aliases})
    return spec


def unregister_loss(name: str) -> None:
    """Remove a registered loss and its aliases (for tests that register a toy loss)."""
    spec = LOSS_SPECS.pop(name)
    PER_TOKEN_LOSSES.pop(name)
    LOSSES.pop(name)
    for a in spec.aliases:
        ALIASES.pop(a, None)


register_loss("forward_kl", forward_kl_per_token, label="KL", aliases=("kl", "fkl"))
register_loss("reverse_kl", reverse_kl_per_token, label="RKL", aliases=("rkl",))
register_loss("js_divergence", js_divergence_per_token, label="JSD", weight="beta", aliases=("js", "jsd"))
register_loss("tv_distance", tv_distance_per_token, label="TVD", aliases=("tvd",))
register_loss("skew_kl", skew_kl_per_token, label="SKL", weight="alpha", aliases=("skl",))
register_loss("skew_reverse_kl", skew_reverse_kl_per_token, label="SRKL", weight="alpha", aliases=("srkl",))
register_loss("bdl", bdl_per_token, label="BDL", weight="lam")
forward_kl, reverse_kl, js_divergence, tv_distance, skew_kl, skew_reverse_kl, bdl = (
    LOSSES[k] for k in ("forward_kl", "reverse_kl", "js_divergence", "tv_distance", "skew_kl",
                        "skew_reverse_kl", "bdl"))


def canonical_loss_name(name):
    """The canonical name (a key of ``LOSSES``) of a loss name or alias, case-insensitive.

    Raises:
        ValueError: unknown name (the message lists every valid name and alias).
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {sorted(LOSSES) + sorted(ALIASES)}")
    return key


def degenerate_reason(name: str, lam: float = 0.9, alpha: float = 0.1, beta: float = 0.5) -> str | None:
    """Why loss ``name`` with these weights is exactly 0 for every teacher and student (no training
    signal), or None when it is not: BDL at lam 0.5 (P_m = Q_m, DA-KD Eq. 4), the generalized JSD at
    beta 0 or 1 (the mixture is one of the two distributions), skew KL / skew reverse KL at alpha 1
    (the skewed distribution is the first argument itself).

    Raises:
        ValueError: unknown loss name (as `canonical_loss_name`).
    """
    name = canonical_loss_name(name)
    if name == "bdl" and lam == 0.5:
        return "BDL at lam 0.5 is exactly 0 for any teacher and student (P_m = Q_m)"
    if name == "js_divergence" and beta in (0.0, 1.0):
        return (f"the generalized JSD at beta {beta:g} is exactly 0 for any teacher and student "
                "(the mixture m is one of the two distributions)")
    if name in ("skew_kl", "skew_reverse_kl") and alpha == 1.0:
        return f"{name} at alpha 1 is exactly 0 for any teacher and student (KL of a distribution to itself)"
    return None


def get_loss(name):
    """Scalar loss for a name or alias ("bdl", "fkl", "srkl", ...); ValueError if unknown."""
    return LOSSES[canonical_loss_name(name)]


def get_per_token_loss(name):
    """Per-token ([B, T]) loss function for a name or alias; ValueError if unknown."""
    return PER_TOKEN_LOSSES[canonical_loss_name(name)]


def loss_spec(name) -> LossSpec:
    """The `LossSpec` of a name or alias; ValueError if unknown."""
    return LOSS_SPECS[canonical_loss_name(name)]


def loss_params(cfg) -> dict:
    """The keyword arguments of ``cfg.loss`` from the config: {weight field: its value}, or {}."""
    spec = loss_spec(cfg.loss)
    return {} if spec.weight is None else {spec.weight: getattr(cfg, spec.weight)}
