"""The distillation difficulty score, DDS (DA-KD Eq. 1), and the scorer that computes it.

DDS(x) = CE_student(x) / max(CE_teacher(x), eps): both are the mean cross-entropy of the
ground-truth response tokens under teacher forcing; eps is a floor, so a teacher CE above it (the
paper's example: 0.0003 nats) gives exactly Eq. 1's ratio. High DDS means the teacher finds x easy while
the student finds it hard, so x is worth distilling.

The teacher is frozen, so CE_teacher is computed once per run (and cached on disk, keyed by the
teacher and the exact token ids) instead of once per epoch as in the paper; only the student's CE is
recomputed at each epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import DistillCollator
from .io import save_tensor
from .models import response_logits, weights_fingerprint


def response_ce(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean cross-entropy of the response tokens under teacher forcing.

    Args:
        logits: ``[B, T, V]`` any float dtype; position t predicts token t+1 (a causal LM's output).
        input_ids: ``[B, T]`` int64.
        response_mask: ``[B, T]`` bool, True on response tokens (in input-token space).

    Returns:
        ``[B]`` float32, nats per response token. A sample with no response token gets 0.
    """
    # only the response rows: prompt and padding positions cost nothing (measured 4x faster than
    # the CE of every position on [8, 320, 49152], and closer to float64: no float32 cast of them)
    return response_ce_rows(logits[predicting_positions(response_mask)], input_ids, response_mask)


def predicting_positions(response_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: True at position t when token t + 1 is a response token (``response_mask``
    shifted left by one, last column False): the positions whose logits a response CE or a
    distillation loss reads (`dakd.models.response_logits`)."""
    pos = torch.zeros_like(response_mask, dtype=torch.bool)
    pos[:, :-1] = response_mask[:, 1:].bool()
    return pos


def response_ce_rows(row_logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """`response_ce` from the response rows' logits only (`dakd.models.response_logits` of
    `predicting_positions`), without a ``[B, T, V]`` tensor.

    Args:
        row_logits: ``[M, V]`` any float dtype, M = ``response_mask[:, 1:].sum()``, in the row-major
            order of the predicting positions.
        input_ids: ``[B, T]`` int64.
        response_mask: ``[B, T]`` bool.

    Returns:
        ``[B]`` float32, nats per response token; 0 for a sample with no response token.

    Raises:
        ValueError: ``row_logits`` has another number of rows than the mask's response tokens.
    """
    mask = response_mask[:, 1:].bool()
    rows = mask.nonzero()
    if row_logits.shape[0] != rows.shape[0]:
        raise ValueError(f"{row_logits.shape[0]} logit rows for {rows.shape[0]} response tokens")
    tok_ce = F.cross_entropy(row_logits.float(), input_ids[:, 1:][rows[:, 0], rows[:, 1]], reduction="none")  # [M]
    total = torch.zeros(mask.shape[0], dtype=tok_ce.dtype, device=tok_ce.device).index_add_(0, rows[:, 0], tok_ce)
    return total / mask.sum(1).clamp(min=1)


def difficulty_scores(student_ce: torch.Tensor, teacher_ce: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DDS = CE_student / max(CE_teacher, eps) (paper Eq. 1).

    Args:
        student_ce, teacher_ce: ``[N]`` nats per token, >= 0, same sample order.
        eps: nats, a floor of the denominator (never added to it): a teacher CE of 0 gives
            CE_student / eps, any teacher CE >= eps the paper's exact ratio (its Figure 3 example,
            student 1.1055 / teacher 0.0003 = 3685, needs eps <= 0.0003).

    Returns:
        ``[N]`` float32, dimensionless.

    Raises:
        ValueError: shapes differ, eps <= 0, or an input is negative or not finite.
    """
    if student_ce.shape != teacher_ce.shape:
        raise ValueError(f"student_ce {tuple(student_ce.shape)} and teacher_ce {tuple(teacher_ce.shape)} differ")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    for name, t in (("student_ce", student_ce), ("teacher_ce", teacher_ce)):
        if not torch.isfinite(t).all() or (t < 0).any():
            raise ValueError(f"{name} must be finite and >= 0")
    return student_ce.float() / teacher_ce.float().clamp(min=eps)


@torch.no_grad()
def score_dataset(model, examples: list[dict], pad_token_id: int, batch_size: int = 8,
                  accelerator=None, desc: str = "scoring", vocab: int | None = None) -> torch.Tensor:
    """Response CE of every example under ``model`` (no gradients), in example order.

    ``vocab``: the shared vocabulary V of a teacher-student pair (`dakd.models.check_pair`): the CE
    is taken over the softmax of logits ``[:, :V]``, as the losses and the top-k teacher cache do,
    so a head with padding rows (Qwen2.5-7B: 152,064 rows for a 151,936 shared vocabulary) gives the
    same CE_teacher on every path (issue 13). None: the model's whole head.

    Batches are formed from length-sorted examples (less padding); results are put back in the
    order of ``examples``. Logits are computed for the response rows only where the model allows
    it (`dakd.models.response_logits`). With an ``accelerator`` of several processes, each process scores a
    strided share and the shares are gathered, so every sample is scored exactly once.

    Returns:
        ``[N]`` float32 on the CPU, nats per response token.
    """
    was_training = model.training
    model.eval()
    out = torch.zeros(len(examples))
    device = accelerator.device if accelerator else next(model.parameters()).device
    for idx, b in share_batches(examples, pad_token_id, batch_size, device, accelerator, desc):
        rows = response_logits(model, b["input_ids"], b["attention_mask"], predicting_positions(b["response_mask"]))
        if idx:
            out[idx] = response_ce_rows(rows[:, :vocab], b["input_ids"], b["response_mask"]).cpu()
    model.train(was_training)
    if accelerator is not None and accelerator.num_processes > 1:
        # every process filled a disjoint set of positions; a sum reassembles the full vector
        out = accelerator.reduce(out.to(device), reduction="sum").cpu()
    return out


def forward_passes(n: int, world: int, batch_size: int) -> int:
    """Batches of ``batch_size`` each process runs when ``n`` items are split into strided shares
    over ``world`` processes: ceil(ceil(n / world) / batch_size), the largest share's, the same on
    every process (FSDP2 and ZeRO-3 gather the weights in every forward pass, so a process that
    stopped early would leave the others waiting)."""
    return math.ceil(math.ceil(n / world) / batch_size)


def share_batches(examples: list[dict], pad_token_id: int, batch_size: int, device, accelerator=None,
                  desc: str = "scoring"):
    """This process's share of ``examples`` in collated batches, for a no-grad scoring pass.

    Examples are sorted by length (less padding) and dealt out strided over the processes; every
    process yields `forward_passes` batches, a shorter share ending with repeats of the first
    example (for the others' gathers) whose results the caller discards.

    Yields:
        (indices into ``examples``, empty for a repeated batch; the collated batch on ``device``).
    """
    n = len(examples)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    collate = DistillCollator(pad_token_id)
    order = sorted(range(n), key=lambda i: len(examples[i]["input_ids"]))
    mine = order[rank::world]
    for s in tqdm(range(0, forward_passes(n, world, batch_size) * batch_size, batch_size), desc=desc,
                  disable=rank != 0, leave=False):
        idx = mine[s:s + batch_size]
        yield idx, {k: v.to(device) for k, v in collate([examples[i] for i in idx or order[:1]]).items()}


def teacher_ce_cached(model, examples: list[dict], pad_token_id: int, cache_folder: str | Path,
                      teacher_name: str, batch_size: int = 8, accelerator=None,
                      vocab: int | None = None) -> tuple[torch.Tensor, bool]:
    """CE_teacher for every example, read from ``cache_folder`` when the same teacher has already
    scored the same token ids (the teacher is frozen), else computed and written. The teacher is
    identified by `dakd.models.weights_fingerprint` (a local folder retrained in place is another
    teacher). ``vocab``: the shared vocabulary, as `score_dataset`; part of the cache key when given.

    Returns:
        (``[N]`` float32 nats per token, whether it came from the cache).
    """
    h = hashlib.sha256(weights_fingerprint(teacher_name).encode())
    if vocab is not None:
        h.update(f"vocab={vocab}".encode())
    for ex in examples:
        h.update(json.dumps([ex["input_ids"], ex["prompt_length"]]).encode())
    path = Path(cache_folder) / f"teacher_ce_{h.hexdigest()[:16]}.pt"
    if path.exists():
        ce = torch.load(path, weights_only=True)
        if ce.shape == (len(examples),):
            return ce, True
    ce = score_dataset(model, examples, pad_token_id, batch_size, accelerator, desc="teacher CE", vocab=vocab)
    if accelerator is None or accelerator.is_main_process:
        save_tensor(ce, path)
    return ce, False
