"""The figures, one function each: Figure 1 (ROUGE-L against iterations), the lambda figure, ours
beside the paper's as bars, the preset's overview figures (`plot_all`) and one run's training
figure. PNGs are written without matplotlib's version metadata, so a rerun that reproduces the
numbers reproduces the files byte for byte."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from .paper import TABLE1_COLUMNS
from .runs import epoch_dds, training_record
from .tables import row_name, figure1_points, lambda_sweep, method_table

__all__ = ['figure1', 'lambda_figure', 'paper_bars', 'plot_all', 'PNG_METADATA', 'training_figure']


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
            ax.plot([e["epoch"] for e in ep], [e["mean_loss"] for e in ep], marker="o", label=row_name(r))
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
