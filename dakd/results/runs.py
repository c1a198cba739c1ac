"""A preset's finished runs read back from their folders: results, train logs, saved tables, and
one run's per-epoch record (selection ratio, subset, DDS by sample id, loss, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..methods import METHODS

__all__ = ['collect', 'SAVED_TABLES', 'saved_tables', 'table_json', 'epoch_dds', 'dds_of', 'training_record']


_ORDER = {name: i for i, name in enumerate(METHODS)}  # the declarations' order: the paper's rows


def collect(root: str | Path) -> dict[str, dict]:
    """Complete runs under ``root``: {run name: results.json contents (+ ``train_log``)}, in table
    order (teacher, SFT, KD, SeqKD, GKD, DistiLLM, DA-KD; then by folder name). A folder without
    ``results.json`` is an unfinished run and is skipped."""
    found = []
    for res_path in Path(root).glob("*/results.json"):
        method = json.loads(res_path.read_text())["config"]["method"]
        found.append((_ORDER.get(method, 9), res_path.parent.name, res_path))
    runs = {}
    for _, _, res_path in sorted(found):
        res = json.loads(res_path.read_text())
        log = res_path.parent / "train_log.json"
        res["train_log"] = json.loads(log.read_text()) if log.exists() else None
        runs[res_path.parent.name] = res
    return runs


SAVED_TABLES = ("table2", "table3", "figure1", "table4", "table5", "lambda_sweep", "tau_sweep", "schedules")


def saved_tables(run_root: str | Path) -> dict[str, dict | None]:
    """The tables the notebooks 03-05 wrote into ``run_root`` (``<table>.json``, `SAVED_TABLES`):
    {table: its JSON dict, or None when the file is absent}."""
    out = {}
    for t in SAVED_TABLES:
        path = Path(run_root) / f"{t}.json"
        out[t] = json.loads(path.read_text()) if path.exists() else None
    return out


def table_json(df: pd.DataFrame) -> dict:
    """A table as JSON-ready dict: ``rows`` (records, index included, NaN as None), ``paper`` and
    ``note`` from ``df.attrs``."""
    return {"rows": json.loads(df.reset_index().to_json(orient="records")), "paper": df.attrs.get("paper"),
            "note": df.attrs.get("note")}


def epoch_dds(epoch_record: dict) -> dict[str, float]:
    """{sample id (text): DDS} of one epoch record of a train log; {} for an epoch without scores.
    Reads ``dds_by_sample``, or the ``dds_values`` list of logs written before sample ids were
    stored (keyed then by position in the filtered training set, as ``"#<i>"``)."""
    if epoch_record.get("dds_by_sample"):
        return dict(epoch_record["dds_by_sample"])
    return {f"#{i}": v for i, v in enumerate(epoch_record.get("dds_values") or [])}


def dds_of(run_dir: str | Path, sample_id) -> dict[int, float]:
    """The DDS (Eq. 1, dimensionless) of one training sample before each DA-KD epoch of a run:
    {epoch: DDS}, from ``<run_dir>/train_log.json``; epoch 0 trains on all samples unscored, so
    the first epoch listed is 1.

    Raises:
        FileNotFoundError: the run has no ``train_log.json``.
        KeyError: the sample was never scored in this run (not a training sample, or filtered out).
    """
    path = Path(run_dir) / "train_log.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no train log (the run is unfinished or not a training run)")
    out = {e["epoch"]: epoch_dds(e)[str(sample_id)] for e in json.loads(path.read_text())["epochs"]
           if str(sample_id) in epoch_dds(e)}
    if not out:
        raise KeyError(f"sample {sample_id!r} has no DDS in {path} (scored samples: the run's filtered training set)")
    return out


def training_record(log: dict) -> pd.DataFrame:
    """One run's per-epoch record from its ``train_log.json`` (finished or reused alike): epoch,
    selection ratio r(e), samples trained on (of the N kept), how many came from D_high / D_low,
    the DDS quartiles and 90th percentile over all N samples before the epoch (DA-KD from epoch 1;
    None where no DDS was computed), the student's mean CE (nats/token, when DDS was computed),
    mean training loss (nats/token, the method's own objective), optimiser steps, and seconds spent
    scoring DDS and training."""
    rows = []
    for e in log.get("epochs", []):
        dds = e.get("dds") or {}
        rows.append({"epoch": e["epoch"], "ratio r(e)": e["ratio"], "samples": e["subset_size"],
                     "of N": e.get("num_samples", log.get("num_samples")),
                     "from D_high": e.get("n_high"), "from D_low": e.get("n_low"),
                     "DDS q0.25": dds.get("q0.25"), "DDS median": dds.get("q0.5"), "DDS q0.75": dds.get("q0.75"),
                     "DDS q0.9": dds.get("q0.9"), "student CE": (e.get("student_ce") or {}).get("mean"),
                     "loss (nats/token)": e["mean_loss"], "steps": e["steps"],
                     "DDS seconds": e.get("dds_seconds", 0.0), "train seconds": e.get("train_seconds")})
    return pd.DataFrame(rows).set_index("epoch")
