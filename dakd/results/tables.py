"""One builder per table of the paper, keyed by each run's config (its method, loss, selection and
settings), with the paper's numbers beside ours: `method_table`, `table1` to `table5`, the sweeps,
`figure1_points`, `epoch_table`. An expected row without a run has run None and NaN numbers; a run
that fits no row (or two runs one row) is a ValueError, and so are runs decoded differently on one
set (`dakd.decoding.check_same_decoding`). Which paper pair is compared is in ``df.attrs["paper"]``."""

from __future__ import annotations

import pandas as pd

from ..decoding import check_same_decoding
from .paper import (NAN, PAPER_PAIR_ABLATIONS, TABLE1_COLUMNS, TABLE2_COLUMNS, TABLE2_METHODS, TABLE3_METHODS,
                    TABLE4_ROWS, TABLE5_ROWS, paper_dolly, paper_table1, paper_table2, paper_tables)

__all__ = ['row_name', 'method_table', 'table1', 'table2', 'table3', 'table4', 'table5', 'lambda_sweep', 'tau_sweep',
           'schedule_table', 'figure1_points', 'epoch_table']



def row_name(run: dict) -> str:
    """The table row of a run, computed from its config (`dakd.methods.run_label` of
    ``results.json``'s ``config``) rather than read from the label text it stored: a run labelled
    by older code lands in the row its settings say. The config is read as it was written (not
    validated again: a finished run of a setting refused today still has its row)."""
    import dataclasses
    from types import SimpleNamespace

    from ..config import DistillConfig
    from ..methods import run_label

    if "config" not in run:  # a hand-made row without a config: its label is all there is
        return run["label"]
    defaults = {f.name: f.default for f in dataclasses.fields(DistillConfig)}
    return run_label(SimpleNamespace(**(defaults | run["config"])))


def method_table(runs: dict[str, dict], dataset: str = "dolly") -> pd.DataFrame:
    """One row per run: ROUGE-L (mean over seeds, x100), its spread, training iterations and minutes
    (split into DDS scoring and training, Table 3's record), and the paper's DollyEval ROUGE-L for
    the same method with both Llama2-7B students, with our difference from the 1.3B one."""
    check_same_decoding(runs, "method_table")
    p27, p13 = paper_dolly("Sheared-LLaMA-2.7B"), paper_dolly("Sheared-LLaMA-1.3B")
    rows = []
    for name, r in runs.items():
        ev, cost = r["eval"][dataset], r.get("cost") or {}
        label = row_name(r)
        rows.append({
            "run": name, "method": label, "ROUGE-L": ev["rougeL"], "ROUGE-L std (seeds)": ev["rougeL_std"],
            "prompts": ev["num_prompts"], "seeds": len(ev["per_seed"]),
            "iterations": cost.get("iterations"),
            "train min": cost["train_seconds"] / 60 if cost else None,
            "DDS min": cost["dds_seconds"] / 60 if cost else None,
            "eval min": ev["seconds"] / 60,
            "paper 7B->2.7B": p27.get(label), "paper 7B->1.3B": p13.get(label),
        })
    if not rows:
        return pd.DataFrame(columns=["method", "ROUGE-L", "paper 7B->1.3B", "ours - paper (1.3B)"])
    df = pd.DataFrame(rows).set_index("run")
    df["ours - paper (1.3B)"] = df["ROUGE-L"] - df["paper 7B->1.3B"]
    return df


def table1(runs: dict[str, dict], student: str = "Sheared-LLaMA-1.3B") -> pd.DataFrame:
    """Table 1 layout: one row per run, ROUGE-L (x100, mean over seeds) on every instruction set
    any run was evaluated on, each followed by the paper's value for the same method and
    ``student`` and our difference from it; then ``Avg`` over those sets, the paper's mean over the
    same sets (the published Avg when all five are present) and the difference.

    A run missing a set gets NaN there and in ``Avg``. UnNI's column is named "UnNI (prefix)" when
    the evaluation records a ``subset_note`` (the offline file is the first 1,270 records of the
    paper's set); the note itself is in every run's ``results.json``.
    """
    check_same_decoding(runs, "table1")
    present = [ds for ds in TABLE1_COLUMNS if any(ds in r["eval"] for r in runs.values())]
    paper = {ds: paper_table1(student, TABLE1_COLUMNS[ds]) for ds in present}
    cols = {ds: TABLE1_COLUMNS[ds] + (" (prefix)" if any(r["eval"].get(ds, {}).get("subset_note")
                                                         for r in runs.values()) else "")
            for ds in present}
    rows = []
    for name, r in runs.items():
        label, row = row_name(r), {"run": name, "method": row_name(r)}
        ours, theirs = [], []
        for ds in present:
            ev, col = r["eval"].get(ds), cols[ds]
            row[col] = ev["rougeL"] if ev else float("nan")
            row[f"{col} paper"] = paper[ds].get(label, float("nan"))
            row[f"{col} diff"] = row[col] - row[f"{col} paper"]
            ours.append(row[col])
            theirs.append(row[f"{col} paper"])
        row["Avg"] = sum(ours) / len(ours) if ours else float("nan")
        row["Avg paper"] = sum(theirs) / len(theirs) if theirs else float("nan")
        row["Avg diff"] = row["Avg"] - row["Avg paper"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame()


# ------------------------------------------------------------------ shared pieces of the builders

def _cfg(r: dict) -> dict:
    """A run's config dict (``results.json["config"]``)."""
    return r["config"]


def _score(r: dict | None, ds: str) -> float:
    """A run's score (ROUGE-L or accuracy, 0-100, mean over seeds) on ``ds``; NaN if not evaluated."""
    ev = (r or {}).get("eval", {}).get(ds)
    if not ev:
        return NAN
    return ev.get("score", ev.get("rougeL", NAN))


def _rows(runs: dict[str, dict], key_of, expected: list, table: str) -> dict:
    """{expected key: (run name, result) or None}; ValueError for a run matching no expected key
    or two runs matching one."""
    found: dict = {}
    for name, r in runs.items():
        k = key_of(r)
        if k not in expected:
            raise ValueError(f"{table}: run {name!r} ({r.get('label')}) is not a row of this table "
                             f"(its key {k!r}; rows: {expected})")
        if k in found:
            raise ValueError(f"{table}: runs {found[k][0]!r} and {name!r} are both row {k!r}")
        found[k] = (name, r)
    return {k: found.get(k) for k in expected}


def _common_sets(found: dict, datasets) -> list[str]:
    """The instruction sets to show: ``datasets`` if given, else those every present run was
    evaluated on (Table 1's column order); "dolly" when no run is present."""
    if datasets is not None:
        return list(datasets)
    present = [x[1] for x in found.values() if x]
    if not present:
        return ["dolly"]
    return [ds for ds in TABLE1_COLUMNS if all(ds in r["eval"] for r in present)]


def _set_columns(row: dict, r: dict | None, sets: list[str], paper: dict | None) -> None:
    """Fill ours / paper / diff for every set, then Avg over the sets (the paper's mean of the same
    sets beside ours). ``paper``: {paper column: value} or None (no published row)."""
    ours, theirs = [], []
    for ds in sets:
        col = TABLE1_COLUMNS.get(ds, ds)
        row[col] = _score(r, ds)
        row[f"{col} paper"] = (paper or {}).get(col, NAN)
        row[f"{col} diff"] = row[col] - row[f"{col} paper"]
        ours.append(row[col])
        theirs.append(row[f"{col} paper"])
    row["Avg"] = sum(ours) / len(ours) if ours else NAN
    row["Avg paper"] = sum(theirs) / len(theirs) if theirs else NAN
    row["Avg diff"] = row["Avg"] - row["Avg paper"]


def _div(a: float, b: float) -> float:
    """a / b, NaN when b is 0 or NaN (a ratio to a missing or zero-cost row)."""
    return a / b if b and b == b else NAN


def _iterations(r: dict | None) -> float:
    """Optimiser iterations of a run (NaN when absent or untrained)."""
    cost = (r or {}).get("cost") or {}
    return float(cost["iterations"]) if "iterations" in cost else NAN


def _dakd_variant(vary: str):
    """Key function for DA-KD runs that keep the paper's DA-KD settings except ``vary``: returns
    that field's value (the loss by its paper short name), or None for any other run."""
    from ..methods import DAKD_DEFAULTS
    from ..pipeline import loss_label

    def key(r: dict):
        c = _cfg(r)
        if c["method"] != "dakd":
            return None
        for f, default in DAKD_DEFAULTS.items():
            v, d = (loss_label(c[f]), loss_label(default)) if f == "loss" else (c[f], default)
            if f != vary and v != d:
                return None
        return loss_label(c["loss"]) if vary == "loss" else c[vary]
    return key


def _frame(rows: list[dict], index: str, paper: str, note: str | None = None) -> pd.DataFrame:
    """DataFrame indexed by ``index`` with ``attrs`` naming the paper source (and a note)."""
    df = pd.DataFrame(rows).set_index(index)
    df.attrs["paper"] = paper
    if note:
        df.attrs["note"] = note
    return df


def table2(runs: dict[str, dict], family: str = "Llama2") -> pd.DataFrame:
    """Table 2 layout: one row per method (Teacher, SFT, KD-KL, KD-RKL, GKD, DistiLLM, DA-KD), SAMSum
    ROUGE-L (x100) and GSM8K zero-shot accuracy (%), each with the paper's value for ``family``
    (`paper_table2`: "Llama2" 7B->1.3B, "Qwen2.5" 7B->1.5B, "Llama3.2" 3B->1B) and ours minus it,
    and the run that gave it.

    A run is placed by its label (row) and by each of SAMSum / GSM8K it was evaluated on (column);
    a missing (method, set) pair has run None and NaN.

    Raises:
        ValueError: unknown family; a run that is not one of the rows or evaluated on neither set;
            two runs for one (method, set).
    """
    check_same_decoding(runs, "table2")
    fam, paper = paper_table2(family)
    cells: dict = {}
    for name, r in runs.items():
        sets = [ds for ds in TABLE2_COLUMNS if ds in r["eval"]]
        if row_name(r) not in TABLE2_METHODS or not sets:
            raise ValueError(f"table2: run {name!r} ({r['label']}, evaluated on {list(r['eval'])}) is not a "
                             f"row of Table 2 (methods {TABLE2_METHODS}, sets {list(TABLE2_COLUMNS)})")
        for ds in sets:
            if (row_name(r), ds) in cells:
                raise ValueError(f"table2: runs {cells[r['label'], ds][0]!r} and {name!r} are both "
                                 f"{r['label']} on {ds}")
            cells[row_name(r), ds] = (name, r)
    rows = []
    for m in TABLE2_METHODS:
        row = {"method": m}
        for ds, (col, key) in TABLE2_COLUMNS.items():
            name, r = cells.get((m, ds), (None, None))
            row[col] = _score(r, ds)
            row[f"{col} paper"] = paper.get(m, {}).get(key, NAN)
            row[f"{col} diff"] = row[col] - row[f"{col} paper"]
            row[f"{col} run"] = name
        rows.append(row)
    return _frame(rows, "method", f"Table 2, {fam}")


def table3(runs: dict[str, dict]) -> pd.DataFrame:
    """Table 3 layout: training cost per method, ours beside the paper's (Llama2-7B ->
    Sheared-LLaMA-2.7B on 4 x A800).

    Columns: ``iterations`` (optimiser steps), ``minutes`` (training wall-clock: DDS scoring plus
    distillation, ``cost["total_seconds"] / 60``; model loading and evaluation excluded), ``DDS
    minutes``, ``DDS share`` (% of minutes), ``iterations / KD-KL`` and ``minutes / KD-KL`` (ratio to
    the KD-KL row of the same table), then the paper's value of each (``<column> paper``; the
    paper gives the DDS split for DA-KD only: NaN elsewhere) and ``<column> diff`` columns, ours minus the paper's, for the ratios and
    the DDS share only: absolute minutes and iterations on other hardware, batch and data sizes
    do not compare, their ratios to KD do. A missing method has run None and NaN.

    Raises:
        ValueError: a run that is not one of the rows, or two runs of one method.
    """
    pub = paper_tables()["table3_training_cost_llama2_7b_to_2p7b_4xA800"]
    p_rows = {r["method"]: r for r in pub["rows"]}
    found = _rows(runs, lambda r: row_name(r), list(TABLE3_METHODS), "table3")
    ours = {}
    for m, x in found.items():
        cost = (x[1].get("cost") or {}) if x else {}
        total = cost.get("total_seconds", cost.get("train_seconds", NAN) + cost.get("dds_seconds", 0.0)) if cost else NAN
        ours[m] = {"run": x[0] if x else None, "iterations": float(cost.get("iterations", NAN)) if cost else NAN,
                   "minutes": total / 60, "DDS minutes": cost.get("dds_seconds", NAN) / 60 if cost else NAN}
    p_dds = pub["dakd_minutes_split"]["dds_scoring"]
    kd, pkd = ours["KD-KL"], p_rows["KD-KL"]
    rows = []
    for m in TABLE3_METHODS:
        o, p = ours[m], p_rows[m]
        row = {"method": m, **o, "DDS share": 100 * _div(o["DDS minutes"], o["minutes"]),
               "iterations / KD-KL": _div(o["iterations"], kd["iterations"]),
               "minutes / KD-KL": _div(o["minutes"], kd["minutes"]),
               "iterations paper": float(p["iterations"]), "minutes paper": p["minutes"],
               "DDS minutes paper": p_dds if m == "DA-KD" else NAN,
               "DDS share paper": 100 * p_dds / p["minutes"] if m == "DA-KD" else NAN,
               "iterations / KD-KL paper": p["iterations"] / pkd["iterations"],
               "minutes / KD-KL paper": p["minutes"] / pkd["minutes"]}
        for c in ("iterations / KD-KL", "minutes / KD-KL", "DDS share"):
            row[f"{c} diff"] = row[c] - row[f"{c} paper"]
        rows.append(row)
    return _frame(rows, "method", "Table 3, Llama2-7B -> Sheared-LLaMA-2.7B, 4 x A800 (batch 8 per GPU: "
                  "32 samples per iteration)")


def _ablation_rows(runs: dict[str, dict], field: str, keys: list[tuple], table: str, datasets,
                   index: str) -> list[dict]:
    """Rows of an ablation table (Tables 4 and 5): ``keys`` = [(value of ``field``, row label, the
    paper's row)], each row with ours, the paper's and the difference per set, and the iterations."""
    check_same_decoding(runs, table)
    found = _rows(runs, _dakd_variant(field), [k for k, _, _ in keys], table)
    sets = _common_sets(found, datasets)
    rows = []
    for key, label, paper_row in keys:
        name, r = found[key] or (None, None)
        row = {index: label, "run": name}
        _set_columns(row, r, sets, paper_row)
        row["iterations"] = _iterations(r)
        rows.append(row)
    return rows


def table4(runs: dict[str, dict], datasets=None) -> pd.DataFrame:
    """Table 4 layout (DiffUp ablation, BDL throughout): rows DiffUp (DDS + SDU), w/o DDS (random
    subset of the same size), w/o SDU (all from the high-DDS part), w/o DiffUp (full data every
    epoch); ROUGE-L on each set (``datasets``, default: those every present run has) with the
    paper's value (Llama2-7B -> Sheared-LLaMA-1.3B) and ours minus it, the average over those sets
    beside the paper's average over the same sets, and iterations.

    Raises:
        ValueError: a run that is not a DA-KD run with the paper's settings except ``selection``,
            or two runs of one row.
    """
    paper = {r["variant"]: r for r in paper_tables()["table4_diffup_ablation_llama2_7b_to_1p3b"]}
    rows = _ablation_rows(runs, "selection", [(sel, label, paper[variant]) for sel, (label, variant)
                                              in TABLE4_ROWS.items()], "table4", datasets, "variant")
    return _frame(rows, "variant", f"Table 4, {PAPER_PAIR_ABLATIONS}")


def table5(runs: dict[str, dict], datasets=None) -> pd.DataFrame:
    """Table 5 layout (loss ablation, all with DiffUp): rows KL, RKL, JSD, SKL, SRKL, BDL; columns as
    `table4`, paper values of Llama2-7B -> Sheared-LLaMA-1.3B.

    Raises:
        ValueError: a run that is not a DA-KD run with the paper's settings except ``loss``, or two
            runs of one loss.
    """
    paper = {r["loss"]: r for r in paper_tables()["table5_loss_ablation_with_diffup_llama2_7b_to_1p3b"]}
    rows = _ablation_rows(runs, "loss", [(loss, loss, paper[loss]) for loss in TABLE5_ROWS], "table5",
                          datasets, "loss")
    return _frame(rows, "loss", f"Table 5, {PAPER_PAIR_ABLATIONS}")


def _sweep(runs: dict[str, dict], field: str, values, datasets, table: str, note: str) -> pd.DataFrame:
    """One row per value of a DA-KD setting: the score on each set, their average, iterations and
    the last epoch's training loss; no paper columns (``attrs["note"]`` says what was published)."""
    check_same_decoding(runs, table)
    found = _rows(runs, _dakd_variant(field), list(values), table)
    sets = _common_sets(found, datasets)
    rows = []
    for v in values:
        name, r = found[v] or (None, None)
        row = {field: v, "run": name}
        for ds in sets:
            row[TABLE1_COLUMNS.get(ds, ds)] = _score(r, ds)
        row["Avg"] = sum(row[TABLE1_COLUMNS.get(ds, ds)] for ds in sets) / len(sets) if sets else NAN
        row["iterations"] = _iterations(r)
        epochs = ((r or {}).get("train_log") or {}).get("epochs") or []
        row["last epoch loss (nats/token)"] = epochs[-1]["mean_loss"] if epochs else NAN
        rows.append(row)
    return _frame(rows, field, "none published", note)


def lambda_sweep(runs: dict[str, dict], lams=None, datasets=None) -> pd.DataFrame:
    """DA-KD with BDL at each lambda (default: ``presets.LAMBDAS``), one row each. The paper
    publishes no numbers for it, only a figure (``attrs["note"]`` quotes paper_tables.json:
    0.5 degrades, the loss being identically zero there; 0.6-0.9 gain; best at 0.9).

    Raises:
        ValueError: a run that is not DA-KD with the paper's settings except ``lam``.
    """
    from ..presets import LAMBDAS

    return _sweep(runs, "lam", lams or LAMBDAS, datasets, "lambda_sweep",
                  "The paper shows the lambda sweep as a figure, " + paper_tables()["lambda_sweep_fig4"])


def tau_sweep(runs: dict[str, dict], taus=None, datasets=None) -> pd.DataFrame:
    """DA-KD at each tau (share of the subset drawn from the low-DDS part; default
    ``presets.TAUS``), one row each; the paper gives no numbers for tau (it uses 0.1).

    Raises:
        ValueError: a run that is not DA-KD with the paper's settings except ``tau``.
    """
    from ..presets import TAUS

    return _sweep(runs, "tau", taus or TAUS, datasets, "tau_sweep",
                  "The paper publishes no numbers for tau; it uses tau = 0.1.")


def schedule_table(runs: dict[str, dict], schedules=("cosine", "linear"), datasets=None) -> pd.DataFrame:
    """DA-KD with each selection-ratio schedule (Eq. 2: cosine, the paper's, and linear), one row
    each, with iterations (the schedules keep different shares of the data); the paper gives no
    numbers for the comparison.

    Raises:
        ValueError: a run that is not DA-KD with the paper's settings except ``schedule``.
    """
    return _sweep(runs, "schedule", schedules, datasets, "schedules",
                  "The paper publishes no numbers for the schedule comparison; it uses cosine.")


# ------------------------------------------------------------------------------------ the figures

def figure1_points(runs: dict[str, dict]) -> pd.DataFrame:
    """Figure 1's points: one row per (run, epoch) of each run's ``epoch_eval`` (results.json):
    run, curve label, epoch, iterations at the end of that epoch, score (ROUGE-L x100) and set.
    A run without ``epoch_eval`` (trained without ``save_epoch_students``) gives one row with NaN
    score and iterations, so its absence shows."""
    rows = []
    for name, r in runs.items():
        c = _cfg(r)
        label = "KD, full data (BDL)" if c["method"] == "dakd" and c["selection"] == "full" else row_name(r)
        pts = r.get("epoch_eval") or []
        if not pts:
            rows.append({"run": name, "curve": label, "epoch": NAN, "iterations": NAN, "score": NAN, "dataset": None})
        for p in pts:
            rows.append({"run": name, "curve": label, "epoch": p["epoch"], "iterations": p["iterations_end"],
                         "score": p["score"], "dataset": p["dataset"]})
    return pd.DataFrame(rows, columns=["run", "curve", "epoch", "iterations", "score", "dataset"])


def epoch_table(runs: dict[str, dict]) -> pd.DataFrame:
    """Per-epoch records of every trained run: ratio, subset size, strata, DDS quantiles, loss."""
    rows = []
    for name, r in runs.items():
        for e in (r.get("train_log") or {}).get("epochs", []):
            dds = e.get("dds") or {}
            rows.append({"run": name, "epoch": e["epoch"], "ratio": e["ratio"], "subset": e["subset_size"],
                         "from D_high": e.get("n_high"), "from D_low": e.get("n_low"),
                         "DDS median": dds.get("q0.5"), "DDS q0.9": dds.get("q0.9"), "DDS max": dds.get("q1.0"),
                         "loss (nats/token)": e["mean_loss"], "steps": e["steps"]})
    return pd.DataFrame(rows)
