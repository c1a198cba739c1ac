"""Golden training runs on the tiny pair: the configs, and the record of a finished run that the
loop redesign must reproduce (`tests/test_golden.py`; `tests/data/golden_train.json`).

Regenerate the reference only when a behaviour change is intended and said in the commit:

    DAKD_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py

A record keeps, per epoch, what the run's draws decide (``subset_ids`` in order, ``steps``,
``iterations_end``, ``generated_batches``, ``p_sgo``) exactly, and what float arithmetic decides
(``mean_loss``, ``dds_values``) with its values; the final student is summarised by a sha256 of its
weights (exact) and by per-tensor sums (compared with a tolerance, so that another CPU's rounding
shows as a small difference in the message rather than only as another hash).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from dakd.presets import get_preset

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_train.json"
EPOCH_KEYS = ("subset_ids", "steps", "iterations_end", "generated_batches", "replay_batches", "n_high", "n_low",
              "p_sgo", "val_loss", "mean_loss", "dds_values")


def golden_configs(root) -> dict:
    """Run name -> (DistillConfig, number of processes). The tiny pair on 16 Dolly records (an
    uneven last global batch of 3; micro-batches of 2; with two processes an empty share), every
    method of the loop, the four DiffUp modes and the top-k cache; dakd and gkd also as two gloo
    processes."""
    base = get_preset("tiny", root=str(root))["dakd"].replace(
        train_samples=16, epochs=3, batch_size=3, micro_batch_size=2, save_checkpoints=False,
        gen_max_new_tokens=6, sgo_val_samples=3, seed=7)
    runs = {
        "sft": base.replace(method="sft"),
        "kd_kl": base.replace(method="kd", loss="forward_kl"),
        "kd_rkl": base.replace(method="kd", loss="reverse_kl", group_by_length=False),
        "dakd": base,
        "dakd_random": base.replace(selection="random"),
        "dakd_top": base.replace(selection="top"),
        "dakd_full": base.replace(selection="full"),
        "dakd_linear_jsd": base.replace(schedule="linear", loss="js_divergence"),
        "dakd_topk": base.replace(teacher_cache_k=8),
        "seqkd": base.replace(method="seqkd"),
        "gkd": base.replace(method="gkd", loss="js_divergence", student_data_fraction=0.5),
        "distillm": base.replace(method="distillm", sgo_init_prob=0.5, sgo_loss_eps=0.0, replay_buffer_size=4),
    }
    out = {k: (v.replace(output_dir=str(Path(root) / k)), 1) for k, v in runs.items()}
    for k in ("dakd", "gkd"):
        out[f"{k}_2proc"] = (runs[k].replace(output_dir=str(Path(root) / f"{k}_2proc")), 2)
    return out


def weights_record(folder) -> dict:
    """sha256 of the saved student's tensors (names, dtypes, bytes) and each tensor's float64 sum."""
    from dakd.models import load_model

    sd = load_model(folder).state_dict()
    h = hashlib.sha256()
    sums = {}
    for name in sorted(sd):
        t = sd[name].detach().contiguous().cpu()
        h.update(name.encode() + str(t.dtype).encode() + t.numpy().tobytes())
        sums[name] = float(t.double().sum())
    return {"sha256": h.hexdigest()[:16], "sums": sums}


def run_record(log: dict, out: Path) -> dict:
    """What a golden test compares of one finished run."""
    epochs = [{k: e.get(k) for k in EPOCH_KEYS} for e in log["epochs"]]
    for e, rec in zip(epochs, log["epochs"]):  # the values in example order (stored by sample id)
        e["dds_values"] = list(rec["dds_by_sample"].values()) if rec.get("dds_by_sample") else rec.get("dds_values")
    return {"epochs": epochs, "cpu": cpu_model(), "iterations": log["cost"]["iterations"],
            "response_tokens_seen": log["cost"]["response_tokens_seen"],
            "tokens_seen": log["cost"]["tokens_seen"], "weights": weights_record(Path(out) / "student")}


def cpu_model() -> str:
    """The CPU's model name (Linux), for deciding whether bitwise weight equality is expected."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def load_golden() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


def save_golden(records: dict) -> None:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")


def run_golden(name: str, cfg, processes: int) -> dict:
    """Train one golden config and return its record."""
    if processes == 1:
        from dakd.train import train

        log = train(cfg)
    else:
        from dakd.pipeline import launch_training

        launch_training(cfg, num_processes=processes, cpu=True)
        log = json.loads((Path(cfg.output_dir) / "train_log.json").read_text())
    return run_record(log, Path(cfg.output_dir))


def torch_threads_one() -> None:
    torch.set_num_threads(1)
