"""Tables and figures from a preset's run folders, with the paper's numbers beside ours.

The paper's numbers live in ``dakd/paper_tables.json``, copied from He et al., DA-KD, ICML 2025
(PMLR 267:22379-22391), Tables 1-5, as published.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pandas as pd

# the paper's Table 1 rows that the CPU preset's methods correspond to
PAPER_METHODS = ("Teacher", "SFT", "KD-KL", "KD-RKL", "DA-KD")


@lru_cache(maxsize=1)
def paper_tables() -> dict:
    """The paper's published numbers (Tables 1-5, hyperparameters), with the citation."""
    return json.loads((Path(__file__).parent / "paper_tables.json").read_text())


# our evaluation set -> its column in the paper's Table 1, in the paper's column order
TABLE1_COLUMNS = {"dolly": "Dolly", "self_instruct": "SelfInst", "sinst": "S-NI", "uinst": "UnNI",
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


_ORDER = {"teacher": 0, "sft": 1, "kd": 2, "dakd": 3}


def collect(root: str | Path) -> dict[str, dict]:
    """Complete runs under ``root``: {run name: results.json contents (+ ``train_log``)}, in table
    order (teacher, SFT, KD, DA-KD; then by folder name). A folder without ``results.json`` is an
    unfinished run and is skipped."""
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
        recs = [e for e in r["train_log"]["epochs"] if e.get("dds_values")]
        if recs:
            df = pd.DataFrame([{"epoch": e["epoch"], "DDS": v} for e in recs for v in e["dds_values"]])
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
        ax.legend()
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


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
