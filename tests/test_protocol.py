"""Issue 13, "the protocol, airtight": decoding fully specified by dakd, one prompt encoding for
every path, DDS on the shared vocabulary with eps as a floor, and every input checked at config
construction. Each test is the regression test of one item, with its minimal input."""

import json
import math

import pytest
import torch

import dakd.config as C
import dakd.losses as L
from dakd.config import DistillConfig, run_metadata
from dakd.difficulty import difficulty_scores
from dakd.losses import get_per_token_loss


# ------------------------------------------------------------ item 5: eps is a floor, not added

@pytest.mark.parametrize("student, teacher, dds", [
    (1.1055, 0.0003, 3685.0),  # the paper's example (METHOD.md section 1): "DDS about 3685"
    (2.0, 0.5, 4.0),           # teacher CE far above eps: the plain ratio
    (1.0, 1.0, 1.0),           # both equally hard
])
def test_dds_is_the_exact_ratio_when_the_teacher_ce_is_above_eps(student, teacher, dds):
    got = difficulty_scores(torch.tensor([student]), torch.tensor([teacher]))  # default eps 1e-6
    assert got.item() == pytest.approx(dds, rel=1e-6)


def test_dds_floors_a_teacher_ce_below_eps_at_eps():
    s, t = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.0, 0.005, 0.02])
    got = difficulty_scores(s, t, eps=0.01)
    torch.testing.assert_close(got, torch.tensor([0.5 / 0.01, 0.5 / 0.01, 0.5 / 0.02]))


# ------------------------------------------------------------ item 7: losses without a signal

@pytest.mark.parametrize("kw, phrase", [
    (dict(method="dakd", lam=0.5), "lam 0.5"),
    (dict(method="kd", loss="bdl", lam=0.5), "lam 0.5"),
    (dict(method="gkd", beta=0.0), "beta 0"),
    (dict(method="gkd", beta=1.0), "beta 1"),
    (dict(method="distillm", alpha=1.0), "alpha 1"),
    (dict(method="kd", loss="skew_kl", alpha=1.0), "alpha 1"),
])
def test_config_refuses_a_loss_that_is_identically_zero(kw, phrase):
    with pytest.raises(ValueError, match=f"{phrase}.*exactly 0.*allow_degenerate_loss"):
        DistillConfig(**kw)
    # the opt-in runs it, and leaves the hash as the permission changes no result
    cfg = DistillConfig(**kw, allow_degenerate_loss=True)
    assert cfg.config_hash() == DistillConfig(**kw, allow_degenerate_loss=True,
                                              output_dir="elsewhere").config_hash()


@pytest.mark.parametrize("name, kw", [("bdl", dict(lam=0.5)), ("js_divergence", dict(beta=0.0)),
                                      ("js_divergence", dict(beta=1.0)), ("skew_kl", dict(alpha=1.0)),
                                      ("skew_reverse_kl", dict(alpha=1.0))])
def test_every_refused_loss_is_zero_on_random_logits(name, kw):
    # the reason given is true: the per-token loss is 0 on distributions that differ
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    assert L.degenerate_reason(name, **kw)
    assert get_per_token_loss(name)(s, t, None, **kw).abs().max().item() < 1e-6


def test_the_methods_own_settings_are_not_refused():
    for kw in (dict(), dict(lam=0.49), dict(lam=0.0), dict(lam=1.0), dict(method="gkd"),
               dict(method="distillm"), dict(method="sft", lam=0.5), dict(method="seqkd", lam=0.5)):
        DistillConfig(**kw)  # sft and seqkd ignore the loss: nothing to refuse


def test_lambda_sweep_opts_in_for_its_half_point_only(tmp_path):
    from dakd.presets import get_preset

    runs = get_preset("cpu-full", root=str(tmp_path))
    flagged = sorted(n for n, c in runs.items() if c.allow_degenerate_loss)
    assert flagged == ["dakd_lam0.5"]
    assert runs["dakd_lam0.5"].lam == 0.5


# ------------------------------------------------------------ item 8: dtype

def test_config_refuses_an_unknown_dtype_naming_the_field():
    with pytest.raises(ValueError, match=r"dtype must be one of .*'bogus'"):
        DistillConfig(dtype="bogus")
    for name in C.DTYPES:  # every accepted name is a torch dtype load_model can use
        assert isinstance(getattr(torch, name), torch.dtype)


# ------------------------------------------------------------ item 9: list-valued fields

def test_list_fields_given_as_text_are_parsed_at_construction():
    # what `papermill -p eval_datasets '["dolly", "vicuna"]'` passes
    cfg = DistillConfig(eval_datasets='["dolly", "vicuna"]', eval_seeds="[10, 20]")
    assert cfg.eval_datasets == ("dolly", "vicuna")
    assert cfg.eval_seeds == (10, 20)
    assert cfg.config_hash() == DistillConfig(eval_datasets=("dolly", "vicuna"), eval_seeds=(10, 20)).config_hash()
    assert DistillConfig(eval_datasets="vicuna").eval_datasets == ("vicuna",)  # one bare name
    assert DistillConfig(eval_seeds="[null]").eval_seeds == (None,)  # greedy


@pytest.mark.parametrize("kw, msg", [
    (dict(eval_datasets="[dolly, vicunaa]"), r"eval_datasets: unknown evaluation set\(s\) \['vicunaa'\]"),
    (dict(eval_datasets=("dolly", 3)), "eval_datasets must be a list of str"),
    (dict(eval_datasets=()), "eval_datasets must not be empty"),
    (dict(eval_seeds="[10, x]"), "eval_seeds must be a list of int"),
    (dict(eval_seeds=10), "eval_seeds must be a list of int"),
    (dict(eval_seeds=(10, 2.5)), "eval_seeds must be a list of int"),
])
def test_bad_list_fields_fail_at_construction_naming_the_field(kw, msg):
    with pytest.raises(ValueError, match=msg):
        DistillConfig(**kw)


# ------------------------------------------------------------ item 10: DA-KD with one epoch

def test_dakd_with_one_epoch_is_refused_as_plain_kd():
    with pytest.raises(ValueError, match=r"method 'dakd' with epochs=1 is plain KD"):
        DistillConfig(method="dakd", epochs=1)
    assert DistillConfig(method="kd", epochs=1).epochs == 1
    assert DistillConfig(method="dakd", epochs=2).epochs == 2


# ------------------------------------------------------------ item 12: hardware in config.json

def test_run_metadata_names_the_hardware():
    import os

    hw = run_metadata(DistillConfig())["hardware"]
    assert hw == C.hardware_info()
    assert hw["cpu_threads"] == os.cpu_count()
    assert hw["torch_threads"] == torch.get_num_threads()
    assert hw["gpu_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert len(hw["gpu_names"]) == hw["gpu_count"]
    assert hw["cuda_version"] == torch.version.cuda
    if hw["gpu_count"] == 0:
        assert hw["driver_version"] is None and hw["cudnn_version"] is None
    assert isinstance(hw["cpu_model"], str) and hw["cpu_model"]
    json.dumps(hw)  # written into config.json
