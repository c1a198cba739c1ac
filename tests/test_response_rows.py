"""Logits at the response rows only (`dakd.models.response_logits`): the same values and gradients
as the full ``[B, T, V]`` forward that the losses and the response CE used to read, for the fast
path (LM head on the chosen rows) and for the fallback (wrapped or other models)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dakd.train as T
from dakd import data as D
from dakd.difficulty import predicting_positions, response_ce, response_ce_rows, score_dataset
from dakd.losses import get_per_token_loss, loss_params
from dakd.models import TINY_STUDENT, TINY_TEACHER, _row_head, load_model, response_logits
from dakd.presets import get_preset


@pytest.fixture(scope="module")
def pair():
    return load_model(TINY_STUDENT), load_model(TINY_TEACHER)


@pytest.fixture(scope="module")
def batch(dolly_examples, smol_tok):
    return D.DistillCollator(smol_tok.pad_token_id)(dolly_examples[:5])


class Wrapped(torch.nn.Module):
    """Stands in for a DDP/FSDP wrapper: only its forward may be called."""

    def __init__(self, model):
        super().__init__()
        self.module = model

    def forward(self, **kw):
        return self.module(**kw)


def _full_rows(model, b):
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return logits[predicting_positions(b["response_mask"])]


def test_predicting_positions_shift_the_response_mask_left():
    resp = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    want = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(predicting_positions(resp), want)


def test_row_head_is_taken_for_llama_only_when_unwrapped(pair):
    student, _ = pair
    assert _row_head(student) is not None
    assert _row_head(Wrapped(student)) is None


def test_row_head_is_refused_for_soft_capped_logits(pair, monkeypatch):
    student, _ = pair
    monkeypatch.setattr(student.config, "final_logit_softcapping", 30.0, raising=False)
    assert _row_head(student) is None


@pytest.mark.parametrize("wrapped", [False, True], ids=["row_head", "fallback"])
def test_response_logits_equal_the_full_forward_rows(pair, batch, wrapped):
    student, _ = pair
    model = Wrapped(student) if wrapped else student
    with torch.no_grad():
        got = response_logits(model, batch["input_ids"], batch["attention_mask"],
                              predicting_positions(batch["response_mask"]))
        want = _full_rows(student, batch)
    assert got.shape == want.shape == (int(batch["response_mask"][:, 1:].sum()), 49152)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_response_ce_rows_equals_response_ce_and_checks_the_row_count(pair, batch):
    student, _ = pair
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rows = logits[predicting_positions(batch["response_mask"])]
    torch.testing.assert_close(response_ce_rows(rows, batch["input_ids"], batch["response_mask"]),
                               response_ce(logits, batch["input_ids"], batch["response_mask"]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="logit rows"):
        response_ce_rows(rows[1:], batch["input_ids"], batch["response_mask"])


@pytest.mark.parametrize("run", ["dakd", "sft", "kd_kl"])
def test_token_losses_equal_the_full_logits_loss_in_value_and_gradient(pair, batch, run):
    """The reference is the previous formula: both models' full logits, shifted, masked loss."""
    cfg = get_preset("tiny")[run]
    student, teacher = pair
    mask = batch["response_mask"][:, 1:].bool()
    ids, attn = batch["input_ids"], batch["attention_mask"]

    student.zero_grad()
    s = student(input_ids=ids, attention_mask=attn).logits[:, :-1]
    if run == "sft":
        ref = F.cross_entropy(s.float().transpose(1, 2), ids[:, 1:], reduction="none").masked_fill(~mask, 0)
    else:
        with torch.no_grad():
            t_full = teacher(input_ids=ids, attention_mask=attn).logits
        ref = get_per_token_loss(cfg.loss)(s, t_full[:, :-1], mask, **loss_params(cfg))
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in student.parameters()]

    student.zero_grad()
    got, t_rows = T.token_losses(cfg, student, teacher, batch, 49152)
    got.sum().backward()
    assert got.shape == mask.shape and (got[~mask] == 0).all()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip((p.grad for p in student.parameters()), ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    if run == "sft":
        assert t_rows is None
    else:  # the teacher's rows give epoch 0's CE_teacher exactly as the full logits did
        torch.testing.assert_close(response_ce_rows(t_rows, ids, batch["response_mask"]),
                                   response_ce(t_full, ids, batch["response_mask"]), rtol=1e-6, atol=1e-6)
    student.zero_grad()


def test_score_dataset_equals_response_ce_of_the_full_forward(pair, dolly_examples, smol_tok):
    student, _ = pair
    got = score_dataset(student, dolly_examples, smol_tok.pad_token_id, batch_size=4)
    with torch.no_grad():
        for i, e in enumerate(dolly_examples):
            b = D.DistillCollator(smol_tok.pad_token_id)([e])
            logits = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            want = response_ce(logits, b["input_ids"], b["response_mask"])[0]
            torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)


ROOT = Path(__file__).resolve().parents[1]


def _run(script: str) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


# Regression (FSDP2, configs/accelerate/fsdp.yaml: fsdp_version 2): fully_shard keeps the model a
# PreTrainedModel (class FSDPLlamaForCausalLM); the row shortcut called model.model / lm_head
# directly, bypassing the root FSDP module's hooks, and the first call raised. The layout below is accelerate 1.15's fsdp2_prepare_model layout
# (decoder layers, a tail unit [norm, embed, lm_head] with reshard_after_forward=False, the root).
_FSDP2 = """
import os, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("PORT", "29551"))
dist.init_process_group("gloo", rank=0, world_size=1)
from torch.distributed.fsdp import fully_shard
from torch.distributed.device_mesh import init_device_mesh
from transformers import LlamaConfig, LlamaForCausalLM
from dakd.models import response_logits
torch.manual_seed(0)
m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
ids = torch.randint(0, 64, (2, 7)); attn = torch.ones_like(ids)
pos = torch.zeros_like(ids, dtype=torch.bool); pos[:, 2:6] = True
with torch.no_grad():
    ref = m(input_ids=ids, attention_mask=attn).logits[pos]
mesh = init_device_mesh("cpu", (1,))
for layer in m.model.layers:
    fully_shard(layer, mesh=mesh)
if LAYOUT == "accelerate":
    fully_shard([m.model.norm, m.get_input_embeddings(), m.get_output_embeddings()], mesh=mesh,
                reshard_after_forward=False)
fully_shard(m, mesh=mesh)
for step in range(2):
    got = response_logits(m, ids, attn, pos)
    got = got.full_tensor() if hasattr(got, "full_tensor") else got
    assert (got.detach() - ref).abs().max().item() < 1e-5
    got.pow(2).sum().backward()
print("OK")
dist.destroy_process_group()
"""


@pytest.mark.parametrize("layout,port", [("plain", 29551), ("accelerate", 29552)])
def test_response_logits_works_for_an_fsdp2_sharded_student(layout, port):
    res = _run(f"LAYOUT = {layout!r}\nimport os; os.environ['PORT'] = '{port}'\n" + textwrap.dedent(_FSDP2))
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-1500:]


# Regression (accelerate mixed precision on one process): accelerator.prepare patches model.forward
# with autocast; the model stays a PreTrainedModel, and the shortcut skipped the autocast (the run
# silently trained in fp32; logits 8e-4 off the full forward).
_AMP = """
import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM
from dakd.models import response_logits
torch.manual_seed(0)
acc = Accelerator(cpu=True, mixed_precision="bf16")
m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1))
m = acc.prepare(m)
ids = torch.randint(0, 64, (2, 8)); attn = torch.ones_like(ids)
pos = torch.zeros_like(ids, dtype=torch.bool); pos[:, 3:7] = True
with torch.no_grad():
    got = response_logits(m, ids, attn, pos)
    want = m(input_ids=ids, attention_mask=attn).logits[pos]
diff = (got.float() - want.float()).abs().max().item()
print("DIFF", diff)
assert diff < 1e-5
print("OK")
"""


def test_response_logits_keeps_accelerate_autocast():
    res = _run(_AMP)
    assert res.returncode == 0 and "OK" in res.stdout, (res.stdout + res.stderr)[-1500:]
