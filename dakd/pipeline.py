"""A run end to end: train (in this process, or in ``accelerate launch`` subprocesses), then
evaluate, then write ``results.json``. A finished run with the same config hash is reused, never
redone; a run is finished only once its ``results.json`` exists, and that file is written last and
atomically, so a killed run never passes for a complete one. A ``results.json`` of another config
in the same folder is kept as ``results.<its hash>.json`` when the new one is written.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from .config import DistillConfig, run_metadata
from .train import write_json

METHOD_LABELS = {"teacher": "Teacher", "sft": "SFT", "kd": "KD", "dakd": "DA-KD"}


def method_label(cfg: DistillConfig) -> str:
    """Row name in the paper's tables: Teacher, SFT, KD-KL, KD-RKL, DA-KD (or DA-KD (w/o DDS) ...)."""
    if cfg.method == "kd":
        from .losses import canonical_loss_name

        short = {"forward_kl": "KL", "reverse_kl": "RKL"}  # the paper's row names; aliases resolved
        return f"KD-{short.get(canonical_loss_name(cfg.loss), cfg.loss.upper())}"
    if cfg.method == "dakd":
        extra = [] if cfg.loss == "bdl" else [cfg.loss.upper()]
        extra += [] if cfg.selection == "dds" else [f"{cfg.selection} selection"]
        return "DA-KD" + (f" ({', '.join(extra)})" if extra else "")
    return METHOD_LABELS[cfg.method]


def load_complete(cfg: DistillConfig) -> dict | None:
    """The run's ``results.json`` if it exists and was produced by the same config hash."""
    path = Path(cfg.output_dir) / "results.json"
    if path.exists():
        res = json.loads(path.read_text())
        if res.get("config_hash") == cfg.config_hash():
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


def launch_training(cfg: DistillConfig, num_processes: int = 1, cpu: bool = False,
                    config_file: str | None = None) -> dict:
    """Train in this process (``num_processes == 1``) or in ``accelerate launch`` subprocesses.

    A notebook kernel must not initialise CUDA before the launch, so multi-process training always
    goes through a subprocess (command: `accelerate_command`). Returns the train log.

    Raises:
        subprocess.CalledProcessError: the training failed.
    """
    if num_processes <= 1 and not cpu:
        from .train import train
        return train(cfg)
    _launch_cli(cfg, "train", num_processes, cpu, config_file)
    return json.loads((Path(cfg.output_dir) / "train_log.json").read_text())


def _launch_cli(cfg: DistillConfig, command: str, num_processes: int, cpu: bool,
                config_file: str | None, *args: str) -> None:
    """Write ``cfg`` as ``<output_dir>/<command>_request.json`` and run ``python -m dakd.cli
    <command> --config <it> *args`` in ``num_processes`` accelerate processes; raises
    ``subprocess.CalledProcessError`` if they fail."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    request = out / f"{command}_request.json"
    write_json(request, cfg.to_dict())
    cmd = accelerate_command(num_processes, cpu, config_file)
    cmd += ["-m", "dakd.cli", command, "--config", str(request), *args]
    subprocess.run(cmd, check=True, env=launch_env(cpu))


def evaluate_run(cfg: DistillConfig, accelerator=None) -> dict:
    """Evaluate a run's model on every set of ``cfg.eval_datasets``: {dataset: `evaluate_model` dict}.

    The model is ``cfg.teacher`` for method "teacher", else ``<output_dir>/student``. With an
    ``accelerator`` of several processes each holds a full copy of the model and generates its
    share of the prompts (data-parallel); all processes return the same dict. New tokens per
    response: ``cfg.max_new_tokens``, capped by a set's own length where it has one (SAMSum 128,
    GSM8K 256; `tasks.EVAL_SETS`).
    """
    from .evaluate import evaluate_model
    from .models import load_model, load_tokenizer
    from .tasks import eval_spec

    path = cfg.teacher if cfg.method == "teacher" else Path(cfg.output_dir) / "student"
    model, tok = load_model(path, cfg.dtype, cfg.trust_remote_code), load_tokenizer(path, cfg.trust_remote_code)
    if accelerator is not None:
        model = model.to(accelerator.device)
    evals = {}
    for ds in cfg.eval_datasets:
        own = eval_spec(ds).max_new_tokens
        evals[ds] = evaluate_model(model, tok, ds, cfg.prompt_style, cfg.eval_seeds, cfg.eval_samples,
                                   min(cfg.max_new_tokens, own or cfg.max_new_tokens), cfg.eval_batch_size,
                                   cfg.max_prompt_length, accelerator=accelerator)
    return evals


def launch_evaluation(cfg: DistillConfig, num_processes: int = 1, cpu: bool = False,
                      config_file: str | None = None) -> dict:
    """`evaluate_run` in this process (``num_processes == 1``), or data-parallel in ``accelerate
    launch`` subprocesses (``python -m dakd.cli evaluate``), which write
    ``<output_dir>/eval.json``; returns {dataset: evaluation dict}.

    Raises:
        subprocess.CalledProcessError: the evaluation failed.
    """
    if num_processes <= 1 and not cpu:
        return evaluate_run(cfg)
    result = Path(cfg.output_dir) / "eval.json"
    result.unlink(missing_ok=True)
    _launch_cli(cfg, "evaluate", num_processes, cpu, config_file, "--out", str(result))
    return json.loads(result.read_text())


def run(cfg: DistillConfig, num_processes: int = 1, cpu: bool = False, force: bool = False) -> dict:
    """Train (unless ``cfg.method == "teacher"``) and evaluate on ``cfg.eval_datasets``, both in
    ``num_processes`` accelerate processes when more than one (or ``cpu``) is asked for.

    Returns the dict written to ``<output_dir>/results.json``: the run metadata (config, hash,
    versions), ``label`` (table row), ``eval`` ({dataset: evaluation dict}), ``cost`` (Table 3
    record; absent for the teacher), ``filter`` and ``seconds`` (wall-clock of training and of
    evaluation).
    """
    if not force and (done := load_complete(cfg)) is not None:
        print(f"[dakd] {cfg.output_dir}: complete (config {cfg.config_hash()}), reused")
        return done
    import torch

    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    t0 = time.perf_counter()
    log = None
    if cfg.method != "teacher":
        log = launch_training(cfg, num_processes, cpu)
    t1 = time.perf_counter()
    evals = launch_evaluation(cfg, num_processes, cpu)
    for ds, ev in evals.items():
        print(f"[dakd] {method_label(cfg)} on {ds}: {ev['metric']} {ev['score']:.2f} ({ev['num_prompts']} "
              f"prompts, {len(ev['per_seed'])} seed(s), {ev['num_processes']} process(es), {ev['seconds']:.0f}s)")
    res = run_metadata(cfg) | {"label": method_label(cfg), "eval": evals,
                               "seconds": {"train": t1 - t0, "eval": time.perf_counter() - t1}}
    if log is not None:
        res |= {"cost": log["cost"], "filter": log["filter"], "num_samples": log["num_samples"]}
    _keep_previous_results(out, res["config_hash"])
    write_json(out / "results.json", res)
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
