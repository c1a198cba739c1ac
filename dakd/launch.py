"""The accelerator a process trains or evaluates with, on any machine and launch strategy.

On GPUs this is accelerate's own choice from ``accelerate launch`` (DDP, FSDP2, DeepSpeed ZeRO-2/3).
On a machine without GPUs accelerate runs several processes only as plain data parallel over gloo
(``MULTI_CPU``), whatever the config says, so FSDP2 and DeepSpeed code paths could never be tried
there. `make_accelerator` runs them on the CPU as well: gloo process groups, FSDP2's ``fully_shard``
on CPU tensors, DeepSpeed with ``DS_ACCELERATOR=cpu``. That is how this package's strategy tests
prove those paths (tests/test_strategies.py) and how a laptop can smoke-test a GPU config.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # DeepSpeed (when installed, imported by accelerate) would otherwise warn at every start that it
    # found no GPU and falls back to the CPU
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

# accelerate's mixed precision for each compute dtype: the student's weights stay float32
MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def launched_strategy() -> str:
    """The strategy of this ``accelerate launch``ed process from accelerate's environment: "fsdp",
    "deepspeed", "ddp" (several processes) or "single"."""
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    return "ddp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single"


def make_accelerator(dtype: str = "float32"):
    """An `accelerate.Accelerator` computing in ``dtype`` (mixed precision: float32 master weights).

    With CUDA: accelerate's choice from its launch environment. Without: one process, or DDP over
    gloo, on the CPU; and for a process launched with an FSDP or DeepSpeed config, that strategy
    on the CPU over gloo (accelerate itself would fall back to plain data parallel there).

    Raises:
        KeyError: an unknown ``dtype``.
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType

    mp = MIXED_PRECISION[dtype]
    strategy = launched_strategy()
    if torch.cuda.is_available():
        return Accelerator(mixed_precision=mp)
    if strategy in ("single", "ddp"):
        from accelerate.state import AcceleratorState

        # one process may train runs of different dtypes in turn (a notebook, the tests): the
        # singleton state of the previous run's precision is replaced, as a new process would
        state = AcceleratorState._shared_state
        if strategy == "single" and state and state.get("_mixed_precision") != mp:
            AcceleratorState._reset_state()
        return Accelerator(cpu=True, mixed_precision=mp)
    # accelerate's CPU flag would turn the strategy into plain data parallel again
    os.environ["ACCELERATE_USE_CPU"] = "false"
    state = PartialState(backend="gloo")  # the process group, before accelerate picks a type
    if strategy == "fsdp":
        # accelerate builds its FSDP plugin only for accelerator devices: present the gloo group as one
        state._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    return Accelerator(mixed_precision=mp)
