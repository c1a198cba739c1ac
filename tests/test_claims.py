"""The claims study (`dakd.claims`, issue 15 parts 2-3): the verdict rules at their edges, the rows'
signs and values against an independent computation on hand-made results, the cost rows, one
teacher pass for many students giving each exactly its own metrics, the presets, and the whole
study on the tiny pair through notebook 06 (resumed: nothing retrained the second time)."""

import json
import os
from pathlib import Path

import numpy as np
import papermill as pm
import pytest

from dakd import claims
from dakd import teacher_forced as tf
from dakd.models import TINY_STUDENT, TINY_TEACHER, build_tiny, load_frozen
from dakd.presets import get_preset, get_tables

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind, low, high, margin, expected", [
    ("beats", 0.01, 0.5, 0, "holds"),
    ("beats", 0.0, 0.5, 0, "cannot tell"),       # touching 0 is not above it
    ("beats", -0.2, 0.3, 0, "cannot tell"),
    ("beats", -0.5, -0.01, 0, "does not hold"),
    ("matches", -0.4, 0.2, 0.5, "holds"),        # worse by less than the margin: matches
    ("matches", -0.6, 0.2, 0.5, "cannot tell"),
    ("matches", -0.9, -0.6, 0.5, "does not hold"),
    ("matches", -0.5, 0.1, 0.5, "cannot tell"),  # exactly at -margin: not above it
])
def test_verdict_rules(kind, low, high, margin, expected):
    assert claims.verdict(kind, low, high, margin) == expected


def test_verdict_refuses_bad_input():
    with pytest.raises(ValueError, match="low > high"):
        claims.verdict("beats", 1.0, 0.0)
    with pytest.raises(ValueError, match="unknown claim kind"):
        claims.verdict("ties", 0.0, 1.0)
    with pytest.raises(ValueError, match="margin"):
        claims.verdict("matches", 0.0, 1.0, -0.1)


def _fake_run(folder: Path, rouge: list[float], ce: list[float], tokens: list[int], cost: dict | None = None):
    """A results.json with per-prompt ROUGE-L (one seed) and teacher-forced CE, as a run writes them."""
    ids = list(range(len(rouge)))
    per = [{"sample_id": i, "student_ce": c, "teacher_ce": 2.0, "forward_kl": 1.0, "top1_agreement": 0.5,
            "num_tokens": t} for i, c, t in zip(ids, ce, tokens)]
    total = sum(tokens)
    res = {"config": {"output_dir": str(folder)}, "label": folder.name,
           "eval": {"dolly": {"metric": "rougeL", "score": float(np.mean(rouge)), "prompt_ids": ids,
                              "per_prompt": {"10": rouge}, "num_prompts": len(ids),
                              "decoding_config": {"max_new_tokens": 8}, "per_seed": {"10": float(np.mean(rouge))},
                              "teacher_forced": {"student_ce": sum(c * t for c, t in zip(ce, tokens)) / total,
                                                 "per_prompt": per}}},
           "cost": cost or {}}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(res))


def test_rows_are_signed_in_the_claims_direction(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    tokens = rng.integers(5, 40, n).tolist()
    base_r, base_ce = rng.uniform(10, 30, n), rng.uniform(3, 6, n)
    # dakd: ROUGE-L +2 and CE -0.3 on every prompt against kd_kl; -0.1 ROUGE-L against dakd_full
    _fake_run(tmp_path / "kd_kl", base_r.tolist(), base_ce.tolist(), tokens)
    _fake_run(tmp_path / "dakd", (base_r + 2).tolist(), (base_ce - 0.3).tolist(), tokens)
    _fake_run(tmp_path / "dakd_full", (base_r + 2.1).tolist(), (base_ce - 0.3).tolist(), tokens)
    rows = claims.comparison_rows(tmp_path)
    by = {(tuple(r["runs"]), r["metric"]): r for r in rows}
    r = by[("dakd", "kd_kl"), "ROUGE-L"]
    assert r["ours"] == pytest.approx(2.0) and r["interval"] == pytest.approx([2.0, 2.0]) and r["verdict"] == "holds"
    r = by[("dakd", "kd_kl"), "teacher-forced student CE"]  # lower CE is better: +0.3 in the claim's direction
    assert r["ours"] == pytest.approx(0.3) and r["verdict"] == "holds" and r["num_prompts"] == n
    # with noise the interval has width: signing flips and reorders its ends
    noisy = (base_ce - 0.3 + rng.normal(0, 0.5, n)).tolist()
    _fake_run(tmp_path / "dakd_top", (base_r + rng.normal(0, 3, n)).tolist(), noisy, tokens)
    from dakd.compare import paired_difference

    r = next(r for r in claims.comparison_rows(tmp_path) if r["runs"] == ["dakd", "dakd_top"]
             and r["metric"] == "teacher-forced student CE")
    d = paired_difference(tmp_path / "dakd", tmp_path / "dakd_top", "dolly", "student_ce")
    assert d["low"] < d["high"] and r["ours"] == pytest.approx(-d["mean"])
    assert r["interval"] == pytest.approx([-d["high"], -d["low"]])
    w = np.array(tokens, float)
    assert r["ours"] == pytest.approx(-np.sum((base_ce - 0.3 - np.array(noisy)) * w) / w.sum())
    r = by[("dakd", "dakd_full"), "ROUGE-L"]  # 0.1 worse, within the 0.5 margin: matches
    assert r["ours"] == pytest.approx(-0.1) and r["kind"] == "matches" and r["verdict"] == "holds"
    assert r["means"]["dakd"] - r["means"]["dakd_full"] == pytest.approx(-0.1)
    # a missing run makes "not run" rows, never a verdict
    assert by[("dakd", "kd_rkl"), "ROUGE-L"]["verdict"] == "not run"
    assert all(r["verdict"] == "not run" for r in rows if "kd_rkl" in r["runs"])


def test_a_noisy_difference_cannot_be_told(tmp_path):
    rng = np.random.default_rng(1)
    n = 30
    a, b = rng.normal(20, 5, n), rng.normal(20, 5, n)  # independent: no real difference
    _fake_run(tmp_path / "dakd", a.tolist(), [4.0] * n, [10] * n)
    _fake_run(tmp_path / "dakd_random", b.tolist(), [4.0] * n, [10] * n)
    r = next(r for r in claims.comparison_rows(tmp_path, metrics=("rougeL",)) if r["runs"] == ["dakd", "dakd_random"])
    diff = a - b
    assert r["ours"] == pytest.approx(diff.mean())
    assert r["interval"][0] < 0 < r["interval"][1] and r["verdict"] == "cannot tell"


def test_cost_rows(tmp_path):
    cost = lambda total, dds=0.0, it=10: {"total_seconds": total, "dds_seconds": dds,
                                          "dds_share": dds / total, "iterations": it}
    _fake_run(tmp_path / "dakd", [1.0], [1.0], [1], cost(60.0, 6.0, 55))
    _fake_run(tmp_path / "dakd_full", [1.0], [1.0], [1], cost(100.0, 0.0, 100))
    _fake_run(tmp_path / "kd_kl", [1.0], [1.0], [1], cost(75.0, 0.0, 100))
    rows = {(r["metric"], tuple(r["runs"])): r for r in claims.cost_rows(tmp_path)}
    assert rows["iterations", ("dakd", "dakd_full")]["ours"] == pytest.approx(0.55)
    assert rows["iterations", ("dakd", "dakd_full")]["verdict"] == "holds"  # bound 0.60
    assert rows["wall-clock", ("dakd", "dakd_full")]["ours"] == pytest.approx(0.6)
    assert rows["wall-clock", ("dakd", "dakd_full")]["verdict"] == "holds"  # bound 0.65
    assert rows["wall-clock", ("dakd", "kd_kl")]["ours"] == pytest.approx(0.8)
    assert rows["wall-clock", ("dakd", "kd_kl")]["verdict"] == "does not hold"  # the paper's 0.76
    assert rows["DDS share", ("dakd",)]["ours"] == pytest.approx(0.1) and rows["DDS share", ("dakd",)]["verdict"] == "holds"
    assert rows["wall-clock", ("dakd_exact", "distillm")]["verdict"] == "not run"


def test_one_teacher_pass_gives_each_student_its_own_metrics(smol_tok):
    teacher = load_frozen(TINY_TEACHER)
    students = {"a": load_frozen(TINY_STUDENT), "b": load_frozen(build_tiny("tiny-student-claims", 1, seed=7)),
                "teacher": teacher}
    ex, _ = tf.set_examples("dolly", smol_tok, "chatml", 96, 160, limit=9)
    many = tf.teacher_forced_many(students, teacher, ex, smol_tok.pad_token_id, batch_size=4)
    assert list(many) == ["a", "b", "teacher"]
    for k, s in students.items():
        alone = tf.teacher_forced_metrics(s, teacher, ex, smol_tok.pad_token_id, batch_size=4)
        assert many[k] == alone, k  # the same batches and teacher logits: equal to the last bit
    assert many["teacher"]["forward_kl"] == 0.0 and many["teacher"]["top1_agreement"] == 1.0
    assert many["a"]["student_ce"] != many["b"]["student_ce"]
    with pytest.raises(ValueError, match="at least one student"):
        tf.teacher_forced_many({}, teacher, ex, smol_tok.pad_token_id)


def test_claims_preset_is_the_papers_regime_and_has_every_compared_run():
    runs = get_preset("cpu-claims")
    assert get_tables("cpu-claims") == {"claims": list(runs)}
    named = {r for c in claims.COMPARISONS for r in c[2:4]} | {r for c in claims.COSTS for r in c[3:5] if r}
    assert named <= set(runs)
    for name, cfg in runs.items():
        assert (cfg.epochs, cfg.schedule, cfg.tau, cfg.dataset) == (10, "cosine", 0.1, "dolly"), name
        assert cfg.lam == (float(name[len("dakd_lam"):]) if name.startswith("dakd_lam") else 0.9), name
        assert cfg.teacher_cache_k == (None if name in ("dakd_exact", "distillm") else 256), name
        assert cfg.student == "smollm2-student-l6" and not cfg.teacher_forced  # added after training, one pass
    # one decoding and one data subset for all: the runs are paired prompt by prompt
    keys = {(c.eval_samples, c.eval_seeds, c.max_new_tokens, c.train_samples, c.seed, c.max_length) for c in runs.values()}
    assert len(keys) == 1
    assert runs["dakd"].replace(teacher_cache_k=None, output_dir=runs["dakd_exact"].output_dir) == runs["dakd_exact"]
    tiny = get_preset("tiny-claims")
    assert list(tiny) == list(runs) and all(c.student == TINY_STUDENT for c in tiny.values())


@pytest.mark.slow
def test_the_study_on_the_tiny_pair_through_notebook_06(tmp_path):
    root, fig = tmp_path / "runs", tmp_path / "fig"
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        pm.execute_notebook(str(REPO / "notebooks" / "06_claims.ipynb"), str(tmp_path / "06.ipynb"),
                            parameters={"preset": "tiny-claims", "run_root": str(root), "figures_dir": str(fig)},
                            kernel_name="python3", cwd=str(REPO), progress_bar=False, log_output=False)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old
    rows = json.loads((fig / "claims.json").read_text())
    assert len(rows) == 2 * len(claims.COMPARISONS) + len(claims.COSTS)
    assert sorted({r["claim"] for r in rows}) == [1, 2, 3, 4, 5, 6, 7]
    for r in rows:
        assert {"claim", "paper", "ours", "interval", "verdict", "metric", "runs"} <= set(r)
        assert r["verdict"] in ("holds", "does not hold", "cannot tell")  # every run finished
        if r["kind"] != "cost":
            assert r["interval"][0] <= r["ours"] <= r["interval"][1]
    study = json.loads((fig / "study.json").read_text())
    assert set(study["topk_effect"]) == set(claims.METRICS) and study["total_minutes"] > 0
    assert (fig / "claims_forest.png").stat().st_size > 10_000
    # every run got its teacher-forced metrics from the shared pass, recorded as such
    for name, cfg in get_preset("tiny-claims", str(root)).items():
        tfm = json.loads(Path(cfg.output_dir, "results.json").read_text())["eval"]["dolly"]["teacher_forced"]
        assert name in tfm["computed_with"] and tfm["num_prompts"] > 0
    # resumed: a second study retrains nothing and recomputes nothing
    before = {p: p.stat().st_mtime_ns for p in root.glob("*/results.json")}
    log = []
    again = claims.run_study("tiny-claims", root, fig / "claims.json", log=log.append)
    assert again == rows and {p: p.stat().st_mtime_ns for p in root.glob("*/results.json")} == before
    assert not any("teacher-forced on" in line for line in log)


def test_readme_headline_table_is_the_committed_claims_table():
    committed = REPO / "figures" / "cpu-claims" / "claims.json"
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- claims:start -->\n")[1].split("\n<!-- claims:end -->")[0]
    assert block == claims.claims_markdown(json.loads(committed.read_text())), (
        "README's claims table differs from figures/cpu-claims/claims.json: "
        ".venv/bin/python tools/readme_tables.py cpu-claims prints it")
