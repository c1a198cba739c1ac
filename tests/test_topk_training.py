"""The opt-in top-k teacher cache in the training loop (`DistillConfig.teacher_cache_k`, issue 4,
target 3): at k = V it is the exact teacher, so training gives the exact run's weights; at a small k
it trains, records the cache in the log, keeps DDS's teacher CE exact, frees the
teacher, and on a cache hit (a file already built) trains without loading the teacher at all."""

import json
from pathlib import Path

import pytest
import torch

import dakd.models as M
import dakd.train as T
from dakd.config import DistillConfig
from dakd.presets import get_preset
from helpers import assert_same_weights, record_model_loads, weights

V = 49152  # the tiny pair's vocabulary (the real SmolLM2 tokenizer)


@pytest.fixture()
def topk_folder(tmp_path, monkeypatch):
    """The cache files go to a temporary folder, not the repository's model cache."""
    real = M.cache_dir
    folder = tmp_path / "cache"

    def fake():
        folder.mkdir(exist_ok=True)
        return folder
    monkeypatch.setattr(M, "cache_dir", fake)
    # model aliases still resolve in the real cache (built checkpoints live there)
    monkeypatch.setattr(M, "resolve_model", lambda name, _r=M.resolve_model: _with(real, _r, name))
    return folder


def _with(real, resolve, name):
    import dakd.models as mm
    saved = mm.cache_dir
    mm.cache_dir = real
    try:
        return resolve(name)
    finally:
        mm.cache_dir = saved


def _cfg(root, method, **kw):
    # 4 samples: a k = V cache stays ~50 MB
    return get_preset("tiny", root=str(root))[method].replace(
        train_samples=4, max_prompt_length=64, max_length=96, batch_size=2, micro_batch_size=2,
        output_dir=str(root / method), **kw)


def test_config_accepts_the_cache_for_kd_and_dakd_only():
    assert DistillConfig(method="kd", teacher_cache_k=16).teacher_cache_k == 16
    for bad in (dict(method="gkd", teacher_cache_k=16), dict(method="sft", teacher_cache_k=16),
                dict(method="kd", teacher_cache_k=0)):
        with pytest.raises(ValueError, match="teacher_cache_k"):
            DistillConfig(**bad)
    # the default (exact teacher) leaves every existing config hash as it was
    assert DistillConfig().config_hash() == DistillConfig(teacher_cache_k=None).config_hash()
    assert DistillConfig(teacher_cache_k=16).config_hash() != DistillConfig().config_hash()


def test_kd_with_a_full_vocabulary_cache_equals_the_exact_teacher(tmp_path, topk_folder):
    exact = _cfg(tmp_path / "exact", "kd_rkl")
    cached = _cfg(tmp_path / "cached", "kd_rkl", teacher_cache_k=V)
    T.train(exact)
    log = T.train(cached)
    assert log["num_samples"] >= 2 and log["cost"]["iterations"] >= 2
    assert log["teacher_cache"]["k"] == V and not log["teacher_cache"]["from_cache"]
    assert Path(log["teacher_cache"]["path"]).parent == topk_folder / "topk"
    assert_same_weights(weights(Path(exact.output_dir) / "student"), weights(Path(cached.output_dir) / "student"),
                        atol=1e-5)


def test_dakd_with_a_small_cache_trains_with_the_exact_teacher_ce(tmp_path, topk_folder):
    exact = _cfg(tmp_path / "exact", "dakd")
    cached = _cfg(tmp_path / "cached", "dakd", teacher_cache_k=16)
    T.train(exact)
    log = T.train(cached)
    assert log["cost"]["iterations"] == json.loads((Path(exact.output_dir) / "train_log.json").read_text())["cost"]["iterations"]
    assert all(torch.isfinite(torch.tensor(e["mean_loss"])) for e in log["epochs"])
    # DDS's teacher CE is the exact one stored when the cache was built, not a top-k estimate
    torch.testing.assert_close(log["epochs"][1]["teacher_ce"],
                               json.loads((Path(exact.output_dir) / "train_log.json").read_text())["epochs"][1]["teacher_ce"],
                               rtol=1e-5, atol=1e-6)
    # a second run (another method of the same preset) reads the same file
    again = T.train(cached.replace(output_dir=str(tmp_path / "cached2"), loss="reverse_kl"))
    assert again["teacher_cache"]["from_cache"] and again["teacher_cache"]["path"] == log["teacher_cache"]["path"]
    assert log["teacher_cache"]["teacher_loaded"] and not again["teacher_cache"]["teacher_loaded"]


def test_the_teacher_head_rows_come_from_its_config_by_alias_or_folder():
    # no weights loaded: the alias (built in the model cache) and its local folder give the same V
    assert M.head_rows(M.TINY_TEACHER) == M.head_rows(M.resolve_model(M.TINY_TEACHER)) == V
    tok = M.load_tokenizer(M.TINY_TEACHER)
    assert M.check_pair(tok, tok, V, M.head_rows(M.TINY_STUDENT)) == V
    with pytest.raises(ValueError, match="rows"):
        M.check_pair(tok, tok, V - 1)


def test_a_cache_hit_trains_without_loading_the_teacher(tmp_path, topk_folder, monkeypatch):
    loaded = record_model_loads(monkeypatch, T)
    cfg = _cfg(tmp_path / "miss", "kd_rkl", teacher_cache_k=16)
    miss = T.train(cfg)  # no file yet: the teacher is loaded, builds the cache, is freed
    assert cfg.teacher in loaded and cfg.student in loaded
    assert not miss["teacher_cache"]["from_cache"] and miss["teacher_cache"]["teacher_loaded"]
    loaded.clear()
    hit = T.train(cfg.replace(output_dir=str(tmp_path / "hit")))  # the same run on the built file
    assert cfg.teacher not in loaded and cfg.student in loaded
    assert hit["teacher_cache"]["from_cache"] and not hit["teacher_cache"]["teacher_loaded"]
    assert hit["teacher_cache"]["path"] == miss["teacher_cache"]["path"]
    # the teacher was only ever read through the cache: the same steps, losses and weights, exactly
    assert [e["mean_loss"] for e in hit["epochs"]] == [e["mean_loss"] for e in miss["epochs"]]
    assert_same_weights(weights(Path(cfg.output_dir) / "student"), weights(tmp_path / "hit" / "student"))


def test_a_run_with_no_sample_left_after_filtering_names_the_limits(tmp_path):
    # regression: every prompt over max_prompt_length used to reach DiffUp as "scores must be non-empty"
    cfg = _cfg(tmp_path, "dakd").replace(max_prompt_length=8, max_length=16)
    with pytest.raises(ValueError, match="no training sample .* max_prompt_length \\(8\\)"):
        T.train(cfg)
