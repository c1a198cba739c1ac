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
import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from . import baselines as B
from . import data as D
from . import tasks as TK
from .config import DistillConfig, run_metadata
from .difficulty import (difficulty_scores, predicting_positions, response_ce_rows, save_tensor, score_dataset,
                         teacher_ce_cached)
from .losses import canonical_loss_name, get_per_token_loss
from .models import cache_dir, check_pair, head_rows, load_model, load_tokenizer, resolve_model, response_logits
from .updater import dds_quantiles, selection_ratio, stratified_update_with_info, subset_size


class NonFiniteLossError(RuntimeError):
    """A training loss or gradient norm was NaN or inf; the step was not taken."""


class CheckpointError(RuntimeError):
    """A checkpoint to resume from is damaged or belongs to another model or data set; the message
    names the file. Delete the checkpoint folder (or pass ``resume=False``) to start over."""


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (temporary file, then rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _loss_params(cfg: DistillConfig) -> dict:
    """The config's weight for ``cfg.loss``: lam for BDL, alpha for the skew losses, beta for the
    generalized JSD, else none."""
    name = canonical_loss_name(cfg.loss)
    if name == "bdl":
        return {"lam": cfg.lam}
    if name in ("skew_kl", "skew_reverse_kl"):
        return {"alpha": cfg.alpha}
    if name == "js_divergence":
        return {"beta": cfg.beta}
    return {}


def token_losses(cfg: DistillConfig, student, teacher, batch: dict, vocab: int, topk=None,
                 sample_ids=None):
    """Per-token training loss for one micro-batch, and the teacher's logits at its response rows.

    SFT and SeqKD: cross-entropy of the batch's response token (ground truth, or the teacher's
    generation for SeqKD). KD/DA-KD/GKD/DistiLLM: ``cfg.loss`` between the teacher's and the
    student's next-token distributions over the shared vocabulary ``[:vocab]``, on whatever
    response the batch holds (ground truth or student-generated).

    Both models' logits are computed at the response rows only where the model allows it
    (`dakd.models.response_logits`): the loss reads nothing else, and the LM head over the prompt
    and padding rows is a large share of a small student's forward and backward.

    With ``topk`` (a `dakd.teacher_cache.TopKTeacherCache`, ``cfg.teacher_cache_k``) the teacher's
    distribution is read from the cache for the examples ``sample_ids`` instead of a teacher forward.

    Returns:
        (``[B, T-1]`` float32 nats, zero off the response mask; the teacher's logits ``[M, V_t]`` at
        the M response rows in row-major order (`dakd.difficulty.response_ce_rows` reads them), or
        None for SFT, SeqKD and a cached teacher).
    """
    ids, attn = batch["input_ids"], batch["attention_mask"]
    mask = batch["response_mask"][:, 1:].bool()
    pos = predicting_positions(batch["response_mask"])
    s_rows = response_logits(student, ids, attn, pos)  # [M, V_s]

    def scatter(tok):  # [M] -> [B, T-1], zero off the mask; the gradient flows through
        return torch.zeros(mask.shape, dtype=tok.dtype, device=tok.device).masked_scatter(mask, tok)

    if cfg.method in ("sft", "seqkd"):
        return scatter(F.cross_entropy(s_rows.float(), ids[:, 1:][mask], reduction="none")), None
    if topk is not None:
        from .teacher_cache import cached_per_token_loss

        rows = topk.response_rows(sample_ids, batch["response_mask"])
        return cached_per_token_loss(cfg.loss, s_rows[:, :vocab], rows, mask, **_loss_params(cfg)), None
    with torch.no_grad():
        t_rows = response_logits(teacher, ids, attn, pos)
    fn = get_per_token_loss(cfg.loss)
    return scatter(fn(s_rows[None, :, :vocab], t_rows[None, :, :vocab], None, **_loss_params(cfg))[0]), t_rows


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


def epoch_plan(cfg: DistillConfig, n: int) -> list[int]:
    """Number of samples trained on at each epoch (known before training, for the LR schedule)."""
    if cfg.method != "dakd" or cfg.selection == "full":
        return [n] * cfg.epochs
    return [subset_size(selection_ratio(e, cfg.epochs, cfg.schedule), n) for e in range(cfg.epochs)]


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
    if cfg.dataset in TK.TASK_FILES:
        D.check_split(TK.TASK_FILES, cfg.dataset, "train", cfg.train_samples, kind="task")
        records = TK.load_task(cfg.dataset, "train")
    elif hold_out == 0:
        return D.load_split(cfg.dataset, "train", limit=cfg.train_samples, seed=cfg.seed), []
    else:
        D.check_split(D.DATASETS, cfg.dataset, "train", cfg.train_samples)
        records = D.load_split(cfg.dataset, "train")
    if not 0 <= hold_out < len(records):
        raise ValueError(f"cannot hold out {hold_out} of the {len(records)} {cfg.dataset} training records")
    pool, held = records[:len(records) - hold_out], records[len(records) - hold_out:]
    limit = cfg.train_samples
    if limit is not None and limit < len(pool):
        keep = sorted(random.Random(cfg.seed).sample(range(len(pool)), limit))
        pool = [pool[i] for i in keep]
    return pool, held


def sgo_validation_source(dataset: str) -> str:
    """Where DistiLLM's validation records come from: "dev" (the set's dev split) or "held_out"
    (the last records of its train file, for a set without a dev split, e.g. GSM8K)."""
    has_dev = "dev" in D.DATASETS.get(dataset, {}) or "dev" in TK.TASK_FILES.get(dataset, {})
    return "dev" if has_dev else "held_out"


def _configure_deepspeed(accelerator, cfg: DistillConfig) -> dict | None:
    """Fill the DeepSpeed config that accelerate would take from a DataLoader (this loop prepares
    none): ``train_micro_batch_size_per_gpu`` = ``cfg.micro_batch_size``, and when "auto" (or
    absent) ``gradient_accumulation_steps`` = micro-batches per process per global batch,
    ceil(ceil(batch_size / processes) / micro_batch_size), and ``train_batch_size`` = their product
    with the number of processes. Returns the updated config dict, or None without DeepSpeed.
    DeepSpeed steps on its own accumulation boundary, so a global batch that holds fewer samples
    (the last of an epoch, or a DA-KD subset) shifts it: keep subset sizes multiples of batch_size
    when that matters."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return None
    ds = plugin.deepspeed_config
    world = accelerator.num_processes
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    if ds.get("gradient_accumulation_steps", "auto") == "auto":
        ds["gradient_accumulation_steps"] = max(1, math.ceil(math.ceil(cfg.batch_size / world) / cfg.micro_batch_size))
    if ds.get("train_batch_size", "auto") == "auto":
        ds["train_batch_size"] = cfg.micro_batch_size * ds["gradient_accumulation_steps"] * world
    return ds


def _save_checkpoint(out: Path, accelerator, student, opt, sched, gen, state: dict, extra: dict | None = None) -> None:
    """Atomically replace ``out/checkpoint`` with the state after a finished epoch; ``extra``
    (plain containers and tensors) goes into ``trainer_state.pt`` beside optimizer and scheduler."""
    if not accelerator.is_main_process:
        return
    final, tmp = out / "checkpoint", out / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.unwrap_model(student).save_pretrained(tmp / "student")
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
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


def _find_checkpoint(out: Path) -> Path | None:
    """The checkpoint to resume from: ``out/checkpoint``, else ``out/checkpoint.old`` (a kill
    between the two renames of `_save_checkpoint` leaves only that one), else None."""
    for ckpt in (out / "checkpoint", out / "checkpoint.old"):
        if ckpt.is_dir():
            return ckpt
    return None


def _read_state(ckpt: Path) -> dict:
    """``state.json`` of a checkpoint folder, checked for the keys a resume needs."""
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


def _load_checkpoint_student(ckpt: Path, cfg: DistillConfig):
    """The checkpoint's student, refused unless its tensors have the names and shapes of
    ``cfg.student`` (checked against a weightless copy built on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = ckpt / "student"
    try:
        model = load_model(folder, cfg.dtype, cfg.trust_remote_code)
    except Exception as e:  # any failure here means a damaged checkpoint
        raise CheckpointError(f"{folder}: cannot load the checkpoint's student ({type(e).__name__}: "
                              f"{e}); delete {ckpt} to start over") from e
    conf = AutoConfig.from_pretrained(resolve_model(cfg.student), trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        ref = AutoModelForCausalLM.from_config(conf, trust_remote_code=cfg.trust_remote_code)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if got != want:
        diff = sorted(set(want.items()) ^ set(got.items()))[:2]
        raise CheckpointError(f"{folder}: weights of another model than {cfg.student!r} "
                              f"(e.g. {diff}); delete {ckpt} to start over")
    return model


def _all_processes(accelerator, flag: bool) -> bool:
    """True when ``flag`` is True on every process (a collective: every process must call it). Each
    process passes what it saw before any of them acts on the answer, so all decide alike."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.gather(torch.tensor([flag], device=accelerator.device)).all())


def _data_hash(examples: list[dict]) -> str:
    """Short sha256 of the tokenized training set: a resume must see the same samples."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e["sample_id"], e["prompt_length"], e["input_ids"]]).encode())
    return h.hexdigest()[:16]


def train(cfg: DistillConfig, accelerator=None, resume: bool = True) -> dict:
    """Run one distillation (or SFT) and write its JSON records; returns the train log.

    Method ``sft`` never loads the teacher (a run with ``student`` = a teacher's name is the
    paper's teacher SFT stage; a later run names ``<its output_dir>/student`` as its teacher).
    ``kd`` trains on all samples every epoch with ``cfg.loss``. ``dakd`` follows Algorithm 1: epoch 0
    on all of D; at each later epoch the student's response CE over all of D gives DDS (with the
    cached teacher CE) and ``cfg.selection`` picks round(r(e) * N) samples. ``seqkd`` is SFT on
    teacher-generated responses (`baselines.seqkd_records`; the teacher is loaded only when they
    are not cached); ``gkd`` and ``distillm`` train on all samples every epoch and take each global
    batch's responses from the student's own generations with the probabilities of
    `dakd.baselines` (GKD: ``student_data_fraction``; DistiLLM: the adaptive SGO rule with a replay
    buffer, its validation loss measured before every epoch).

    Returns:
        dict with ``filter`` (counts of dropped/truncated samples; SeqKD adds ``empty_generation``),
        ``epochs`` (per-epoch records: ratio, subset size, strata counts, DDS quantiles, mean loss in
        nats/token, seconds, ``generated_batches`` (batches whose responses the student sampled
        afresh), ``generation_seconds``, ``iterations_end`` (optimiser steps after the epoch);
        DistiLLM adds ``p_sgo``, ``val_loss`` (nats/token, before the epoch), ``replay_batches``
        and ``sgo_batches``), ``cost`` (iterations, seconds split into ``dds_seconds``,
        ``train_seconds`` (which holds the on-policy ``generation_seconds``),
        ``teacher_generation_seconds`` (SeqKD, before training) and ``validation_seconds``
        (DistiLLM); ``total_seconds`` is their sum; tokens seen) and for SeqKD ``seqkd`` (the
        cache file and whether it was reused).

    Resume: with ``resume`` the last finished epoch in ``output_dir/checkpoint`` is resumed when
    it was written by the same config hash (another config's checkpoint is ignored: training starts
    over and replaces it).

    Raises:
        NonFiniteLossError: a loss or the gradient norm of a step was not finite; the message names
            the step and sample ids; the optimiser did not step.
        CheckpointError: the checkpoint of this config is damaged (unreadable ``state.json``,
            truncated ``trainer_state.pt``, missing weights), holds another model's weights, or was
            written for other training data.
        ValueError: the teacher and student do not share a tokenizer.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    out = Path(cfg.output_dir)
    set_seed(cfg.seed)
    t_start = time.perf_counter()
    meta = run_metadata(cfg)
    if accelerator.is_main_process:
        write_json(out / "config.json", meta | {"num_processes": accelerator.num_processes})

    tok = load_tokenizer(cfg.student, cfg.trust_remote_code)
    distillm = cfg.method == "distillm"
    val_source = sgo_validation_source(cfg.dataset) if distillm else None
    records, held_out = load_train_records(cfg, hold_out=cfg.sgo_val_samples if val_source == "held_out" else 0)
    seqkd_info = None
    if cfg.method == "seqkd":
        def load_teacher():
            return load_model(cfg.teacher, cfg.dtype, cfg.trust_remote_code).to(accelerator.device).eval()
        records, seqkd_info = B.seqkd_records(cfg, records, tok, load_teacher, accelerator, out)
    examples, report = D.tokenize_records(records, tok, cfg.prompt_style, cfg.max_prompt_length, cfg.max_length)
    n = len(examples)
    accelerator.print(f"[dakd] {cfg.method}: {report}")
    if n == 0:
        raise ValueError(f"no training sample of {cfg.dataset!r} is left after filtering ({report}); "
                         f"raise max_prompt_length ({cfg.max_prompt_length}) or max_length ({cfg.max_length})")

    data_hash = _data_hash(examples)
    ckpt = _find_checkpoint(out) if resume else None
    saved = _read_state(ckpt) if ckpt else None
    # only a checkpoint of this very config is resumed: pipeline.run retrains a changed config into
    # the same folder, where the old run's finished checkpoint would hand back the old weights
    resumed = saved is not None and saved["config_hash"] == meta["config_hash"]
    if saved is not None and not resumed:
        accelerator.print(f"[dakd] {ckpt} is of config {saved['config_hash']}, not "
                          f"{meta['config_hash']}: not resumed, training starts over")
    if resumed and (saved["num_samples"], saved.get("data_hash", data_hash)) != (n, data_hash):
        raise CheckpointError(f"{ckpt / 'state.json'}: written for other training data "
                              f"({saved['num_samples']} samples, data hash {saved.get('data_hash')}; "
                              f"now {n}, {data_hash}); delete {ckpt} to start over")
    student = (_load_checkpoint_student(ckpt, cfg) if resumed
               else load_model(cfg.student, cfg.dtype, cfg.trust_remote_code))
    student.config.use_cache = False
    teacher, vocab = None, student.get_output_embeddings().weight.shape[0]
    topk, topk_record = None, None
    if cfg.method not in ("sft", "seqkd"):
        teacher_tok = load_tokenizer(cfg.teacher, cfg.trust_remote_code)
        topk_hit = False
        if cfg.teacher_cache_k:
            # a cache already built for these settings needs no teacher weights: V from the
            # teacher's config (its head rows), the tokenizers still checked
            rows = head_rows(cfg.teacher, cfg.trust_remote_code)
            if rows is not None:
                from .teacher_cache import topk_cache_path

                vocab = check_pair(teacher_tok, tok, rows, student)
                path = topk_cache_path(resolve_model(cfg.teacher), examples, cfg.teacher_cache_k,
                                       cfg.max_length, vocab)
                topk_hit = _all_processes(accelerator, path.exists())
        if not topk_hit:
            teacher = load_model(cfg.teacher, cfg.dtype, cfg.trust_remote_code).eval().requires_grad_(False)
            vocab = check_pair(teacher_tok, tok, teacher, student)
        if cfg.teacher_cache_k:
            from .teacher_cache import load_or_build_topk_cache

            tk0 = time.perf_counter()  # the cache's time (opened, or built), the teacher's loading aside
            topk, from_cache = load_or_build_topk_cache(
                None if teacher is None else teacher.to(accelerator.device), examples, tok.pad_token_id,
                cfg.teacher_cache_k, resolve_model(cfg.teacher), cfg.max_length, vocab, cfg.micro_batch_size,
                accelerator=accelerator)
            topk_record = {"k": cfg.teacher_cache_k, "path": str(topk.path), "from_cache": from_cache,
                           "teacher_loaded": teacher is not None, "seconds": time.perf_counter() - tk0}
            teacher = None  # every step reads the cache: the teacher's memory is given back

    plan = epoch_plan(cfg, n)
    world = accelerator.num_processes
    rank = accelerator.process_index
    total_steps = sum(math.ceil(k / cfg.batch_size) for k in plan)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total_steps), total_steps)
    _configure_deepspeed(accelerator, cfg)
    student, opt = accelerator.prepare(student, opt)
    if teacher is not None:
        teacher = teacher.to(accelerator.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    # per process (its draws may differ between processes, unlike `gen`'s, which all processes
    # make alike so that they agree on every batch's source)
    replay_gen = torch.Generator().manual_seed(cfg.seed + 1 + rank)
    buffer = B.ReplayBuffer(cfg.replay_buffer_size) if distillm else None

    state = {"epochs": [], "cost": {"iterations": 0, "dds_seconds": 0.0, "teacher_ce_seconds": 0.0,
                                    "train_seconds": 0.0, "tokens_seen": 0, "response_tokens_seen": 0},
             "filter": report.to_dict(), "num_samples": n, "planned_iterations": total_steps,
             "config_hash": meta["config_hash"], "data_hash": data_hash}
    if seqkd_info is not None:
        state["filter"]["empty_generation"] = seqkd_info["empty_generation"]
        state["seqkd"] = seqkd_info
    if resumed:
        try:  # weights_only: plain tensors and containers, nothing is unpickled as code
            ts = torch.load(ckpt / "trainer_state.pt", weights_only=True)
            opt.load_state_dict(ts["optimizer"])
            sched.load_state_dict(ts["scheduler"])
            gen.set_state(ts["generator"])
            extra = ts.get("extra") or {}
            if buffer is not None and world == 1 and "replay_buffer" in extra:
                buffer.load_state_dict(extra["replay_buffer"])
                replay_gen.set_state(extra["replay_generator"])
        except Exception as e:  # truncated, foreign or missing: all refused alike
            raise CheckpointError(f"{ckpt / 'trainer_state.pt'}: unreadable or not this run's trainer "
                                  f"state ({type(e).__name__}: {e}); delete {ckpt} to start over") from e
        if seqkd_info is not None:  # this session's cache use, not the interrupted one's
            saved["seqkd"], saved["filter"] = state["seqkd"], state["filter"]
        state = saved
        accelerator.print(f"[dakd] resumed after epoch {len(state['epochs'])} from {ckpt}")
    for key in ("generation_seconds", "teacher_generation_seconds", "validation_seconds"):
        state["cost"].setdefault(key, 0.0)  # absent from checkpoints written before they existed
    if seqkd_info is not None:
        state["cost"]["teacher_generation_seconds"] += seqkd_info["generation_seconds"]
        state["cost"]["generation_seconds"] += seqkd_info["generation_seconds"]

    sgo, val_examples = None, None
    if distillm:
        sgo = B.AdaptiveSGO(**(state.get("sgo") or {"prob": cfg.sgo_init_prob, "step": cfg.sgo_prob_step,
                                                     "eps": cfg.sgo_loss_eps, "max_prob": cfg.sgo_max_prob}))
        val_records = (held_out if val_source == "held_out" else
                       TK.load_task(cfg.dataset, "dev", cfg.sgo_val_samples) if cfg.dataset in TK.TASK_FILES
                       else D.load_split(cfg.dataset, "dev", limit=cfg.sgo_val_samples))
        val_examples, val_report = D.tokenize_records(val_records, tok, cfg.prompt_style, cfg.max_prompt_length,
                                                      cfg.max_length)
        state["sgo_validation"] = {"source": val_source, "filter": val_report.to_dict()}

    collate = D.DistillCollator(tok.pad_token_id)
    lengths = [len(e["input_ids"]) for e in examples]
    teacher_ce = None
    if resumed and (out / "teacher_ce.pt").exists():
        try:  # a cache: if unreadable or of another size it is recomputed below
            teacher_ce = torch.load(out / "teacher_ce.pt", weights_only=True)
        except Exception:
            teacher_ce = None
        if not (isinstance(teacher_ce, torch.Tensor) and teacher_ce.shape == (n,)):
            teacher_ce = None
    needs_dds = cfg.method == "dakd" and cfg.selection in ("dds", "top")
    if topk is not None:
        from .teacher_cache import topk_response_ce

        state["teacher_cache"] = topk_record
        if needs_dds and teacher_ce is None:
            # the exact teacher CE stored when the cache was built: DDS carries no top-k error
            teacher_ce = topk_response_ce(topk, examples, exact=True)
    for epoch in range(len(state["epochs"]), cfg.epochs):
        ratio = selection_ratio(epoch, cfg.epochs, cfg.schedule) if cfg.method == "dakd" else 1.0
        rec = {"epoch": epoch, "ratio": ratio, "num_samples": n}
        if distillm:
            # the student's validation loss before this epoch = after the previous one (DistiLLM
            # evaluates before training and after every epoch)
            tv = time.perf_counter()
            val_ce = score_dataset(student, val_examples, tok.pad_token_id, cfg.micro_batch_size, accelerator,
                                   desc=f"validation epoch {epoch}")
            n_resp = torch.tensor([len(e["input_ids"]) - e["prompt_length"] for e in val_examples], dtype=torch.float)
            rec["val_loss"] = float((val_ce * n_resp).sum() / n_resp.sum().clamp(min=1))
            rec["p_sgo"] = sgo.update(rec["val_loss"])
            rec["validation_seconds"] = time.perf_counter() - tv
            state["cost"]["validation_seconds"] += rec["validation_seconds"]
        t0 = time.perf_counter()
        if cfg.method == "dakd" and epoch > 0 and needs_dds:
            if teacher_ce is None:
                tc0 = time.perf_counter()
                teacher_ce, hit = teacher_ce_cached(teacher, examples, tok.pad_token_id,
                                                    cache_dir() / "teacher_ce", resolve_model(cfg.teacher),
                                                    cfg.micro_batch_size, accelerator, vocab=vocab)
                state["cost"]["teacher_ce_seconds"] += time.perf_counter() - tc0
                rec["teacher_ce_from_cache"] = hit
            student_ce = score_dataset(student, examples, tok.pad_token_id, cfg.micro_batch_size,
                                       accelerator, desc=f"DDS epoch {epoch}", vocab=vocab)
            scores = difficulty_scores(student_ce, teacher_ce, cfg.dds_eps)
            rec |= {"dds": dds_quantiles(scores), "student_ce": dds_quantiles(student_ce),
                    "teacher_ce": dds_quantiles(teacher_ce),
                    # every sample's DDS, in example order, for the per-epoch distribution figures
                    "dds_values": [round(v, 5) for v in scores.tolist()]}
        elif cfg.method == "dakd" and epoch > 0:
            scores = torch.zeros(n)  # random / full selection do not look at scores
        else:
            scores = None
        if scores is None:
            idx = torch.arange(n)
        else:
            sel = stratified_update_with_info(scores, ratio, cfg.tau, gen, cfg.selection)
            idx = sel.indices
            rec |= {"n_high": sel.n_high, "n_low": sel.n_low, "dds_threshold": sel.threshold}
        rec["dds_seconds"] = time.perf_counter() - t0
        state["cost"]["dds_seconds"] += rec["dds_seconds"]
        rec["subset_size"] = len(idx)
        rec["subset_ids"] = [examples[i]["sample_id"] for i in idx.tolist()]

        # training pass over the epoch's subset, in a seeded random order
        t1 = time.perf_counter()
        order = idx[torch.randperm(len(idx), generator=gen)].tolist()
        if cfg.group_by_length:
            batches = length_grouped(order, lengths, cfg.batch_size, gen)
        else:
            batches = [order[s:s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
        # epoch 0 of DA-KD sees all of D with the teacher's logits at hand: its response CE comes
        # for free there instead of costing a separate teacher pass before epoch 1
        fill_teacher_ce = needs_dds and epoch == 0 and teacher_ce is None
        if fill_teacher_ce:
            teacher_ce_acc = torch.zeros(n)
        loss_sum, tok_sum, steps = 0.0, 0, 0
        counts = {"fresh": 0, "replay": 0}
        gen_seconds = 0.0
        student.train()
        bar = tqdm(batches, desc=f"{cfg.method} epoch {epoch}", disable=not accelerator.is_main_process,
                   leave=False)
        for gbatch in bar:
            share = gbatch[rank::world]
            weight = 1.0
            if not share:  # keep every process in the collective; this one contributes zero
                share, weight = gbatch[:1], 0.0
            # where this batch's responses come from; every process draws alike from `gen`
            source = "ground_truth"
            if cfg.method == "gkd" and torch.rand((), generator=gen).item() < cfg.student_data_fraction:
                source = "fresh"
            elif distillm:
                u = torch.rand((), generator=gen).item()
                full = buffer.full
                if world > 1 and u < sgo.prob:  # full only when every process's buffer is
                    full = accelerator.reduce(torch.tensor(float(full), device=accelerator.device),
                                              reduction="sum").item() == world
                source = B.sgo_batch_source(u, sgo.prob, state["cost"]["iterations"] / max(total_steps, 1), full)
            if source == "ground_truth":
                local = [examples[i] for i in share]
                n_tok = sum(len(examples[i]["input_ids"]) - examples[i]["prompt_length"] for i in gbatch)
                n_seen = sum(len(examples[i]["input_ids"]) for i in gbatch)
            else:
                counts[source] += 1
                gen_seed = int(torch.randint(2 ** 31 - 1, (), generator=gen)) if source == "fresh" else None
                if not weight:  # nothing of this batch is this process's: a zero-weight stand-in
                    local = [examples[share[0]]]
                elif source == "fresh":
                    tg = time.perf_counter()
                    prompts = [examples[i]["input_ids"][:examples[i]["prompt_length"]] for i in share]
                    gens = B.sample_responses(accelerator.unwrap_model(student), prompts, tok.pad_token_id,
                                              tok.eos_token_id, cfg.gen_max_new_tokens, cfg.gen_temperature,
                                              seed=gen_seed + rank, max_total_length=cfg.max_length)
                    local = B.generated_examples([examples[i] for i in share], gens)
                    gen_seconds += time.perf_counter() - tg
                    student.train()
                    if buffer is not None:
                        buffer.push(local)
                else:
                    local = buffer.sample(min(len(share), len(buffer)), replay_gen)
                counts_local = torch.tensor([sum(len(e["input_ids"]) - e["prompt_length"] for e in local) * weight,
                                             sum(len(e["input_ids"]) for e in local) * weight],
                                            dtype=torch.float64, device=accelerator.device)
                if world > 1:
                    counts_local = accelerator.reduce(counts_local, reduction="sum")
                n_tok, n_seen = (int(v) for v in counts_local.tolist())
            micro = [local[j:j + cfg.micro_batch_size] for j in range(0, len(local), cfg.micro_batch_size)]
            step_loss = torch.zeros((), device=accelerator.device)
            for j, mb in enumerate(micro):
                b = {k: v.to(accelerator.device) for k, v in collate(mb).items()}
                ctx = accelerator.no_sync(student) if j < len(micro) - 1 else contextlib.nullcontext()
                with ctx:
                    per_tok, t_logits = token_losses(cfg, student, teacher, b, vocab, topk,
                                                     [e["sample_id"] for e in mb])
                    if fill_teacher_ce and weight:
                        teacher_ce_acc[[e["index"] for e in mb]] = response_ce_rows(  # shared vocabulary
                            t_logits[:, :vocab], b["input_ids"], b["response_mask"]).cpu()
                    del t_logits
                    # DDP averages gradients over processes; scaling by world undoes that so the
                    # step's gradient is the sum over the global batch divided by its token count
                    loss = per_tok.sum() * (weight * world / max(n_tok, 1))
                    if not torch.isfinite(loss):
                        ids = [e["sample_id"] for e in mb]
                        raise NonFiniteLossError(
                            f"non-finite loss {loss.item()} at epoch {epoch}, step {state['cost']['iterations']}, "
                            f"sample ids {ids}; the step was not taken")
                    accelerator.backward(loss)
                step_loss += per_tok.detach().sum() * weight
            # the loss check above cannot see a gradient that overflows in backward (half
            # precision): the norm clipping computes anyway is checked before stepping
            norm = accelerator.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
            if norm is not None and not torch.isfinite(torch.as_tensor(norm)).all():
                ids = [examples[i]["sample_id"] for i in gbatch]
                raise NonFiniteLossError(
                    f"non-finite gradient norm {float(norm)} at epoch {epoch}, step "
                    f"{state['cost']['iterations']}, sample ids {ids}; the step was not taken")
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step_loss = accelerator.reduce(step_loss, reduction="sum").item()
            loss_sum += step_loss
            tok_sum += n_tok
            steps += 1
            state["cost"]["iterations"] += 1
            state["cost"]["tokens_seen"] += n_seen
            state["cost"]["response_tokens_seen"] += n_tok
            bar.set_postfix(loss=f"{step_loss / max(n_tok, 1):.4f}")
        if fill_teacher_ce:
            teacher_ce = teacher_ce_acc
            if world > 1:
                teacher_ce = accelerator.reduce(teacher_ce.to(accelerator.device), reduction="sum").cpu()
            if accelerator.is_main_process:
                save_tensor(teacher_ce, out / "teacher_ce.pt")
        rec |= {"steps": steps, "mean_loss": loss_sum / max(tok_sum, 1), "train_seconds": time.perf_counter() - t1,
                "lr_end": sched.get_last_lr()[0], "generated_batches": counts["fresh"],
                "generation_seconds": gen_seconds, "iterations_end": state["cost"]["iterations"]}
        if distillm:
            rec |= {"replay_batches": counts["replay"], "sgo_batches": counts["fresh"] + counts["replay"]}
            state["sgo"] = sgo.to_dict()
        state["cost"]["train_seconds"] += rec["train_seconds"]
        state["cost"]["generation_seconds"] += gen_seconds
        state["epochs"].append(rec)
        accelerator.print(f"[dakd] epoch {epoch}: r={ratio:.3f} |D'|={len(idx)} steps={steps} "
                          f"loss={rec['mean_loss']:.4f} nats/token ({rec['train_seconds']:.1f}s train, "
                          f"{rec['dds_seconds']:.1f}s DDS, {counts['fresh']} generated batches)")
        if cfg.save_epoch_students and accelerator.is_main_process:
            folder = out / "epoch_students" / f"epoch{epoch}"
            accelerator.unwrap_model(student).save_pretrained(folder)
            tok.save_pretrained(folder)
        if cfg.save_checkpoints:
            extra = ({"replay_buffer": buffer.state_dict(), "replay_generator": replay_gen.get_state()}
                     if buffer is not None and world == 1 else None)
            _save_checkpoint(out, accelerator, student, opt, sched, gen, state, extra=extra)
        accelerator.wait_for_everyone()

    cost = state["cost"]
    cost["total_seconds"] = (cost["dds_seconds"] + cost["train_seconds"] + cost["teacher_generation_seconds"]
                             + cost["validation_seconds"])
    cost["dds_share"] = cost["dds_seconds"] / max(cost["total_seconds"], 1e-9)
    cost["wall_seconds_this_process"] = time.perf_counter() - t_start
    log = meta | state
    if accelerator.is_main_process:
        accelerator.unwrap_model(student).save_pretrained(out / "student")
        tok.save_pretrained(out / "student")
        write_json(out / "train_log.json", log)
    accelerator.wait_for_everyone()
    return log
