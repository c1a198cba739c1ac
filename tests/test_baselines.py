"""Tests for dakd.baselines and the SeqKD / GKD / DistiLLM paths of dakd.train on the tiny pair:
generation helpers and masks, the replay buffer, the adaptive SGO rule, the SeqKD cache, the
per-epoch generation records, per-epoch students, task-specific training data, the teacher-SFT
stage, resume, and the DeepSpeed batch-size fill."""

import json
import math
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import dakd.baselines as B
import dakd.train as T
from dakd import data as D
from dakd import tasks as TK
from dakd.config import DistillConfig
from dakd.models import TINY_STUDENT, TINY_TEACHER, load_model, load_tokenizer
from dakd.presets import get_preset
from helpers import assert_same_weights, record_model_loads, spy_batches, weights

EOS = 2  # SmolLM2: eos == pad == 2


def _cfg(root, method, **kw):
    # tiny preset: 12 Dolly records -> 9 kept (3 prompts over 64 tokens), batch 4 in micro-batches
    # of 2, so 3 optimiser steps per epoch
    base = get_preset("tiny", root=str(root))["dakd"]
    kw = {"train_samples": 12, "gen_max_new_tokens": 6, "output_dir": str(Path(root) / method)} | kw
    return base.replace(method=method, **kw)


@pytest.fixture
def seqkd_cache(tmp_path, monkeypatch):
    folder = tmp_path / "seqkd_cache"
    monkeypatch.setattr(B, "seqkd_cache_dir", lambda: folder)
    return folder


def _spy(monkeypatch, module, name):
    """Wrap ``module.name`` so that every call's arguments and result are recorded."""
    calls, real = [], getattr(module, name)

    def spy(*a, **k):
        out = real(*a, **k)
        calls.append((a, k, out))
        return out
    monkeypatch.setattr(module, name, spy)
    return calls


def _trained_responses(batches):
    """The response-token sequences (under the response mask) of the batches the objective saw."""
    seqs = []
    for b in batches:
        for ids, m, att in zip(b["input_ids"], b["response_mask"], b["attention_mask"]):
            if att.sum() and m.any():
                seqs.append(tuple(ids[m].tolist()))
    return seqs


# ---------------------------------------------------------------- generation helpers and masks

def test_cut_at_eos_keeps_the_first_eos_and_drops_the_padding_after_it():
    assert B.cut_at_eos([10, 11, EOS, EOS, EOS], EOS) == [10, 11, EOS]
    assert B.cut_at_eos([EOS, 7], EOS) == [EOS]
    assert B.cut_at_eos([12, 13, 14], EOS) == [12, 13, 14]  # hit the token limit: no EOS


def test_generated_batch_masks_exactly_the_generated_tokens_and_their_eos():
    prompts = [[5, 6, 7], [8, 9]]
    gens = [[10, 11, EOS], [12]]  # row 0 stopped at EOS, row 1 hit the limit after one token
    b = B.build_generated_batch(prompts, gens, pad_token_id=EOS, sample_ids=[40, 41])
    assert b["input_ids"].tolist() == [[5, 6, 7, 10, 11, EOS], [8, 9, 12, EOS, EOS, EOS]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    F, T_ = False, True
    assert b["response_mask"].tolist() == [[F, F, F, T_, T_, T_], [F, F, T_, F, F, F]]
    assert b["sample_id"].tolist() == [40, 41]
    # the same convention as a ground-truth batch: right padding, masks from lengths
    gt = D.DistillCollator(EOS)([{"input_ids": p + g, "prompt_length": len(p), "sample_id": s, "index": i}
                                 for i, (p, g, s) in enumerate(zip(prompts, gens, [40, 41]))])
    for k in ("input_ids", "attention_mask", "response_mask"):
        assert torch.equal(b[k], gt[k]), k
    with pytest.raises(ValueError, match="empty generation"):
        B.build_generated_batch([[5]], [[]], EOS)


def test_sample_responses_is_seeded_bounded_and_cut_at_eos(smol_tok):
    model = load_model(TINY_STUDENT)
    prompts = [smol_tok("Name a colour.").input_ids, smol_tok("Write a long story about a cat.").input_ids]
    a = B.sample_responses(model, prompts, EOS, EOS, max_new_tokens=5, seed=3)
    assert a == B.sample_responses(model, prompts, EOS, EOS, max_new_tokens=5, seed=3)
    assert a != B.sample_responses(model, prompts, EOS, EOS, max_new_tokens=5, seed=4)
    assert all(1 <= len(g) <= 5 and (EOS not in g[:-1]) for g in a)
    # the total-length cap wins over max_new_tokens, per prompt
    capped = B.sample_responses(model, prompts, EOS, EOS, max_new_tokens=5, seed=3,
                                max_total_length=len(prompts[0]) + 2)
    assert len(capped[0]) <= 2
    # the caller's random state is left alone
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    B.sample_responses(model, prompts, EOS, EOS, max_new_tokens=2, seed=9)
    assert torch.equal(torch.rand(3), want)


# ---------------------------------------------------------------- replay buffer and SGO rule

def test_replay_buffer_is_fifo_with_the_given_capacity():
    buf = B.ReplayBuffer(3)
    buf.push([{"sample_id": i} for i in range(2)])
    assert len(buf) == 2 and not buf.full
    buf.push([{"sample_id": i} for i in range(2, 5)])
    assert len(buf) == 3 and buf.full
    assert [e["sample_id"] for e in buf.items] == [2, 3, 4]  # the oldest two fell out
    got = buf.sample(2, torch.Generator().manual_seed(0))
    assert len({e["sample_id"] for e in got}) == 2 and {e["sample_id"] for e in got} <= {2, 3, 4}
    assert got == buf.sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="cannot sample 4"):
        buf.sample(4, torch.Generator())
    again = B.ReplayBuffer(3)
    again.load_state_dict(buf.state_dict())
    assert list(again.items) == list(buf.items)
    with pytest.raises(ValueError, match="capacity"):
        B.ReplayBuffer(0)


def test_adaptive_sgo_rule_on_a_hand_made_sequence_of_validation_losses():
    # reference 2.0; 2.05 < 2.1: no change; 2.15 >= 2.1: +0.1, reference 2.15; 2.1 < 2.25: no
    # change; 2.3 >= 2.25: +0.1, reference 2.3; 2.3 < 2.4: no change
    losses = [2.0, 2.05, 2.15, 2.1, 2.3, 2.3]
    assert B.sgo_probabilities(losses) == pytest.approx([0.0, 0.0, 0.1, 0.1, 0.2, 0.2])
    # the reference only moves when phi grows: slow drift upwards adds up to one step
    assert B.sgo_probabilities([1.0, 1.06, 1.12]) == pytest.approx([0.0, 0.0, 0.1])
    # cap, and another start / step / eps
    assert B.sgo_probabilities([1.0, 2.0, 3.0, 4.0], init=0.2, step=0.3, eps=0.5, max_prob=0.6) == \
        pytest.approx([0.2, 0.5, 0.6, 0.6])
    with pytest.raises(ValueError, match="finite"):
        B.AdaptiveSGO().update(float("nan"))


@pytest.mark.parametrize("u, prob, progress, full, want", [
    (0.05, 0.5, 0.0, True, "fresh"),         # u < phi (1 - t/T) = 0.5
    (0.30, 0.5, 0.5, True, "replay"),        # 0.25 <= u < 0.5, buffer full
    (0.30, 0.5, 0.5, False, "fresh"),        # ... buffer not yet full: generate
    (0.60, 0.5, 0.0, False, "ground_truth"),
    (0.00, 0.0, 0.0, False, "ground_truth"),  # phi = 0: never student data
])
def test_sgo_batch_source(u, prob, progress, full, want):
    assert B.sgo_batch_source(u, prob, progress, full) == want


# ---------------------------------------------------------------- SeqKD

def test_seqkd_cache_is_written_once_and_reused_and_training_uses_the_teachers_text(
        tmp_path, seqkd_cache, monkeypatch, smol_tok):
    cfg = _cfg(tmp_path, "seqkd", epochs=1)
    gens = _spy(monkeypatch, B, "sample_responses")
    loaded = record_model_loads(monkeypatch, T)
    batches = spy_batches(monkeypatch)
    log = T.train(cfg)
    assert len(gens) == 1 and loaded == [TINY_TEACHER, TINY_STUDENT]
    files = sorted(seqkd_cache.glob("*.jsonl"))
    assert len(files) == 1 and log["seqkd"]["cache_file"] == str(files[0]) and not log["seqkd"]["from_cache"]
    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
    copy = Path(cfg.output_dir) / "seqkd_data.jsonl"
    assert copy.read_text() == files[0].read_text()
    records = D.load_split("dolly", "train", limit=cfg.train_samples, seed=cfg.seed)
    assert len(rows) == log["seqkd"]["generated"] == log["filter"]["kept"] == 9
    for r in rows:
        src = records[r["sample_id"]]
        assert (r["instruction"], r["input"], r["reference"]) == (src["instruction"], src["input"], src["output"])
        assert r["output"] != src["output"]
    # the response tokens trained on are the tokenized teacher responses, nothing else
    by_id = {r["sample_id"]: r["output"] for r in rows}
    want, _ = D.tokenize_records([r | {"output": by_id[i]} for i, r in enumerate(records) if i in by_id],
                                 smol_tok, cfg.prompt_style, cfg.max_prompt_length, cfg.max_length)
    assert Counter(_trained_responses(batches)) == Counter(
        tuple(e["input_ids"][e["prompt_length"]:]) for e in want)

    # a second run (another output folder) reads the cache: no generation, no teacher loaded
    gens.clear(), loaded.clear()
    log2 = T.train(cfg.replace(output_dir=str(tmp_path / "again")))
    assert gens == [] and loaded == [TINY_STUDENT]
    assert log2["seqkd"]["from_cache"] and log2["cost"]["teacher_generation_seconds"] == 0.0
    assert (tmp_path / "again" / "seqkd_data.jsonl").read_text() == files[0].read_text()
    assert_same_weights(weights(tmp_path / "again" / "student"), weights(Path(cfg.output_dir) / "student"))
    # another generation setting is another cache entry
    T.train(cfg.replace(gen_temperature=0.7, output_dir=str(tmp_path / "t07")))
    assert len(gens) == 1 and len(list(seqkd_cache.glob("*.jsonl"))) == 2


def test_seqkd_drops_and_counts_empty_generations(tmp_path, seqkd_cache, monkeypatch):
    def fake(model, prompts, pad, eos, max_new_tokens, *a, **k):
        return [[eos] if j % 3 == 0 else [504, 260, eos] for j in range(len(prompts))]
    monkeypatch.setattr(B, "sample_responses", fake)
    log = T.train(_cfg(tmp_path, "seqkd", epochs=1))
    f = log["filter"]
    assert f["empty_generation"] == f["empty_response"] == 3  # generations 0, 3, 6 of 9
    assert f["kept"] == f["loaded"] - f["dropped"] == 6 == log["num_samples"]


# ---------------------------------------------------------------- GKD

@pytest.mark.parametrize("fraction", [1.0, 0.0])
def test_gkd_student_data_fraction_one_generates_every_batch_and_zero_never(tmp_path, monkeypatch, fraction):
    gens = _spy(monkeypatch, B, "sample_responses")
    batches = spy_batches(monkeypatch)
    log = T.train(_cfg(tmp_path, "gkd", student_data_fraction=fraction))
    assert log["config"]["loss"] == "js_divergence"
    steps = [e["steps"] for e in log["epochs"]]
    assert steps == [3, 3]
    assert [e["generated_batches"] for e in log["epochs"]] == ([3, 3] if fraction else [0, 0])
    assert len(gens) == sum(e["generated_batches"] for e in log["epochs"])
    assert all((e["generation_seconds"] > 0) == bool(fraction) for e in log["epochs"])
    assert log["cost"]["generation_seconds"] == pytest.approx(sum(e["generation_seconds"] for e in log["epochs"]))
    if fraction:
        # every trained response is exactly one of the student's generations (teacher scored on them)
        generated = Counter(tuple(g) for _, _, out in gens for g in out)
        assert Counter(_trained_responses(batches)) == generated
        assert log["cost"]["response_tokens_seen"] == sum(len(g) * c for g, c in generated.items())
        assert all(len(g) <= 6 for g in generated)
    # the loss is the generalized JSD with beta: the objective the loop built says so
    objective = T.build_parts(SimpleNamespace(cfg=DistillConfig.from_dict(log["config"]), rank=0, world=1))[2]
    assert (objective.loss, objective.params) == ("js_divergence", {"beta": 0.5})


# ---------------------------------------------------------------- DistiLLM

def test_distillm_records_p_sgo_and_replays_from_a_full_buffer(tmp_path, monkeypatch):
    gens = _spy(monkeypatch, B, "sample_responses")
    cfg = _cfg(tmp_path, "distillm", sgo_init_prob=1.0, replay_buffer_size=6, sgo_val_samples=8)
    log = T.train(cfg)
    assert log["config"]["loss"] == "skew_reverse_kl"
    e0, e1 = log["epochs"]
    assert e0["p_sgo"] == e1["p_sgo"] == 1.0 and math.isfinite(e0["val_loss"]) and e0["val_loss"] > 0
    # phi = 1: every batch is student data; fresh until the 6-sample buffer is full (2 batches of
    # 4), then fresh with probability 1 - t/T, else replayed
    for e in (e0, e1):
        assert e["sgo_batches"] == e["generated_batches"] + e["replay_batches"] == e["steps"] == 3
    assert e0["generated_batches"] >= 2 and e0["replay_batches"] + e1["replay_batches"] >= 1
    assert len(gens) == e0["generated_batches"] + e1["generated_batches"]
    assert log["sgo_validation"]["source"] == "dev" and log["sgo_validation"]["filter"]["loaded"] == 8
    assert log["cost"]["validation_seconds"] > 0
    assert log["sgo"]["prob"] == 1.0

    # phi = 0 with no increase of the validation loss: skew reverse KL on the ground truth only
    log0 = T.train(cfg.replace(sgo_init_prob=0.0, output_dir=str(tmp_path / "p0")))
    assert [(e["p_sgo"], e["sgo_batches"]) for e in log0["epochs"]] == [(0.0, 0), (0.0, 0)]


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("method, kw", [
    ("distillm", {"sgo_init_prob": 1.0, "replay_buffer_size": 6, "sgo_val_samples": 8}),
    ("gkd", {"student_data_fraction": 0.5})])
def test_gkd_and_distillm_resume_equal_an_uninterrupted_run(tmp_path, monkeypatch, method, kw):
    cfg = _cfg(tmp_path, method, save_checkpoints=True, **kw)
    ref = T.train(cfg.replace(output_dir=str(tmp_path / "ref")))
    real = T.save_checkpoint

    def save_then_die(*a, **k):
        real(*a, **k)
        raise _Interrupted
    monkeypatch.setattr(T, "save_checkpoint", save_then_die)
    with pytest.raises(_Interrupted):
        T.train(cfg)
    monkeypatch.setattr(T, "save_checkpoint", real)
    log = T.train(cfg)
    keys = ("generated_batches", "replay_batches", "p_sgo", "subset_ids", "mean_loss")
    assert [[e.get(k) for k in keys] for e in log["epochs"]] == [[e.get(k) for k in keys] for e in ref["epochs"]]
    assert_same_weights(weights(Path(cfg.output_dir) / "student"), weights(tmp_path / "ref" / "student"), atol=1e-6)


# ---------------------------------------------------------------- per-epoch students

def test_save_epoch_students_writes_one_loadable_student_per_epoch(tmp_path):
    cfg = _cfg(tmp_path, "sft", epochs=3, save_epoch_students=True)
    log = T.train(cfg)
    folders = sorted((Path(cfg.output_dir) / "epoch_students").iterdir())
    assert [f.name for f in folders] == ["epoch0", "epoch1", "epoch2"]
    ends = [e["iterations_end"] for e in log["epochs"]]
    assert ends == [3, 6, 9] == [sum(e["steps"] for e in log["epochs"][:i + 1]) for i in range(3)]
    w = [weights(f) for f in folders]
    assert len(load_tokenizer(folders[0])) == 49152
    assert_same_weights(w[2], weights(Path(cfg.output_dir) / "student"))
    assert not all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    # saving them changes no result
    assert cfg.config_hash() == cfg.replace(save_epoch_students=False).config_hash()


# ---------------------------------------------------------------- task-specific training data

@pytest.mark.parametrize("task, marker", [("samsum", TK.SAMSUM_INSTRUCTION), ("gsm8k", "####")])
def test_samsum_and_gsm8k_tiny_runs_train_on_their_seeded_train_subset(tmp_path, task, marker, smol_tok):
    cfg = _cfg(tmp_path, "sft", dataset=task, train_samples=6, epochs=1, max_prompt_length=300,
               max_length=400)
    everything = TK.load_task(task, "train")
    keep = sorted(random.Random(cfg.seed).sample(range(len(everything)), 6))
    records, held = T.load_train_records(cfg)
    assert records == [everything[i] for i in keep] and held == []
    log = T.train(cfg)
    assert log["filter"]["loaded"] == 6 and log["num_samples"] == log["filter"]["kept"] > 0
    assert log["cost"]["iterations"] == math.ceil(log["num_samples"] / cfg.batch_size)
    assert math.isfinite(log["epochs"][0]["mean_loss"])
    examples, _ = D.tokenize_records(records, smol_tok, cfg.prompt_style, cfg.max_prompt_length, cfg.max_length)
    assert all(marker in smol_tok.decode(e["input_ids"]) for e in examples)


def test_distillm_validation_records_come_from_dev_or_a_held_out_tail():
    assert [T.sgo_validation_source(d) for d in ("dolly", "samsum", "gsm8k")] == ["dev", "dev", "held_out"]
    cfg = DistillConfig(dataset="gsm8k", train_samples=20, seed=1)
    everything = TK.load_task("gsm8k", "train")
    pool, held = T.load_train_records(cfg, hold_out=5)
    assert held == everything[-5:] and len(pool) == 20
    assert not {r["line"] for r in pool} & {r["line"] for r in held}
    with pytest.raises(ValueError, match="hold out"):
        T.load_train_records(cfg, hold_out=len(everything))


# ---------------------------------------------------------------- teacher SFT stage

def test_teacher_sft_run_then_kd_from_its_output_folder(tmp_path, monkeypatch):
    loaded = record_model_loads(monkeypatch, T)
    sft = _cfg(tmp_path, "sft", student=TINY_TEACHER, epochs=1, output_dir=str(tmp_path / "teacher_sft"))
    T.train(sft)
    assert loaded == [TINY_TEACHER]  # the student only: no teacher
    tuned = tmp_path / "teacher_sft" / "student"
    moved = weights(tuned)
    assert not all(torch.equal(moved[k], v) for k, v in weights(TINY_TEACHER).items())
    loaded.clear()
    log = T.train(_cfg(tmp_path, "kd", loss="forward_kl", teacher=str(tuned), epochs=1))
    assert loaded == [TINY_STUDENT, str(tuned)]
    assert log["config"]["teacher"] == str(tuned) and math.isfinite(log["epochs"][0]["mean_loss"])


# ---------------------------------------------------------------- DeepSpeed

def _ds_accelerator(world, **ds):
    plugin = SimpleNamespace(deepspeed_config=dict(ds))
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=world), plugin


def test_deepspeed_micro_batch_is_filled_and_its_own_accumulation_is_off():
    # regression (issue 12, defect 2): DeepSpeed stepped after every micro-batch; dakd now marks
    # the step itself (sync_gradients at a global batch's last micro-batch), so DeepSpeed's own
    # accumulation count must be 1, or it would divide every micro-batch's loss by it again
    cfg = DistillConfig(batch_size=8, micro_batch_size=2)
    acc, plugin = _ds_accelerator(2, train_micro_batch_size_per_gpu="auto", gradient_accumulation_steps="auto",
                                  train_batch_size="auto", zero_optimization={"stage": 2})
    T._configure_deepspeed(acc, cfg)
    assert plugin.deepspeed_config == {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
                                       "train_batch_size": 4, "zero_optimization": {"stage": 2}}
    acc, plugin = _ds_accelerator(3, gradient_accumulation_steps=4)
    T._configure_deepspeed(acc, cfg)
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == 2
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == 1
    assert plugin.deepspeed_config["train_batch_size"] == 6
    assert T._configure_deepspeed(SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None)), cfg) is None


def test_train_fills_the_deepspeed_config_before_prepare(tmp_path, monkeypatch):
    from accelerate import Accelerator
    calls = []
    real_prepare, real_ds = Accelerator.prepare, T._configure_deepspeed
    monkeypatch.setattr(Accelerator, "prepare", lambda self, *a: (calls.append("prepare"), real_prepare(self, *a))[1])
    monkeypatch.setattr(T, "_configure_deepspeed", lambda acc, cfg: (calls.append("deepspeed"), real_ds(acc, cfg))[1])
    T.train(_cfg(tmp_path, "sft", train_samples=4, epochs=1))
    assert calls == ["deepspeed", "prepare"]
