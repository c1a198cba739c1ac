"""A run end to end: train (in this process, or in ``accelerate launch`` subprocesses), then
evaluate, then write ``results.json``. A finished run with the same config hash is reused, never
redone; a run is finished only once its ``results.json`` exists, and that file is written last and
atomically, so a killed run never passes for a complete one. A ``results.json`` of another config
in the same folder is never replaced unless asked (``overwrite=True``: then it is kept as
``results.<its hash>.json`` when the new one is written; without it `run` raises `RunExistsError`).
A finished run's ``checkpoint/`` (only needed to resume) is deleted unless ``keep_checkpoint``. A run whose
teacher is another run's student (the paper's teacher-SFT stage) records that run's config hash and
is redone when the teacher was retrained. With ``save_epoch_students`` every epoch's student is
evaluated too (``epoch_eval``, the paper's Figure 1).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .config import DistillConfig, run_metadata
from .io import write_json
from .losses import loss_spec
from .methods import run_label



def loss_label(loss: str) -> str:
    """The paper's short name of a loss (KL, RKL, JSD, SKL, SRKL, BDL, TVD), from its registration
    (`dakd.losses.register_loss`); aliases resolved.

    Raises:
        ValueError: unknown loss name.
    """
    return loss_spec(loss).label


def method_label(cfg: DistillConfig) -> str:
    """Row name in the paper's tables, from the method's declaration (`dakd.methods.run_label`).

    Raises:
        ValueError: a method without a row name.
    """
    return run_label(cfg)


def teacher_run(cfg: DistillConfig) -> dict | None:
    """The finished run whose student is ``cfg.teacher`` (the paper's teacher-SFT stage):
    {``output_dir``, ``config_hash``} from ``<teacher folder>/../results.json``; None when the
    teacher is not a run's ``student`` folder, when ``cfg.method`` never loads the teacher ("sft"),
    or when that run has no ``results.json`` yet."""
    path = Path(cfg.teacher)
    if cfg.method == "sft" or path.name != "student" or not (path.parent / "results.json").is_file():
        return None
    return {"output_dir": str(path.parent), "config_hash": json.loads((path.parent / "results.json").read_text())
            .get("config_hash")}


def load_complete(cfg: DistillConfig) -> dict | None:
    """The run's ``results.json`` if it exists and was produced by the same config hash, and (for a
    run whose teacher is another run's student) with the teacher run it records still being the
    one in that folder: a retrained teacher makes every run distilled from it incomplete again.
    With ``cfg.save_epoch_students`` (left out of the config hash) the results must also hold
    ``epoch_eval``: a run finished without it is redone with it."""
    path = Path(cfg.output_dir) / "results.json"
    if path.exists():
        res = json.loads(path.read_text())
        if res.get("config_hash") == cfg.config_hash():
            if getattr(cfg, "save_epoch_students", False) and "epoch_eval" not in res:
                print(f"[dakd] {cfg.output_dir}: finished without the per-epoch evaluation it now asks for: run again")
                return None
            if getattr(cfg, "teacher_forced", False) and any(
                    ev.get("metric") == "rougeL" and "teacher_forced" not in ev for ev in res.get("eval", {}).values()):
                print(f"[dakd] {cfg.output_dir}: finished without the teacher-forced metrics it now asks for: run again")
                return None
            now = teacher_run(cfg)
            if now is not None and (res.get("teacher_run") or {}).get("config_hash") != now["config_hash"]:
                print(f"[dakd] {cfg.output_dir}: its teacher {cfg.teacher} was retrained since "
                      f"(config {now['config_hash']}): run again")
                return None
            return res
    return None


def accelerate_command(num_processes: int, cpu: bool = False, config_file: str | None = None) -> list[str]:
    """The ``accelerate launch`` command line (up to the script) for ``num_processes`` processes
    on one machine, with a free rendezvous port (runs started side by side do not collide).

    ``cpu``: CPU processes talking over gloo. ``accelerate launch --cpu`` starts one process only
    (it expects ``mpirun`` for more), so several CPU processes are started like GPU ones, by
    ``--multi_gpu`` (torchrun), and `launch_env` sets ``ACCELERATE_USE_CPU`` so that every process
    picks the CPU and gloo. ``config_file``: an accelerate config YAML (``configs/accelerate/``:
    DDP, FSDP, DeepSpeed ZeRO-2/3) passed as ``--config_file``; it sets the distributed type and
    precision, and ``num_processes`` still wins over its own. None: ``$DAKD_ACCELERATE_CONFIG``
    when set (``run_all.sh --accelerate-config``), else plain DDP with accelerate's mixed
    precision off (the weights' dtype is ``cfg.dtype``).

    Raises:
        FileNotFoundError: the config file does not exist.
    """
    config_file = config_file or os.environ.get("DAKD_ACCELERATE_CONFIG") or None
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"accelerate config file {config_file!r} not found")
        cmd += ["--config_file", str(config_file)]
    else:
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        if num_processes > 1:
            cmd += ["--multi_gpu"]
    if num_processes <= 1 and cpu:
        cmd += ["--cpu"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return cmd + ["--num_processes", str(num_processes), "--num_machines", "1", "--main_process_port", str(port)]


def launch_env(cpu: bool = False) -> dict:
    """The environment for `accelerate_command`: this one, plus ``ACCELERATE_USE_CPU=true`` for
    CPU processes."""
    return dict(os.environ, **({"ACCELERATE_USE_CPU": "true"} if cpu else {}))


def is_teacher_sft(cfg: DistillConfig) -> bool:
    """Whether ``cfg`` is the paper's teacher fine-tuning stage (method "sft" with the teacher as
    its own student): under ``run_all.sh --teacher-sft-config`` it launches with that accelerate
    config (``$DAKD_TEACHER_SFT_ACCELERATE_CONFIG``) instead of the students' one."""
    return cfg.method == "sft" and cfg.student == cfg.teacher


def launch_training(cfg: DistillConfig, num_processes: int = 1, cpu: bool = False,
                    config_file: str | None = None, stop_after: int | None = None) -> dict | None:
    """Train in this process (``num_processes == 1``) or in ``accelerate launch`` subprocesses.

    A notebook kernel must not initialise CUDA before the launch, so multi-process training always
    goes through a subprocess (command: `accelerate_command`). Returns the train log; None when
    ``stop_after`` (`dakd.train.train`) stopped it before its last epoch.

    Raises:
        subprocess.CalledProcessError: the training failed.
    """
    if num_processes <= 1 and not cpu:
        from .train import train
        log = train(cfg, stop_after=stop_after)
        return log if len(log["epochs"]) == cfg.epochs else None
    log = Path(cfg.output_dir) / "train_log.json"
    log.unlink(missing_ok=True)
    _launch_cli(cfg, "train", num_processes, cpu, config_file,
                *([] if stop_after is None else ["--stop-after", str(stop_after)]))
    return json.loads(log.read_text()) if log.exists() else None


def _launch_cli(cfg: DistillConfig, command: str, num_processes: int, cpu: bool,
                config_file: str | None, *args: str) -> None:
    """Write ``cfg`` as ``<output_dir>/<command>_request.json`` and run ``python -m dakd.cli
    <command> --config <it> *args`` in ``num_processes`` accelerate processes; raises
    ``subprocess.CalledProcessError`` if they fail."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config_file is None and command == "train" and is_teacher_sft(cfg):
        config_file = os.environ.get("DAKD_TEACHER_SFT_ACCELERATE_CONFIG") or None
    request = out / f"{command}_request.json"
    write_json(request, cfg.to_dict())
    cmd = accelerate_command(num_processes, cpu, config_file)
    cmd += ["-m", "dakd.cli", command, "--config", str(request), *args]
    subprocess.run(cmd, check=True, env=launch_env(cpu))


def evaluate_run(cfg: DistillConfig, accelerator=None, model_path: str | Path | None = None,
                 datasets: tuple[str, ...] | list[str] | None = None) -> dict:
    """Evaluate a run's model on every set of ``cfg.eval_datasets``: {dataset: `evaluate_model` dict}.

    The model is ``cfg.teacher`` for method "teacher", else ``<output_dir>/student``;
    ``model_path`` names another one (an epoch's student, Figure 1) and ``datasets`` other sets,
    with every other setting the run's. With an ``accelerator`` of several processes each holds a
    full copy of the model and generates its share of the prompts (data-parallel); all processes
    return the same dict. New tokens per response: ``cfg.max_new_tokens``, capped by a set's own
    length where it has one (SAMSum 128, GSM8K 256; `tasks.EVAL_SETS`). With ``cfg.teacher_forced``
    every ROUGE-L set's dict also holds ``teacher_forced`` (`dakd.teacher_forced.evaluate_set`,
    against ``cfg.teacher``).
    """
    from .evaluate import evaluate_model
    from .models import default_device, load_frozen, load_tokenizer
    from .tasks import eval_spec

    path = model_path or (cfg.teacher if cfg.method == "teacher" else Path(cfg.output_dir) / "student")
    model = load_frozen(path, cfg.dtype, cfg.trust_remote_code)
    tok = load_tokenizer(path, cfg.trust_remote_code)
    # one process without an accelerator (run_all.sh --gpus 1) evaluates on the GPU when there is one
    model = model.to(accelerator.device if accelerator is not None else default_device())
    evals, pair = {}, None
    for ds in datasets or cfg.eval_datasets:
        own = eval_spec(ds).max_new_tokens
        evals[ds] = evaluate_model(model, tok, ds, cfg.prompt_style, cfg.eval_seeds, cfg.eval_samples,
                                   min(cfg.max_new_tokens, own or cfg.max_new_tokens), cfg.eval_batch_size,
                                   cfg.max_prompt_length, accelerator=accelerator)
        if getattr(cfg, "teacher_forced", False) and eval_spec(ds).metric == "rougeL":
            from . import teacher_forced as tf
            pair = pair or tf.load_teacher(cfg, model, tok, path, next(model.parameters()).device)
            evals[ds]["teacher_forced"] = tf.evaluate_set(cfg, ds, model, tok, *pair, accelerator=accelerator)
    return evals


def launch_evaluation(cfg: DistillConfig, num_processes: int = 1, cpu: bool = False,
                      config_file: str | None = None, model_path: str | Path | None = None,
                      datasets: tuple[str, ...] | list[str] | None = None) -> dict:
    """`evaluate_run` in this process (``num_processes == 1``), or data-parallel in ``accelerate
    launch`` subprocesses (``python -m dakd.cli evaluate``), which write ``eval.json`` into
    ``model_path`` (the run's own model: ``<output_dir>/eval.json``); returns {dataset:
    evaluation dict}. ``model_path`` and ``datasets`` as in `evaluate_run`.

    Raises:
        subprocess.CalledProcessError: the evaluation failed.
    """
    if num_processes <= 1 and not cpu:
        return evaluate_run(cfg, model_path=model_path, datasets=datasets)
    result = (Path(model_path) if model_path else Path(cfg.output_dir)) / "eval.json"
    result.unlink(missing_ok=True)
    extra = (["--model", str(model_path)] if model_path else []) + (["--datasets", *datasets] if datasets else [])
    _launch_cli(cfg, "evaluate", num_processes, cpu, config_file, "--out", str(result), *extra)
    return json.loads(result.read_text())


def epoch_students(cfg: DistillConfig) -> list[tuple[int, Path]]:
    """(epoch, folder) of every student saved by a ``save_epoch_students`` run, by epoch:
    ``<output_dir>/epoch_students/epoch{e}/``."""
    folder = Path(cfg.output_dir) / "epoch_students"
    found = [(int(p.name[len("epoch"):]), p) for p in folder.glob("epoch*")
             if p.is_dir() and p.name[len("epoch"):].isdigit()]
    return sorted(found)


def evaluate_epochs(cfg: DistillConfig, log: dict, num_processes: int = 1, cpu: bool = False) -> list[dict]:
    """Figure 1's points: every saved epoch student of the run evaluated on ``cfg.eval_datasets[0]``
    with the final evaluation's settings (in this process or through the same accelerate launch).

    Returns:
        [{``epoch``, ``iterations_end`` (optimiser steps done when that epoch ended, from the train
        log's epoch record), ``dataset``, ``metric``, ``score`` (0-100), ``score_std``,
        ``num_prompts``}], by epoch.

    Raises:
        FileNotFoundError: ``save_epoch_students`` is set but an epoch's student is missing.
        KeyError: an epoch record without ``iterations_end``.
    """
    saved = dict(epoch_students(cfg))
    missing = [e["epoch"] for e in log["epochs"] if e["epoch"] not in saved]
    if missing:
        raise FileNotFoundError(f"{cfg.output_dir}/epoch_students: no student of epoch(s) {missing}")
    ds = cfg.eval_datasets[0]
    points = []
    for rec in log["epochs"]:
        # the points read ROUGE-L only: no teacher-forced pass per epoch
        ev = launch_evaluation(cfg.replace(teacher_forced=False), num_processes, cpu, model_path=saved[rec["epoch"]],
                               datasets=(ds,))[ds]
        points.append({"epoch": rec["epoch"], "iterations_end": rec["iterations_end"], "dataset": ds,
                       "metric": ev["metric"], "score": ev["score"], "score_std": ev["score_std"],
                       "num_prompts": ev["num_prompts"]})
        print(f"[dakd] {method_label(cfg)} after epoch {rec['epoch']} ({rec['iterations_end']} iterations): "
              f"{ds} {ev['metric']} {ev['score']:.2f}")
    return points


class RunExistsError(FileExistsError):
    """``output_dir`` holds a finished run of another config; the message names the folder, both
    config hashes and the ways on (another ``output_dir``, or ``overwrite=True``)."""


def finished_other_config(cfg: DistillConfig) -> str | None:
    """The config hash of a finished run of another config in ``cfg.output_dir`` (its
    ``results.json`` names a hash other than ``cfg.config_hash()``; "unreadable" when that file
    cannot be read), else None."""
    path = Path(cfg.output_dir) / "results.json"
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text()).get("config_hash") or "unknown"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        old = "unreadable"
    return None if old == cfg.config_hash() else old


def remove_checkpoint(cfg: DistillConfig) -> list[Path]:
    """Delete a finished run's resume state (``checkpoint/``, and the ``checkpoint.old`` /
    ``checkpoint.tmp`` a killed save can leave) unless ``cfg.keep_checkpoint``; returns what was
    deleted. For the cpu preset a checkpoint is ~568 MB beside the ~193 MB student."""
    if getattr(cfg, "keep_checkpoint", False):
        return []
    gone = []
    for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp"):
        path = Path(cfg.output_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
            gone.append(path)
    if gone:
        print(f"[dakd] {cfg.output_dir}: finished, deleted its resume checkpoint "
              f"({', '.join(p.name for p in gone)}; keep_checkpoint=True keeps it)")
    return gone


def run(cfg: DistillConfig, num_processes: int = 1, cpu: bool = False, force: bool = False,
        overwrite: bool = False) -> dict:
    """Train (unless ``cfg.method == "teacher"``) and evaluate on ``cfg.eval_datasets``, both in
    ``num_processes`` accelerate processes when more than one (or ``cpu``) is asked for.

    Returns the dict written to ``<output_dir>/results.json``: the run metadata (config, hash,
    versions), ``label`` (table row), ``eval`` ({dataset: evaluation dict}), ``cost`` (Table 3
    record; absent for the teacher), ``filter``, ``seconds`` (wall-clock of training, of
    evaluation and of the epoch evaluations), ``teacher_run`` (`teacher_run`, when the teacher is
    another run's student) and, with ``cfg.save_epoch_students``, ``epoch_eval``: every epoch's
    student on ``cfg.eval_datasets[0]`` (`evaluate_epochs`, the paper's Figure 1).

    A finished run of the same config hash is reused (``force``: redone). ``output_dir`` holding a
    finished run of another config is refused unless ``overwrite`` (or ``force``): its
    ``results.json`` is then kept as ``results.<its hash>.json`` and the rest (``config.json``,
    ``train_log.json``, ``student/``) replaced. Once finished, the run's ``checkpoint/`` is deleted
    unless ``cfg.keep_checkpoint`` (`remove_checkpoint`).

    Raises:
        RunExistsError: ``output_dir`` holds a finished run of another config and neither
            ``overwrite`` nor ``force`` is set.
        FileNotFoundError: the teacher is another run's ``student`` folder that does not exist
            (run the teacher-SFT run first).
    """
    if not force and (done := load_complete(cfg)) is not None:
        print(f"[dakd] {cfg.output_dir}: complete (config {cfg.config_hash()}), reused")
        remove_checkpoint(cfg)
        return done
    if not (force or overwrite) and (other := finished_other_config(cfg)) is not None:
        raise RunExistsError(
            f"{cfg.output_dir} holds a finished run of config {other}; this config is {cfg.config_hash()}. "
            f"Nothing was changed. Give this run its own output_dir (papermill: -p output_dir "
            f"runs/my_variant), or pass overwrite=True (papermill: -p overwrite True) to retrain into it "
            f"(its results.json is kept as results.{other}.json; config.json, train_log.json and "
            f"student/ are replaced)")
    import torch

    teacher = Path(cfg.teacher)
    if cfg.method != "sft" and teacher.name == "student" and not teacher.exists():
        raise FileNotFoundError(f"teacher {cfg.teacher} does not exist: run {teacher.parent.name} first "
                                f"(presets.needed_runs lists it)")
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    print(f"[dakd] {method_label(cfg)} -> {cfg.output_dir}: " + ("evaluating" if cfg.method == "teacher" else
          f"training ({cfg.epochs} epochs) and evaluating") + f" (config {cfg.config_hash()})", flush=True)
    t0 = time.perf_counter()
    log = None
    if cfg.method != "teacher":
        log = launch_training(cfg, num_processes, cpu)
    t1 = time.perf_counter()
    evals = launch_evaluation(cfg, num_processes, cpu)
    for ds, ev in evals.items():
        print(f"[dakd] {method_label(cfg)} on {ds}: {ev['metric']} {ev['score']:.2f} ({ev['num_prompts']} "
              f"prompts, {len(ev['per_seed'])} seed(s), {ev['num_processes']} process(es), {ev['seconds']:.0f}s)")
    t2 = time.perf_counter()
    res = run_metadata(cfg) | {"label": method_label(cfg), "eval": evals}
    if log is not None and getattr(cfg, "save_epoch_students", False):
        res["epoch_eval"] = evaluate_epochs(cfg, log, num_processes, cpu)
    res["seconds"] = {"train": t1 - t0, "eval": t2 - t1, "epoch_eval": time.perf_counter() - t2}
    if (tr := teacher_run(cfg)) is not None:
        res["teacher_run"] = tr
    if log is not None:
        res |= {"cost": log["cost"], "filter": log["filter"], "num_samples": log["num_samples"]}
    _keep_previous_results(out, res["config_hash"])
    write_json(out / "results.json", res)
    remove_checkpoint(cfg)
    return res


def _keep_previous_results(out: Path, new_hash: str) -> None:
    """Move a ``results.json`` of another config hash aside to ``results.<its hash>.json`` before
    the new one is written: a changed config retrains into the same folder, but never silently
    deletes a completed run's results (the table reads only ``results.json``)."""
    path = out / "results.json"
    if not path.exists():
        return
    try:
        old_hash = json.loads(path.read_text()).get("config_hash") or "unknown"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        old_hash = "unreadable"
    if old_hash != new_hash:
        kept = out / f"results.{old_hash}.json"
        os.replace(path, kept)
        print(f"[dakd] {path} was written by config {old_hash}: kept as {kept}")
