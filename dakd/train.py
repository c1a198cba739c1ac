"""One training loop for SFT, KD with any registered loss, DA-KD (DiffUp + BDL, Algorithm 1) and the
SeqKD, GKD and DistiLLM baselines (their generation, replay buffer and schedules: `dakd.baselines`).

The loop runs on accelerate, so the same code serves one CPU, one GPU and many processes. Batches
are global (``cfg.batch_size`` samples per optimiser step over all processes); each process takes a
strided share of every global batch and accumulates micro-batches. The loss of a step is the sum of
per-token divergences over the step's response tokens divided by the number of those tokens in the
whole global batch, so every response token weighs the same however the batch is split.

Each run writes into ``cfg.output_dir``: ``config.json`` (resolved config, hash, versions),
``train_log.json`` (filter report, per-epoch records, the Table 3 cost record), ``student/`` (final
weights, safetensors) and ``checkpoint/`` (the last finished epoch, for resume); with
``save_epoch_students`` also ``epoch_students/epoch{e}/`` after every epoch, and for SeqKD
``seqkd_data.jsonl`` (the teacher-generated training set).

Training data: ``cfg.dataset`` "dolly" comes from `data.load_split`, the task-specific "samsum" and
"gsm8k" (Table 2) from `tasks.load_task`; ``train_samples`` draws the same seeded subset from either.

Resume: kd, dakd and sft resume exactly. gkd and distillm keep their coins and generation seeds in
the checkpointed generator and DistiLLM's SGO state in ``state.json``; the replay buffer is saved
with a single process (resume then equals an uninterrupted run) and starts empty on resume with
several processes.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from . import baselines, data, tasks
from .config import DistillConfig, run_metadata
from .difficulty import forward_passes
from .io import write_json
from .launch import MIXED_PRECISION, make_accelerator
from .methods import METHODS, build_parts
from .methods.objectives import token_losses  # noqa: F401  (the functional loss, for benchmarks and tests)
from .methods.selectors import SELECTORS
from .methods.sources import SOURCES, sgo_validation_source  # noqa: F401
from .models import check_pair, head_rows, head_size, load_frozen, load_model, load_tokenizer, resolve_model
from .runstate import (CheckpointError, CostRecord, NonFiniteLossError, Run, find_checkpoint,  # noqa: F401
                       load_checkpoint_student, read_state, read_trainer_state, save_checkpoint,
                       save_student, sharded_optimizer)


# ----------------------------------------------------------------------------- the spine

def train(cfg: DistillConfig, accelerator=None, resume: bool = True, stop_after: int | None = None) -> dict:
    """Run one distillation (or SFT) and write its JSON records; returns the train log.

    The method's declaration (`dakd.methods.METHODS`) names its three parts: the *selector* picks
    each epoch's samples (all of them, or DiffUp: Algorithm 1 with DDS), the *source* supplies
    each global batch's responses (ground truth, GKD's on-policy samples, DistiLLM's SGO), the
    *objective* gives the per-token loss (cross-entropy, or a registered divergence against the
    live teacher or the top-k cache). Method ``sft`` never loads the teacher (a run with
    ``student`` = a teacher's name is the paper's teacher-SFT stage); ``seqkd`` trains on
    teacher-sampled responses (`baselines.seqkd_records`).

    Returns:
        dict with ``filter`` (counts of dropped/truncated samples; SeqKD adds ``empty_generation``),
        ``epochs`` (per-epoch records: ratio, subset size and ids, strata counts, DDS quantiles and
        values, mean loss in nats/token, seconds, ``generated_batches``, ``generation_seconds``,
        ``iterations_end``; DistiLLM adds ``p_sgo``, ``val_loss`` (nats/token, before the epoch),
        ``replay_batches`` and ``sgo_batches``), ``cost`` (`dakd.runstate.COST_KEYS`, with
        ``total_seconds`` and ``dds_share``) and for SeqKD ``seqkd`` (its cache file and reuse).

    Resume: with ``resume`` the last finished epoch in ``output_dir/checkpoint`` is resumed when
    it was written by the same config hash (another config's checkpoint is ignored: training starts
    over and replaces it). ``stop_after``: return after that many epochs of this call (checkpointed
    when ``save_checkpoints``), without the final student: a long run done over several sittings.

    Raises:
        NonFiniteLossError: a loss or the gradient norm of a step was not finite; the message names
            the step and sample ids; the optimiser did not step.
        CheckpointError: the checkpoint of this config is damaged (unreadable ``state.json``,
            truncated ``trainer_state.pt``, missing weights), holds another model's weights, or was
            written for other training data.
        ValueError: the teacher and student do not share a tokenizer, or no sample is left.
    """
    run = setup(cfg, accelerator, resume)
    selector, source, objective = run.parts
    first = len(run.state["epochs"])
    last = cfg.epochs if stop_after is None else min(cfg.epochs, first + stop_after)
    for epoch in range(first, last):
        rec = {"epoch": epoch, "ratio": selector.ratio(epoch), "num_samples": len(run.examples)}
        source.begin_epoch(run, epoch, rec)
        with run.cost.timed("dds_seconds", into=rec, as_key="dds_seconds"):
            idx = selector.select(run, epoch, rec)
        rec |= {"subset_size": len(idx), "subset_ids": [run.examples[i]["sample_id"] for i in idx.tolist()]}
        t1 = time.perf_counter()
        loss_sum, tok_sum, steps = 0.0, 0, 0
        run.student.train()
        bar = tqdm(epoch_batches(run, idx), desc=f"{cfg.method} epoch {epoch}",
                   disable=not run.accelerator.is_main_process, leave=False)
        for gbatch in bar:
            share = source.draw(run, gbatch)
            step_loss = train_step(run, share, objective, selector.observe,
                                   where=f"epoch {epoch}, step {run.cost['iterations']}")
            loss_sum, tok_sum, steps = loss_sum + step_loss, tok_sum + share.n_tok, steps + 1
            for key, value in (("iterations", 1), ("tokens_seen", share.n_seen), ("response_tokens_seen", share.n_tok)):
                run.cost.add(key, value)
            bar.set_postfix(loss=f"{step_loss / max(share.n_tok, 1):.4f}")
        selector.end_epoch(run, epoch)
        rec |= {"steps": steps, "mean_loss": loss_sum / max(tok_sum, 1), "train_seconds": time.perf_counter() - t1,
                "lr_end": run.sched.get_last_lr()[0]}
        rec |= source.end_epoch(run, rec) | {"iterations_end": run.cost["iterations"]}
        finish_epoch(run, rec)
    if last < cfg.epochs:
        run.accelerator.print(f"[dakd] stopped after epoch {last - 1} of {cfg.epochs} (stop_after={stop_after})")
        return run.meta | run.state
    return finish(run)


def train_step(run: Run, share, objective, observe=None, where: str = "") -> float:
    """One optimiser step on this process's share of a global batch (any method).

    Micro-batches of ``cfg.micro_batch_size`` accumulate gradients (``no_sync`` on all but the
    last); each contributes ``sum(per-token loss) * weight * world / n_tok``, where ``n_tok`` is the
    response-token count of the whole global batch: every response token weighs the same however
    the batch is split (DDP averages gradients over processes, the factor ``world`` undoes that).
    The loss is checked before backward, the clipped gradient norm before the optimiser steps.

    Args:
        share: a `dakd.methods.sources.Share`; objective: ``fn(student, batch, sample_ids) ->
            ([B, T-1] nats, teacher rows or None)``; observe: None or ``fn(micro, batch, teacher_rows)``
            (a selector collecting teacher CE); where: "epoch e, step s" for error messages.

    Returns:
        The step's summed per-token loss over all processes (nats; divide by ``n_tok`` for the mean).

    Raises:
        NonFiniteLossError: a micro-batch's loss or the gradient norm is NaN or inf (no step taken).
    """
    acc, cfg = run.accelerator, run.cfg
    collate = data.DistillCollator(run.tok.pad_token_id)
    micro = [(share.examples[j:j + cfg.micro_batch_size], share.weight)
             for j in range(0, len(share.examples), cfg.micro_batch_size)]
    # every process runs the same number of forward passes (FSDP2 and ZeRO-3 gather parameters in
    # each one, and a process that stops early leaves the others waiting): a shorter share is padded
    # with zero-weight stand-ins up to the micro-batches of the largest share of this global batch
    n_micro = forward_passes(len(share.sample_ids), run.world, cfg.micro_batch_size)
    micro += [(share.examples[:1], 0.0)] * (n_micro - len(micro))
    step_loss = torch.zeros((), device=acc.device)
    for j, (mb, weight) in enumerate(micro):
        batch = {k: v.to(acc.device) for k, v in collate(mb).items()}
        last = j == len(micro) - 1
        acc.sync_gradients = last  # DeepSpeed steps its engine only at the boundary
        with acc.no_sync(run.student) if not last else contextlib.nullcontext():
            per_tok, t_rows = objective(run.student, batch, [e["sample_id"] for e in mb])
            if observe is not None and weight:
                observe(mb, batch, t_rows)
            del t_rows
            loss = per_tok.sum() * (weight * run.world / max(share.n_tok, 1))
            finite = bool(torch.isfinite(loss))
            if not all_processes(acc, finite):  # every process stops, none waits in backward
                raise NonFiniteLossError(
                    (f"non-finite loss {loss.item()} at {where}, sample ids {[e['sample_id'] for e in mb]}"
                     if not finite else f"non-finite loss on another process at {where}")
                    + "; the step was not taken")
            acc.backward(loss)
        step_loss += per_tok.detach().sum() * weight
    # the loss check above cannot see a gradient that overflows in backward (half precision):
    # the norm clipping computes anyway is checked before stepping
    norm = acc.clip_grad_norm_(run.student.parameters(), cfg.max_grad_norm)
    if norm is not None and not torch.isfinite(torch.as_tensor(norm)).all():
        raise NonFiniteLossError(f"non-finite gradient norm {float(norm)} at {where}, sample ids "
                                 f"{share.sample_ids}; the step was not taken")
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    return acc.reduce(step_loss, reduction="sum").item()


def epoch_batches(run: Run, idx: torch.Tensor) -> list[list[int]]:
    """The epoch's global batches: ``idx`` in a seeded random order (``run.gen``), then grouped by
    length (`length_grouped`, ``cfg.group_by_length``) or cut in order into ``cfg.batch_size``."""
    cfg = run.cfg
    order = idx[torch.randperm(len(idx), generator=run.gen)].tolist()
    if cfg.group_by_length:
        return length_grouped(order, [len(e["input_ids"]) for e in run.examples], cfg.batch_size, run.gen)
    return [order[s:s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]


def finish_epoch(run: Run, rec: dict) -> None:
    """Record the epoch (cost, log line), save its student if asked, checkpoint, and wait for all."""
    cfg, acc = run.cfg, run.accelerator
    run.cost.add("train_seconds", rec["train_seconds"])
    run.cost.add("generation_seconds", rec["generation_seconds"])
    run.state["epochs"].append(rec)
    acc.print(f"[dakd] epoch {rec['epoch']}: r={rec['ratio']:.3f} |D'|={rec['subset_size']} steps={rec['steps']} "
              f"loss={rec['mean_loss']:.4f} nats/token ({rec['train_seconds']:.1f}s train, "
              f"{rec['dds_seconds']:.1f}s DDS, {rec['generated_batches']} generated batches)")
    if cfg.save_epoch_students:
        save_student(acc, run.student, run.out / "epoch_students" / f"epoch{rec['epoch']}", cfg.save_dtype, run.tok)
    if cfg.save_checkpoints:
        extra: dict = {}
        for part in run.parts:
            part.save(run.state, extra)
        save_checkpoint(run.out, acc, run.student, run.opt, run.sched, run.gen, run.state, extra=extra or None)
    acc.wait_for_everyone()


def finish(run: Run) -> dict:
    """Close the cost record, save the final student and ``train_log.json``; returns the log."""
    run.cost.finish(run.t_start)
    log = run.meta | run.state
    save_student(run.accelerator, run.student, run.out / "student", run.cfg.save_dtype, run.tok)
    if run.accelerator.is_main_process:
        write_json(run.out / "train_log.json", log)
    run.accelerator.wait_for_everyone()
    return log


# ----------------------------------------------------------------------------- set-up

def setup(cfg: DistillConfig, accelerator=None, resume: bool = True) -> Run:
    """Everything before the first epoch: config record, data (with the method's response
    preparation), resume point, models, optimizer and schedule, the method's parts, the run state
    (restored from the checkpoint when resuming).

    Raises:
        ValueError: no training sample is left after filtering, or the pair shares no tokenizer.
        CheckpointError: as `train`.
    """
    from accelerate.utils import set_seed

    accelerator = accelerator or make_accelerator(cfg.dtype)
    if accelerator.mixed_precision != MIXED_PRECISION[cfg.dtype]:
        raise ValueError(f"dtype {cfg.dtype!r} trains with accelerate mixed_precision "
                         f"{MIXED_PRECISION[cfg.dtype]!r}, but the accelerator given has {accelerator.mixed_precision!r}")
    set_seed(cfg.seed)
    run = Run(cfg, accelerator, Path(cfg.output_dir), None, [], t_start=time.perf_counter(), meta=run_metadata(cfg))
    if accelerator.is_main_process:
        write_json(run.out / "config.json", run.meta | {"num_processes": accelerator.num_processes})
    method = METHODS[cfg.method]
    run.tok = load_tokenizer(cfg.student, cfg.trust_remote_code)
    records, run.held_out = load_train_records(cfg, hold_out=SOURCES[method.source].hold_out(cfg))
    seqkd_info = None
    if method.teacher_responses:
        def load_teacher():
            return load_frozen(cfg.teacher, cfg.dtype, cfg.trust_remote_code).to(accelerator.device)
        records, seqkd_info = baselines.seqkd_records(cfg, records, run.tok, load_teacher, accelerator, run.out)
    run.examples, report = data.tokenize_records(records, run.tok, cfg.prompt_style, cfg.max_prompt_length,
                                                 cfg.max_length)
    n = len(run.examples)
    accelerator.print(f"[dakd] {cfg.method}: {report}")
    if n == 0:
        raise ValueError(f"no training sample of {cfg.dataset!r} is left after filtering ({report}); "
                         f"raise max_prompt_length ({cfg.max_prompt_length}) or max_length ({cfg.max_length})")
    ckpt, saved, d_hash = _resume_point(run, resume)
    # the trained weights (and so AdamW's state) stay float32, the master copy; cfg.dtype is the
    # compute dtype (accelerate's autocast / FSDP2 param_dtype / DeepSpeed bf16)
    student = (load_checkpoint_student(ckpt, cfg) if saved
               else load_model(cfg.student, torch.float32, cfg.trust_remote_code))
    student.config.use_cache = False
    run.student, run.vocab = student, head_size(student)
    topk_record = _load_teacher(run) if method.needs_teacher else None
    run.parts = build_parts(run)
    _prepare(run, SELECTORS[method.selector].plan(cfg, n))
    state = {"epochs": [], "cost": CostRecord().data, "filter": report.to_dict(), "num_samples": n,
             "planned_iterations": run.total_steps, "config_hash": run.meta["config_hash"], "data_hash": d_hash,
             "num_processes": accelerator.num_processes}
    if seqkd_info is not None:
        state["filter"]["empty_generation"] = seqkd_info["empty_generation"]
        state["seqkd"] = seqkd_info
    extra = {}
    if saved:
        extra = _restore(run, ckpt)
        if seqkd_info is not None:  # this session's cache use, not the interrupted one's
            saved["seqkd"], saved["filter"] = state["seqkd"], state["filter"]
        state = saved
        accelerator.print(f"[dakd] resumed after epoch {len(state['epochs'])} from {ckpt}")
    run.state, run.cost = state, CostRecord(state["cost"])
    if seqkd_info is not None:
        run.cost.add("teacher_generation_seconds", seqkd_info["generation_seconds"])
        run.cost.add("generation_seconds", seqkd_info["generation_seconds"])
    if topk_record is not None:
        state["teacher_cache"] = topk_record
    for part in run.parts:
        if saved:
            part.load(state, extra)
        part.setup(run, bool(saved))
    return run


def _resume_point(run: Run, resume: bool):
    """(checkpoint folder, its state, the data hash): the checkpoint is resumed only when written
    by this very config (pipeline.run retrains a changed config into the same folder, where the
    old run's finished checkpoint would hand back the old weights) for the same training data;
    (None, None, hash) when there is none to resume.

    Raises:
        CheckpointError: a checkpoint of this config written for other training data.
    """
    n, d_hash, acc = len(run.examples), data.examples_hash(run.examples), run.accelerator
    ckpt = find_checkpoint(run.out) if resume else None
    saved = read_state(ckpt) if ckpt else None
    if saved is None:
        return None, None, d_hash
    if saved["config_hash"] != run.meta["config_hash"]:
        acc.print(f"[dakd] {ckpt} is of config {saved['config_hash']}, not "
                  f"{run.meta['config_hash']}: not resumed, training starts over")
        return None, None, d_hash
    if sharded_optimizer(acc) and saved.get("num_processes") != acc.num_processes:
        raise CheckpointError(f"{ckpt / 'state.json'}: its optimizer is sharded over {saved.get('num_processes')} "
                              f"processes, not {acc.num_processes}; resume with as many, or delete {ckpt}")
    if (saved["num_samples"], saved.get("data_hash", d_hash)) != (n, d_hash):
        raise CheckpointError(f"{ckpt / 'state.json'}: written for other training data "
                              f"({saved['num_samples']} samples, data hash {saved.get('data_hash')}; "
                              f"now {n}, {d_hash}); delete {ckpt} to start over")
    return ckpt, saved, d_hash


def _load_teacher(run: Run) -> dict | None:
    """Load the frozen teacher (``run.teacher``, ``run.vocab`` = the shared vocabulary) or, with
    ``cfg.teacher_cache_k``, open or build the top-k cache (``run.topk``) and return its record; a
    cache already built for these settings needs no teacher weights (V from the teacher's config).

    Raises:
        ValueError: the teacher and student do not share a tokenizer (`dakd.models.check_pair`).
    """
    cfg, acc = run.cfg, run.accelerator
    teacher_tok = load_tokenizer(cfg.teacher, cfg.trust_remote_code)
    hit = False
    if cfg.teacher_cache_k:
        rows = head_rows(cfg.teacher, cfg.trust_remote_code)
        if rows is not None:
            from .teacher_cache import topk_cache_path

            run.vocab = check_pair(teacher_tok, run.tok, rows, run.student)
            path = topk_cache_path(resolve_model(cfg.teacher), run.examples, cfg.teacher_cache_k, cfg.max_length,
                                   run.vocab)
            hit = all_processes(acc, path.exists())
    if not hit:
        run.teacher = load_frozen(cfg.teacher, cfg.dtype, cfg.trust_remote_code)
        run.vocab = check_pair(teacher_tok, run.tok, run.teacher, run.student)
    if not cfg.teacher_cache_k:
        return None
    from .teacher_cache import load_or_build_topk_cache

    t0 = time.perf_counter()  # the cache's time (opened, or built), the teacher's loading aside
    run.topk, from_cache = load_or_build_topk_cache(
        None if run.teacher is None else run.teacher.to(acc.device), run.examples, run.tok.pad_token_id,
        cfg.teacher_cache_k, resolve_model(cfg.teacher), cfg.max_length, run.vocab, cfg.micro_batch_size,
        accelerator=acc)
    record = {"k": cfg.teacher_cache_k, "path": str(run.topk.path), "from_cache": from_cache,
              "teacher_loaded": run.teacher is not None, "seconds": time.perf_counter() - t0}
    run.teacher = None  # every step reads the cache: the teacher's memory is given back
    return record


def _prepare(run: Run, plan: list[int]) -> None:
    """Optimizer (AdamW), cosine schedule over the planned steps, accelerate's preparation, the
    teacher on the device, and the run's generator seeded with ``cfg.seed``."""
    cfg, acc = run.cfg, run.accelerator
    run.total_steps = sum(math.ceil(k / cfg.batch_size) for k in plan)
    opt = torch.optim.AdamW(run.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * run.total_steps), run.total_steps)
    _configure_deepspeed(acc, cfg)
    run.student, run.opt = acc.prepare(run.student, opt)
    if run.teacher is not None:
        run.teacher = run.teacher.to(acc.device)
    run.gen = torch.Generator().manual_seed(cfg.seed)


def _restore(run: Run, ckpt: Path) -> dict:
    """Optimizer, scheduler and generator state from ``ckpt``; returns its ``extra`` (method parts).

    Raises:
        CheckpointError: truncated, foreign or missing trainer state.
    """
    ts = read_trainer_state(ckpt)
    try:
        if sharded_optimizer(run.accelerator):  # every process reads its own optimizer shard
            run.accelerator.load_state(str(ckpt / "accelerate_state"))
        else:
            run.opt.load_state_dict(ts["optimizer"])
        run.sched.load_state_dict(ts["scheduler"])
        run.gen.set_state(ts["generator"])
    except Exception as e:  # foreign or mismatched: refused alike
        raise CheckpointError(f"{ckpt / 'trainer_state.pt'}: unreadable or not this run's trainer "
                              f"state ({type(e).__name__}: {e}); delete {ckpt} to start over") from e
    return ts.get("extra") or {}


def epoch_plan(cfg: DistillConfig, n: int) -> list[int]:
    """Number of samples trained on at each epoch (known before training, for the LR schedule)."""
    return SELECTORS[METHODS[cfg.method].selector].plan(cfg, n)


def length_grouped(order: list[int], lengths: list[int], batch_size: int, generator,
                   group: int = 16) -> list[list[int]]:
    """Split a shuffled sample order into batches of similar length, in a random batch order.

    Mega-batches of ``group * batch_size`` consecutive samples are sorted by length and cut into
    batches (the scheme of transformers' LengthGroupedSampler), so each epoch still sees every
    sample once, in a seeded order, with far less padding than random batches.
    """
    batches = []
    for s in range(0, len(order), group * batch_size):
        mega = sorted(order[s:s + group * batch_size], key=lambda i: -lengths[i])
        batches += [mega[j:j + batch_size] for j in range(0, len(mega), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def load_train_records(cfg: DistillConfig, hold_out: int = 0) -> tuple[list[dict], list[dict]]:
    """The training records of a run, and the records held out of them.

    "dolly" (or any `data.DATASETS` set with a train split) comes from `data.load_split`; the
    task-specific "samsum" and "gsm8k" from `tasks.load_task` (instruction records). With
    ``train_samples`` the same seeded subset rule applies to both: ``random.Random(cfg.seed).sample``
    over record positions, kept in file order. ``hold_out`` > 0 first sets the file's last
    ``hold_out`` records aside (DistiLLM's validation slice of a set without a dev split).

    Returns:
        (training records, held-out records in file order).

    Raises:
        ValueError: unknown data set, train_samples < 1, or hold_out leaving no training record.
        DataError, FileNotFoundError: as the loaders.
    """
    if cfg.dataset in tasks.TASK_FILES:
        data.check_split(tasks.TASK_FILES, cfg.dataset, "train", cfg.train_samples, kind="task")
        records = tasks.load_task(cfg.dataset, "train")
    elif hold_out == 0:
        return data.load_split(cfg.dataset, "train", limit=cfg.train_samples, seed=cfg.seed), []
    else:
        data.check_split(data.DATASETS, cfg.dataset, "train", cfg.train_samples)
        records = data.load_split(cfg.dataset, "train")
    if not 0 <= hold_out < len(records):
        raise ValueError(f"cannot hold out {hold_out} of the {len(records)} {cfg.dataset} training records")
    pool, held = records[:len(records) - hold_out], records[len(records) - hold_out:]
    limit = cfg.train_samples
    if limit is not None and limit < len(pool):
        keep = sorted(random.Random(cfg.seed).sample(range(len(pool)), limit))
        pool = [pool[i] for i in keep]
    return pool, held


def _configure_deepspeed(accelerator, cfg: DistillConfig) -> dict | None:
    """Fill the DeepSpeed config that accelerate would take from a DataLoader (this loop prepares
    none): ``train_micro_batch_size_per_gpu`` = ``cfg.micro_batch_size``,
    ``gradient_accumulation_steps`` = 1 and ``train_batch_size`` = micro-batch x processes.
    dakd accumulates the micro-batches of a global batch itself and tells DeepSpeed where the step
    falls (accelerate's ``sync_gradients`` at the last micro-batch, whatever the batch's size), and
    its loss is already normalised by the global batch's tokens: DeepSpeed's own accumulation count
    would divide every micro-batch's loss again, so a config's other value is overridden (said once).
    Returns the updated config dict, or None without DeepSpeed."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return None
    ds = plugin.deepspeed_config
    if ds.get("gradient_accumulation_steps", "auto") not in ("auto", 1):
        print(f"[dakd] DeepSpeed gradient_accumulation_steps {ds['gradient_accumulation_steps']} -> 1: "
              f"dakd accumulates the micro-batches of each global batch itself")
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = cfg.micro_batch_size * accelerator.num_processes
    return ds


def all_processes(accelerator, flag: bool) -> bool:
    """True when ``flag`` is True on every process (a collective: every process must call it). Each
    process passes what it saw before any of them acts on the answer, so all decide alike."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.gather(torch.tensor([flag], device=accelerator.device)).all())
