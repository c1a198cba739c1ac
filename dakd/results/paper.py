"""The paper's published numbers (He et al., DA-KD, ICML 2025, PMLR 267:22379-22391, Tables 1-5), read
from ``dakd/paper_tables.json`` as published, and the row and column names of its tables."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

__all__ = ['PAPER_METHODS', 'NAN', 'paper_tables', 'TABLE1_COLUMNS', 'paper_table1', 'paper_dolly',
           'PAPER_PAIR_ABLATIONS', 'TABLE2_METHODS', 'TABLE2_COLUMNS', 'paper_table2', 'TABLE3_METHODS',
           'TABLE4_ROWS', 'TABLE5_ROWS']

# the paper's Table 1 rows, in its order
PAPER_METHODS = ("Teacher", "SFT", "KD-KL", "KD-RKL", "SeqKD", "GKD", "DistiLLM", "DA-KD")
NAN = float("nan")


@lru_cache(maxsize=1)
def paper_tables() -> dict:
    """The paper's published numbers (Tables 1-5, hyperparameters), with the citation."""
    return json.loads((Path(__file__).parents[1] / "paper_tables.json").read_text())


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


TABLE3_METHODS = ("SFT", "KD-KL", "KD-RKL", "SeqKD", "GKD", "DistiLLM", "DA-KD")


# Table 4's rows: selection mode -> (row name, the paper's variant name in paper_tables.json)
TABLE4_ROWS = {"dds": ("DiffUp (full DA-KD)", "DiffUp (full DA-KD)"),
               "random": ("w/o DDS", "w/o DDS (random subset, same schedule)"),
               "top": ("w/o SDU", "w/o SDU (all samples from the high-DDS partition)"),
               "full": ("w/o DiffUp", "w/o DiffUp (full data every epoch)")}


TABLE5_ROWS = ("KL", "RKL", "JSD", "SKL", "SRKL", "BDL")
