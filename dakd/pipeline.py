"""A run end to end: train (in this process, or in ``accelerate launch`` subprocesses), then
evaluate, then write ``results.json``. A finished run with the same config hash is reused, never
redone; a run is finished only once its ``results.json`` exists, and that file is written last and
atomically, so a killed run never passes for a complete one.
"""

from __future__ import annotations

import json
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
        short = {"forward_kl": "KL", "kl": "KL", "fkl": "KL", "reverse_kl": "RKL", "rkl": "RKL"}
        return f"KD-{short.get(cfg.loss, cfg.loss.upper())}"
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


def launch_training(cfg: DistillConfig, num_processes: int = 1, cpu: bool = False) -> dict:
    """Train in this process (``num_processes == 1``) or in ``accelerate launch`` subprocesses.

    A notebook kernel must not initialise CUDA before the launch, so multi-process training always
    goes through a subprocess. Raises ``subprocess.CalledProcessError`` if the training fails.
    """
    if num_processes <= 1 and not cpu:
        from .train import train
        return train(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    request = out / "train_request.json"
    write_json(request, cfg.to_dict())
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--cpu"] if cpu else []
    cmd += ["-m", "dakd.cli", "train", "--config", str(request)]
    subprocess.run(cmd, check=True)
    return json.loads((out / "train_log.json").read_text())


def run(cfg: DistillConfig, num_processes: int = 1, cpu: bool = False, force: bool = False) -> dict:
    """Train (unless ``cfg.method == "teacher"``) and evaluate on ``cfg.eval_datasets``.

    Returns the dict written to ``<output_dir>/results.json``: the run metadata (config, hash,
    versions), ``label`` (table row), ``eval`` ({dataset: evaluation dict}), ``cost`` (Table 3
    record; absent for the teacher), ``filter`` and ``seconds`` (wall-clock of training and of
    evaluation).
    """
    if not force and (done := load_complete(cfg)) is not None:
        print(f"[dakd] {cfg.output_dir}: complete (config {cfg.config_hash()}), reused")
        return done
    import torch

    from .evaluate import evaluate_model
    from .models import load_model, load_tokenizer

    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    t0 = time.perf_counter()
    log = None
    if cfg.method != "teacher":
        log = launch_training(cfg, num_processes, cpu)
    t1 = time.perf_counter()
    path = cfg.teacher if cfg.method == "teacher" else out / "student"
    model, tok = load_model(path, cfg.dtype, cfg.trust_remote_code), load_tokenizer(path, cfg.trust_remote_code)
    evals = {}
    for ds in cfg.eval_datasets:
        evals[ds] = evaluate_model(model, tok, ds, cfg.prompt_style, cfg.eval_seeds, cfg.eval_samples,
                                   cfg.max_new_tokens, cfg.eval_batch_size, cfg.max_prompt_length)
        print(f"[dakd] {method_label(cfg)} on {ds}: ROUGE-L {evals[ds]['rougeL']:.2f} "
              f"({evals[ds]['num_prompts']} prompts, {len(cfg.eval_seeds)} seeds, {evals[ds]['seconds']:.0f}s)")
    res = run_metadata(cfg) | {"label": method_label(cfg), "eval": evals,
                               "seconds": {"train": t1 - t0, "eval": time.perf_counter() - t1}}
    if log is not None:
        res |= {"cost": log["cost"], "filter": log["filter"], "num_samples": log["num_samples"]}
    write_json(out / "results.json", res)
    return res
