"""Tests for dakd.losses: BDL's exact properties (DA-KD, Eq. 4-7) and every loss against an
independent float64 reference written over probabilities."""

import math

import pytest
import torch

from dakd import losses as L

INF = float("inf")
# every loss, some with a non-default weight so the weight is really exercised
CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("js_divergence", {"beta": 0.5}),
    ("js_divergence", {"beta": 0.3}),
    ("tv_distance", {}),
    ("skew_kl", {"alpha": 0.1}),
    ("skew_reverse_kl", {"alpha": 0.25}),
    ("bdl", {"lam": 0.9}),
    ("bdl", {"lam": 0.3}),
]
IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in kw.items())}" for n, kw in CASES]
# the same, plus the ends of every weight range
EDGE_CASES = CASES + [("js_divergence", {"beta": b}) for b in (0.0, 1.0)] + [
    (n, {"alpha": a}) for n in ("skew_kl", "skew_reverse_kl") for a in (0.0, 1.0)] + [
    ("bdl", {"lam": lam}) for lam in (0.0, 0.5, 1.0)]


def logits(*shape, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def reference_per_token(name, s, t, beta=0.5, alpha=0.1, lam=0.9):
    """Naive float64 formulas over explicit probabilities, independent of dakd.losses."""
    q = s.double().exp() / s.double().exp().sum(-1, keepdim=True)
    p = t.double().exp() / t.double().exp().sum(-1, keepdim=True)

    def kl(a, b):  # xlogy: 0 log 0 = 0 and 0 log(0 / 0) = 0
        return (torch.xlogy(a, a) - torch.xlogy(a, b)).sum(-1)

    m = beta * p + (1 - beta) * q
    return {
        "forward_kl": lambda: kl(p, q),
        "reverse_kl": lambda: kl(q, p),
        "js_divergence": lambda: beta * kl(p, m) + (1 - beta) * kl(q, m),
        "tv_distance": lambda: 0.5 * (p - q).abs().sum(-1),
        "skew_kl": lambda: kl(p, alpha * p + (1 - alpha) * q),
        "skew_reverse_kl": lambda: kl(q, alpha * q + (1 - alpha) * p),
        "bdl": lambda: kl((1 - lam) * p + lam * q, lam * p + (1 - lam) * q),
    }[name]()


def reference(name, s, t, mask, **kw):
    tok = reference_per_token(name, s, t, **kw)
    return (tok * mask).sum() / mask.sum()


def grads(fn, s, t, *args, **kw):
    s, t = s.detach().requires_grad_(), t.detach().requires_grad_()
    out = fn(s, t, *args, **kw)
    gs, gt = torch.autograd.grad(out.sum(), (s, t), allow_unused=True)
    return out.detach(), gs, gt


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny tensors: with a busy 2-core machine, OpenMP's second thread makes each op ~1000x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


MASK = torch.tensor([[False, True, True, True, False], [False, False, True, True, True]])


# ---- BDL's exact properties (METHOD.md section 4)

def test_bdl_is_forward_kl_at_lambda_zero():
    s, t = logits(2, 5, 11, seed=1), logits(2, 5, 11, seed=2)
    a, b = grads(L.bdl, s, t, MASK, lam=0.0), grads(L.forward_kl, s, t, MASK)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_bdl_is_reverse_kl_at_lambda_one():
    s, t = logits(2, 5, 11, seed=3), logits(2, 5, 11, seed=4)
    a, b = grads(L.bdl, s, t, MASK, lam=1.0), grads(L.reverse_kl, s, t, MASK)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_bdl_is_zero_at_lambda_half():
    s, t = logits(2, 5, 11, seed=5, scale=20.0), logits(2, 5, 11, seed=6, scale=20.0)
    loss, gs, gt = grads(L.bdl_per_token, s, t, lam=0.5)
    assert torch.all(loss == 0) and torch.all(gs == 0) and torch.all(gt == 0)


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.3, 0.7, 0.9, 0.99, 1.0])
def test_bdl_of_identical_distributions_is_zero(lam):
    s = logits(2, 5, 11, seed=7, scale=10.0)
    loss, gs, _ = grads(L.bdl_per_token, s, s.clone(), lam=lam)
    torch.testing.assert_close(loss, torch.zeros_like(loss), rtol=0, atol=1e-14)
    torch.testing.assert_close(gs, torch.zeros_like(gs), rtol=0, atol=1e-14)


def extreme_pairs():
    """(student, teacher) float64 logits: random at several scales, then one-hot-ish ones."""
    pairs = [(logits(4, 8, 16, seed=10 + k, scale=sc), logits(4, 8, 16, seed=20 + k, scale=sc))
             for k, sc in enumerate([0.1, 1.0, 5.0, 30.0, 300.0])]
    onehot = torch.zeros(1, 2, 16, dtype=torch.float64)
    onehot[0, 0, 0] = onehot[0, 1, 1] = 60.0  # 60 nats above the rest: one-hot to 1e-26
    pairs.append((onehot, onehot.roll(1, dims=-1)))
    pairs.append((onehot, onehot.flip(1)))
    return pairs


@pytest.mark.parametrize("lam", [0.05, 0.3, 0.6, 0.9, 0.99])
def test_bdl_is_nonnegative_and_bounded_by_log_lambda_ratio(lam):
    bound = abs(math.log(lam / (1 - lam)))  # by symmetry lam <-> 1 - lam it holds below 0.5 too
    for s, t in extreme_pairs():
        tok = L.bdl_per_token(s, t, lam=lam)
        assert tok.min() >= -1e-15  # rounding only: the sum of a (log a - log b) over V
        assert tok.max() <= bound + 1e-12
    # disjoint one-hots reach (2 lam - 1) log(lam / (1 - lam)), close to the bound
    s, t = extreme_pairs()[-2]
    torch.testing.assert_close(L.bdl_per_token(s, t, lam=lam),
                               torch.full((1, 2), (2 * lam - 1) * math.log(lam / (1 - lam)),
                                          dtype=torch.float64))


def test_documented_bounds_of_the_other_losses():
    for s, t in extreme_pairs():
        assert L.tv_distance_per_token(s, t).max() <= 1 + 1e-12
        assert L.js_divergence_per_token(s, t).max() <= math.log(2) + 1e-12
        for alpha in (0.01, 0.1, 0.5):
            for fn in (L.skew_kl_per_token, L.skew_reverse_kl_per_token):
                tok = fn(s, t, alpha=alpha)
                assert tok.min() >= -1e-15 and tok.max() <= math.log(1 / alpha) + 1e-12


def bdl_coefficient(s, t, lam):
    """C(x) = lam log z + lam - (1 - lam) z, z = P_m / Q_m (Eq. 5-7): d BDL = sum_x C(x) dq(x)."""
    lq, lp = s.log_softmax(-1), t.log_softmax(-1)
    # z in log space: at logit scale 300 both p and q underflow to 0 on most tokens
    mix = lambda w: torch.logaddexp(math.log(1 - w) + lp, math.log(w) + lq)  # noqa: E731
    log_z = mix(lam) - mix(1 - lam)
    return lq.exp(), lam * log_z + lam - (1 - lam) * log_z.exp()


@pytest.mark.parametrize("lam", [0.2, 0.7, 0.9])
def test_bdl_gradient_is_the_papers_coefficient_through_softmax(lam):
    for s, t in extreme_pairs()[:4]:
        _, gs, _ = grads(L.bdl_per_token, s, t, lam=lam)
        q, c = bdl_coefficient(s, t, lam)
        # chain rule through q = softmax(s): dq_x / ds_y = q_x (delta_xy - q_y)
        torch.testing.assert_close(gs, q * (c - (q * c).sum(-1, keepdim=True)),
                                   rtol=1e-9, atol=1e-12)


def test_bdl_gradient_wrt_probabilities_is_the_papers_coefficient():
    # q as a free probability vector: d/dq of sum Pm log(Pm / Qm) is C, with no softmax in between
    lam = 0.9
    s, t = logits(3, 4, 9, seed=30), logits(3, 4, 9, seed=31)
    q = s.softmax(-1).requires_grad_()
    p = t.softmax(-1)
    pm, qm = (1 - lam) * p + lam * q, lam * p + (1 - lam) * q
    (g,) = torch.autograd.grad((pm * (pm / qm).log()).sum(), q)
    torch.testing.assert_close(g, bdl_coefficient(s, t, lam)[1])
    # and dakd's loss, fed log q as logits, is that same function of q
    torch.testing.assert_close(L.bdl_per_token(q.detach().log(), t, lam=lam),
                               (pm * (pm / qm).log()).sum(-1).detach())


def test_bdl_gradient_coefficient_is_bounded_by_lambda_alone():
    lo, hi = 0.9 * math.log(1 / 9) + 0.9 - 0.1 / 9, 0.9 * math.log(9)  # C at z = 1/9 and z = 9
    assert (round(lo, 3), round(hi, 3)) == (-1.089, 1.978)
    for s, t in extreme_pairs():
        _, c = bdl_coefficient(s, t, 0.9)
        assert lo - 1e-9 <= c.min() and c.max() <= hi + 1e-9
    # disjoint one-hots push z to both ends, so the interval is tight
    _, c = bdl_coefficient(*extreme_pairs()[-2], 0.9)
    assert c.min() < lo + 1e-6 and c.max() > hi - 1e-6


# ---- every loss against the float64 reference

@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_loss_matches_float64_reference_in_value_and_gradient(name, kw):
    s, t = logits(2, 5, 13, seed=40), logits(2, 5, 13, seed=41)
    got = grads(L.LOSSES[name], s, t, MASK, chunk_size=2, **kw)
    want = grads(lambda a, b: reference(name, a, b, MASK, **kw), s, t)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_loss_passes_gradcheck(name, kw):
    s = logits(2, 3, 5, seed=50).requires_grad_()
    t = logits(2, 3, 5, seed=51).requires_grad_()
    mask = torch.tensor([[True, False, True], [True, True, True]])
    assert torch.autograd.gradcheck(
        lambda a, b: L.get_per_token_loss(name)(a, b, mask, chunk_size=2, **kw), (s, t))


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_chunked_equals_unchunked(name, kw):
    s = logits(3, 7, 17, seed=60, dtype=torch.float32)
    t = logits(3, 7, 17, seed=61, dtype=torch.float32)
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(0)) < 0.7
    a = grads(L.LOSSES[name], s, t, mask, chunk_size=3, **kw)
    b = grads(L.LOSSES[name], s, t, mask, chunk_size=10_000, **kw)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


# ---- mask semantics

@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_loss_is_mean_over_masked_tokens_only(name, kw):
    s, t = logits(2, 5, 13, seed=70), logits(2, 5, 13, seed=71)
    # prompt and padding rows are gathered away before any arithmetic: nan there changes nothing
    s_nan, t_nan = s.clone(), t.clone()
    s_nan[~MASK], t_nan[~MASK] = float("nan"), float("nan")
    loss = L.LOSSES[name](s_nan, t_nan, MASK, **kw)
    tok = reference_per_token(name, s, t, **kw)
    torch.testing.assert_close(loss, tok[MASK].mean(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_per_token_form_is_zero_off_mask(name, kw):
    s = logits(2, 5, 13, seed=80, dtype=torch.float32)
    t = logits(2, 5, 13, seed=81, dtype=torch.float32)
    tok = L.get_per_token_loss(name)(s, t, MASK, **kw)
    assert tok.shape == (2, 5) and tok.dtype == torch.float32
    assert torch.all(tok[~MASK] == 0)
    torch.testing.assert_close(tok[MASK], reference_per_token(name, s, t, **kw)[MASK].float())
    # mask=None is every token
    torch.testing.assert_close(L.get_per_token_loss(name)(s, t, None, **kw),
                               reference_per_token(name, s, t, **kw).float())


def test_integer_mask_is_read_as_bool():
    s, t = logits(2, 5, 13, seed=82), logits(2, 5, 13, seed=83)
    assert L.bdl(s, t, MASK.long()) == L.bdl(s, t, MASK)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_batch_without_response_tokens_gives_zero_loss_and_zero_grad(name, kw):
    s = logits(2, 5, 13, seed=90, dtype=torch.float32)
    t = logits(2, 5, 13, seed=91, dtype=torch.float32)
    loss, gs, gt = grads(L.LOSSES[name], s, t, torch.zeros(2, 5, dtype=torch.bool), **kw)
    assert loss.item() == 0 and loss.dtype == torch.float32
    assert torch.all(gs == 0) and torch.all(gt == 0)


# ---- dtypes

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_half_precision_inputs_are_computed_in_float32(name, kw, dtype):
    s32 = logits(2, 5, 13, seed=100, dtype=torch.float32)
    t32 = logits(2, 5, 13, seed=101, dtype=torch.float32)
    loss, gs, _ = grads(L.LOSSES[name], s32.to(dtype), t32.to(dtype), MASK, **kw)
    assert loss.dtype == torch.float32 and gs.dtype == dtype and torch.isfinite(gs).all()
    # the same rounded inputs in float32 give the same number: the computation is float32
    torch.testing.assert_close(loss, L.LOSSES[name](s32.to(dtype).float(), t32.to(dtype).float(),
                                                    MASK, **kw), rtol=1e-6, atol=1e-7)
    # and only the input rounding separates it from the float32 result
    torch.testing.assert_close(loss, L.LOSSES[name](s32, t32, MASK, **kw), rtol=0.05, atol=0.02)


# ---- -inf logits and huge logits

@pytest.mark.parametrize("name,kw", EDGE_CASES)
def test_token_banned_in_both_models_gives_finite_loss_and_grad(name, kw):
    s = logits(2, 5, 13, seed=110, dtype=torch.float32)
    t = logits(2, 5, 13, seed=111, dtype=torch.float32)
    s[..., 3] = t[..., 3] = -INF
    s[0, 1, 7] = t[0, 1, 7] = -INF
    loss, gs, gt = grads(L.LOSSES[name], s, t, MASK, **kw)
    assert torch.isfinite(loss) and torch.isfinite(gs).all() and torch.isfinite(gt).all()
    # banned tokens get no gradient and the value is that of the remaining tokens
    assert torch.all(gs[..., 3] == 0) and torch.all(gt[..., 3] == 0)
    keep = [v for v in range(13) if v != 3]
    s64, t64 = s.double()[..., keep], t.double()[..., keep]
    s64[0, 1, 6] = t64[0, 1, 6] = -INF
    torch.testing.assert_close(loss, reference(name, s64, t64, MASK, **kw).float())


def one_sided_ban(side):
    s = logits(2, 5, 13, seed=120, dtype=torch.float32)
    t = logits(2, 5, 13, seed=121, dtype=torch.float32)
    (t if side == "teacher" else s)[..., 4] = -INF
    return s, t


_ONE_SIDED = [("forward_kl", {}), ("reverse_kl", {}), ("bdl", {"lam": 0.9}), ("bdl", {"lam": 0.1}),
              ("skew_kl", {"alpha": 0.1}), ("skew_reverse_kl", {"alpha": 0.1}),
              ("js_divergence", {"beta": 0.5}), ("tv_distance", {})]
# the one loss that is +inf when a side gives zero probability to a token the other allows
_INFINITE = {"teacher": "reverse_kl", "student": "forward_kl"}


@pytest.mark.parametrize("side", ["teacher", "student"])
@pytest.mark.parametrize("name,kw", _ONE_SIDED)
def test_zero_probability_on_one_side(side, name, kw):
    s, t = one_sided_ban(side)
    loss, gs, gt = grads(L.LOSSES[name], s, t, MASK, **kw)
    if name == _INFINITE[side]:
        assert loss.item() == INF
        return
    assert torch.isfinite(loss) and torch.isfinite(gs).all() and torch.isfinite(gt).all()
    torch.testing.assert_close(loss, reference(name, s, t, MASK, **kw).float())


@pytest.mark.parametrize("name,kw", EDGE_CASES)
def test_logits_of_magnitude_1e4_stay_finite(name, kw):
    s = logits(2, 5, 13, seed=130, scale=1e4, dtype=torch.float32)
    t = logits(2, 5, 13, seed=131, scale=1e4, dtype=torch.float32)
    loss, gs, gt = grads(L.LOSSES[name], s, t, MASK, **kw)
    assert torch.isfinite(loss) and torch.isfinite(gs).all() and torch.isfinite(gt).all()


# ---- names, parameters, shapes

def test_get_loss_names_and_aliases():
    assert set(L.LOSSES) == {"forward_kl", "reverse_kl", "js_divergence", "tv_distance",
                             "skew_kl", "skew_reverse_kl", "bdl"}
    expected = {
        L.forward_kl: ["forward_kl", "kl", "fkl", "FKL"], L.reverse_kl: ["reverse_kl", "rkl"],
        L.js_divergence: ["js", "jsd", "js_divergence"], L.tv_distance: ["tvd", "tv_distance"],
        L.skew_kl: ["skl", "skew_kl"], L.skew_reverse_kl: ["srkl", "skew_reverse_kl"],
        L.bdl: ["bdl"]}
    for fn, names in expected.items():
        for name in names:
            assert L.get_loss(name) is fn
            assert L.get_per_token_loss(name) is L.PER_TOKEN_LOSSES[fn.__name__]
    assert L.bdl.__name__ == "bdl" and "Eq. 4" in L.bdl.__doc__ and "[]" in L.bdl.__doc__


def test_unknown_loss_name_raises_listing_valid_names():
    with pytest.raises(ValueError, match="bdl.*skew_reverse_kl|skew_reverse_kl.*bdl"):
        L.get_loss("kld")
    with pytest.raises(ValueError, match="valid names"):
        L.get_per_token_loss("mse")


@pytest.mark.parametrize("name,param", [("bdl", "lam"), ("skew_kl", "alpha"),
                                        ("skew_reverse_kl", "alpha"), ("js_divergence", "beta")])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_weights_outside_unit_interval_raise(name, param, value):
    s = t = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match=param):
        L.LOSSES[name](s, t, None, **{param: value})
    with pytest.raises(ValueError, match=param):
        L.PER_TOKEN_LOSSES[name](s, t, None, **{param: value})


def test_shape_mismatch_raises_naming_both_shapes():
    s = torch.zeros(2, 3, 5)
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*\(2, 3, 6\)"):
        L.bdl(s, torch.zeros(2, 3, 6), None)  # vocabularies differ: padding rows not sliced
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 3, 5\)"):
        L.forward_kl(s, s, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(6, 5\)"):
        L.reverse_kl(s.view(6, 5), s.view(6, 5), None)
    with pytest.raises(ValueError, match="chunk_size"):
        L.bdl(s, s, None, chunk_size=0)


# ---- the fused value-and-gradient kernels

@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_nan_logits_give_a_nan_loss_not_a_silent_zero(name, kw):
    # training stops on a non-finite loss (NonFiniteLossError): a nan must reach the loss
    s = logits(2, 5, 13, seed=140, dtype=torch.float32)
    t = logits(2, 5, 13, seed=141, dtype=torch.float32)
    s[0, 2, 5] = float("nan")
    assert torch.isnan(L.LOSSES[name](s, t, MASK, **kw))
    s[0, 2, 5], t[1, 3, 0] = 0.0, float("nan")
    assert torch.isnan(L.LOSSES[name](s, t, MASK, **kw))


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_backward_twice_with_retain_graph_gives_the_same_gradient(name, kw):
    # backward scales the gradient rows kept by forward: it must not scale them in place
    s = logits(2, 5, 13, seed=150, dtype=torch.float32).requires_grad_()
    t = logits(2, 5, 13, seed=151, dtype=torch.float32).requires_grad_()
    loss = L.LOSSES[name](s, t, MASK, **kw) * 3.0
    g1 = torch.autograd.grad(loss, (s, t), retain_graph=True)
    g2 = torch.autograd.grad(loss, (s, t))
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_student_only_gradient_equals_the_one_computed_with_the_teacher_gradient():
    # the kernels skip the teacher's gradient when the teacher logits need none (training)
    s, t = logits(2, 5, 13, seed=160), logits(2, 5, 13, seed=161)
    _, gs_both, _ = grads(L.bdl, s, t, MASK)
    s1 = s.clone().requires_grad_()
    L.bdl(s1, t, MASK).backward()
    torch.testing.assert_close(s1.grad, gs_both, rtol=0, atol=0)
