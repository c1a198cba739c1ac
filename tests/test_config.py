"""Tests for dakd.config, dakd.presets and dakd.pipeline: validation, hashing, presets, reuse."""

import json

import pytest

from dakd import pipeline
from dakd.config import DistillConfig, run_metadata
from dakd.models import DEFAULT_STUDENT, DEFAULT_TEACHER
from dakd.pipeline import load_complete, method_label
from dakd.presets import get_preset


# ---------------------------------------------------------------- DistillConfig

@pytest.mark.parametrize("kw, field", [
    ({"method": "distill"}, "method"),
    ({"lam": 1.5}, "lam"),
    ({"lam": -0.1}, "lam"),
    ({"tau": 1.01}, "tau"),
    ({"alpha": -1e-9}, "alpha"),
    ({"max_prompt_length": 512, "max_length": 512}, "max_prompt_length"),
    ({"max_prompt_length": 600, "max_length": 512}, "max_prompt_length"),
    ({"epochs": 0}, "epochs"),
    ({"micro_batch_size": 0}, "micro_batch_size"),
    ({"method": "gkd", "beta": 1.5}, "beta"),
    ({"student_data_fraction": -0.1}, "student_data_fraction"),
    ({"student_data_fraction": float("nan")}, "student_data_fraction"),
    ({"gen_max_new_tokens": 0}, "gen_max_new_tokens"),
    ({"gen_temperature": 0.0}, "gen_temperature"),
    ({"gen_temperature": float("inf")}, "gen_temperature"),
    ({"sgo_init_prob": 1.2}, "sgo_init_prob"),
    ({"sgo_prob_step": -0.1}, "sgo_prob_step"),
    ({"sgo_max_prob": 2.0}, "sgo_max_prob"),
    ({"sgo_init_prob": 0.5, "sgo_max_prob": 0.4}, "sgo_init_prob"),
    ({"sgo_loss_eps": -0.01}, "sgo_loss_eps"),
    ({"replay_buffer_size": 0}, "replay_buffer_size"),
    ({"sgo_val_samples": 0}, "sgo_val_samples"),
    ({"method": "gkd", "loss": "forward_kl"}, "loss of method 'gkd'"),
    ({"method": "distillm", "loss": "reverse_kl"}, "loss of method 'distillm'"),
    ({"dataset": "vicuna"}, "dataset"),
])
def test_config_rejects_invalid_fields(kw, field):
    with pytest.raises(ValueError, match=field):
        DistillConfig(**kw)


def test_config_accepts_lam_at_both_ends():
    assert DistillConfig(lam=0.0).lam == 0.0
    assert DistillConfig(lam=1.0).lam == 1.0


def test_replace_validates_too():
    with pytest.raises(ValueError, match="lam"):
        DistillConfig().replace(lam=2.0)


def test_config_hash_ignores_output_dir_but_not_results_settings():
    a = DistillConfig()
    assert a.config_hash() == a.replace(output_dir="elsewhere", save_checkpoints=False).config_hash()
    assert len(a.config_hash()) == 12
    assert a.config_hash() != a.replace(lam=0.8).config_hash()
    assert a.config_hash() != a.replace(seed=1).config_hash()
    assert a.config_hash() != a.replace(eval_seeds=(10,)).config_hash()


def test_baseline_methods_resolve_their_loss():
    # the default loss "bdl" stands for the method's own; DistiLLM's other variant is selectable
    assert DistillConfig(method="gkd").loss == "js_divergence"
    assert DistillConfig(method="distillm").loss == "skew_reverse_kl"
    assert DistillConfig(method="distillm", loss="skl").loss == "skl"
    assert DistillConfig(method="seqkd").loss == "bdl"  # ignored: SeqKD trains with cross-entropy
    for method in ("seqkd", "gkd", "distillm"):
        assert DistillConfig(method=method, dataset="gsm8k").dataset == "gsm8k"


def test_new_fields_change_the_hash_only_when_set():
    a = DistillConfig()
    # the hash a default config had before the baseline fields existed (commit e892047)
    assert a.config_hash() == "6a87ee9a595d"
    changed = {"beta": 0.3, "student_data_fraction": 0.9, "gen_max_new_tokens": 128, "gen_temperature": 0.8,
               "sgo_init_prob": 0.1, "sgo_prob_step": 0.2, "sgo_loss_eps": 0.2, "sgo_max_prob": 0.5,
               "replay_buffer_size": 10, "sgo_val_samples": 5, "method": "gkd", "dataset": "samsum"}
    hashes = {a.replace(**{k: v}).config_hash() for k, v in changed.items()}
    assert len(hashes) == len(changed) and a.config_hash() not in hashes
    assert a.replace(save_epoch_students=True).config_hash() == a.config_hash()


def test_from_dict_rejects_unknown_fields():
    d = DistillConfig().to_dict() | {"lamda": 0.9}
    with pytest.raises(ValueError, match="lamda"):
        DistillConfig.from_dict(d)


def test_config_round_trips_through_json():
    a = DistillConfig(method="kd", loss="reverse_kl", lam=0.3, eval_datasets=["dolly", "vicuna"],
                      eval_seeds=[1, 2], train_samples=10, output_dir="x/y")
    assert a.eval_datasets == ("dolly", "vicuna") and a.eval_seeds == (1, 2)  # lists become tuples
    b = DistillConfig.from_dict(json.loads(json.dumps(a.to_dict())))
    assert b == a
    assert b.config_hash() == a.config_hash()


def test_run_metadata_carries_config_hash_and_versions():
    import torch
    cfg = DistillConfig(lam=0.7)
    meta = run_metadata(cfg)
    assert meta["config"] == cfg.to_dict()
    assert meta["config_hash"] == cfg.config_hash()
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["transformers"] is not None


# ---------------------------------------------------------------- presets and labels

def test_cpu_preset_has_the_method_table_rows():
    runs = get_preset("cpu", root="r")
    assert list(runs) == ["teacher", "sft", "kd_kl", "kd_rkl", "dakd"]
    assert [(c.method, c.loss) for c in runs.values()] == [
        ("teacher", "bdl"), ("sft", "bdl"), ("kd", "forward_kl"), ("kd", "reverse_kl"), ("dakd", "bdl")]
    for name, c in runs.items():
        assert c.output_dir == f"r/{name}"
        assert (c.teacher, c.student) == (DEFAULT_TEACHER, DEFAULT_STUDENT)
    assert runs["dakd"].lam == 0.9 and runs["dakd"].tau == 0.1 and runs["dakd"].selection == "dds"
    # the rows differ only by method and loss: one shared base
    base = {k: v for k, v in runs["sft"].to_dict().items() if k not in ("method", "loss", "output_dir")}
    for c in runs.values():
        assert {k: v for k, v in c.to_dict().items() if k not in ("method", "loss", "output_dir")} == base
    assert get_preset("cpu")["sft"].output_dir == "runs/cpu/sft"


def test_unknown_preset_raises_and_lists_the_known_ones():
    with pytest.raises(ValueError, match="cpu"):
        get_preset("paper-70b")


@pytest.mark.parametrize("run, label", [
    ("teacher", "Teacher"), ("sft", "SFT"), ("kd_kl", "KD-KL"), ("kd_rkl", "KD-RKL"), ("dakd", "DA-KD")])
def test_method_label_names_the_table_rows(run, label):
    assert method_label(get_preset("cpu")[run]) == label


def test_method_label_marks_ablations():
    c = get_preset("cpu")["dakd"]
    # Table 4 / Table 5 names (pipeline.SELECTION_LABELS, LOSS_LABELS)
    assert method_label(c.replace(selection="random")) == "DA-KD (w/o DDS)"
    assert method_label(c.replace(loss="forward_kl")) == "DA-KD (KL)"


# ---------------------------------------------------------------- pipeline.run

def test_pipeline_run_writes_results_and_reuses_them(tmp_path, monkeypatch):
    cfg = get_preset("tiny", root=str(tmp_path))["sft"].replace(train_samples=8, epochs=1)
    res = pipeline.run(cfg)
    path = tmp_path / "sft" / "results.json"
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert on_disk["config_hash"] == cfg.config_hash() and on_disk["label"] == "SFT"
    ev = on_disk["eval"]["dolly"]
    # the first eval_samples test prompts, less those over max_prompt_length (counted)
    assert ev["filter"]["loaded"] == cfg.eval_samples
    assert ev["num_prompts"] == ev["filter"]["kept"] == cfg.eval_samples - ev["filter"]["prompt_too_long"] > 0
    assert list(ev["per_seed"]) == ["10"]
    assert 0.0 <= ev["rougeL"] <= 100.0
    n = on_disk["num_samples"]
    assert n == on_disk["filter"]["kept"] > 0
    assert on_disk["cost"]["iterations"] == -(-n // cfg.batch_size)  # one epoch of ceil(N / batch)

    def no_training(*a, **k):
        raise AssertionError("a complete run was trained again")
    monkeypatch.setattr(pipeline, "launch_training", no_training)
    assert pipeline.run(cfg) == on_disk
    # another config hash in the same folder is not complete
    assert load_complete(cfg.replace(lr=cfg.lr * 2)) is None
    with pytest.raises(AssertionError, match="trained again"):
        pipeline.run(cfg.replace(lr=cfg.lr * 2), overwrite=True)


@pytest.mark.parametrize("field,value", [("loss", "klx"), ("selection", "dds2"), ("schedule", "cos"),
                                         ("prompt_style", "vicuna")])
def test_config_rejects_unknown_names_at_construction(field, value):
    # regression: a typo in `selection` used to fail only at epoch 1, after a full epoch of training
    with pytest.raises(ValueError, match=field if field != "loss" else "unknown"):
        DistillConfig(**{field: value})
