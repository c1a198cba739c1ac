"""Tests for dakd.train on the tiny random pair: the JSON records of a DA-KD run, Algorithm 1's
subset sizes, the cost record, the free teacher CE of epoch 0, determinism, resume, and the
token-count normalisation of gradient accumulation."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dakd.train as T
from dakd import data as D
from dakd.difficulty import score_dataset
from dakd.models import TINY_STUDENT, TINY_TEACHER, load_model, load_tokenizer
from dakd.presets import get_preset
from dakd.updater import dds_quantiles, selection_ratio, subset_size
from helpers import assert_same_weights, record_model_loads, weights, wrap_objectives


def _dakd_cfg(root, **kw):
    # tiny preset: 24 Dolly records (17 kept), 2 epochs, batch 4 in micro-batches of 2
    return get_preset("tiny", root=str(root))["dakd"].replace(save_checkpoints=True, **kw)




def _examples(cfg, tok):
    records = D.load_split(cfg.dataset, "train", limit=cfg.train_samples, seed=cfg.seed)
    return D.tokenize_records(records, tok, cfg.prompt_style, cfg.max_prompt_length, cfg.max_length)[0]


@pytest.fixture(scope="module")
def dakd_run(tmp_path_factory):
    """One uninterrupted two-epoch DA-KD run on the tiny pair: (config, returned log)."""
    cfg = _dakd_cfg(tmp_path_factory.mktemp("dakd_run"))
    return cfg, T.train(cfg)


# ---------------------------------------------------------------- the records of one DA-KD run

def test_config_json_has_config_hash_and_versions(dakd_run):
    from dakd.config import DistillConfig
    cfg, _ = dakd_run
    meta = json.loads((Path(cfg.output_dir) / "config.json").read_text())
    assert meta["config_hash"] == cfg.config_hash()
    assert DistillConfig.from_dict(meta["config"]) == cfg
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["num_processes"] == 1


def test_train_log_follows_algorithm_1(dakd_run):
    cfg, ret = dakd_run
    log = json.loads((Path(cfg.output_dir) / "train_log.json").read_text())
    assert log == json.loads(json.dumps(ret, default=str))
    n = log["num_samples"]
    f = log["filter"]
    assert f["loaded"] == cfg.train_samples
    assert f["kept"] == f["loaded"] - f["dropped"] == n > 0
    assert f["dropped"] == f["empty_response"] + f["prompt_too_long"] + f["response_truncated_away"]

    e0, e1 = log["epochs"]
    assert [e0["epoch"], e1["epoch"]] == [0, 1]
    assert e0["ratio"] == 1.0 and e0["subset_size"] == n and len(set(e0["subset_ids"])) == n
    k = subset_size(selection_ratio(1, 2), n)
    assert e1["ratio"] == pytest.approx(0.5)
    assert e1["subset_size"] == k == len(set(e1["subset_ids"]))
    assert set(e1["subset_ids"]) <= set(e0["subset_ids"])
    # Algorithm 1: round(tau * k) from D_low (half up), the rest from D_high
    n_low = min(math.floor(cfg.tau * k + 0.5), n - k)
    assert (e1["n_high"], e1["n_low"]) == (k - n_low, n_low)
    q = e1["dds"]
    vals = [q[f"q{p}"] for p in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)]
    assert all(math.isfinite(v) and v > 0 for v in vals + [q["mean"]])
    assert vals == sorted(vals)
    assert q["q0.0"] <= e1["dds_threshold"] <= q["q1.0"]

    steps = [math.ceil(s / cfg.batch_size) for s in (e0["subset_size"], e1["subset_size"])]
    assert [e0["steps"], e1["steps"]] == steps
    assert log["cost"]["iterations"] == sum(steps) == log["planned_iterations"]
    assert all(math.isfinite(e["mean_loss"]) and e["mean_loss"] > 0 for e in (e0, e1))
    cost = log["cost"]
    assert cost["total_seconds"] == pytest.approx(cost["dds_seconds"] + cost["train_seconds"])


def test_tokens_seen_match_an_independent_count(dakd_run, smol_tok):
    cfg, log = dakd_run
    by_id = {e["sample_id"]: e for e in _examples(cfg, smol_tok)}
    assert len(by_id) == log["num_samples"]
    ids = [i for e in log["epochs"] for i in e["subset_ids"]]
    assert log["cost"]["tokens_seen"] == sum(len(by_id[i]["input_ids"]) for i in ids)
    assert log["cost"]["response_tokens_seen"] == sum(
        len(by_id[i]["input_ids"]) - by_id[i]["prompt_length"] for i in ids)


def test_student_weights_changed(dakd_run):
    cfg, _ = dakd_run
    before, after = weights(TINY_STUDENT), weights(Path(cfg.output_dir) / "student")
    assert before.keys() == after.keys()
    moved = max((after[k] - before[k]).abs().max().item() for k in before)
    assert moved > 1e-4  # Adam at lr 1e-3 moves weights by ~lr per step
    # the saved folder is loadable as a model with its tokenizer
    assert len(load_tokenizer(Path(cfg.output_dir) / "student")) == 49152


def test_epoch0_teacher_ce_equals_a_separate_teacher_pass(dakd_run, smol_tok):
    cfg, log = dakd_run
    saved = torch.load(Path(cfg.output_dir) / "teacher_ce.pt", weights_only=True)
    examples = _examples(cfg, smol_tok)
    want = score_dataset(load_model(TINY_TEACHER), examples, smol_tok.pad_token_id, batch_size=3)
    assert saved.shape == (len(examples),)
    torch.testing.assert_close(saved, want, atol=1e-4, rtol=0)
    # and epoch 1's DDS used exactly these values
    assert log["epochs"][1]["teacher_ce"] == pytest.approx(dds_quantiles(saved), rel=1e-6)


# ---------------------------------------------------------------- other methods

def test_sft_never_loads_the_teacher(tmp_path, monkeypatch):
    loaded = record_model_loads(monkeypatch, T)
    monkeypatch.setattr(T, "load_tokenizer", lambda name, *a, **k: (
        loaded.append("tok:" + str(name)), load_tokenizer(name, *a, **k))[1])
    cfg = get_preset("tiny", root=str(tmp_path))["sft"].replace(train_samples=8, epochs=1)
    log = T.train(cfg)
    assert loaded == [f"tok:{TINY_STUDENT}", TINY_STUDENT]
    assert log["epochs"][0]["subset_size"] == log["num_samples"]
    assert not (tmp_path / "sft" / "teacher_ce.pt").exists()


def test_kd_forward_kl_trains_on_all_data_every_epoch(tmp_path):
    cfg = get_preset("tiny", root=str(tmp_path))["kd_kl"].replace(train_samples=12)
    log = T.train(cfg)
    n = log["num_samples"]
    assert [e["subset_size"] for e in log["epochs"]] == [n, n]
    assert all("dds" not in e for e in log["epochs"])
    # forward KL between two random models over 49,152 tokens: positive, and far below log V
    assert all(0 < e["mean_loss"] < math.log(49152) for e in log["epochs"])
    assert log["cost"]["iterations"] == 2 * math.ceil(n / cfg.batch_size)


def test_same_seed_gives_identical_subsets_and_weights(dakd_run, tmp_path):
    cfg, log = dakd_run
    log2 = T.train(cfg.replace(output_dir=str(tmp_path / "again")))
    assert [e["subset_ids"] for e in log2["epochs"]] == [e["subset_ids"] for e in log["epochs"]]
    assert_same_weights(weights(tmp_path / "again" / "student"), weights(Path(cfg.output_dir) / "student"))


# ---------------------------------------------------------------- batching

def test_length_grouped_yields_every_index_once_in_small_batches():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 300, (103,), generator=g).tolist()
    order = torch.randperm(103, generator=g).tolist()
    batches = T.length_grouped(order, lengths, 4, torch.Generator().manual_seed(1), group=5)
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert all(1 <= len(b) <= 4 for b in batches)
    assert len(batches) == math.ceil(103 / 4)
    # within a mega-batch samples are sorted by length: batches are length-homogeneous
    assert all(lengths[b[0]] >= lengths[b[-1]] for b in batches)
    again = T.length_grouped(order, lengths, 4, torch.Generator().manual_seed(1), group=5)
    assert again == batches
    other = T.length_grouped(order, lengths, 4, torch.Generator().manual_seed(2), group=5)
    assert other != batches and sorted(map(sorted, other)) == sorted(map(sorted, batches))


def test_epoch_plan_matches_selection_ratio():
    cfg = get_preset("tiny")["dakd"].replace(epochs=10)
    assert T.epoch_plan(cfg, 100) == [subset_size(selection_ratio(e, 10), 100) for e in range(10)]
    assert T.epoch_plan(cfg.replace(selection="full"), 100) == [100] * 10
    assert T.epoch_plan(cfg.replace(method="kd"), 100) == [100] * 10


# ---------------------------------------------------------------- resume

class _Interrupted(Exception):
    pass


def test_resume_after_interruption_matches_an_uninterrupted_run(dakd_run, tmp_path, monkeypatch):
    ref_cfg, ref = dakd_run
    cfg = ref_cfg.replace(output_dir=str(tmp_path / "resumed"))
    real = T.save_checkpoint

    def save_then_die(*a, **k):
        real(*a, **k)
        raise _Interrupted  # killed right after epoch 0's checkpoint is on disk
    monkeypatch.setattr(T, "save_checkpoint", save_then_die)
    with pytest.raises(_Interrupted):
        T.train(cfg)
    monkeypatch.setattr(T, "save_checkpoint", real)
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert len(state["epochs"]) == 1
    assert not (tmp_path / "resumed" / "train_log.json").exists()

    log = T.train(cfg, resume=True)
    assert [e["subset_ids"] for e in log["epochs"]] == [e["subset_ids"] for e in ref["epochs"]]
    assert log["cost"]["iterations"] == ref["cost"]["iterations"]
    assert log["cost"]["tokens_seen"] == ref["cost"]["tokens_seen"]
    assert_same_weights(weights(tmp_path / "resumed" / "student"),
                         weights(Path(ref_cfg.output_dir) / "student"), atol=1e-6)


# ---------------------------------------------------------------- gradient accumulation

def test_micro_batching_does_not_change_the_step(tmp_path, monkeypatch, smol_tok):
    # Adam's first step is ~lr * sign(grad), blind to how the gradient is scaled; plain SGD at lr 1
    # without clipping makes the step equal to minus the gradient, so the loss normalisation
    # (sum over the global batch / its response-token count) is visible in the weights
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr))
    base = get_preset("tiny", root=str(tmp_path))["sft"].replace(
        train_samples=8, epochs=1, batch_size=8, lr=1.0, max_grad_norm=1e9)
    runs = {}
    for mb in (1, 4):
        log = T.train(base.replace(micro_batch_size=mb, output_dir=str(tmp_path / f"mb{mb}")))
        assert log["cost"]["iterations"] == 1  # the whole data set (6 samples) is one global batch
        runs[mb] = weights(tmp_path / f"mb{mb}" / "student")
    assert_same_weights(runs[1], runs[4], atol=1e-5)

    # independently: one full-batch step on the mean response-token cross-entropy
    model = load_model(TINY_STUDENT)
    b = D.DistillCollator(smol_tok.pad_token_id)(_examples(base, smol_tok))
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    mask = b["response_mask"][:, 1:]
    F.cross_entropy(logits[mask], b["input_ids"][:, 1:][mask]).backward()
    want = {k: p.detach() - base.lr * p.grad for k, p in model.named_parameters()}
    for k, w in want.items():
        torch.testing.assert_close(runs[1][k], w, atol=1e-5, rtol=0, msg=k)
    assert max((want[k] - p).abs().max().item() for k, p in model.named_parameters()) > 1e-3


# ---------------------------------------------------------------- errors

def test_non_finite_loss_stops_training_and_names_the_samples(tmp_path, monkeypatch):
    def nan_losses(call, student, batch, ids):
        per_tok, t = call(student, batch, ids)
        return per_tok * float("nan"), t
    wrap_objectives(monkeypatch, nan_losses)
    cfg = get_preset("tiny", root=str(tmp_path))["sft"].replace(train_samples=8, epochs=1)
    with pytest.raises(T.NonFiniteLossError, match="sample ids"):
        T.train(cfg)
    assert not (tmp_path / "sft" / "student").exists()


def test_checkpoint_of_another_config_is_not_resumed(tmp_path):
    # Regression: train() resumed from any `checkpoint/` in output_dir, whatever config wrote it.
    # pipeline.run retrains when the config hash changed, into the same folder, so the old
    # finished checkpoint was "resumed" with no epoch left: the old weights came out under the new
    # config's hash. Here the second run has lr 0, so its student must be the initial one.
    cfg = get_preset("tiny", root=str(tmp_path))["sft"].replace(train_samples=8, epochs=1,
                                                                 save_checkpoints=True)
    T.train(cfg)
    trained = weights(tmp_path / "sft" / "student")
    log = T.train(cfg.replace(lr=0.0), resume=True)
    assert log["config_hash"] == cfg.replace(lr=0.0).config_hash()
    assert log["epochs"][0]["steps"] > 0
    after = weights(tmp_path / "sft" / "student")
    assert_same_weights(after, weights(TINY_STUDENT))
    assert not all(torch.equal(after[k], trained[k]) for k in after)


def test_dds_is_stored_by_sample_id_and_dds_of_finds_one_sample(dakd_run):
    # regression (issue 13, item 6): DDS values were stored in example order without ids, so one
    # sample's DDS meant re-deriving the filtered order
    from dakd.results import dds_of

    cfg, log = dakd_run
    e0, e1 = log["epochs"]
    assert sorted(map(int, e1["dds_by_sample"])) == sorted(e0["subset_ids"])  # every training sample, by id
    sid = e1["subset_ids"][0]
    assert dds_of(cfg.output_dir, sid) == {1: e1["dds_by_sample"][str(sid)]}
    with pytest.raises(KeyError, match="no DDS"):
        dds_of(cfg.output_dir, 10 ** 9)
