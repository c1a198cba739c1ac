"""Sources: where a global batch's responses come from.

A source is built once per run (``Source(run)``) and, for each global batch (a list of sample
indices), ``draw(run, gbatch)`` returns this process's `Share`: its examples (ground truth, or
prompts with generated responses), its weight (0 for the stand-in that keeps a process with
nothing to do in the collectives), and the global batch's response and total token counts, the
loss's normaliser. Every process makes the same draws from ``run.gen`` in the same order, so all
agree on each batch's source. ``begin_epoch`` / ``end_epoch`` bracket an epoch (DistiLLM validates
there); ``save`` / ``load`` carry state across a resume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import baselines as baselines
from ..runstate import params_sharded


@dataclass
class Share:
    """This process's part of one global batch.

    examples: the examples it trains on (at least one); weight: 1.0, or 0.0 for a stand-in whose
    loss is multiplied by 0; n_tok: response tokens of the whole global batch over all processes
    (the loss's normaliser); n_seen: all tokens of the global batch; sample_ids: the global batch's
    sample ids (error messages)."""
    examples: list[dict]
    weight: float
    n_tok: int
    n_seen: int
    sample_ids: list


def _response_tokens(e: dict) -> int:
    return len(e["input_ids"]) - e["prompt_length"]


class GroundTruth:
    """The data set's own responses (SFT, KD, DA-KD, and SeqKD's teacher-sampled set)."""

    def __init__(self, run):
        self.counts = {"fresh": 0, "replay": 0}
        self.gen_seconds = 0.0

    @staticmethod
    def hold_out(cfg) -> int:
        """Training records held out of the pool (DistiLLM's validation slice); 0 here."""
        return 0

    def setup(self, run, resumed: bool) -> None:
        """Called once after the run state is built or restored; nothing to do."""

    def begin_epoch(self, run, epoch: int, rec: dict) -> None:
        """Reset the epoch's generation counters."""
        self.counts = {"fresh": 0, "replay": 0}
        self.gen_seconds = 0.0

    def batch_source(self, run) -> str:
        """"ground_truth", "fresh" (the student generates now) or "replay" (from the buffer)."""
        return "ground_truth"

    def draw(self, run, gbatch: list[int]) -> Share:
        """This process's `Share` of the global batch ``gbatch`` (indices into ``run.examples``):
        a strided share (``gbatch[rank::world]``), or a zero-weight stand-in when that is empty;
        its responses from `batch_source` (generated ones are counted over all processes)."""
        share = gbatch[run.rank::run.world]
        weight = 1.0
        if not share:  # keep every process in the collective; this one contributes zero
            share, weight = gbatch[:1], 0.0
        ex = run.examples
        ids = [ex[i]["sample_id"] for i in gbatch]
        source = self.batch_source(run)
        if source == "ground_truth":
            return Share([ex[i] for i in share], weight, sum(_response_tokens(ex[i]) for i in gbatch),
                         sum(len(ex[i]["input_ids"]) for i in gbatch), ids)
        self.counts[source] += 1
        gen_seed = int(torch.randint(2 ** 31 - 1, (), generator=run.gen)) if source == "fresh" else None
        if not weight:  # nothing of this batch is this process's: a zero-weight stand-in
            local = [ex[share[0]]]
            if source == "fresh" and params_sharded(run.accelerator):
                # sharded weights: the others' generate gathers them from this process too
                self.generate(run, share[:1], gen_seed, keep=False)
        elif source == "fresh":
            local = self.generate(run, share, gen_seed)
        else:
            local = self.replay(run, len(share))
        counts = torch.tensor([sum(_response_tokens(e) for e in local) * weight,
                               sum(len(e["input_ids"]) for e in local) * weight],
                              dtype=torch.float64, device=run.accelerator.device)
        if run.world > 1:
            counts = run.accelerator.reduce(counts, reduction="sum")
        n_tok, n_seen = (int(v) for v in counts.tolist())
        return Share(local, weight, n_tok, n_seen, ids)

    def generate(self, run, share: list[int], seed: int, keep: bool = True) -> list[dict]:
        """The student's sampled responses to the prompts of ``share`` (`baselines.sample_responses`;
        with sharded weights in step with the other processes); ``keep`` False: a stand-in's
        generation, run only to take part in the gathers."""
        cfg, ex = run.cfg, run.examples
        t0 = time.perf_counter()
        prompts = [ex[i]["input_ids"][:ex[i]["prompt_length"]] for i in share]
        gens = baselines.sample_responses(run.accelerator.unwrap_model(run.student), prompts, run.tok.pad_token_id,
                                          run.tok.eos_token_id, cfg.gen_max_new_tokens, cfg.gen_temperature,
                                          seed=seed + run.rank, max_total_length=cfg.max_length,
                                          synced_gpus=params_sharded(run.accelerator))
        local = baselines.generated_examples([ex[i] for i in share], gens)
        self.gen_seconds += time.perf_counter() - t0
        run.student.train()
        return local

    def replay(self, run, k: int) -> list[dict]:
        """``k`` examples from a replay buffer.

        Raises:
            NotImplementedError: this source keeps none (only `SGO` does).
        """
        raise NotImplementedError("this source keeps no replay buffer")

    def end_epoch(self, run, rec: dict) -> dict:
        """The epoch record's generation fields."""
        return {"generated_batches": self.counts["fresh"], "generation_seconds": self.gen_seconds}

    def save(self, state: dict, extra: dict) -> None:
        """Nothing to carry across a resume."""

    def load(self, state: dict, extra: dict) -> None:
        """Restore what `save` wrote: nothing here."""


class OnPolicy(GroundTruth):
    """GKD: with probability ``student_data_fraction`` (a coin from ``run.gen`` per global batch)
    the student samples the batch's responses; else the ground truth."""

    def batch_source(self, run) -> str:
        coin = torch.rand((), generator=run.gen).item()
        return "fresh" if coin < run.cfg.student_data_fraction else "ground_truth"


class SGO(GroundTruth):
    """DistiLLM's adaptive student-generated outputs (`dakd.baselines`): the SGO probability phi is
    updated from the student's validation loss before every epoch; each global batch draws u from
    ``run.gen`` and `baselines.sgo_batch_source` picks fresh generations (pushed into the replay
    buffer), a replayed batch, or the ground truth. The buffer is per process and is saved for a
    single-process resume (with several processes it starts empty on resume)."""

    def __init__(self, run):
        super().__init__(run)
        cfg = run.cfg
        self.sgo = baselines.AdaptiveSGO(prob=cfg.sgo_init_prob, step=cfg.sgo_prob_step, eps=cfg.sgo_loss_eps,
                                         max_prob=cfg.sgo_max_prob)
        self.buffer = baselines.ReplayBuffer(cfg.replay_buffer_size)
        # per process (its draws may differ between processes, unlike run.gen's)
        self.replay_gen = torch.Generator().manual_seed(cfg.seed + 1 + run.rank)
        self.val_examples: list[dict] = []
        self.world = run.world

    @staticmethod
    def hold_out(cfg) -> int:
        return cfg.sgo_val_samples if sgo_validation_source(cfg.dataset) == "held_out" else 0

    def setup(self, run, resumed: bool) -> None:
        """Tokenize the validation records (dev split, or the held-out slice) and record their
        source and filter counts in ``run.state["sgo_validation"]``."""
        from .. import data, tasks

        cfg = run.cfg
        source = sgo_validation_source(cfg.dataset)
        records = (run.held_out if source == "held_out" else
                   tasks.load_task(cfg.dataset, "dev", cfg.sgo_val_samples) if cfg.dataset in tasks.TASK_FILES
                   else data.load_split(cfg.dataset, "dev", limit=cfg.sgo_val_samples))
        self.val_examples, report = data.tokenize_records(records, run.tok, cfg.prompt_style,
                                                          cfg.max_prompt_length, cfg.max_length)
        run.state["sgo_validation"] = {"source": source, "filter": report.to_dict()}

    def begin_epoch(self, run, epoch: int, rec: dict) -> None:
        """Measure the student's validation loss and update phi (``rec``: ``val_loss``, ``p_sgo``,
        ``validation_seconds``)."""
        from ..difficulty import score_dataset

        super().begin_epoch(run, epoch, rec)
        # the student's validation loss before this epoch = after the previous one (DistiLLM
        # evaluates before training and after every epoch)
        t0 = time.perf_counter()
        val_ce = score_dataset(run.student, self.val_examples, run.tok.pad_token_id, run.cfg.micro_batch_size,
                               run.accelerator, desc=f"validation epoch {epoch}")
        n_resp = torch.tensor([_response_tokens(e) for e in self.val_examples], dtype=torch.float)
        rec["val_loss"] = float((val_ce * n_resp).sum() / n_resp.sum().clamp(min=1))
        rec["p_sgo"] = self.sgo.update(rec["val_loss"])
        rec["validation_seconds"] = time.perf_counter() - t0
        run.cost.add("validation_seconds", rec["validation_seconds"])

    def batch_source(self, run) -> str:
        u = torch.rand((), generator=run.gen).item()
        full = self.buffer.full
        if run.world > 1 and u < self.sgo.prob:  # full only when every process's buffer is
            acc = run.accelerator
            full = acc.reduce(torch.tensor(float(full), device=acc.device), reduction="sum").item() == run.world
        return baselines.sgo_batch_source(u, self.sgo.prob, run.cost["iterations"] / max(run.total_steps, 1), full)

    def generate(self, run, share: list[int], seed: int, keep: bool = True) -> list[dict]:
        """`GroundTruth.generate`, the kept generations also pushed into the replay buffer."""
        local = super().generate(run, share, seed, keep)
        if keep:
            self.buffer.push(local)
        return local

    def replay(self, run, k: int) -> list[dict]:
        """Up to ``k`` distinct examples drawn from this process's buffer (``replay_gen``)."""
        return self.buffer.sample(min(k, len(self.buffer)), self.replay_gen)

    def end_epoch(self, run, rec: dict) -> dict:
        run.state["sgo"] = self.sgo.to_dict()
        return super().end_epoch(run, rec) | {"replay_batches": self.counts["replay"],
                                              "sgo_batches": self.counts["fresh"] + self.counts["replay"]}

    def save(self, state: dict, extra: dict) -> None:
        """phi into ``state["sgo"]``; with one process the buffer and its generator into ``extra``."""
        state["sgo"] = self.sgo.to_dict()
        if self.world == 1:
            extra |= {"replay_buffer": self.buffer.state_dict(), "replay_generator": self.replay_gen.get_state()}

    def load(self, state: dict, extra: dict) -> None:
        """Restore what `save` wrote (with several processes the buffer starts empty)."""
        if state.get("sgo"):
            self.sgo = baselines.AdaptiveSGO(**state["sgo"])
        if self.world == 1 and "replay_buffer" in extra:
            self.buffer.load_state_dict(extra["replay_buffer"])
            self.replay_gen.set_state(extra["replay_generator"])


def sgo_validation_source(dataset: str) -> str:
    """Where DistiLLM's validation records come from: "dev" (the set's dev split) or "held_out"
    (the last records of its train file, for a set without a dev split, e.g. GSM8K)."""
    from .. import data, tasks

    has_dev = "dev" in data.DATASETS.get(dataset, {}) or "dev" in tasks.TASK_FILES.get(dataset, {})
    return "dev" if has_dev else "held_out"


SOURCES = {"ground_truth": GroundTruth, "on_policy": OnPolicy, "sgo": SGO}
