"""Objectives: what the student minimises on a micro-batch, per response token.

An objective is built once per run (``Objective(run)``) and called as ``objective(student, batch,
sample_ids)`` on one collated micro-batch (`dakd.data.DistillCollator`); it returns the per-token
loss ``[B, T-1]`` float32 nats (0 off the response mask; the gradient reaches the student) and the
teacher's logits at the response rows (``[M, V_t]``, or None) for a selector that observes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..difficulty import predicting_positions
from ..losses import canonical_loss_name, get_per_token_loss, loss_params
from ..models import response_logits


def _scatter(mask: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """``[M]`` -> ``[B, T-1]``, zero off the mask; the gradient flows through."""
    return torch.zeros(mask.shape, dtype=tok.dtype, device=tok.device).masked_scatter(mask, tok)


def cross_entropy_tokens(student, batch: dict) -> torch.Tensor:
    """Cross-entropy of each response token of ``batch`` under ``student`` (teacher forcing).

    Returns:
        ``[B, T-1]`` float32 nats, zero off the response mask.
    """
    ids = batch["input_ids"]
    mask = batch["response_mask"][:, 1:].bool()
    s_rows = response_logits(student, ids, batch["attention_mask"], predicting_positions(batch["response_mask"]))
    return _scatter(mask, F.cross_entropy(s_rows.float(), ids[:, 1:][mask], reduction="none"))


def divergence_tokens(loss: str, params: dict, student, teacher, batch: dict, vocab: int, topk=None,
                      sample_ids=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A registered divergence (`dakd.losses.register_loss`) between the teacher's and the
    student's next-token distributions over the shared vocabulary ``[:vocab]``, at each response
    token of ``batch`` (ground-truth or generated responses alike).

    Both models' logits are computed at the response rows only where the model allows it
    (`dakd.models.response_logits`): the loss reads nothing else, and the LM head over the prompt
    and padding rows is a large share of a small student's forward and backward. With ``topk`` (a
    `dakd.teacher_cache.TopKTeacherCache`) the teacher's distribution is read from the cache for
    the examples ``sample_ids`` instead of a teacher forward.

    Returns:
        (``[B, T-1]`` float32 nats, zero off the response mask; the teacher's logits ``[M, V_t]`` at
        the M response rows in row-major order, or None with the cache).
    """
    ids, attn = batch["input_ids"], batch["attention_mask"]
    mask = batch["response_mask"][:, 1:].bool()
    pos = predicting_positions(batch["response_mask"])
    s_rows = response_logits(student, ids, attn, pos)  # [M, V_s]
    if topk is not None:
        from ..teacher_cache import cached_per_token_loss

        rows = topk.response_rows(sample_ids, batch["response_mask"])
        return cached_per_token_loss(loss, s_rows[:, :vocab], rows, mask, **params), None
    with torch.no_grad():
        t_rows = response_logits(teacher, ids, attn, pos)
    fn = get_per_token_loss(loss)
    return _scatter(mask, fn(s_rows[None, :, :vocab], t_rows[None, :, :vocab], None, **params)[0]), t_rows


class Objective:
    """Base of the objectives: nothing to set up or carry across a resume."""

    def __init__(self, run):
        self.run = run

    def setup(self, run, resumed: bool) -> None:
        """Called once after the run state is built or restored; nothing to do."""

    def save(self, state: dict, extra: dict) -> None:
        """Add what a resume needs to ``state`` (JSON) and ``extra`` (tensors); nothing here."""

    def load(self, state: dict, extra: dict) -> None:
        """Restore what `save` wrote; nothing here."""


class CrossEntropy(Objective):
    """SFT and SeqKD: cross-entropy of the batch's response tokens."""

    def __call__(self, student, batch: dict, sample_ids) -> tuple[torch.Tensor, None]:
        return cross_entropy_tokens(student, batch), None


class Divergence(Objective):
    """KD, DA-KD, GKD, DistiLLM: ``cfg.loss`` with its weight field against the live teacher
    (``run.teacher``) or the top-k cache (``run.topk``)."""

    def __init__(self, run):
        super().__init__(run)
        self.loss, self.params = canonical_loss_name(run.cfg.loss), loss_params(run.cfg)

    def __call__(self, student, batch: dict, sample_ids):
        r = self.run
        return divergence_tokens(self.loss, self.params, student, r.teacher, batch, r.vocab, r.topk, sample_ids)


OBJECTIVES = {"ce": CrossEntropy, "divergence": Divergence}


def token_losses(cfg, student, teacher, batch: dict, vocab: int, topk=None, sample_ids=None):
    """Per-token training loss of ``cfg.method``'s objective on one micro-batch, and the teacher's
    logits at its response rows (None for a cross-entropy objective or a cached teacher): the
    functional form of `CrossEntropy` / `Divergence`, for benchmarks and tests.

    Returns:
        (``[B, T-1]`` float32 nats, zero off the response mask; ``[M, V_t]`` or None).
    """
    from . import METHODS

    if METHODS[cfg.method].objective == "ce":
        return cross_entropy_tokens(student, batch), None
    return divergence_tokens(canonical_loss_name(cfg.loss), loss_params(cfg), student, teacher, batch, vocab,
                             topk, sample_ids)
