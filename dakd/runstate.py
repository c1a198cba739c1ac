"""A training run's state between epochs: the cost record (Table 3's columns) and the checkpoint
that lets a killed run resume exactly after its last finished epoch.

Checkpoint layout (``<output_dir>/checkpoint/``): ``student/`` (weights), ``trainer_state.pt``
(optimizer, scheduler, the run's generator, and each method part's tensors under ``extra``) and
``state.json`` (the run state: per-epoch records, cost, config and data hashes, method-part state).
A new checkpoint is written beside the old one and swapped in by renames (`save_checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .io import write_json
from .models import load_model, outside_zero3, resolve_model


class NonFiniteLossError(RuntimeError):
    """A training loss or gradient norm was NaN or inf; the step was not taken."""


class CheckpointError(RuntimeError):
    """A checkpoint to resume from is damaged or belongs to another model or data set; the message
    names the file. Delete the checkpoint folder (or pass ``resume=False``) to start over."""


# ----------------------------------------------------------------------------- the cost record

COST_KEYS = {
    "iterations": "optimiser steps taken",
    "dds_seconds": "seconds choosing each epoch's samples (DDS scoring passes, the selection itself)",
    "teacher_ce_seconds": "seconds of the teacher CE pass for DDS (0 when it came free from epoch 0 or a cache)",
    "train_seconds": "seconds in the step loop (on-policy generation included)",
    "tokens_seen": "tokens of every sequence trained on (prompt and response)",
    "response_tokens_seen": "response tokens trained on (the loss's normaliser)",
    "generation_seconds": "seconds the student (GKD, DistiLLM) or the teacher (SeqKD) spent generating",
    "teacher_generation_seconds": "seconds of SeqKD's teacher generation before training",
    "validation_seconds": "seconds of DistiLLM's validation passes",
}


class CostRecord:
    """The run's cost (the paper's Table 3), kept as the plain dict ``data`` that is written to
    ``train_log.json`` and checkpoints: ``COST_KEYS`` give each key's meaning (seconds are wall-clock
    of this process), and `finish` adds ``total_seconds`` (dds + train + teacher generation +
    validation), ``dds_share`` (dds / total) and ``wall_seconds_this_process``."""

    def __init__(self, data: dict | None = None):
        self.data = data if data is not None else {"iterations": 0, "dds_seconds": 0.0, "teacher_ce_seconds": 0.0,
                                                   "train_seconds": 0.0, "tokens_seen": 0, "response_tokens_seen": 0}
        for key in ("generation_seconds", "teacher_generation_seconds", "validation_seconds"):
            self.data.setdefault(key, 0.0)  # absent from checkpoints written before they existed

    def __getitem__(self, key):
        return self.data[key]

    def add(self, key: str, value) -> None:
        """Add ``value`` (seconds, steps or tokens, as ``key`` counts) to ``key``."""
        self.data[key] += value

    @contextlib.contextmanager
    def timed(self, *keys: str, into: dict | None = None, as_key: str | None = None):
        """Add the wall-clock seconds of the ``with`` block to each of ``keys``; with ``into`` also
        store them there under ``as_key`` (an epoch record)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            for key in keys:
                self.data[key] += dt
            if into is not None:
                into[as_key] = dt

    def finish(self, t_start: float) -> dict:
        """Add the totals (see the class) and return ``data``; ``t_start`` is `time.perf_counter`
        at the run's start."""
        c = self.data
        c["total_seconds"] = (c["dds_seconds"] + c["train_seconds"] + c["teacher_generation_seconds"]
                              + c["validation_seconds"])
        c["dds_share"] = c["dds_seconds"] / max(c["total_seconds"], 1e-9)
        c["wall_seconds_this_process"] = time.perf_counter() - t_start
        return c


# ----------------------------------------------------------------------------- checkpoints

def save_student(accelerator, student, folder: Path, dtype: str = "float32", tokenizer=None) -> None:
    """Save the (prepared) student as an ordinary transformers checkpoint in ``dtype``.

    Every process must call it: under FSDP2 and ZeRO-3 the full state dict is gathered from all
    processes (`accelerate.Accelerator.get_state_dict`); the main process writes it (with the
    tokenizer, when given)."""
    state = accelerator.get_state_dict(student)
    if accelerator.is_main_process:
        want = getattr(torch, dtype)
        state = {k: v.to(want) if v.is_floating_point() else v for k, v in state.items()}
        accelerator.unwrap_model(student).save_pretrained(folder, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)


def save_checkpoint(out: Path, accelerator, student, opt, sched, gen, state: dict, extra: dict | None = None) -> None:
    """Atomically replace ``out/checkpoint`` with the state after a finished epoch; ``extra``
    (plain containers and tensors) goes into ``trainer_state.pt`` beside optimizer and scheduler.
    Every process must call it (the student's weights are gathered from all); the main process
    writes. The student is saved in float32, the master weights a resume continues from. Under a
    sharding strategy (FSDP2, DeepSpeed) each process's optimizer shard is written by accelerate's
    ``save_state`` into ``accelerate_state/`` (`sharded_optimizer`); else the main process's full
    optimizer state goes into ``trainer_state.pt``."""
    final, tmp = out / "checkpoint", out / "checkpoint.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    save_student(accelerator, student, tmp / "student")
    sharded = sharded_optimizer(accelerator)
    if sharded:
        accelerator.save_state(str(tmp / "accelerate_state"))
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    torch.save({"optimizer": None if sharded else opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": gen.get_state(), "extra": extra or {}}, tmp / "trainer_state.pt")
    write_json(tmp / "state.json", state)
    # a directory cannot replace a non-empty one in one rename: the previous checkpoint goes to
    # .old first, and .old is only deleted once the new one is in place (resume reads .old when
    # a kill fell between the two renames)
    old = out / "checkpoint.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def sharded_optimizer(accelerator) -> bool:
    """Whether each process holds only a shard of the optimizer state (FSDP, DeepSpeed ZeRO), so a
    checkpoint needs every process's part (accelerate's ``save_state`` / ``load_state``)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def params_sharded(accelerator) -> bool:
    """Whether the student's weights are sharded over the processes (FSDP, DeepSpeed ZeRO-3), so
    that every forward pass, generation included, gathers them from all processes."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return (accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None
            and int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)) == 3)


def find_checkpoint(out: Path) -> Path | None:
    """The checkpoint to resume from: ``out/checkpoint``, else ``out/checkpoint.old`` (a kill
    between the two renames of `save_checkpoint` leaves only that one), else None."""
    for ckpt in (out / "checkpoint", out / "checkpoint.old"):
        if ckpt.is_dir():
            return ckpt
    return None


def read_state(ckpt: Path) -> dict:
    """``state.json`` of a checkpoint folder, checked for the keys a resume needs.

    Raises:
        CheckpointError: unreadable, or not a dakd checkpoint state (the message names the file).
    """
    path = ckpt / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint state ({type(e).__name__}: {e}); "
                              f"delete {ckpt} to start over") from None
    missing = [k for k in ("epochs", "cost", "config_hash", "num_samples") if not isinstance(state, dict)
               or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a dakd checkpoint state (missing {missing}); "
                              f"delete {ckpt} to start over")
    return state


def read_trainer_state(ckpt: Path) -> dict:
    """``trainer_state.pt`` (optimizer, scheduler, generator, extra), loaded with
    ``weights_only=True``: plain tensors and containers, nothing is unpickled as code.

    Raises:
        CheckpointError: truncated, foreign or missing.
    """
    try:
        # on the CPU: the optimizer moves its state to its parameters' device when loading it
        return torch.load(ckpt / "trainer_state.pt", weights_only=True, map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"{ckpt / 'trainer_state.pt'}: unreadable or not this run's trainer "
                              f"state ({type(e).__name__}: {e}); delete {ckpt} to start over") from e


def load_checkpoint_student(ckpt: Path, cfg):
    """The checkpoint's student, refused unless its tensors have the names and shapes of
    ``cfg.student`` (checked against a weightless copy built on the meta device).

    Raises:
        CheckpointError: the weights cannot be loaded, or are another model's.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = ckpt / "student"
    try:  # whole on every process (the engine shards it when prepared); master weights: float32
        with outside_zero3():
            model = load_model(folder, torch.float32, cfg.trust_remote_code)
    except Exception as e:  # any failure here means a damaged checkpoint
        raise CheckpointError(f"{folder}: cannot load the checkpoint's student ({type(e).__name__}: "
                              f"{e}); delete {ckpt} to start over") from e
    conf = AutoConfig.from_pretrained(resolve_model(cfg.student), trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"), outside_zero3():
        ref = AutoModelForCausalLM.from_config(conf, trust_remote_code=cfg.trust_remote_code)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if got != want:
        diff = sorted(set(want.items()) ^ set(got.items()))[:2]
        raise CheckpointError(f"{folder}: weights of another model than {cfg.student!r} "
                              f"(e.g. {diff}); delete {ckpt} to start over")
    return model


# ----------------------------------------------------------------------------- the run context

@dataclass
class Run:
    """Everything one training run holds while it runs, handed to the method's parts.

    cfg: the `dakd.config.DistillConfig`; accelerator: accelerate's; out: ``cfg.output_dir``;
    tok: the student's tokenizer; examples: tokenized training examples (`dakd.data.tokenize_records`);
    held_out: records set aside for DistiLLM's validation; student (prepared), teacher (or None),
    vocab (shared vocabulary size), topk (a `dakd.teacher_cache.TopKTeacherCache` or None); opt,
    sched; gen: the run's generator, whose draws every process makes alike; state: the run state
    written to ``train_log.json`` and checkpoints; cost: its `CostRecord`; total_steps: planned
    optimiser steps; meta: `dakd.config.run_metadata`; t_start: `time.perf_counter` at the start;
    parts: the method's (selector, source, objective)."""
    cfg: object
    accelerator: object
    out: Path
    tok: object
    examples: list
    held_out: list = field(default_factory=list)
    student: object = None
    teacher: object = None
    vocab: int = 0
    topk: object = None
    opt: object = None
    sched: object = None
    gen: torch.Generator | None = None
    state: dict = field(default_factory=dict)
    cost: CostRecord | None = None
    total_steps: int = 0
    meta: dict = field(default_factory=dict)
    t_start: float = 0.0
    parts: tuple = ()

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index
