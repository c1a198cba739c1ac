"""Methods, losses and selection rules as declarations (`dakd.methods`, `dakd.losses.register_loss`,
`dakd.updater.register_selection`): the worked examples of the README's "change it" section, each
trained for real on the tiny pair.

To add a loss: one `register_loss` line (plain autograd is enough). To add a selection rule: one
`register_selection` line. To add a method: one `register_method` line naming its selector,
source and objective; DiffUp with on-policy responses below is the example."""

import math

import pytest
import torch
import torch.nn.functional as F

import dakd.train as T
from dakd.config import DistillConfig
from dakd.losses import LOSS_SPECS, register_loss, unregister_loss
from dakd.methods import METHODS, Method, register_method, run_label, unregister_method
from dakd.presets import get_preset
from dakd.updater import SELECTION_MODES, SelectionMode, register_selection, selection_ratio, subset_size


def _tiny(tmp_path, **kw):
    return get_preset("tiny", root=str(tmp_path))["dakd"].replace(
        train_samples=12, epochs=2, batch_size=3, micro_batch_size=2, save_checkpoints=False,
        output_dir=str(tmp_path / "run"), **kw)


def squared_prob_per_token(student_logits, teacher_logits, mask=None):
    """0.5 * sum_v (p_v - q_v)^2 per token: a toy loss in plain autograd ([B, T, V] -> [B, T])."""
    p = F.softmax(teacher_logits.float(), -1)
    q = F.softmax(student_logits.float(), -1)
    tok = 0.5 * ((p - q) ** 2).sum(-1)
    return tok if mask is None else tok * mask


@pytest.fixture
def toy_loss():
    register_loss("squared_prob", squared_prob_per_token, label="SQ", aliases=("sq",))
    yield
    unregister_loss("squared_prob")


def test_a_registered_plain_autograd_loss_trains_and_labels_its_run(tmp_path, toy_loss):
    cfg = _tiny(tmp_path, method="kd", loss="sq")
    assert cfg.loss == "sq" and run_label(cfg) == "KD-SQ"
    from dakd.models import load_model
    before = {k: v.clone() for k, v in load_model(cfg.student).state_dict().items()}
    log = T.train(cfg)
    after = load_model(f"{cfg.output_dir}/student").state_dict()
    assert log["cost"]["iterations"] == sum(math.ceil(e["subset_size"] / 3) for e in log["epochs"]) > 0
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 0
    # the loop's per-token value is the registered function's, at the response rows
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    want = 0.5 * ((t.softmax(-1) - s.softmax(-1)) ** 2).sum(-1)
    torch.testing.assert_close(LOSS_SPECS["squared_prob"].per_token(s, t, None), want)


def test_registering_a_taken_loss_name_or_an_unknown_weight_field_is_refused(toy_loss):
    with pytest.raises(ValueError, match="already registered"):
        register_loss("kl", squared_prob_per_token, label="X")
    with pytest.raises(ValueError, match="weight must be"):
        register_loss("toy2", squared_prob_per_token, label="X", weight="temperature")


@pytest.fixture
def on_policy_diffup():
    register_method(Method("dakd_on_policy", "DA-KD (on-policy)", selector="diffup", source="on_policy",
                           fields=("loss", "lam", "student_data_fraction", "gen_max_new_tokens",
                                   "gen_temperature", "schedule", "tau", "selection", "dds_eps")))
    yield
    unregister_method("dakd_on_policy")


def test_diffup_with_on_policy_responses_is_one_declaration(tmp_path, on_policy_diffup):
    cfg = _tiny(tmp_path, method="dakd_on_policy", student_data_fraction=1.0, gen_max_new_tokens=4)
    assert run_label(cfg) == "DA-KD (on-policy)"
    log = T.train(cfg)
    e0, e1 = log["epochs"]
    n = log["num_samples"]
    # DiffUp: all of D at epoch 0, then round(r(1) N) samples chosen by DDS
    assert e0["subset_size"] == n and e1["subset_size"] == subset_size(selection_ratio(1, 2), n)
    assert len(e1["dds_by_sample"]) == n and e1["n_high"] + e1["n_low"] == e1["subset_size"]
    # on-policy: every global batch's responses were sampled by the student (fraction 1)
    assert [e["generated_batches"] for e in log["epochs"]] == [e["steps"] for e in log["epochs"]]
    assert log["cost"]["generation_seconds"] > 0


def test_an_unknown_part_or_a_taken_method_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method("kd", "KD"))
    with pytest.raises(ValueError, match="selector of method 'x' must be one of"):
        register_method(Method("x", "X", selector="hardest_first"))
    with pytest.raises(ValueError, match="method must be one of"):
        DistillConfig(method="not_a_method")


@pytest.fixture
def bottom_rule():
    register_selection(SelectionMode("bottom", "easiest", True, True,
                                     lambda high, low, k, n, tau, g: torch.cat([high, low])[-k:]))
    yield
    SELECTION_MODES.pop("bottom")


def test_a_registered_selection_rule_picks_the_subset_and_labels_the_run(tmp_path, bottom_rule):
    cfg = _tiny(tmp_path, selection="bottom")
    assert run_label(cfg) == "DA-KD (easiest)"
    log = T.train(cfg)
    e1 = log["epochs"][1]
    dds = {int(k): v for k, v in e1["dds_by_sample"].items()}
    lowest = sorted(dds, key=dds.get)[:e1["subset_size"]]
    assert set(e1["subset_ids"]) == set(lowest)


def test_every_declared_method_validates_and_has_a_row_name():
    for name, m in METHODS.items():
        cfg = DistillConfig(method=name)
        assert run_label(cfg)
        assert cfg.loss in (m.losses or (cfg.loss,))
    assert list(METHODS) == ["teacher", "sft", "kd", "seqkd", "gkd", "distillm", "dakd"]
