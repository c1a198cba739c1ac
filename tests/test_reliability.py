"""Reliability (issue 5) on the tiny random pair: bad data through a real run, half precision and
degenerate masks in a training step, the non-finite guards, SIGKILL and resume, damaged or foreign
checkpoints, what is unpickled and trusted, and results that a partial or changed run never
clobbers. Each README "What happens when" row names its test here or in test_data/test_losses."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dakd.train as T
from dakd import data as D
from dakd import models as M
from dakd import pipeline, runstate
from dakd.models import TINY_STUDENT, TINY_TEACHER, load_model
from dakd.presets import get_preset
from helpers import assert_same_weights, weights, wrap_objectives

REPO = Path(__file__).resolve().parents[1]
BAD = Path(__file__).parent / "data"


def _tiny(run, root, **kw):
    return get_preset("tiny", root=str(root))[run].replace(save_checkpoints=True, **kw)




# ================================================================ bad data through a real run

GOOD = [{"instruction": f"Name a {what}.", "input": "", "output": f"{answer}."}
        for what, answer in (("fruit", "Apple"), ("colour", "Red"), ("planet", "Mars"),
                             ("metal", "Iron"), ("bird", "Robin"), ("tree", "Oak"))]
GOOD_LINES = "".join(json.dumps(r) + "\n" for r in GOOD).encode()


@pytest.fixture
def data_folder(tmp_path, monkeypatch):
    """make(train bytes) -> path of ``dolly/train.jsonl`` in a data folder that DAKD_DATA_DIR names."""
    def make(train: bytes) -> Path:
        folder = tmp_path / "data" / "dolly"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.jsonl").write_bytes(train)
        (folder / "test.jsonl").write_bytes(GOOD_LINES)
        monkeypatch.setenv("DAKD_DATA_DIR", str(tmp_path / "data"))
        return folder / "train.jsonl"
    return make


def test_samples_trained_on_equal_loaded_minus_counted_drops(data_folder, tmp_path):
    # records 0-2 empty_response (0, 1 empty), 3-5 duplicates, 6-7 long_prompt (7 over the tiny
    # preset's 64-token prompt limit), 8 long_response (cut to 96 tokens), 9-14 good
    parts = ["empty_response.jsonl", "duplicates.jsonl", "long_prompt.jsonl", "long_response.jsonl"]
    data_folder(b"".join((BAD / p).read_bytes() for p in parts) + GOOD_LINES)
    cfg = _tiny("dakd", tmp_path)
    log = T.train(cfg)
    on_disk = json.loads((Path(cfg.output_dir) / "train_log.json").read_text())
    # duplicates: 4 repeats 3, 5 repeats 2 ("Add the numbers."), 6 repeats 3 ("Name a colour.")
    assert on_disk["filter"] == {"loaded": 15, "kept": 12, "empty_response": 2, "prompt_too_long": 1,
                                 "response_truncated_away": 0, "truncated": 1, "duplicates": 3,
                                 "dropped": 3}
    e0, e1 = log["epochs"]
    assert log["num_samples"] == e0["subset_size"] == 15 - 3
    assert sorted(e0["subset_ids"]) == [i for i in range(15) if i not in (0, 1, 7)]
    assert set(e1["subset_ids"]) <= set(e0["subset_ids"]) and e1["subset_size"] == 6
    assert log["cost"]["iterations"] == math.ceil(12 / 4) + math.ceil(6 / 4)


@pytest.mark.parametrize("name, where", [
    ("not_json.jsonl", ":2: not valid JSON"),
    ("missing_output.jsonl", ":3: field 'output': missing"),
    ("missing_instruction.jsonl", ":2: field 'instruction': missing"),
    ("wrong_type.jsonl", ":2: field 'output': expected str, got int"),
    ("empty.jsonl", ": no records"),
    ("not_utf8.jsonl", ":2: not UTF-8"),
    ("blank_line_middle.jsonl", ":2: blank line inside the file"),
])
def test_bad_training_file_stops_the_run_naming_file_line_and_field(data_folder, tmp_path, name, where):
    path = data_folder((BAD / name).read_bytes())
    cfg = _tiny("sft", tmp_path)
    with pytest.raises(D.DataError) as e:
        T.train(cfg)
    assert str(e.value).startswith(f"{path}{where}")
    assert not (tmp_path / "sft" / "train_log.json").exists()


# ================================================================ numerics of a training step

@pytest.fixture(scope="module")
def pair():
    return load_model(TINY_STUDENT), load_model(TINY_TEACHER)


def _batch(examples, tok):
    return D.DistillCollator(tok.pad_token_id)(examples)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_logits_give_finite_float32_losses_and_gradients(dtype, dolly_examples, smol_tok, pair):
    cfg = _tiny("dakd", "unused")  # token_losses takes the models as given
    b = _batch(dolly_examples[:4], smol_tok)
    with torch.no_grad():
        ref, _ = T.token_losses(cfg, *pair, b, 49152)
    student, teacher = load_model(TINY_STUDENT, dtype), load_model(TINY_TEACHER, dtype)
    per_tok, t_logits = T.token_losses(cfg, student, teacher, b, 49152)
    assert t_logits.dtype == getattr(torch, dtype)
    assert per_tok.dtype == torch.float32 and torch.isfinite(per_tok).all()
    mask = b["response_mask"][:, 1:]
    # only the rounding of weights and activations separates it from the float32 loss
    torch.testing.assert_close(per_tok[mask].mean(), ref[mask].mean(), rtol=0.05, atol=0)
    per_tok.sum().backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g.dtype == getattr(torch, dtype) and torch.isfinite(g).all() for g in grads)
    assert max(g.abs().max().item() for g in grads) > 0


def test_bfloat16_training_run_has_finite_losses(tmp_path):
    cfg = _tiny("kd_kl", tmp_path, dtype="bfloat16", train_samples=8, epochs=2)
    log = T.train(cfg)
    assert all(math.isfinite(e["mean_loss"]) and e["mean_loss"] > 0 for e in log["epochs"])
    after = load_model(tmp_path / "kd_kl" / "student", "bfloat16").state_dict()
    assert all(w.dtype == torch.bfloat16 and torch.isfinite(w).all() for w in after.values())


def test_float16_adamw_step_turns_small_gradient_weights_into_inf():
    # the bug's minimal input: AdamW keeps its state in float16, g^2 = 1e-6 (x 0.001) underflows
    # to 0 and eps 1e-8 is 0 in float16, so the update is m / 0
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float16))
    w.grad = torch.tensor([1e-3, 0.5], dtype=torch.float16)
    torch.optim.AdamW([w], lr=1e-3, weight_decay=0.0).step()
    assert torch.isinf(w[0]) and torch.isfinite(w[1])


def test_float16_training_is_refused_at_construction(tmp_path):
    # regression: dtype "float16" was accepted for training; with the student's weights in float16
    # its first AdamW step made them inf (test above). The weights are float32 masters now, but
    # float16 compute needs loss scaling, which the loop's checks do not account for: refused
    with pytest.raises(ValueError, match="float16.*bfloat16"):
        _tiny("kd_kl", tmp_path, dtype="float16")
    assert _tiny("teacher", tmp_path, dtype="float16").dtype == "float16"  # evaluation only


@pytest.mark.parametrize("run", ["sft", "kd_rkl", "dakd"])
def test_one_token_response_loss_is_that_tokens_divergence(run, smol_tok, pair):
    # the tightest valid limits (max_length = max_prompt_length + 1) leave one response token
    records = D.load_jsonl(BAD / "long_response.jsonl")
    p = len(smol_tok(D.format_prompt(records[0], "chatml", smol_tok)).input_ids)
    [ex], _ = D.tokenize_records(records, smol_tok, "chatml", max_prompt_length=p, max_length=p + 1)
    cfg = _tiny(run, "unused")
    b = _batch([ex], smol_tok)
    per_tok, _ = T.token_losses(cfg, *pair, b, 49152)
    assert per_tok.shape == (1, p) and torch.count_nonzero(per_tok) == 1
    # position p - 1 predicts the response token, by a float64 formula over probabilities
    with torch.no_grad():
        lq = pair[0](input_ids=b["input_ids"]).logits[0, p - 1].double().log_softmax(-1)
        lp = pair[1](input_ids=b["input_ids"]).logits[0, p - 1].double().log_softmax(-1)
    q, pt = lq.exp(), lp.exp()
    want = {"sft": -lq[ex["input_ids"][p]],
            "kd_rkl": (q * (lq - lp)).sum(),
            "dakd": ((0.1 * pt + 0.9 * q) * ((0.1 * pt + 0.9 * q) / (0.9 * pt + 0.1 * q)).log()).sum()}[run]
    assert per_tok[0, p - 1].item() == pytest.approx(want.item(), rel=1e-3)


@pytest.mark.parametrize("run", ["sft", "kd_kl", "dakd"])
def test_all_masked_batch_gives_zero_loss_zero_gradient_and_no_step(run, dolly_examples, smol_tok):
    student, teacher = load_model(TINY_STUDENT), load_model(TINY_TEACHER)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    b = _batch(dolly_examples[:3], smol_tok)
    b["response_mask"][:] = False
    per_tok, _ = T.token_losses(_tiny(run, "unused"), student, teacher, b, 49152)
    assert torch.all(per_tok == 0)
    per_tok.sum().backward()  # the loop divides by max(n_tok, 1) = 1: no 0 / 0
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.all(g == 0) for g in grads)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.0)
    assert torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0).item() == 0.0
    opt.step()
    assert_same_weights(student.state_dict(), before)


# ================================================================ the non-finite guards

@pytest.fixture
def spied_training(monkeypatch):
    """Record every optimiser step (a copy of the weights after it), the student, and the
    sample ids of every micro-batch that reaches token_losses."""
    spy = {"steps": [], "models": [], "batches": []}

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            out = super().step(closure)
            spy["steps"].append([p.detach().clone() for g in self.param_groups for p in g["params"]])
            return out
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    real_load = T.load_model

    def load(*a, **k):
        spy["models"].append(real_load(*a, **k))
        return spy["models"][-1]
    monkeypatch.setattr(T, "load_model", load)
    return spy


def test_nan_loss_stops_the_run_naming_step_and_samples_before_stepping(tmp_path, monkeypatch, spied_training):
    def nan_at_step_2(call, student, batch, ids):
        spied_training["batches"].append(batch["sample_id"].tolist())
        per_tok, t = call(student, batch, ids)
        # micro-batches of 2 in global batches of 4: the 6th call is step 2's second micro-batch
        return (per_tok * float("nan"), t) if len(spied_training["batches"]) == 6 else (per_tok, t)
    wrap_objectives(monkeypatch, nan_at_step_2)
    # without length grouping the batches run in order, all of 4 but the last
    cfg = _tiny("sft", tmp_path, epochs=1, group_by_length=False)
    with pytest.raises(T.NonFiniteLossError) as e:
        T.train(cfg)
    assert f"step 2, sample ids {spied_training['batches'][5]}" in str(e.value)
    assert "non-finite loss nan" in str(e.value)
    # two steps were taken; the third, half accumulated, never reached the weights
    assert len(spied_training["steps"]) == 2
    student = spied_training["models"][0]
    for p, snap in zip(student.parameters(), spied_training["steps"][-1]):
        assert torch.equal(p.detach(), snap)
    assert not (tmp_path / "sft" / "student").exists()


def test_non_finite_gradient_with_finite_loss_stops_before_the_optimizer_steps(tmp_path, monkeypatch,
                                                                              spied_training):
    # regression: only the loss was checked, so a gradient that overflowed in backward (finite
    # loss, inf/nan gradient: half precision) was clipped into nan weights by opt.step()
    def nan_gradient(call, student, batch, ids):
        spied_training["batches"].append(batch["sample_id"].tolist())
        per_tok, t = call(student, batch, ids)
        per_tok.register_hook(lambda g: g * float("nan"))
        return per_tok, t
    wrap_objectives(monkeypatch, nan_gradient)
    cfg = _tiny("sft", tmp_path, epochs=1, group_by_length=False)
    initial = weights(TINY_STUDENT)
    with pytest.raises(T.NonFiniteLossError) as e:
        T.train(cfg)
    ids = spied_training["batches"][0] + spied_training["batches"][1]  # step 0's global batch
    assert f"non-finite gradient norm nan at epoch 0, step 0, sample ids {ids}" in str(e.value)
    assert spied_training["steps"] == []
    assert_same_weights(spied_training["models"][0].state_dict(), initial)


# ================================================================ interruption and resume

def _wait_for(done, proc, what, timeout=300.0):
    t0 = time.monotonic()
    while not done():
        assert proc.poll() is None, f"training exited with {proc.returncode} before {what}"
        assert time.monotonic() - t0 < timeout, f"no {what} after {timeout} s"
        time.sleep(0.01)


def _mid_epoch_1(stderr: Path) -> bool:
    """The progress bar of epoch 1's training pass shows k of n steps done, 0 < k < n."""
    bars = re.findall(r"dakd epoch 1: .*?\| (\d+)/(\d+) \[", stderr.read_text(errors="replace"))
    return any(0 < int(k) < int(n) for k, n in bars)


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    # three DA-KD epochs (r = 1, 0.75, 0.25 of 17 samples), killed by SIGKILL in the training pass
    # of epoch 1, after epoch 0's checkpoint is on disk; then resumed in this process
    cfg = _tiny("dakd", tmp_path, epochs=3, output_dir=str(tmp_path / "killed"))
    request, stderr = tmp_path / "request.json", tmp_path / "stderr.txt"
    request.write_text(json.dumps(cfg.to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO))
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dakd.cli", "train", "--config", str(request)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_for(lambda: (tmp_path / "killed" / "checkpoint" / "state.json").exists(), proc,
                      "epoch 0's checkpoint")
            _wait_for(lambda: _mid_epoch_1(stderr), proc, "a step of epoch 1")
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())
    assert len(state["epochs"]) == 1, "the kill came after epoch 1 had finished"
    assert not (tmp_path / "killed" / "train_log.json").exists()

    resumed = T.train(cfg)
    ref = T.train(cfg.replace(output_dir=str(tmp_path / "ref")))
    assert [e["subset_ids"] for e in resumed["epochs"]] == [e["subset_ids"] for e in ref["epochs"]]
    assert [e["subset_size"] for e in ref["epochs"]] == [17, 13, 4]
    for key in ("iterations", "tokens_seen", "response_tokens_seen"):
        assert resumed["cost"][key] == ref["cost"][key], key
    assert_same_weights(weights(tmp_path / "killed" / "student"), weights(tmp_path / "ref" / "student"),
                         atol=1e-6)


class _Killed(Exception):
    pass


def test_kill_between_the_checkpoint_renames_resumes_from_the_previous_checkpoint(tmp_path, monkeypatch):
    # regression: _save_checkpoint moves the old checkpoint to checkpoint.old before renaming the
    # new one into place; a kill between the two renames left only checkpoint.old, which resume
    # did not look at: the run silently started over from epoch 0
    cfg = _tiny("sft", tmp_path, train_samples=8, epochs=3, output_dir=str(tmp_path / "killed"))
    real_replace = os.replace

    def die_on_second_swap(src, dst):
        if Path(dst).name == "checkpoint" and (tmp_path / "killed" / "checkpoint.old").exists():
            raise _Killed
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", die_on_second_swap)
    with pytest.raises(_Killed):
        T.train(cfg)
    monkeypatch.setattr(os, "replace", real_replace)
    loaded = []
    real_load = T.load_model
    for module in (T, runstate):  # the student (train), the checkpoint's student (runstate)
        monkeypatch.setattr(module, "load_model", lambda name, *a, **k: (loaded.append(Path(name)),
                                                                         real_load(name, *a, **k))[1])
    killed = tmp_path / "killed"
    assert not (killed / "checkpoint").exists() and (killed / "checkpoint.tmp").exists()
    assert len(json.loads((killed / "checkpoint.old" / "state.json").read_text())["epochs"]) == 1

    log = T.train(cfg)
    assert loaded == [killed / "checkpoint.old" / "student"]  # resumed, not started over
    ref = T.train(cfg.replace(output_dir=str(tmp_path / "ref")))
    assert [e["subset_ids"] for e in log["epochs"]] == [e["subset_ids"] for e in ref["epochs"]]
    assert log["cost"]["iterations"] == ref["cost"]["iterations"] == 3 * log["epochs"][0]["steps"]
    assert_same_weights(weights(killed / "student"), weights(tmp_path / "ref" / "student"), atol=1e-6)
    assert sorted(p.name for p in killed.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A tiny SFT run stopped right after epoch 0's checkpoint (config, output folder)."""
    root = tmp_path_factory.mktemp("ckpt")
    cfg = _tiny("sft", root, train_samples=8, epochs=2)
    real = T.save_checkpoint

    def save_then_die(*a, **k):
        real(*a, **k)
        raise _Killed
    T.save_checkpoint = save_then_die
    try:
        with pytest.raises(_Killed):
            T.train(cfg)
    finally:
        T.save_checkpoint = real
    return cfg, Path(cfg.output_dir)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, culprit, message", [
    (lambda c: _truncate(c / "trainer_state.pt"), "trainer_state.pt", "unreadable or not this run's"),
    (lambda c: (c / "trainer_state.pt").unlink(), "trainer_state.pt", "unreadable or not this run's"),
    (lambda c: (c / "state.json").write_text('{"epochs": ['), "state.json", "unreadable checkpoint state"),
    (lambda c: (c / "state.json").write_text("[]"), "state.json", "not a dakd checkpoint state"),
    (lambda c: (c / "state.json").unlink(), "state.json", "unreadable checkpoint state"),
    (lambda c: _truncate(c / "student" / "model.safetensors"), "student", "cannot load the checkpoint's student"),
    (lambda c: (shutil.rmtree(c / "student"), shutil.copytree(M.resolve_model(TINY_TEACHER), c / "student")),
     "student", "weights of another model than 'tiny-student'"),
    (lambda c: (c / "state.json").write_text(json.dumps(
        json.loads((c / "state.json").read_text()) | {"data_hash": "0" * 16})),
     "state.json", "written for other training data"),
], ids=["trainer-state-truncated", "trainer-state-missing", "state-not-json", "state-not-a-dict",
        "state-missing", "weights-truncated", "weights-of-another-model", "other-data"])
def test_damaged_or_foreign_checkpoint_is_refused_naming_the_file(checkpointed, tmp_path, damage, culprit,
                                                                   message):
    cfg, out = checkpointed
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    damage(copy / "checkpoint")
    with pytest.raises(T.CheckpointError) as e:
        T.train(cfg.replace(output_dir=str(copy)))
    assert str(e.value).startswith(f"{copy / 'checkpoint' / culprit}: {message}")
    assert f"delete {copy / 'checkpoint'} to start over" in str(e.value)
    assert not (copy / "train_log.json").exists()


def test_weights_are_safetensors_and_resume_unpickles_nothing(checkpointed, tmp_path, monkeypatch):
    cfg, out = checkpointed
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    assert sorted(p.name for p in (copy / "checkpoint" / "student").iterdir()
                  if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".pkl")) == ["model.safetensors"]
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (loads.append(k.get("weights_only")), real_load(*a, **k))[1])
    log = T.train(cfg.replace(output_dir=str(copy)))
    assert len(log["epochs"]) == 2 and loads == [True]  # trainer_state.pt only, weights_only
    assert sorted(p.name for p in (copy / "student").iterdir()
                  if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".pkl")) == ["model.safetensors"]


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_reaches_from_pretrained_only_as_set(checkpointed, tmp_path, monkeypatch, trust):
    from transformers import AutoConfig
    cfg, out = checkpointed
    copy = tmp_path / "run"
    shutil.copytree(out, copy)  # resuming also loads the checkpoint's student and its config
    run = cfg.replace(output_dir=str(copy), **({"trust_remote_code": True} if trust else {}))
    state = json.loads((copy / "checkpoint" / "state.json").read_text())
    (copy / "checkpoint" / "state.json").write_text(json.dumps(state | {"config_hash": run.config_hash()}))
    seen, depth = [], [0]

    def spy(real, name):
        def from_pretrained(*a, **k):
            if depth[0] == 0:  # dakd's own calls, not transformers' calls inside them
                seen.append((name, k.get("trust_remote_code")))
            depth[0] += 1
            try:
                return real(*a, **k)
            finally:
                depth[0] -= 1
        return from_pretrained
    for cls in (M.AutoModelForCausalLM, M.AutoTokenizer, AutoConfig):
        monkeypatch.setattr(cls, "from_pretrained", spy(cls.from_pretrained, cls.__name__))
    assert T.train(run)["epochs"][0]["epoch"] == 0
    assert {c for c, _ in seen} == {"AutoModelForCausalLM", "AutoTokenizer", "AutoConfig"}
    assert all(t is trust for _, t in seen), seen


# ================================================================ results are never clobbered

@pytest.fixture
def teacher_cfg(tmp_path):
    # evaluation only: the first 4 DollyEval prompts (less those over 64 tokens), 4 new tokens
    return get_preset("tiny", root=str(tmp_path))["teacher"].replace(max_new_tokens=4)


def test_partial_run_leaves_a_completed_runs_results_untouched(teacher_cfg, tmp_path, monkeypatch):
    import dakd.evaluate
    done = pipeline.run(teacher_cfg)
    path = Path(teacher_cfg.output_dir) / "results.json"
    before = path.read_bytes()
    other = teacher_cfg.replace(eval_seeds=(20,))

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(dakd.evaluate, "evaluate_model", killed)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(other, overwrite=True)  # told to retrain into the folder, killed on the way
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.glob("results*")) == ["results.json"]
    assert pipeline.load_complete(teacher_cfg) == json.loads(json.dumps(done))
    assert pipeline.load_complete(other) is None


def test_results_of_another_config_are_kept_aside_not_overwritten(teacher_cfg):
    out = Path(teacher_cfg.output_dir)
    first = pipeline.run(teacher_cfg)
    before = (out / "results.json").read_bytes()
    other = teacher_cfg.replace(eval_seeds=(20,))
    second = pipeline.run(other, overwrite=True)  # without it: RunExistsError (tests/test_run_folder.py)
    assert json.loads((out / "results.json").read_text())["config_hash"] == other.config_hash()
    assert (out / f"results.{teacher_cfg.config_hash()}.json").read_bytes() == before
    assert pipeline.load_complete(other) == json.loads(json.dumps(second))
    assert pipeline.load_complete(teacher_cfg) is None
    assert list(first["eval"]["dolly"]["per_seed"]) == ["10"] and list(second["eval"]["dolly"]["per_seed"]) == ["20"]


# ================================================================ determinism

def test_same_seed_gives_identical_evaluation_generations(teacher_cfg, tmp_path):
    a = pipeline.run(teacher_cfg)["eval"]["dolly"]
    b = pipeline.run(teacher_cfg.replace(output_dir=str(tmp_path / "again")))["eval"]["dolly"]
    assert a["per_seed"] == b["per_seed"]
    assert [e["response"] for e in a["examples"]] == [e["response"] for e in b["examples"]]
    assert len(a["examples"]) == a["num_prompts"] > 0
