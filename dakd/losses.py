"""Token-level divergences between a teacher distribution p and a student distribution q.

BDL follows DA-KD (He et al., ICML 2025, Eq. 4); the skew losses follow DistiLLM (Ko et al.,
ICML 2024); the generalized JSD follows GKD (Agarwal et al., ICLR 2024). Every loss comes in two
forms with one signature:
    <name>(student_logits, teacher_logits, mask, **params)           -> [] mean over masked tokens
    <name>_per_token(student_logits, teacher_logits, mask, **params) -> [B, T], 0 off the mask
Logits are [B, T, V] of any float dtype and already aligned (position t of both predicts the same
token). Everything is computed from log_softmax in float32 (float64 if an input is float64), in log
space, so a logit of -inf (a banned token) is an exact zero probability. Units: nats per token.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# tokens per chunk; a chunk is recomputed in backward instead of keeping its ~10 [rows, V]
# intermediates, so peak memory is the gathered rows plus one chunk (~0.5 GB at V = 49152).
# Measured on 512 x 49152 fp32 rows (2 CPU cores): no slower than one unchunked pass, 0.5 GB less.
CHUNK_SIZE = 256


def _kl(la, lb):
    """sum_v a (log a - log b) over the last dim, from log-probabilities; 0 log(0 / b) = 0."""
    # zero both logs where a = 0 *before* the product: a where() afterwards would still send
    # 0 * (-inf) = nan through the backward of the product
    zero = torch.isneginf(la)
    la, lb = la.masked_fill(zero, 0.0), lb.masked_fill(zero, 0.0)
    return (la.exp() * (la - lb)).sum(-1)


def _mix(w, la, lb):
    """log(w a + (1 - w) b) from log-probabilities; exact at w = 0 and w = 1."""
    if w == 0.0:
        return lb
    if w == 1.0:
        return la
    # logaddexp's backward is nan when both arguments are -inf (a token banned in both models);
    # clamping to the lowest finite float changes no forward value that matters (exp of it is 0)
    # and clamp's backward sends 0 to -inf entries
    lo = torch.finfo(la.dtype).min
    return torch.logaddexp((la + math.log(w)).clamp(min=lo), (lb + math.log1p(-w)).clamp(min=lo))


# row functions: (log p, log q) of shape [M, V] -> [M]; forward KL is _kl itself
def _reverse_kl(lp, lq):
    return _kl(lq, lp)


def _js(lp, lq, beta):
    lm = _mix(beta, lp, lq)
    # a term with weight 0 is skipped, not multiplied: 0 * inf would be nan
    return sum(w * _kl(la, lm) for w, la in ((beta, lp), (1.0 - beta, lq)) if w > 0)


def _tv(lp, lq):
    return 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)


def _skew_kl(lp, lq, alpha):
    return _kl(lp, _mix(alpha, lp, lq))


def _skew_reverse_kl(lp, lq, alpha):
    return _kl(lq, _mix(alpha, lq, lp))


def _bdl(lp, lq, lam):
    return _kl(_mix(1.0 - lam, lp, lq), _mix(lam, lp, lq))


def _check_weight(name, w):
    if not 0.0 <= w <= 1.0:  # also rejects nan
        raise ValueError(f"{name} must lie in [0, 1], got {w}")
    return float(w)


def _per_token(rows_fn, student_logits, teacher_logits, mask, chunk_size, **params):
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
    mask = mask.bool()
    dtype = torch.float64 if torch.float64 in (s.dtype, t.dtype) else torch.float32
    s, t = s[mask], t[mask]  # [M, V]: prompt and padding rows cost nothing below

    def rows(s, t):
        return rows_fn(F.log_softmax(t.to(dtype), -1), F.log_softmax(s.to(dtype), -1), **params)

    grad = torch.is_grad_enabled() and (s.requires_grad or t.requires_grad)
    out = []
    for i in range(0, max(len(s), 1), chunk_size):
        sc, tc = s[i:i + chunk_size], t[i:i + chunk_size]
        out.append(checkpoint(rows, sc, tc, use_reentrant=False) if grad else rows(sc, tc))
    # + an empty sum over each input: with no response token (M = 0, one empty chunk) or a loss
    # that ignores an input (a weight at 0 or 1) the result is still in the graph of both, so
    # backward() works and gives a zero gradient
    out = torch.cat(out) + s[:, :0].sum(-1) + t[:, :0].sum(-1)
    return torch.zeros(mask.shape, dtype=dtype, device=s.device).masked_scatter(mask, out)


_CONTRACT = """
    Args:
        student_logits, teacher_logits: [B, T, V], any float dtype, aligned; the gradient reaches
            both (pass detached teacher logits to train the student only).
        mask: [B, T] bool (or 0/1), True on response tokens; None means every token.
        chunk_size: tokens per chunk; each chunk is recomputed in backward to bound memory.
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
    loss.__doc__ = per_token.__doc__.replace(_PER_TOKEN, _SCALAR)
    return loss


@_documented
def forward_kl_per_token(student_logits, teacher_logits, mask=None, chunk_size=CHUNK_SIZE):
    """Forward KL(p || q) = sum_v p log(p / q), the usual KD loss (KD-KL baseline; Hinton et al.).

    Teacher zero probability (-inf logit) where the student allows the token: finite (the term is
    0). Student zero probability where the teacher allows it: +inf. Banned in both: finite.
    """
    return _per_token(_kl, student_logits, teacher_logits, mask, chunk_size)


@_documented
def reverse_kl_per_token(student_logits, teacher_logits, mask=None, chunk_size=CHUNK_SIZE):
    """Reverse KL(q || p) = sum_v q log(q / p), mode-seeking (KD-RKL baseline; MiniLLM, Gu et al.).

    Teacher zero probability (-inf logit) where the student allows the token: +inf. Student zero
    probability where the teacher allows it: finite. Banned in both: finite.
    """
    return _per_token(_reverse_kl, student_logits, teacher_logits, mask, chunk_size)


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
    return _per_token(_js, student_logits, teacher_logits, mask, chunk_size, beta=beta)


@_documented
def tv_distance_per_token(student_logits, teacher_logits, mask=None, chunk_size=CHUNK_SIZE):
    """Total variation distance 0.5 sum_v |p - q|, in [0, 1] (a divergence DistiLLM compares).

    Always finite, whatever either model bans. Its gradient is 0 on tokens where p = q exactly.
    """
    return _per_token(_tv, student_logits, teacher_logits, mask, chunk_size)


@_documented
def skew_kl_per_token(student_logits, teacher_logits, mask=None, alpha=0.1, chunk_size=CHUNK_SIZE):
    """Skew KL = KL(p || alpha p + (1 - alpha) q) (DistiLLM, Ko et al. 2024; alpha = 0.1).

    alpha = 0 is forward KL, alpha = 1 gives 0; bounded by log(1 / alpha). A zero probability in
    either model keeps it finite for 0 < alpha (teacher-only zeros for any alpha).
    """
    alpha = _check_weight("alpha", alpha)
    return _per_token(_skew_kl, student_logits, teacher_logits, mask, chunk_size, alpha=alpha)


@_documented
def skew_reverse_kl_per_token(student_logits, teacher_logits, mask=None, alpha=0.1,
                              chunk_size=CHUNK_SIZE):
    """Skew reverse KL = KL(q || alpha q + (1 - alpha) p) (DistiLLM, Ko et al. 2024; alpha = 0.1).

    alpha = 0 is reverse KL, alpha = 1 gives 0; bounded by log(1 / alpha). A zero probability in
    either model keeps it finite for 0 < alpha (student-only zeros for any alpha).
    """
    alpha = _check_weight("alpha", alpha)
    return _per_token(_skew_reverse_kl, student_logits, teacher_logits, mask, chunk_size,
                      alpha=alpha)


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
    return _per_token(_bdl, student_logits, teacher_logits, mask, chunk_size, lam=lam)


forward_kl = _scalar(forward_kl_per_token)
reverse_kl = _scalar(reverse_kl_per_token)
js_divergence = _scalar(js_divergence_per_token)
tv_distance = _scalar(tv_distance_per_token)
skew_kl = _scalar(skew_kl_per_token)
skew_reverse_kl = _scalar(skew_reverse_kl_per_token)
bdl = _scalar(bdl_per_token)

LOSSES = {fn.__name__: fn for fn in (forward_kl, reverse_kl, js_divergence, tv_distance, skew_kl,
                                     skew_reverse_kl, bdl)}
PER_TOKEN_LOSSES = {name: fn.__wrapped__ for name, fn in LOSSES.items()}
ALIASES = {"kl": "forward_kl", "fkl": "forward_kl", "rkl": "reverse_kl", "js": "js_divergence",
           "jsd": "js_divergence", "tvd": "tv_distance", "skl": "skew_kl",
           "srkl": "skew_reverse_kl"}


def canonical_loss_name(name):
    """The canonical name (a key of ``LOSSES``) of a loss name or alias, case-insensitive.

    Raises:
        ValueError: unknown name (the message lists every valid name and alias).
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {sorted(LOSSES) + sorted(ALIASES)}")
    return key


def get_loss(name):
    """Scalar loss for a name or alias ("bdl", "fkl", "srkl", ...); ValueError if unknown."""
    return LOSSES[canonical_loss_name(name)]


def get_per_token_loss(name):
    """Per-token ([B, T]) loss function for a name or alias; ValueError if unknown."""
    return PER_TOKEN_LOSSES[canonical_loss_name(name)]
