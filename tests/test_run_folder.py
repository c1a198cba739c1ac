"""What `dakd.pipeline.run` does to a run folder (issue 14): it never replaces a finished run of
another config unless told to (a papermill variant such as ``-p lam 0.7`` left at the preset's
``output_dir`` used to replace that run's train_log.json, config.json and student/), it reuses a
finished run of the same config, and it deletes the resume checkpoint once a run is finished unless
``keep_checkpoint``. Tiny random pair, 6 samples, 4 new tokens: a run takes a few seconds."""

import json
from pathlib import Path

import pytest

from dakd import pipeline
from dakd.config import DistillConfig
from dakd.models import TINY_STUDENT, TINY_TEACHER
from dakd.presets import get_preset


def _tiny(out, **kw) -> DistillConfig:
    base = dict(teacher=TINY_TEACHER, student=TINY_STUDENT, prompt_style="chatml", train_samples=6, epochs=2,
                batch_size=3, micro_batch_size=3, lr=1e-3, max_prompt_length=64, max_length=96, eval_samples=3,
                eval_seeds=(10,), max_new_tokens=4, eval_batch_size=3, save_checkpoints=True,
                method="dakd", output_dir=str(out))
    return DistillConfig(**(base | kw))


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_of_another_config_is_refused_and_left_untouched(tmp_path):
    first = _tiny(tmp_path / "dakd")
    pipeline.run(first)
    before = _snapshot(tmp_path / "dakd")
    variant = first.replace(lam=0.7)
    with pytest.raises(pipeline.RunExistsError) as err:
        pipeline.run(variant)
    msg = str(err.value)
    for part in (str(tmp_path / "dakd"), first.config_hash(), variant.config_hash(), "output_dir", "overwrite=True"):
        assert part in msg
    assert _snapshot(tmp_path / "dakd") == before


def test_overwrite_retrains_into_the_folder_and_keeps_the_old_results_aside(tmp_path):
    first = _tiny(tmp_path / "dakd")
    old = pipeline.run(first)
    variant = first.replace(lam=0.7)
    res = pipeline.run(variant, overwrite=True)
    assert res["config_hash"] == variant.config_hash() != first.config_hash()
    assert json.loads((tmp_path / "dakd" / "results.json").read_text())["config_hash"] == variant.config_hash()
    kept = json.loads((tmp_path / "dakd" / f"results.{first.config_hash()}.json").read_text())
    assert kept["config_hash"] == old["config_hash"] and kept["eval"] == json.loads(json.dumps(old["eval"]))


def test_a_finished_run_of_the_same_config_is_reused_not_refused(tmp_path, monkeypatch):
    cfg = _tiny(tmp_path / "dakd")
    done = pipeline.run(cfg)

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr(pipeline, "launch_training", no_training)
    # another output of the same settings (what is saved is outside the hash) is the same run
    again = pipeline.run(cfg.replace(keep_checkpoint=True, save_epoch_students=False))
    assert again["config_hash"] == done["config_hash"] and again["eval"] == json.loads(json.dumps(done["eval"]))


def test_the_checkpoint_is_deleted_once_the_run_is_finished(tmp_path):
    cfg = _tiny(tmp_path / "dakd")
    pipeline.run(cfg)
    out = tmp_path / "dakd"
    assert (out / "student").is_dir() and (out / "results.json").is_file()
    assert not (out / "checkpoint").exists() and not (out / "checkpoint.old").exists()


def test_keep_checkpoint_keeps_it(tmp_path):
    cfg = _tiny(tmp_path / "dakd", keep_checkpoint=True)
    pipeline.run(cfg)
    assert (tmp_path / "dakd" / "checkpoint" / "state.json").is_file()


def test_a_reused_run_loses_a_checkpoint_left_from_before(tmp_path):
    # runs finished before keep_checkpoint existed still carry theirs; reusing one deletes it
    cfg = _tiny(tmp_path / "dakd", keep_checkpoint=True)
    pipeline.run(cfg)
    pipeline.run(cfg.replace(keep_checkpoint=False))
    assert not (tmp_path / "dakd" / "checkpoint").exists()


def test_keep_checkpoint_leaves_the_config_hash_unchanged():
    # pinned: the hashes of the cpu and tiny presets' DA-KD runs before the field existed, so
    # finished runs stay reusable
    assert get_preset("cpu")["dakd"].config_hash() == "f14be87c6939"
    assert get_preset("tiny")["dakd"].config_hash() == "a1a26a449a29"
    cfg = get_preset("cpu")["dakd"]
    assert cfg.replace(keep_checkpoint=True).config_hash() == cfg.config_hash()
