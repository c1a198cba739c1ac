"""Tests for dakd.teacher_cache on the tiny random pair: the top-k file round-trips, k = V reproduces
the exact teacher (log-probs, BDL, CE_teacher), the tail share is used for tokens outside the top k,
and damaged or foreign files are refused with the file named."""

import math

import pytest
import torch
import torch.nn.functional as F

from dakd import teacher_cache as C
from dakd.data import DistillCollator
from dakd.difficulty import response_ce
from dakd.losses import bdl_per_token, reverse_kl_per_token
from dakd.models import TINY_STUDENT, TINY_TEACHER, load_model


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    return load_model(TINY_TEACHER).eval(), load_model(TINY_STUDENT)


@pytest.fixture(scope="module")
def short(dolly_examples):
    # the four shortest responses: a k = V file holds 8 bytes x 49,152 per response token
    ex = sorted(dolly_examples, key=lambda e: len(e["input_ids"]) - e["prompt_length"])[:4]
    assert len({len(e["input_ids"]) for e in ex}) > 1  # padding is exercised
    return ex


def _exact_logits(teacher, examples, pad):
    b = DistillCollator(pad)(examples)
    with torch.no_grad():
        return teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b


@pytest.fixture(scope="module")
def full_cache(pair, short, smol_tok, tmp_path_factory):
    teacher, _ = pair
    V = teacher.get_output_embeddings().weight.shape[0]
    path = tmp_path_factory.mktemp("topk") / "full.pt"
    C.build_topk_cache(teacher, short, smol_tok.pad_token_id, V, path, batch_size=3,
                       teacher_name="tiny", max_length=160)
    return C.TopKTeacherCache(path, teacher_name="tiny", examples=short, k=V, max_length=160)


@pytest.fixture(scope="module")
def small_cache(pair, short, smol_tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("topk") / "k8.pt"
    C.build_topk_cache(pair[0], short, smol_tok.pad_token_id, 8, path, batch_size=2,
                       teacher_name="tiny", max_length=160)
    return C.TopKTeacherCache(path)


def test_cache_round_trips_ids_logprobs_and_tail_mass(pair, short, smol_tok, small_cache):
    teacher, _ = pair
    # each example alone (no padding) against the file, which was built in padded batches of 2
    for e in short:
        logits, b = _exact_logits(teacher, [e], smol_tok.pad_token_id)
        lp = F.log_softmax(logits[0, :-1][b["response_mask"][0, 1:]].float(), -1)
        rows = small_cache.rows([e["sample_id"]])
        assert rows.ids.shape == (len(e["input_ids"]) - e["prompt_length"], 8)
        top = lp.topk(8, -1)
        torch.testing.assert_close(rows.logp, top.values, atol=1e-5, rtol=0)
        torch.testing.assert_close(lp.gather(1, rows.ids), top.values, atol=1e-5, rtol=0)
        torch.testing.assert_close(rows.log_tail, torch.log1p(-top.values.exp().sum(-1)), atol=1e-4, rtol=0)
        mass = rows.logp.exp().sum(-1) + rows.log_tail.exp()
        torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-5, rtol=0)
    assert small_cache.k == 8 and small_cache.logp_dtype == "float32" and len(small_cache) == len(short)
    assert small_cache._ids.dtype == torch.int32


def test_reconstruction_at_k_equal_v_is_the_exact_teacher(pair, short, smol_tok, full_cache):
    teacher, student = pair
    logits, b = _exact_logits(teacher, short, smol_tok.pad_token_id)
    rec = full_cache.teacher_logprobs(b["sample_id"], b["response_mask"])
    assert rec.shape == logits.shape and rec.dtype == torch.float32
    pos = b["response_mask"][:, 1:]
    torch.testing.assert_close(rec[:, :-1][pos], F.log_softmax(logits[:, :-1][pos], -1), atol=1e-5, rtol=0)
    # BDL of the student against the cache equals BDL against the exact logits, value and gradient
    s = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    exact = bdl_per_token(s, logits[:, :-1], pos, lam=0.9)
    rows = full_cache.response_rows(b["sample_id"], b["response_mask"])
    cached = C.cached_per_token_loss("bdl", s, rows, pos, lam=0.9)
    assert exact[pos].min() > 0
    torch.testing.assert_close(cached, exact, atol=1e-5, rtol=1e-5)
    g_exact, = torch.autograd.grad(exact.sum(), s, retain_graph=True)
    g_cached, = torch.autograd.grad(cached.sum(), s)
    torch.testing.assert_close(g_cached, g_exact, atol=1e-6, rtol=1e-4)


def test_topk_response_ce_equals_response_ce_at_k_equal_v(pair, short, smol_tok, full_cache):
    logits, b = _exact_logits(pair[0], short, smol_tok.pad_token_id)
    exact = response_ce(logits, b["input_ids"], b["response_mask"])
    torch.testing.assert_close(C.topk_response_ce(full_cache, short), exact, atol=1e-5, rtol=0)


def test_topk_response_ce_takes_the_tail_share_outside_the_top_k(pair, short, smol_tok, small_cache):
    e = short[0]
    logits, b = _exact_logits(pair[0], [e], smol_tok.pad_token_id)
    lp = F.log_softmax(logits[0, :-1][b["response_mask"][0, 1:]], -1)
    targets = torch.tensor(e["input_ids"][e["prompt_length"]:])
    top = lp.topk(8, -1)
    inside = (top.indices == targets[:, None]).any(1)
    assert not inside.all()  # a random teacher rarely ranks the true token in its top 8
    tail = torch.log1p(-top.values.exp().sum(-1)) - math.log(lp.shape[1] - 8)
    want = -torch.where(inside, lp.gather(1, targets[:, None])[:, 0], tail).mean()
    got = C.topk_response_ce(small_cache, [e])
    torch.testing.assert_close(got, want[None], atol=1e-4, rtol=0)


def test_stored_target_logprobs_give_the_exact_teacher_ce_at_small_k(pair, short, smol_tok, small_cache):
    logits, b = _exact_logits(pair[0], short, smol_tok.pad_token_id)
    exact = response_ce(logits, b["input_ids"], b["response_mask"])
    torch.testing.assert_close(C.topk_response_ce(small_cache, short, exact=True), exact, atol=1e-5, rtol=0)
    # the reconstruction's CE is off here (a random teacher's true tokens lie outside its top 8)
    assert (C.topk_response_ce(small_cache, short) - exact).abs().max() > 1e-2


def test_dense_and_row_losses_agree_below_full_k_and_stay_finite(pair, short, smol_tok, small_cache):
    teacher, student = pair
    b = DistillCollator(smol_tok.pad_token_id)(short)
    pos = b["response_mask"][:, 1:]
    s = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    dense = small_cache.teacher_logprobs(b["sample_id"], b["response_mask"])
    rows = small_cache.response_rows(b["sample_id"], b["response_mask"])
    mass = torch.logsumexp(dense, -1)
    torch.testing.assert_close(mass, torch.zeros_like(mass), atol=1e-5, rtol=0)
    for fn, name, kw in ((bdl_per_token, "bdl", {"lam": 0.9}), (reverse_kl_per_token, "rkl", {})):
        a = fn(s, dense[:, :-1], pos, **kw)
        c = C.cached_per_token_loss(name, s, rows, pos, **kw)
        assert torch.isfinite(c).all() and c[pos].min() > 0
        torch.testing.assert_close(c, a, atol=1e-6, rtol=1e-6)


def test_batch_of_another_layout_is_refused(short, smol_tok, small_cache):
    b = DistillCollator(smol_tok.pad_token_id)(short[:2])
    wrong = b["response_mask"].clone()
    wrong[0, -1] = ~wrong[0, -1]
    with pytest.raises(ValueError, match="response lengths"):
        small_cache.response_rows(b["sample_id"], wrong)
    with pytest.raises(KeyError, match="no cached rows for sample id 10000"):
        small_cache.rows([10000])


def test_truncated_cache_file_is_refused_naming_the_file(small_cache, tmp_path):
    bad = tmp_path / "truncated.pt"
    data = small_cache.path.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(C.TopKCacheError, match="truncated.pt: unreadable"):
        C.TopKTeacherCache(bad)


def test_foreign_cache_files_are_refused_naming_the_file(small_cache, short, tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"ids": torch.zeros(3)}, other)
    with pytest.raises(C.TopKCacheError, match="other.pt: not a dakd top-k teacher cache"):
        C.TopKTeacherCache(other)
    for kw, field in (({"k": 16}, "k"), ({"teacher_name": "big"}, "teacher"),
                      ({"examples": short[:2]}, "data_hash"), ({"max_length": 320}, "max_length")):
        with pytest.raises(C.TopKCacheError, match=rf"k8.pt: written for {field} "):
            C.TopKTeacherCache(small_cache.path, **kw)
    obj = torch.load(small_cache.path, weights_only=True)
    obj["offsets"] = obj["offsets"][:-1]
    torch.save(obj, other)
    with pytest.raises(C.TopKCacheError, match="other.pt: inconsistent"):
        C.TopKTeacherCache(other)


def test_cache_key_changes_with_k_data_teacher_and_length(short, tmp_path):
    base = C.topk_cache_path("t", short, 16, 320, folder=tmp_path)
    assert base.parent == tmp_path and base.name.startswith("topk_k16_")
    assert base == C.topk_cache_path("t", short, 16, 320, folder=tmp_path)
    others = [C.topk_cache_path("t", short, 64, 320, folder=tmp_path),
              C.topk_cache_path("t", short[:3], 16, 320, folder=tmp_path),
              C.topk_cache_path("u", short, 16, 320, folder=tmp_path),
              C.topk_cache_path("t", short, 16, 512, folder=tmp_path),
              C.topk_cache_path("t", short, 16, 320, logp_dtype=torch.float16, folder=tmp_path)]
    assert len({base, *others}) == 6


def test_bad_k_is_refused(pair, short, smol_tok, tmp_path):
    for k in (0, 49153):
        with pytest.raises(ValueError, match="k must lie in"):
            C.build_topk_cache(pair[0], short, smol_tok.pad_token_id, k, tmp_path / "x.pt")


def test_load_or_build_reuses_the_file(pair, short, smol_tok, tmp_path):
    a, hit_a = C.load_or_build_topk_cache(pair[0], short[:2], smol_tok.pad_token_id, 4, "tiny", 160,
                                          folder=tmp_path)
    b, hit_b = C.load_or_build_topk_cache(pair[0], short[:2], smol_tok.pad_token_id, 4, "tiny", 160,
                                          folder=tmp_path)
    assert (hit_a, hit_b) == (False, True) and a.path == b.path
    assert torch.equal(a.rows([short[0]["sample_id"]]).ids, b.rows([short[0]["sample_id"]]).ids)
    # a hit needs no teacher (train.py passes None when the file is there); a miss without one is refused
    c, hit_c = C.load_or_build_topk_cache(None, short[:2], smol_tok.pad_token_id, 4, "tiny", 160, vocab=a.vocab,
                                          folder=tmp_path)
    assert hit_c and c.path == a.path
    with pytest.raises(ValueError, match="absent and no teacher"):
        C.load_or_build_topk_cache(None, short[:2], smol_tok.pad_token_id, 8, "tiny", 160, vocab=a.vocab,
                                   folder=tmp_path)


def test_a_teacher_folder_retrained_in_place_gets_new_caches(tmp_path, short, smol_tok):
    # regression: the caches were keyed by the teacher's name only, so a teacher-SFT folder
    # retrained in place (same path, new weights) read the old teacher's top-k file and CE_teacher
    import os

    from dakd.difficulty import teacher_ce_cached
    from dakd.models import TINY_TEACHER, load_model, weights_fingerprint

    folder = tmp_path / "teacher_sft" / "student"
    model = load_model(TINY_TEACHER)
    model.save_pretrained(folder)
    before = C.topk_cache_path(str(folder), short, 16, 96, 49152, folder=tmp_path / "topk")
    assert C.topk_cache_path(str(folder), short, 16, 96, 49152, folder=tmp_path / "topk") == before
    ce1, hit1 = teacher_ce_cached(model, short, smol_tok.pad_token_id, tmp_path / "ce", str(folder))
    _, hit2 = teacher_ce_cached(model, short, smol_tok.pad_token_id, tmp_path / "ce", str(folder))
    assert (hit1, hit2) == (False, True)

    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(2.0)
    model.save_pretrained(folder)  # "retrained": same folder, other weights
    for f in folder.iterdir():  # a later write, even within the clock's resolution
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000))
    assert C.topk_cache_path(str(folder), short, 16, 96, 49152, folder=tmp_path / "topk") != before
    ce3, hit3 = teacher_ce_cached(model, short, smol_tok.pad_token_id, tmp_path / "ce", str(folder))
    assert not hit3 and not torch.equal(ce3, ce1)
    assert weights_fingerprint("some/hub-name") == "some/hub-name"  # a hub name is its own identity
