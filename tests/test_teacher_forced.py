"""Teacher-forced metrics (`dakd.teacher_forced`, issue 15): exact values on the tiny pair, checked
against independent computations (DDS scoring's CE, a direct float64 KL over full logits), the
Teacher row's exact zeros, the two-process path, and the run-level hook (config field, results key,
a finished run lacking it redone)."""

import json

import pytest
import torch

from dakd import data, pipeline, teacher_forced as tf
from dakd.difficulty import score_dataset
from dakd.models import TINY_STUDENT, TINY_TEACHER, load_frozen, load_tokenizer, resolve_model
from dakd.presets import get_preset


@pytest.fixture(scope="module")
def pair():
    return load_frozen(TINY_STUDENT), load_frozen(TINY_TEACHER)


@pytest.fixture(scope="module")
def eval_examples(smol_tok):
    # the DollyEval records the evaluation loads, tokenized as training does (prompt + reference)
    ex, report = tf.set_examples("dolly", smol_tok, "chatml", 96, 160, limit=10)
    assert report["loaded"] == 10 and report["kept"] == len(ex) >= 6
    return ex


def test_set_examples_are_the_evaluations_prompts_with_the_first_reference(smol_tok):
    from dakd import tasks

    ex, report = tf.set_examples("sinst", smol_tok, "chatml", 256, 320, limit=5)
    records = tasks.load_eval_records("sinst", 5)
    prompts, _, ev_report, kept = data.prompts_for_generation(records, smol_tok, "chatml", 256)
    assert [e["sample_id"] for e in ex] == kept and report["prompt_too_long"] == ev_report.prompt_too_long
    for e, text in zip(ex, prompts):
        assert e["input_ids"][:e["prompt_length"]] == data.encode_prompts(smol_tok, [text])[0]
        first = records[e["sample_id"]]["output"]
        first = first if isinstance(first, str) else first[0]
        want = smol_tok(first, add_special_tokens=False).input_ids + [smol_tok.eos_token_id]
        assert e["input_ids"][e["prompt_length"]:] == want[:320 - e["prompt_length"]]
    with pytest.raises(ValueError, match="gsm8k"):
        tf.set_examples("gsm8k", smol_tok, "chatml", 256, 320, limit=2)


def test_teacher_row_has_kl_exactly_0_and_agreement_exactly_1(pair, eval_examples, smol_tok):
    _, teacher = pair
    res = tf.teacher_forced_metrics(teacher, teacher, eval_examples, smol_tok.pad_token_id, batch_size=3)
    assert res["forward_kl"] == 0.0 and res["top1_agreement"] == 1.0
    assert res["student_ce"] == res["teacher_ce"] > 0
    assert all(p["forward_kl"] == 0.0 and p["top1_agreement"] == 1.0 for p in res["per_prompt"])


def test_ce_equals_dds_scorings_response_ce(pair, eval_examples, smol_tok):
    student, teacher = pair
    res = tf.teacher_forced_metrics(student, teacher, eval_examples, smol_tok.pad_token_id, batch_size=4)
    ref_s = score_dataset(student, eval_examples, smol_tok.pad_token_id, batch_size=2).double()
    ref_t = score_dataset(teacher, eval_examples, smol_tok.pad_token_id, batch_size=5).double()
    n = torch.tensor([len(e["input_ids"]) - e["prompt_length"] for e in eval_examples], dtype=torch.float64)
    per = res["per_prompt"]
    assert [p["sample_id"] for p in per] == [e["sample_id"] for e in eval_examples]
    assert [p["num_tokens"] for p in per] == n.long().tolist() and res["num_tokens"] == int(n.sum())
    assert [p["student_ce"] for p in per] == pytest.approx(ref_s.tolist(), abs=1e-5)
    assert [p["teacher_ce"] for p in per] == pytest.approx(ref_t.tolist(), abs=1e-5)
    # set values: token-weighted means
    assert res["student_ce"] == pytest.approx(float((ref_s * n).sum() / n.sum()), abs=1e-5)
    assert res["teacher_ce"] == pytest.approx(float((ref_t * n).sum() / n.sum()), abs=1e-5)
    assert res["num_prompts"] == len(eval_examples) and res["num_processes"] == 1


def test_forward_kl_and_agreement_equal_a_direct_computation_on_full_logits(pair, eval_examples, smol_tok):
    student, teacher = pair
    batch = eval_examples[:3]
    res = tf.teacher_forced_metrics(student, teacher, batch, smol_tok.pad_token_id, batch_size=2)
    b = data.DistillCollator(smol_tok.pad_token_id)(batch)
    with torch.no_grad():
        s = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.double()
        t = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.double()
    lp, lq = t.log_softmax(-1), s.log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)  # [B, T] KL(teacher || student) at every position
    agree = (s.argmax(-1) == t.argmax(-1)).double()
    pos = torch.zeros_like(b["response_mask"])
    pos[:, :-1] = b["response_mask"][:, 1:]  # position t predicts response token t + 1
    for i, p in enumerate(res["per_prompt"]):
        m = pos[i]
        assert p["num_tokens"] == int(m.sum())
        assert p["forward_kl"] == pytest.approx(float(kl[i][m].mean()), rel=1e-5, abs=1e-6)
        assert p["top1_agreement"] == pytest.approx(float(agree[i][m].mean()), abs=1e-12)
    # float32 kernel against float64: about 1e-7 nats per token apart
    assert res["forward_kl"] == pytest.approx(float(kl[pos].mean()), rel=1e-5, abs=1e-6)
    assert res["top1_agreement"] == pytest.approx(float(agree[pos].mean()), abs=1e-12)
    assert res["forward_kl"] > 0 and 0 <= res["top1_agreement"] < 1


def test_logits_are_compared_over_the_shared_vocabulary_only(pair, eval_examples, smol_tok):
    student, teacher = pair
    ex = eval_examples[:2]
    full = tf.teacher_forced_metrics(student, teacher, ex, smol_tok.pad_token_id)
    # the tiny heads are the tokenizer's size: slicing to it changes nothing
    same = tf.teacher_forced_metrics(student, teacher, ex, smol_tok.pad_token_id, vocab=len(smol_tok))
    assert same["forward_kl"] == pytest.approx(full["forward_kl"], rel=1e-6)
    # a narrower shared vocabulary: KL over the renormalised first V columns, as the losses take it
    v = 30_000
    narrow = tf.teacher_forced_metrics(student, teacher, ex, smol_tok.pad_token_id, vocab=v)
    b = data.DistillCollator(smol_tok.pad_token_id)(ex)
    with torch.no_grad():
        s = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[..., :v].double()
        t = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[..., :v].double()
    pos = torch.zeros_like(b["response_mask"])
    pos[:, :-1] = b["response_mask"][:, 1:]
    lp, lq = t.log_softmax(-1)[pos], s.log_softmax(-1)[pos]
    assert narrow["forward_kl"] == pytest.approx(float((lp.exp() * (lp - lq)).sum(-1).mean()), rel=1e-5, abs=1e-6)


def _cfg(tmp_path, name="teacher", **kw):
    return get_preset("tiny", root=str(tmp_path))[name].replace(**{
        "teacher_forced": True, "teacher_forced_samples": 8, "eval_datasets": ("dolly", "vicuna"), "eval_samples": 2,
        "eval_seeds": (None,), "max_new_tokens": 3, "max_prompt_length": 256, "max_length": 320} | kw)


def test_config_fields_keep_existing_hashes_and_are_checked(tmp_path):
    base = get_preset("tiny", root=str(tmp_path))["dakd"]
    assert base.replace(teacher_forced=False, teacher_forced_samples=None).config_hash() == base.config_hash()
    assert base.replace(teacher_forced=True).config_hash() != base.config_hash()
    on = base.replace(teacher_forced=True)
    assert on.replace(teacher_forced_samples=8).config_hash() != on.config_hash()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="teacher_forced_samples"):
            base.replace(teacher_forced_samples=bad)


def test_run_records_teacher_forced_metrics_and_a_run_without_them_is_redone(tmp_path):
    cfg = _cfg(tmp_path, eval_datasets=("dolly", "vicuna", "gsm8k"))
    res = pipeline.run(cfg)
    for ds in ("dolly", "vicuna"):
        got = res["eval"][ds]["teacher_forced"]
        assert {"student_ce", "teacher_ce", "forward_kl", "top1_agreement", "num_tokens", "per_prompt"} <= set(got)
        assert got["forward_kl"] == 0.0 and got["top1_agreement"] == 1.0  # the Teacher row
        assert got["num_records"] == 8 and len(got["per_prompt"]) == got["num_prompts"] > 0
        assert set(got["per_prompt"][0]) >= {"sample_id", "student_ce", "forward_kl", "top1_agreement", "num_tokens"}
    assert "teacher_forced" not in res["eval"]["gsm8k"]  # accuracy sets are skipped
    on_disk = json.loads((tmp_path / "teacher" / "results.json").read_text())
    assert on_disk["eval"]["dolly"]["teacher_forced"]["per_prompt"] == res["eval"]["dolly"]["teacher_forced"]["per_prompt"]
    assert pipeline.load_complete(cfg) is not None
    stale = dict(on_disk, eval={ds: {k: v for k, v in ev.items() if k != "teacher_forced"}
                                for ds, ev in on_disk["eval"].items()})
    (tmp_path / "teacher" / "results.json").write_text(json.dumps(stale))
    assert pipeline.load_complete(cfg) is None


def test_a_students_metrics_against_the_teacher(tmp_path):
    # a student folder evaluated with the run's teacher: a real KL, and the teacher's CE is the
    # Teacher row's
    cfg = _cfg(tmp_path, "sft")
    student = pipeline.evaluate_run(cfg, model_path=resolve_model(TINY_STUDENT), datasets=("dolly",))
    teacher = pipeline.evaluate_run(_cfg(tmp_path), datasets=("dolly",))
    s, t = student["dolly"]["teacher_forced"], teacher["dolly"]["teacher_forced"]
    assert s["forward_kl"] > 0 and s["student_ce"] != s["teacher_ce"]
    assert s["teacher_ce"] == pytest.approx(t["teacher_ce"], abs=1e-5)
    assert [p["sample_id"] for p in s["per_prompt"]] == [p["sample_id"] for p in t["per_prompt"]]


def test_two_processes_give_the_numbers_of_one(tmp_path, monkeypatch):
    import shutil

    monkeypatch.delenv("DAKD_ACCELERATE_CONFIG", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # 7 records over 2 processes in batches of 2: shares of 4 and 3 (or fewer after the length
    # filter), the same number of forward passes on both
    cfg = _cfg(tmp_path, "sft", teacher_forced_samples=7, eval_batch_size=2, eval_datasets=("dolly",))
    shutil.copytree(resolve_model(TINY_STUDENT), tmp_path / "sft" / "student")  # the run's own student
    one = pipeline.evaluate_run(cfg)["dolly"]["teacher_forced"]
    two = pipeline.launch_evaluation(cfg, num_processes=2, cpu=True)["dolly"]["teacher_forced"]
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert one["num_prompts"] == two["num_prompts"] >= 5
    assert [p["sample_id"] for p in two["per_prompt"]] == [p["sample_id"] for p in one["per_prompt"]]
    for k in ("student_ce", "teacher_ce", "forward_kl", "top1_agreement", "num_tokens"):
        assert two[k] == pytest.approx(one[k], rel=1e-6, abs=1e-7), k
        assert [p[k] for p in two["per_prompt"]] == pytest.approx([p[k] for p in one["per_prompt"]],
                                                                  rel=1e-6, abs=1e-7), k
