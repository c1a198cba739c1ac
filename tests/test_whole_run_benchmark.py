"""The whole-run benchmark's bookkeeping (`benchmarks/whole_run.py`): what it pairs and what it leaves
behind. No timing is asserted (benchmarks print ratios; tests check the logic)."""

import importlib.util
import json
import tempfile
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _whole_run():
    spec = importlib.util.spec_from_file_location("whole_run_bench", ROOT / "benchmarks" / "whole_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results(folder: Path, per_prompt: dict, prompt_ids=None, extra_sets=None) -> Path:
    folder.mkdir(parents=True)
    means = [sum(v) / len(v) for v in per_prompt.values()]
    ev = {"rougeL": sum(means) / len(means), "per_prompt": per_prompt}
    if prompt_ids is not None:
        ev["prompt_ids"] = prompt_ids
    d = {"config": {}, "cost": {"iterations": 1, "total_seconds": 1.0}, "seconds": {"train": 1.0},
         "eval": {"dolly": ev} | (extra_sets or {})}
    (folder / "results.json").write_text(json.dumps(d))
    return folder


def test_paired_difference_uses_every_seed_not_only_the_first(tmp_path):
    # regression: only the first seed's scores were paired, so ROUGE-L 20 vs 10 gave a difference of 0
    wr = _whole_run()
    a, _ = wr.read_run(_results(tmp_path / "a", {"10": [10.0, 10.0], "20": [30.0, 30.0]}))
    b, _ = wr.read_run(_results(tmp_path / "b", {"10": [10.0, 10.0], "20": [10.0, 10.0]}))
    mean, lo, hi, n = wr.paired_difference(a, b)
    assert mean == pytest.approx(a["rouge"]["dolly"] - b["rouge"]["dolly"]) == pytest.approx(10.0)
    assert n == 2 and lo == hi == pytest.approx(10.0)  # every prompt differs by the same 10


def test_paired_difference_pairs_prompts_by_id_and_skips_accuracy_sets(tmp_path):
    wr = _whole_run()
    gsm = {"gsm8k": {"accuracy": 50.0, "per_prompt": {"10": [100.0, 0.0]}}}
    a, _ = wr.read_run(_results(tmp_path / "a", {"10": [1.0, 5.0]}, prompt_ids=[3, 7], extra_sets=gsm))
    b, _ = wr.read_run(_results(tmp_path / "b", {"10": [5.0, 1.0, 9.0]}, prompt_ids=[7, 3, 9]))
    assert set(a["rouge"]) == {"dolly"}  # accuracy is not pooled into a ROUGE-L difference
    mean, _, _, n = wr.paired_difference(a, b)
    assert n == 2 and mean == pytest.approx(0.0)  # prompt 3: 1 - 1, prompt 7: 5 - 5


def test_train_variants_removes_its_temporary_cache_and_restores_the_environment(tmp_path, monkeypatch):
    # regression: every run left a whole_run_cache_* folder (with a 17 MB top-k file) behind
    import dakd.pipeline

    wr = _whole_run()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("DAKD_CACHE_DIR", str(tmp_path / "user_cache"))
    seen = []
    monkeypatch.setattr(dakd.pipeline, "run", lambda cfg, force=False: seen.append(
        (cfg.teacher_cache_k, __import__("os").environ.get("DAKD_CACHE_DIR"))))
    wr.train_variants(Namespace(threads=None, quick=True, out=str(tmp_path / "out"), variants=["full", "dakd_topk"],
                                eval_sets=None))
    assert not list(tmp_path.glob("whole_run_cache_*"))
    assert seen[0] == (None, str(tmp_path / "user_cache"))  # the exact run uses the user's cache
    assert seen[1][0] == 256 and "whole_run_cache_" in seen[1][1]  # the cached run a fresh one
    assert __import__("os").environ["DAKD_CACHE_DIR"] == str(tmp_path / "user_cache")
