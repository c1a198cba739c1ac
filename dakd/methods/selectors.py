"""Selectors: which samples an epoch trains on.

A selector is built once per run (``Selector(run)``, `dakd.runstate.Run`) and answers, per epoch:
``ratio(epoch)`` (the selection ratio r(e) logged with the epoch), ``plan(cfg, n)`` (samples per epoch,
known before training, for the LR schedule), ``select(run, epoch, rec)`` (the epoch's sample
indices, ``[k]`` int64 into ``run.examples``; it may add fields to the epoch record ``rec`` and
draw from ``run.gen``), ``observe`` (None, or a callback that sees each micro-batch's teacher rows
during training) and ``end_epoch(run, epoch)``. ``save(state, extra)`` / ``load(state, extra)``
carry what it needs across a resume.
"""

from __future__ import annotations

import time

import torch

from ..difficulty import difficulty_scores, response_ce_rows, score_dataset, teacher_ce_cached
from ..io import save_tensor
from ..models import cache_dir, resolve_model
from ..updater import SELECTION_MODES, dds_quantiles, selection_ratio, stratified_update_with_info, subset_size


class AllSamples:
    """Every sample, every epoch (SFT, KD, SeqKD, GKD, DistiLLM); draws nothing."""

    observe = None

    def __init__(self, run):
        self.epochs = run.cfg.epochs

    def ratio(self, epoch: int) -> float:
        """The selection ratio logged for ``epoch``: 1.0 (all samples)."""
        return 1.0

    @staticmethod
    def plan(cfg, n: int) -> list[int]:
        return [n] * cfg.epochs

    def setup(self, run, resumed: bool) -> None:
        """Called once after the run state is built or restored; nothing to do."""

    def select(self, run, epoch: int, rec: dict) -> torch.Tensor:
        """``[N]`` int64: every example index, in order."""
        return torch.arange(len(run.examples))

    def end_epoch(self, run, epoch: int) -> None:
        """Called after the epoch's last step; nothing to do."""

    def save(self, state: dict, extra: dict) -> None:
        """Nothing to carry across a resume."""

    def load(self, state: dict, extra: dict) -> None:
        """Restore what `save` wrote: nothing here."""


class DiffUp(AllSamples):
    """DiffUp (DA-KD Algorithm 1): epoch 0 on all of D; before each later epoch the student's
    response CE over all of D gives DDS = CE_student / CE_teacher (Eq. 1) and the selection rule
    ``cfg.selection`` (`dakd.updater.SELECTION_MODES`) picks round(r(e) N) samples, r(e) of
    ``cfg.schedule`` (Eq. 2).

    CE_teacher is computed once per run: during epoch 0 from the teacher rows the loss already
    computes (`observe`; saved as ``<output_dir>/teacher_ce.pt`` for resume), else from the
    exact values stored in the top-k cache, else by a teacher pass (cached on disk by teacher and
    token ids)."""

    def __init__(self, run):
        cfg = run.cfg
        self.cfg, self.mode = cfg, SELECTION_MODES[cfg.selection]
        self.epochs = cfg.epochs
        self.teacher_ce: torch.Tensor | None = None
        self.vocab = run.vocab  # shared vocabulary (set before the parts are built)
        self._fill: torch.Tensor | None = None  # CE_teacher accumulated during epoch 0

    def ratio(self, epoch: int) -> float:
        """r(e) of ``cfg.schedule`` (Eq. 2), logged even for a rule that ignores it ("full")."""
        return selection_ratio(epoch, self.epochs, self.cfg.schedule)

    @staticmethod
    def plan(cfg, n: int) -> list[int]:
        if not SELECTION_MODES[cfg.selection].shrinks:
            return [n] * cfg.epochs
        return [subset_size(selection_ratio(e, cfg.epochs, cfg.schedule), n) for e in range(cfg.epochs)]

    def setup(self, run, resumed: bool) -> None:
        """CE_teacher from the run folder (resume) or from the top-k cache, where there is one."""
        n = len(run.examples)
        path = run.out / "teacher_ce.pt"
        if resumed and path.exists():
            try:  # a cache: if unreadable or of another size it is recomputed
                ce = torch.load(path, weights_only=True)
            except Exception:
                ce = None
            self.teacher_ce = ce if isinstance(ce, torch.Tensor) and ce.shape == (n,) else None
        if run.topk is not None and self.mode.uses_scores and self.teacher_ce is None:
            from ..teacher_cache import topk_response_ce

            # the exact teacher CE stored when the cache was built: DDS carries no top-k error
            self.teacher_ce = topk_response_ce(run.topk, run.examples, exact=True)

    def select(self, run, epoch: int, rec: dict) -> torch.Tensor:
        """``[k]`` int64 sorted example indices: all N at epoch 0; later the rule's pick of
        round(r(e) N) by DDS (Algorithm 1; draws from ``run.gen``). Adds DDS quantiles, every
        sample's DDS (``dds_by_sample``: {sample id: DDS}, example order), strata counts and the
        threshold to ``rec``."""
        n = len(run.examples)
        if epoch == 0:
            if self.mode.uses_scores and self.teacher_ce is None:
                self._fill = torch.zeros(n)
            return torch.arange(n)
        if self.mode.uses_scores:
            scores = self._scores(run, epoch, rec)
        else:
            scores = torch.zeros(n)  # random / full selection do not look at scores
        sel = stratified_update_with_info(scores, self.ratio(epoch), self.cfg.tau, run.gen, self.cfg.selection)
        rec |= {"n_high": sel.n_high, "n_low": sel.n_low, "dds_threshold": sel.threshold}
        return sel.indices

    def _scores(self, run, epoch: int, rec: dict) -> torch.Tensor:
        acc, pad = run.accelerator, run.tok.pad_token_id
        if self.teacher_ce is None:
            t0 = time.perf_counter()
            self.teacher_ce, hit = teacher_ce_cached(run.teacher, run.examples, pad, cache_dir() / "teacher_ce",
                                                     resolve_model(self.cfg.teacher), self.cfg.micro_batch_size, acc,
                                                     vocab=run.vocab)
            run.cost.add("teacher_ce_seconds", time.perf_counter() - t0)
            rec["teacher_ce_from_cache"] = hit
        student_ce = score_dataset(run.student, run.examples, pad, self.cfg.micro_batch_size, acc,
                                   desc=f"DDS epoch {epoch}", vocab=run.vocab)
        scores = difficulty_scores(student_ce, self.teacher_ce, self.cfg.dds_eps)
        rec |= {"dds": dds_quantiles(scores), "student_ce": dds_quantiles(student_ce),
                "teacher_ce": dds_quantiles(self.teacher_ce),
                # every sample's DDS by sample id (JSON keys are text), in example order: the
                # per-epoch distribution figures and `dakd.results.dds_of`
                "dds_by_sample": {str(e["sample_id"]): round(v, 5) for e, v in zip(run.examples, scores.tolist())}}
        return scores

    @property
    def observe(self):
        return self._observe if self._fill is not None else None

    def _observe(self, micro: list[dict], batch: dict, teacher_rows) -> None:
        # epoch 0 sees all of D with the teacher's logits at hand: its response CE comes for free
        # here instead of costing a separate teacher pass before epoch 1
        self._fill[[e["index"] for e in micro]] = response_ce_rows(  # over the shared vocabulary
            teacher_rows[:, :self.vocab], batch["input_ids"], batch["response_mask"]).cpu()

    def end_epoch(self, run, epoch: int) -> None:
        """After epoch 0: sum the processes' CE_teacher shares and save them for a resume."""
        if self._fill is None:
            return
        ce, self._fill = self._fill, None
        acc = run.accelerator
        if acc.num_processes > 1:
            ce = acc.reduce(ce.to(acc.device), reduction="sum").cpu()
        self.teacher_ce = ce
        if acc.is_main_process:
            save_tensor(ce, run.out / "teacher_ce.pt")


SELECTORS = {"all": AllSamples, "diffup": DiffUp}
