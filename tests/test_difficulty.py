"""Tests for dakd.difficulty: response CE under teacher forcing, DDS (Eq. 1), scoring and caching."""

import math

import pytest
import torch

from dakd.difficulty import difficulty_scores, response_ce, score_dataset, teacher_ce_cached
from dakd.models import TINY_STUDENT, load_model


@pytest.fixture(scope="module")
def tiny_student():
    return load_model(TINY_STUDENT)


def _loop_ce(logits, ids, mask):
    """Reference: position t predicts token t+1; average over the response targets only."""
    out = []
    for b in range(ids.shape[0]):
        terms = [-torch.log_softmax(logits[b, t].double(), -1)[ids[b, t + 1]]
                 for t in range(ids.shape[1] - 1) if mask[b, t + 1]]
        out.append(float(sum(terms) / len(terms)) if terms else 0.0)
    return torch.tensor(out)


# ---------------------------------------------------------------- response_ce

def test_response_ce_of_uniform_logits_is_log_vocab():
    V = 7
    ids = torch.tensor([[0, 3, 1, 6, 2, 5]])
    mask = torch.tensor([[False, False, True, True, True, True]])
    ce = response_ce(torch.zeros(1, 6, V), ids, mask)
    assert ce.dtype == torch.float32
    assert ce.item() == pytest.approx(math.log(V), abs=1e-6)


def test_response_ce_position_t_predicts_token_t_plus_1():
    # logits[t] puts a_t on token ids[t+1] and 0 elsewhere: CE_t = log(e^a_t + V - 1) - a_t in
    # closed form; a misaligned reading (logits[t] against ids[t]) would see CE log(e^a_t + V - 1)
    V = 5
    ids = torch.tensor([[0, 1, 2, 3, 4]])
    mask = torch.tensor([[False, False, True, True, True]])  # prompt = 2 tokens
    a = [0.0, 1.0, 2.0, 3.0]
    logits = torch.zeros(1, 5, V)
    for t in range(4):
        logits[0, t, ids[0, t + 1]] = a[t]
    want = sum(math.log(math.exp(a[t]) + V - 1) - a[t] for t in (1, 2, 3)) / 3
    assert response_ce(logits, ids, mask).item() == pytest.approx(want, abs=1e-6)


def test_response_ce_excludes_prompt_and_padding():
    g = torch.Generator().manual_seed(0)
    V, T = 11, 8
    ids = torch.randint(0, V, (3, T), generator=g)
    logits = torch.randn(3, T, V, generator=g) * 3
    mask = torch.zeros(3, T, dtype=torch.bool)
    mask[0, 3:8] = True   # prompt 3, response 5, no padding
    mask[1, 2:5] = True   # prompt 2, response 3, then 3 padding positions
    mask[2, 6:7] = True   # a single response token
    ce = response_ce(logits, ids, mask)
    torch.testing.assert_close(ce, _loop_ce(logits, ids, mask).float(), atol=1e-5, rtol=0)
    # what lies on prompt and padding positions does not matter
    logits2, ids2 = logits.clone(), ids.clone()
    logits2[1, 5:] = 100 * torch.randn(3, V, generator=g)
    ids2[1, 5:] = 0
    logits2[0, :2] = -50.0  # prompt positions that predict prompt tokens
    torch.testing.assert_close(response_ce(logits2, ids2, mask), ce)


def test_response_ce_is_zero_without_response_tokens():
    logits = torch.randn(2, 4, 6)
    ids = torch.randint(0, 6, (2, 4))
    mask = torch.tensor([[False] * 4, [False, False, True, True]])
    ce = response_ce(logits, ids, mask)
    assert ce[0].item() == 0.0
    assert ce[1].item() > 0.0


# ---------------------------------------------------------------- difficulty_scores (Eq. 1)

def test_dds_is_student_over_teacher_floored_at_eps():
    s, t = torch.tensor([2.0, 1.0, 0.5]), torch.tensor([1.0, 0.25, 0.0])
    got = difficulty_scores(s, t, eps=0.01)
    torch.testing.assert_close(got, torch.tensor([2.0 / 1.0, 1.0 / 0.25, 0.5 / 0.01]))


def test_dds_reproduces_the_papers_example():
    # CE_teacher 0.0003, CE_student 1.1055: "DDS about 3685"; eps (1e-6 nats) is a floor far
    # below 0.0003, so it does not move the ratio (issue 13: it was added, giving 3672.8)
    s, t = torch.tensor([1.1055]), torch.tensor([0.0003])
    assert difficulty_scores(s, t).item() == pytest.approx(3685.0, rel=1e-6)
    assert difficulty_scores(s, t, eps=1e-9).item() == difficulty_scores(s, t).item()


@pytest.mark.parametrize("student, teacher, eps", [
    (torch.ones(3), torch.ones(2), 1e-6),                       # shapes differ
    (torch.ones(2, 1), torch.ones(2), 1e-6),
    (torch.tensor([1.0, -0.1]), torch.ones(2), 1e-6),           # negative
    (torch.ones(2), torch.tensor([0.5, -1e-3]), 1e-6),
    (torch.tensor([1.0, float("nan")]), torch.ones(2), 1e-6),   # not finite
    (torch.ones(2), torch.tensor([float("inf"), 1.0]), 1e-6),
    (torch.ones(2), torch.ones(2), 0.0),                        # eps <= 0
    (torch.ones(2), torch.ones(2), -1e-6),
])
def test_dds_rejects_bad_input(student, teacher, eps):
    with pytest.raises(ValueError):
        difficulty_scores(student, teacher, eps)


# ---------------------------------------------------------------- score_dataset

def test_score_dataset_returns_example_order(tiny_student, smol_tok, dolly_examples):
    lengths = [len(e["input_ids"]) for e in dolly_examples]
    assert lengths != sorted(lengths)  # the internal length sort must really permute
    tiny_student.train()
    got = score_dataset(tiny_student, dolly_examples, smol_tok.pad_token_id, batch_size=4)
    assert tiny_student.training  # mode restored
    alone = torch.cat([score_dataset(tiny_student, [e], smol_tok.pad_token_id) for e in dolly_examples])
    assert got.shape == (len(dolly_examples),)
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
    # and against a direct forward of one example
    e = dolly_examples[3]
    ids = torch.tensor([e["input_ids"]])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, e["prompt_length"]:] = True
    with torch.no_grad():
        direct = response_ce(tiny_student(input_ids=ids).logits, ids, mask)
    assert got[3].item() == pytest.approx(direct.item(), abs=1e-5)


def test_teacher_ce_cached_reads_back_what_it_wrote(tiny_student, smol_tok, dolly_examples, tmp_path):
    ex = dolly_examples[:4]
    first, hit = teacher_ce_cached(tiny_student, ex, smol_tok.pad_token_id, tmp_path, "tiny", batch_size=2)
    assert not hit
    files = list(tmp_path.glob("teacher_ce_*.pt"))
    assert len(files) == 1
    torch.testing.assert_close(first, score_dataset(tiny_student, ex, smol_tok.pad_token_id))
    # a cache hit never touches the model: pass none
    again, hit = teacher_ce_cached(None, ex, smol_tok.pad_token_id, tmp_path, "tiny")
    assert hit
    assert torch.equal(again, first)
    # another teacher name, or other token ids, is another cache entry
    _, hit = teacher_ce_cached(tiny_student, ex, smol_tok.pad_token_id, tmp_path, "other")
    assert not hit
    _, hit = teacher_ce_cached(tiny_student, ex[:3], smol_tok.pad_token_id, tmp_path, "tiny")
    assert not hit
    assert len(list(tmp_path.glob("teacher_ce_*.pt"))) == 3


def test_response_ce_reads_response_rows_only_and_matches_float64():
    # only the response rows are computed: a nan in a prompt or padding position changes nothing,
    # and the value equals an independent float64 log-softmax
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, 50, generator=g) * 4
    ids = torch.randint(0, 50, (2, 6), generator=g)
    resp = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    lp = torch.log_softmax(logits.double(), -1)
    want = torch.stack([torch.stack([-lp[b, t - 1, ids[b, t]] for t in range(1, 6) if resp[b, t]]).mean()
                        for b in range(2)]).float()
    noisy = logits.clone()
    noisy[0, 0], noisy[0, 4:], noisy[1, 5] = float("nan"), float("nan"), float("nan")  # not read
    torch.testing.assert_close(response_ce(noisy, ids, resp), want, rtol=1e-6, atol=1e-6)
