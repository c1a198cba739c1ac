"""Paired comparisons of two runs (`dakd.compare`, issue 15): the bootstrap interval's exact and
statistical properties, pairing by prompt id for ROUGE-L (mean over seeds) and for the
teacher-forced metrics (token-weighted), and the refusals (other prompts, other decoding, missing
records)."""

import json

import numpy as np
import pytest

from dakd import compare, results
from dakd.decoding import decoding_record


def _run(name, per_prompt, prompt_ids, seeds=None, tf_rows=None, max_new_tokens=8):
    """A results.json dict with one DollyEval evaluation: ``per_prompt`` {seed key: [scores]}."""
    seeds = seeds or [int(k) for k in per_prompt]
    ev = {"metric": "rougeL", "per_prompt": per_prompt, "prompt_ids": prompt_ids,
          "per_seed": {k: float(np.mean(v)) for k, v in per_prompt.items()},
          "decoding_config": decoding_record(seeds, max_new_tokens, 6)}
    if tf_rows is not None:
        ev["teacher_forced"] = {"per_prompt": tf_rows}
    return {"label": name, "config": {"output_dir": f"runs/x/{name}"}, "eval": {"dolly": ev}}


def test_a_constant_difference_has_exactly_that_interval():
    assert compare.bootstrap_mean([0.1] * 37) == (0.1, 0.1, 0.1)
    assert compare.bootstrap_mean([-2.3] * 5, weights=[1, 2, 3, 4, 5]) == (-2.3, -2.3, -2.3)
    # two runs whose every prompt differs by 5 ROUGE-L points, over two seeds
    b = _run("b", {"10": [10.0, 12.5, 40.25, 0.0], "20": [20.0, 2.5, 33.75, 7.0]}, [0, 3, 4, 9])
    a = _run("a", {k: [x + 5.0 for x in v] for k, v in b["eval"]["dolly"]["per_prompt"].items()}, [0, 3, 4, 9])
    d = compare.paired_difference(a, b, "dolly", "rougeL")
    assert (d["mean"], d["low"], d["high"], d["num_prompts"]) == (5.0, 5.0, 5.0, 4)
    assert d["run_a"] == "runs/x/a" and d["run_b"] == "runs/x/b" and d["weighting"] == "prompt"


def test_the_interval_covers_the_true_mean_of_a_normal_sample():
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 1.0, size=200)
    mean, low, high = compare.bootstrap_mean(x)
    assert mean == pytest.approx(x.mean()) and low < 0.3 < high
    # half-width about 1.96 sigma / sqrt(n) = 0.139
    assert (high - low) / 2 == pytest.approx(1.96 / np.sqrt(200), rel=0.15)
    assert compare.bootstrap_mean(x) == (mean, low, high)  # seeded
    # over many samples the 95 % interval covers the mean about 95 % of the time
    covered = []
    for s in range(200):
        y = np.random.default_rng(100 + s).normal(-1.0, 2.0, size=60)
        _, lo, hi = compare.bootstrap_mean(y, resamples=1000, seed=s)
        covered.append(lo <= -1.0 <= hi)
    assert 0.88 <= np.mean(covered) <= 0.99


def test_weighted_resampling_is_the_ratio_of_weighted_sums():
    v, w = [1.0, 3.0], [3.0, 1.0]
    mean, low, high = compare.bootstrap_mean(v, w, resamples=4000)
    assert mean == pytest.approx(1.5)  # (3 * 1 + 1 * 3) / 4
    # resamples {1, 1}, {1, 3} or {3, 1}, {3, 3}: means 1, 1.5, 3
    assert (low, high) == (1.0, 3.0)


def test_rouge_is_averaged_over_seeds_and_paired_by_prompt_id():
    a = _run("a", {"10": [10.0, 30.0, 50.0], "20": [20.0, 40.0, 60.0]}, [2, 5, 7])
    # the same prompts recorded in another order
    b = _run("b", {"10": [0.0, 40.0, 10.0], "20": [0.0, 40.0, 10.0]}, [7, 2, 5])
    vals, weights = compare.per_prompt_values(a, "dolly", "rougeL")
    assert vals == {2: 15.0, 5: 35.0, 7: 55.0} and set(weights.values()) == {1.0}
    d = compare.paired_difference(a, b, "dolly", "rougeL", resamples=2000)
    # prompt 2: 15 - 40, prompt 5: 35 - 10, prompt 7: 55 - 0
    assert d["mean"] == pytest.approx((-25 + 25 + 55) / 3) and d["low"] <= d["mean"] <= d["high"]
    # equal to the difference of the reported scores (every prompt has every seed)
    score = lambda r: np.mean(list(r["eval"]["dolly"]["per_seed"].values()))  # noqa: E731
    assert d["mean"] == pytest.approx(score(a) - score(b))


def test_mismatched_prompt_ids_are_refused_naming_both_runs():
    a = _run("a", {"10": [1.0, 2.0, 3.0]}, [0, 1, 2])
    b = _run("b", {"10": [1.0, 2.0, 3.0]}, [0, 1, 3])
    with pytest.raises(ValueError, match=r"runs/x/a and runs/x/b .*only in runs/x/a: \[2\].*only in runs/x/b: \[3\]"):
        compare.paired_difference(a, b, "dolly", "rougeL")
    rows = lambda ids: [{"sample_id": i, "student_ce": 1.0, "num_tokens": 4} for i in ids]  # noqa: E731
    with pytest.raises(ValueError, match="runs/x/a and runs/x/b"):
        compare.paired_difference(_run("a", {"10": [1.0]}, [0], tf_rows=rows([0, 1])),
                                  _run("b", {"10": [1.0]}, [0], tf_rows=rows([0, 2])), "dolly", "student_ce")


def test_other_refusals_name_the_field():
    a = _run("a", {"10": [1.0, 2.0]}, [0, 1])
    with pytest.raises(ValueError, match="decoded differently"):
        compare.paired_difference(a, _run("b", {"10": [1.0, 2.0]}, [0, 1], max_new_tokens=16), "dolly", "rougeL")
    with pytest.raises(ValueError, match="teacher_forced=True"):
        compare.paired_difference(a, a, "dolly", "forward_kl")
    with pytest.raises(ValueError, match="not evaluated on 'vicuna'"):
        compare.paired_difference(a, a, "vicuna", "rougeL")
    with pytest.raises(ValueError, match="not 'accuracy'"):
        compare.paired_difference(a, a, "dolly", "accuracy")
    with pytest.raises(ValueError, match="unknown metric"):
        compare.paired_difference(a, a, "dolly", "bleu")
    tok = lambda n: [{"sample_id": 0, "student_ce": 1.0, "num_tokens": n}]  # noqa: E731
    with pytest.raises(ValueError, match="tokenized"):
        compare.paired_difference(_run("a", {"10": [1.0]}, [0], tf_rows=tok(4)),
                                  _run("b", {"10": [1.0]}, [0], tf_rows=tok(5)), "dolly", "student_ce")
    for bad in ([], [1.0, float("nan")]):
        with pytest.raises(ValueError):
            compare.bootstrap_mean(bad)
    with pytest.raises(ValueError, match="weights"):
        compare.bootstrap_mean([1.0, 2.0], weights=[1.0])


def test_teacher_forced_differences_from_real_tiny_models(smol_tok, tmp_path):
    # student vs teacher on DollyEval references: the token-weighted paired mean is exactly the
    # difference of the two set values, and runs can be given as folders
    from dakd import teacher_forced as tf
    from dakd.models import TINY_STUDENT, TINY_TEACHER, load_frozen

    ex, _ = tf.set_examples("dolly", smol_tok, "chatml", 96, 160, limit=12)
    student, teacher = load_frozen(TINY_STUDENT), load_frozen(TINY_TEACHER)
    m_s = tf.teacher_forced_metrics(student, teacher, ex, smol_tok.pad_token_id)
    m_t = tf.teacher_forced_metrics(teacher, teacher, ex, smol_tok.pad_token_id)
    ids = [e["sample_id"] for e in ex]
    run_s = _run("s", {"10": [0.0] * len(ids)}, ids)
    run_s["eval"]["dolly"]["teacher_forced"] = m_s
    run_t = _run("t", {"10": [0.0] * len(ids)}, ids)
    run_t["eval"]["dolly"]["teacher_forced"] = m_t
    for name, r in (("s", run_s), ("t", run_t)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    for metric in ("student_ce", "forward_kl", "top1_agreement"):
        d = results.paired_difference(tmp_path / "s", tmp_path / "t", "dolly", metric)
        assert d["mean"] == pytest.approx(m_s[metric] - m_t[metric], abs=1e-9), metric
        assert d["low"] <= d["mean"] <= d["high"] and d["weighting"] == "token"
        assert d["num_tokens"] == m_s["num_tokens"] and d["run_a"] == str(tmp_path / "s")
    kl = results.paired_difference(run_s, run_t, "dolly", "forward_kl")
    assert kl["low"] > 0  # the random student is measurably away from the teacher
    # the teacher CE is the same model in both: a difference of exactly 0
    d = results.paired_difference(run_s, run_t, "dolly", "teacher_ce")
    assert (d["mean"], d["low"], d["high"]) == (0.0, 0.0, 0.0)


def test_the_whole_run_benchmark_uses_the_packages_bootstrap():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "whole_run.py"
    spec = importlib.util.spec_from_file_location("whole_run_bench_cmp", path)
    wr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wr)
    a = {"per_prompt": {("dolly", "10", 0): 3.0, ("dolly", "20", 0): 5.0, ("dolly", "10", 1): 1.0,
                        ("vicuna", "10", 0): 0.0}}
    b = {"per_prompt": {k: 0.0 for k in a["per_prompt"]}}
    got = wr.paired_difference(a, b)
    # prompts (dolly 0: mean 4 over 2 scores), (dolly 1: 1), (vicuna 0: 0): the mean of every score
    assert got[0] == pytest.approx(9.0 / 4) and got[3] == 3
    assert got[:3] == compare.bootstrap_mean([4.0, 1.0, 0.0], [2, 1, 1])
