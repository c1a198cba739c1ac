"""Tables and figures from a preset's run folders, with the paper's numbers beside ours.

The paper's numbers live in ``dakd/paper_tables.json``, copied from He et al., DA-KD, ICML 2025
(PMLR 267:22379-22391), Tables 1-5, as published. One builder per table: `table1` (instruction
following), `table2` (SAMSum, GSM8K), `table3` (training cost), `table4` (DiffUp ablation),
`table5` (loss ablation), `lambda_sweep`, `tau_sweep`, `schedule_table`, and the figures `figure1`
(ROUGE-L against iterations) and `lambda_figure`. Each takes the table's runs ({run name:
``results.json`` contents}, e.g. `collect` restricted to ``presets.get_tables(preset)[table]``),
finds each run's row from its config, and shows ours, the paper's value and ours minus the paper's
side by side; an expected row without a run has run None and NaN numbers. A run that fits no row
(or two runs one row) is a ValueError, and so are runs decoded differently on one set
(`dakd.decoding.check_same_decoding`). Which paper pair is compared is in ``df.attrs["paper"]``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pandas as pd

from .compare import bootstrap_mean, paired_difference, per_prompt_values  # noqa: F401  (paired comparisons)
from .decoding import check_same_decoding
from .methods import METHODS

# the paper's Table 1 rows, in its order
PAPER_METHODS = ("Teacher", "SFT", "KD-KL", "KD-RKL", "SeqKD", "GKD", "DistiLLM", "DA-KD")
NAN = float("nan")


@lru_cache(maxsize=1)
def paper_tables() -> dict:
    """The paper's published numbers (Tables 1-5, hyperparameters), with the citation."""
    return json.loads((Path(__file__).parent / "paper_tables.json").read_text())


# our evaluation set -> its column in the paper's Table 1, in the paper's column order
TABLE1_COLUMNS = {"dolly": "Dolly", "self_instruct": "SelfInst", "sinst": "S-NI", "uinst": "UnNI", "uinst_full": "UnNI",
                  "vicuna": "Vicuna"}


def paper_table1(student: str, column: str = "Dolly") -> dict[str, float]:
    """Table 1's ROUGE-L (mean of 5 seeds, x100) by method for one student, in one column.

    Args:
        student: "Sheared-LLaMA-2.7B", "Sheared-LLaMA-1.3B", "Qwen2.5-1.5B" or "Qwen2.5-0.5B";
            the "Teacher" entry is that student's teacher (Llama2-7B or Qwen2.5-7B).
        column: "Dolly", "SelfInst", "S-NI", "UnNI", "Vicuna" or "Avg" (the paper's mean of the five).

    Raises:
        ValueError: unknown student or column.
    """
    rows = paper_tables()["table1_task_agnostic_rougeL_mean_of_5_seeds"]
    mine = [r for r in rows if r["student"] == student and r["method"] != "Teacher"]
    if not mine:
        raise ValueError(f"no Table 1 rows for student {student!r}; known: "
                         f"{sorted({r['student'] for r in rows if r['method'] != 'Teacher'})}")
    if column not in mine[0]:
        raise ValueError(f"Table 1 has no column {column!r}; known: {[*TABLE1_COLUMNS.values(), 'Avg']}")
    out = {r["method"]: r[column] for r in mine}
    out["Teacher"] = next(r[column] for r in rows if r["method"] == "Teacher" and r["teacher"] == mine[0]["teacher"])
    return out


def paper_dolly(student: str) -> dict[str, float]:
    """Table 1's DollyEval ROUGE-L by method for one student (the teacher row is its teacher's)."""
    return paper_table1(student, "Dolly")


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


def method_table(runs: dict[str, dict], dataset: str = "dolly") -> pd.DataFrame:
    """One row per run: ROUGE-L (mean over seeds, x100), its spread, training iterations and minutes
    (split into DDS scoring and training, Table 3's record), and the paper's DollyEval ROUGE-L for
    the same method with both Llama2-7B students, with our difference from the 1.3B one."""
    check_same_decoding(runs, "method_table")
    p27, p13 = paper_dolly("Sheared-LLaMA-2.7B"), paper_dolly("Sheared-LLaMA-1.3B")
    rows = []
    for name, r in runs.items():
        ev, cost = r["eval"][dataset], r.get("cost") or {}
        label = r["label"]
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
        label, row = r["label"], {"run": name, "method": r["label"]}
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
    from .methods import DAKD_DEFAULTS
    from .pipeline import loss_label

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


PAPER_PAIR_ABLATIONS = "Llama2-7B -> Sheared-LLaMA-1.3B"


# ------------------------------------------------------------------------------------ the tables

TABLE2_METHODS = ("Teacher", "SFT", "KD-KL", "KD-RKL", "GKD", "DistiLLM", "DA-KD")
# our set -> (column name, metric key in the paper's Table 2 entries)
TABLE2_COLUMNS = {"samsum": ("SAMSum ROUGE-L", "samsum_rougeL"), "gsm8k": ("GSM8K accuracy", "gsm8k_acc")}


def paper_table2(family: str) -> tuple[str, dict]:
    """The paper's Table 2 entries of one model family: (its full name, {method: {metric: value}}).

    Args:
        family: "Llama2", "Qwen2.5" or "Llama3.2" (case-insensitive prefix of the published
            family name, e.g. "Llama2 (7B→1.3B)").

    Raises:
        ValueError: no family or several families start with ``family``.
    """
    rows = paper_tables()["table2_task_specific"]["rows"]
    hits = [r for r in rows if r["family"].lower().startswith(family.lower())]
    if len(hits) != 1:
        raise ValueError(f"Table 2 family {family!r} matches {len(hits)}; known: {[r['family'] for r in rows]}")
    return hits[0]["family"], {k: v for k, v in hits[0].items() if k != "family"}


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
        if r["label"] not in TABLE2_METHODS or not sets:
            raise ValueError(f"table2: run {name!r} ({r['label']}, evaluated on {list(r['eval'])}) is not a "
                             f"row of Table 2 (methods {TABLE2_METHODS}, sets {list(TABLE2_COLUMNS)})")
        for ds in sets:
            if (r["label"], ds) in cells:
                raise ValueError(f"table2: runs {cells[r['label'], ds][0]!r} and {name!r} are both "
                                 f"{r['label']} on {ds}")
            cells[r["label"], ds] = (name, r)
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


TABLE3_METHODS = ("SFT", "KD-KL", "KD-RKL", "SeqKD", "GKD", "DistiLLM", "DA-KD")


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
    found = _rows(runs, lambda r: r["label"], list(TABLE3_METHODS), "table3")
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


# Table 4's rows: selection mode -> (row name, the paper's variant name in paper_tables.json)
TABLE4_ROWS = {"dds": ("DiffUp (full DA-KD)", "DiffUp (full DA-KD)"),
               "random": ("w/o DDS", "w/o DDS (random subset, same schedule)"),
               "top": ("w/o SDU", "w/o SDU (all samples from the high-DDS partition)"),
               "full": ("w/o DiffUp", "w/o DiffUp (full data every epoch)")}


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


TABLE5_ROWS = ("KL", "RKL", "JSD", "SKL", "SRKL", "BDL")


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
    from .presets import LAMBDAS

    return _sweep(runs, "lam", lams or LAMBDAS, datasets, "lambda_sweep",
                  "The paper shows the lambda sweep as a figure, " + paper_tables()["lambda_sweep_fig4"])


def tau_sweep(runs: dict[str, dict], taus=None, datasets=None) -> pd.DataFrame:
    """DA-KD at each tau (share of the subset drawn from the low-DDS part; default
    ``presets.TAUS``), one row each; the paper gives no numbers for tau (it uses 0.1).

    Raises:
        ValueError: a run that is not DA-KD with the paper's settings except ``tau``.
    """
    from .presets import TAUS

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
        label = "KD, full data (BDL)" if c["method"] == "dakd" and c["selection"] == "full" else r["label"]
        pts = r.get("epoch_eval") or []
        if not pts:
            rows.append({"run": name, "curve": label, "epoch": NAN, "iterations": NAN, "score": NAN, "dataset": None})
        for p in pts:
            rows.append({"run": name, "curve": label, "epoch": p["epoch"], "iterations": p["iterations_end"],
                         "score": p["score"], "dataset": p["dataset"]})
    return pd.DataFrame(rows, columns=["run", "curve", "epoch", "iterations", "score", "dataset"])


def figure1(runs: dict[str, dict], path: str | Path) -> Path:
    """Draw the paper's Figure 1 from ``epoch_eval``: ROUGE-L after each epoch against training
    iterations, one line per run (DA-KD; full-data KD with the same loss, BDL). Runs without
    points are named in the title as missing. Returns ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = figure1_points(runs)
    fig, ax = plt.subplots(figsize=(7, 4))
    missing = []
    for (name, curve), g in pts.groupby(["run", "curve"], sort=False):
        g = g.dropna(subset=["score"])
        if g.empty:
            missing.append(name)
            continue
        ax.plot(g["iterations"], g["score"], marker="o", label=f"{curve} ({name})")
        for _, p in g.iterrows():
            ax.annotate(f"e{int(p['epoch'])}", (p["iterations"], p["score"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    ds = pts["dataset"].dropna()
    ax.set_xlabel("training iterations (optimiser steps)")
    ax.set_ylabel(f"ROUGE-L on {ds.iloc[0] if len(ds) else 'dolly'} (x100)")
    ax.set_title("ROUGE-L against iterations (paper Figure 1)" + (f"; missing: {', '.join(missing)}" if missing else ""))
    if len(ds):
        ax.legend()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, Path(path))


def lambda_figure(runs: dict[str, dict], path: str | Path, lams=None, dataset: str = "dolly") -> Path:
    """Score on ``dataset`` against BDL's lambda (`lambda_sweep`), the paper's 0.9 marked; the
    paper publishes the figure without numbers (the title says so). Returns ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = lambda_sweep(runs, lams, [dataset]).reset_index()
    col = TABLE1_COLUMNS.get(dataset, dataset)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(df["lam"], df[col], marker="o", label="ours")
    ax.axvline(0.9, ls="--", c="gray", label="paper's lambda (0.9)")
    ax.axvline(0.5, ls=":", c="crimson", label="0.5: BDL identically 0")
    ax.set_xlabel("lambda (BDL, Eq. 4)")
    ax.set_ylabel(f"ROUGE-L on {dataset} (x100)")
    ax.set_title("DA-KD against lambda (paper: a figure, no numbers published)")
    ax.legend()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, Path(path))


def paper_bars(df: pd.DataFrame, columns: list[str], path: str | Path, title: str) -> Path:
    """Grouped bars of ours beside the paper's for each of ``columns`` (each with its ``<column>
    paper`` beside it in ``df``), one group per row of ``df``. Returns ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    parts = []
    for c in columns:
        for source, col in (("ours", c), ("paper", f"{c} paper")):
            parts.append(pd.DataFrame({"row": df.index.astype(str), "value": df[col].astype(float),
                                       "source": source, "column": c}))
    long = pd.concat(parts, ignore_index=True)
    fig, axes = plt.subplots(1, len(columns), figsize=(6 * len(columns), 4), squeeze=False)
    for ax, c in zip(axes[0], columns):
        sns.barplot(data=long[long["column"] == c], x="row", y="value", hue="source", ax=ax)
        ax.set_title(c)
        ax.set_xlabel("")
        ax.set_ylabel(c)
        ax.tick_params(axis="x", rotation=30)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)  # off the bars
    import textwrap

    fig.suptitle(textwrap.fill(f"ours (this machine) beside the paper's ({title})", 45 * len(columns) + 20), fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, Path(path))


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


def plot_all(runs: dict[str, dict], folder: str | Path, dataset: str = "dolly") -> list[Path]:
    """Draw the four figures of the core protocol into ``folder``; returns the PNG paths:
    per-epoch DDS distributions (DA-KD), selection ratio and subset size, training loss per epoch,
    ROUGE-L per method beside the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="notebook")
    paths = []

    dakd_runs = {k: r for k, r in runs.items() if r["config"]["method"] == "dakd" and r.get("train_log")}
    if dakd_runs:
        name, r = next(iter(dakd_runs.items()))
        recs = [e for e in r["train_log"]["epochs"] if epoch_dds(e)]
        if recs:
            df = pd.DataFrame([{"epoch": e["epoch"], "DDS": v} for e in recs for v in epoch_dds(e).values()])
            fig, ax = plt.subplots(figsize=(7, 4))
            sns.violinplot(data=df, x="epoch", y="DDS", ax=ax, cut=0, inner="quartile", color="#8fb3d9")
            for e in recs:
                if e.get("dds_threshold") is not None:
                    ax.hlines(e["dds_threshold"], e["epoch"] - recs[0]["epoch"] - 0.4,
                              e["epoch"] - recs[0]["epoch"] + 0.4, color="crimson", lw=1.5)
            ax.set_title(f"{r['label']}: DDS of every sample before each epoch (red: D_high threshold)")
            ax.set_yscale("log")  # DDS has a long tail (ratios near 0 CE_teacher)
            ax.set_ylabel("DDS = CE_student / CE_teacher (log)")
            paths.append(_save(fig, folder / "dds_per_epoch.png"))

        fig, ax1 = plt.subplots(figsize=(7, 4))
        for k, r in dakd_runs.items():
            ep = r["train_log"]["epochs"]
            ax1.plot([e["epoch"] for e in ep], [e["ratio"] for e in ep], marker="o", label=f"{k}: r(e)")
        ax2 = ax1.twinx()
        ep = next(iter(dakd_runs.values()))["train_log"]["epochs"]
        ax2.bar([e["epoch"] for e in ep], [e["subset_size"] for e in ep], alpha=0.25, color="gray")
        ax2.set_ylabel("samples trained on (|D'|)")
        ax2.grid(False)
        ax1.set_zorder(ax2.get_zorder() + 1)  # the ratio line in front of the bars
        ax1.patch.set_visible(False)
        ax1.set_xticks([e["epoch"] for e in ep])
        ax1.set_xlabel("epoch")
        ax1.set_ylabel("selection ratio r(e) (Eq. 2)")
        ax1.set_ylim(0, 1.05)
        ax1.set_title("Selection ratio and subset size per epoch")
        ax1.legend(loc="lower left")
        paths.append(_save(fig, folder / "selection_ratio.png"))

    trained = {k: r for k, r in runs.items() if r.get("train_log")}
    if trained:
        fig, ax = plt.subplots(figsize=(7, 4))
        for k, r in trained.items():
            ep = r["train_log"]["epochs"]
            ax.plot([e["epoch"] for e in ep], [e["mean_loss"] for e in ep], marker="o", label=r["label"])
        ax.set_xlabel("epoch")
        ax.set_xticks(sorted({e["epoch"] for r in trained.values() for e in r["train_log"]["epochs"]}))
        ax.set_ylabel("mean training loss (nats/token)")
        ax.set_title("Training loss (each method's own objective)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)  # beside the lines, not over them
        paths.append(_save(fig, folder / "training_loss.png"))

    if runs:
        table = method_table(runs, dataset)
        long = pd.concat([
            pd.DataFrame({"method": table["method"], "ROUGE-L": table["ROUGE-L"], "source": "ours (CPU preset)"}),
            pd.DataFrame({"method": table["method"], "ROUGE-L": table["paper 7B->1.3B"],
                          "source": "paper, Llama2-7B -> 1.3B"}),
        ]).dropna()
        fig, ax = plt.subplots(figsize=(7, 4))
        sns.barplot(data=long, x="method", y="ROUGE-L", hue="source", ax=ax)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
        ax.set_title(f"ROUGE-L on {dataset} per method")
        paths.append(_save(fig, folder / "rougeL_per_method.png"))
    return paths


# PNG metadata left out of saved figures: matplotlib's version string ("Software") would make the
# same figure differ byte for byte between environments (a rerun with the same numbers must leave
# `git status` clean)
PNG_METADATA = {"Software": None}


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as PNG (dpi 120) without environment-dependent metadata, so the same figure is
    the same bytes wherever it is drawn; close it; return ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png", metadata=PNG_METADATA)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


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


def training_figure(log: dict, path: str | Path | None = None, title: str = ""):
    """Three panels of one run's `training_record`: samples trained on per epoch with r(e) on its
    own axis; the DDS median with its interquartile range and 90th percentile (epochs with DDS);
    the mean training loss. Returns the matplotlib figure, also saved as PNG at ``path`` if given
    (then closed: display the file)."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = training_record(log)
    ep = list(rec.index)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 3.4))
    a1.bar(ep, rec["samples"], color="#8fb3d9", label="samples trained on")
    a1.set_ylabel("samples trained on")
    a1.set_xlabel("epoch")
    a1.set_xticks(ep)
    r = a1.twinx()
    r.plot(ep, rec["ratio r(e)"], marker="o", c="black", label="ratio r(e)")
    r.set_ylim(0, 1.05)
    r.set_ylabel("selection ratio r(e)")
    a1.set_title("Data per epoch (DiffUp shrinks it)")
    d = rec.dropna(subset=["DDS median"])
    if len(d):
        a2.fill_between(d.index, d["DDS q0.25"].astype(float), d["DDS q0.75"].astype(float), alpha=0.3,
                        label="DDS 25th-75th percentile")
        a2.plot(d.index, d["DDS median"], marker="o", label="DDS median")
        a2.plot(d.index, d["DDS q0.9"], marker="^", ls="--", label="DDS 90th percentile")
        a2.legend(fontsize=8, loc="best")
    else:
        a2.text(0.5, 0.5, "no DDS computed\n(full data every epoch)", ha="center", va="center",
                transform=a2.transAxes)
    a2.set_xticks(ep)
    a2.set_xlabel("epoch")
    a2.set_ylabel("DDS = CE_student / CE_teacher")
    a2.set_title("Difficulty before each epoch")
    a3.plot(ep, rec["loss (nats/token)"], marker="o")
    a3.set_xticks(ep)
    a3.set_xlabel("epoch")
    a3.set_ylabel("mean training loss (nats/token)")
    a3.set_title("Training loss")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()  # also inline in a notebook: the twin axis's label off the middle panel
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _save(fig, Path(path))
    return fig
