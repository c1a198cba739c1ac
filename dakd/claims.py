"""The claims study (issue 15): the paper's claims, each with our estimate, a 95 % interval and a
verdict, from the runs of the ``cpu-claims`` preset (`dakd.presets.cpu_claims`).

A claim compares two runs evaluated on the same DollyEval prompts. Its estimate is the paired
per-prompt difference (`dakd.compare.paired_difference`, 10,000 bootstrap resamples of prompts,
seed 0), signed so that a positive value is in the claim's direction (the claimed-better run is
better): ROUGE-L (x100, higher is better) as ``a - b``; the teacher-forced student CE on the
reference responses (nats per response token, lower is better) as ``b - a``.

Verdicts (the rules and margins are fixed here, before any study result was seen; never tuned):

- ``beats`` (a is better than b): **holds** if the interval lies above 0, **does not hold** if it
  lies below 0, else **cannot tell**.
- ``matches`` (a is at least as good as b; a non-inferiority claim): **holds** if the interval lies
  above ``-margin``, **does not hold** if it lies below ``-margin`` (a is worse by more than the
  margin), else **cannot tell**. Margins (`MARGINS`): 0.5 ROUGE-L points; 0.01 nats per token of
  student CE.
- ``cost`` rows (wall-clock ratios and the DDS share, one measurement each, no interval): **holds**
  if the measured value is at most the bound stated in the row, else **does not hold**.

Cost is the paper's Table 3 quantity, `dakd.runstate.CostRecord`'s ``total_seconds`` (DDS scoring +
the step loop + generation + validation), measured in one process on one machine for all the runs
of the study; model loading, evaluation and the top-k teacher cache's one-off build (shared by
every run that reads it) are not in it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .compare import GENERATION_METRICS, paired_difference

# non-inferiority margins of the "matches" claims, in each metric's unit
MARGINS = {"rougeL": 0.5, "student_ce": 0.01}
# metric: (label, unit, higher is better)
METRICS = {"rougeL": ("ROUGE-L", "points x100", True),
           "student_ce": ("teacher-forced student CE", "nats/token", False)}
DATASET = "dolly"

# the paper's numbers behind each claim (../shared/paper_tables.json; Sheared-LLaMA-1.3B from
# Llama2-7B, DollyEval ROUGE-L, the setting of Tables 4 and 5; Table 3 is 7B -> 2.7B on 4 x A800)
PAPER = {
    1: "Table 4 (7B->1.3B, Dolly): DA-KD 26.75 vs w/o DiffUp 26.73 (Avg 26.15 vs 25.91), with 1963 of 3570 "
       "iterations (0.55x, Table 3)",
    2: "Table 1 (7B->1.3B, Dolly): DA-KD 26.75 vs KD-KL 26.17 and KD-RKL 25.66",
    3: "Table 5 (7B->1.3B, Dolly): BDL 26.75 vs KL 23.69, RKL 25.35, JSD 24.80, SKL 26.02, SRKL 26.43",
    4: "Table 4 (7B->1.3B, Dolly): DA-KD 26.75 vs w/o DDS (random subset) 26.05",
    5: "Table 4 (7B->1.3B, Dolly): DA-KD 26.75 vs w/o SDU (all from the top) 26.65",
    6: "Figure 4: lambda 0.5 degrades (BDL is identically zero), 0.6-0.9 gain, best at 0.9 (no numbers published)",
}

# (claim number, statement, run a, run b, kind): a is claimed at least as good as / better than b
COMPARISONS = [
    (1, "DA-KD matches full-data KD with the same loss (BDL)", "dakd", "dakd_full", "matches"),
    (2, "DA-KD beats KD-KL", "dakd", "kd_kl", "beats"),
    (2, "DA-KD beats KD-RKL", "dakd", "kd_rkl", "beats"),
    (3, "BDL is at least as good as KL under DiffUp", "dakd", "dakd_kl", "matches"),
    (3, "BDL is at least as good as RKL under DiffUp", "dakd", "dakd_rkl", "matches"),
    (3, "BDL is at least as good as JSD under DiffUp", "dakd", "dakd_jsd", "matches"),
    (3, "BDL is at least as good as SKL under DiffUp", "dakd", "dakd_skl", "matches"),
    (3, "BDL is at least as good as SRKL under DiffUp", "dakd", "dakd_srkl", "matches"),
    (4, "DDS selection beats a random subset of the same size", "dakd", "dakd_random", "beats"),
    (5, "Stratified updating beats taking every sample from the top", "dakd", "dakd_top", "beats"),
    (6, "lambda 0.6 trains: beats the collapsed lambda 0.5", "dakd_lam0.6", "dakd_lam0.5", "beats"),
    (6, "lambda 0.7 trains: beats the collapsed lambda 0.5", "dakd_lam0.7", "dakd_lam0.5", "beats"),
    (6, "lambda 0.8 trains: beats the collapsed lambda 0.5", "dakd_lam0.8", "dakd_lam0.5", "beats"),
    (6, "lambda 0.9 trains: beats the collapsed lambda 0.5", "dakd", "dakd_lam0.5", "beats"),
]

# Table 3's numbers: minutes, and the DDS split of DA-KD's 106.35
_T3 = {"dakd": 106.35, "kd_kl": 140.75, "distillm": 213.34, "dds": 28.31, "dakd_iter": 1963, "kd_iter": 3570}
# (claim, statement, paper text, numerator run, denominator run or None for the DDS share, bound)
COSTS = [
    (1, "DA-KD's iterations against full-data KD's (same loss, same epochs)",
     f"Table 3: {_T3['dakd_iter']} / {_T3['kd_iter']} = {_T3['dakd_iter'] / _T3['kd_iter']:.2f}x", "dakd", "dakd_full",
     "iterations", 0.60),
    (7, "DA-KD's wall-clock against full-data KD with the same loss (BDL), target at most 0.65x",
     (f"Table 3 reports DA-KD against KD-KL only: {_T3['dakd']} / {_T3['kd_kl']} min = "
      f"{_T3['dakd'] / _T3['kd_kl']:.2f}x"), "dakd", "dakd_full", "total_seconds", 0.65),
    (7, "DA-KD's wall-clock against KD-KL",
     f"Table 3: {_T3['dakd']} / {_T3['kd_kl']} min = {_T3['dakd'] / _T3['kd_kl']:.2f}x", "dakd", "kd_kl",
     "total_seconds", round(_T3["dakd"] / _T3["kd_kl"], 2)),
    (7, "DA-KD's wall-clock against DistiLLM (both with the live teacher)",
     f"Table 3: {_T3['dakd']} / {_T3['distillm']} min = {_T3['dakd'] / _T3['distillm']:.2f}x", "dakd_exact",
     "distillm", "total_seconds", round(_T3["dakd"] / _T3["distillm"], 2)),
    (7, "DDS scoring's share of DA-KD's cost, target at most 10 %",
     f"Table 3: {_T3['dds']} of {_T3['dakd']} min = {100 * _T3['dds'] / _T3['dakd']:.0f} %", "dakd", None,
     "dds_share", 0.10),
]


def verdict(kind: str, low: float, high: float, margin: float = 0.0) -> str:
    """The verdict of a difference whose 95 % interval is [low, high], signed so that positive is
    the claim's direction (module docstring: the rules).

    Args:
        kind: "beats" or "matches".
        low, high: the interval's ends, low <= high.
        margin: the non-inferiority margin of "matches" (>= 0; ignored for "beats").

    Returns:
        "holds", "does not hold" or "cannot tell".

    Raises:
        ValueError: an unknown kind, low > high, or a negative margin.
    """
    if low > high:
        raise ValueError(f"interval [{low}, {high}] has low > high")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if kind == "beats":
        return "holds" if low > 0 else "does not hold" if high < 0 else "cannot tell"
    if kind == "matches":
        return "holds" if low > -margin else "does not hold" if high < -margin else "cannot tell"
    raise ValueError(f"unknown claim kind {kind!r}; known: beats, matches")


def _results(folder: str | Path) -> dict | None:
    """A run folder's ``results.json``, or None when the run is not finished."""
    path = Path(folder) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def comparison_rows(root: str | Path, metrics=tuple(METRICS), dataset: str = DATASET) -> list[dict]:
    """The rows of `COMPARISONS` for each metric, from the finished runs under ``root``.

    Returns:
        one dict per (comparison, metric), in `COMPARISONS` order: ``claim`` (number),
        ``statement``, ``paper``, ``metric`` (label), ``unit``, ``ours`` (the signed difference,
        positive = the claim's direction; None when a run is missing), ``interval`` [low, high]
        (or None), ``verdict`` ("holds", "does not hold", "cannot tell" or "not run"), ``kind``,
        ``margin``, ``runs`` [a, b], ``num_prompts``, ``means`` {run: its set-level value}.

    Raises:
        ValueError: as `dakd.compare.paired_difference` (runs scored on different prompts, decoded
            differently, without teacher-forced metrics).
    """
    root = Path(root)
    rows = []
    for claim, statement, a, b, kind in COMPARISONS:
        ra, rb = _results(root / a), _results(root / b)
        for metric in metrics:
            label, unit, _ = METRICS[metric]
            margin = MARGINS[metric] if kind == "matches" else 0.0
            row = {"claim": claim, "statement": statement, "paper": PAPER[claim], "metric": label, "unit": unit,
                   "kind": kind, "margin": margin, "runs": [a, b]}
            if ra is None or rb is None:
                rows.append(row | {"ours": None, "interval": None, "verdict": "not run", "num_prompts": 0,
                                   "means": {}})
                continue
            d = signed_difference(ra, rb, metric, dataset)
            lo, hi = d["interval"]
            means = {n: _set_value(r, metric, dataset) for n, r in ((a, ra), (b, rb))}
            rows.append(row | {"ours": d["ours"], "interval": [lo, hi], "verdict": verdict(kind, lo, hi, margin),
                               "num_prompts": d["a_minus_b"]["num_prompts"], "means": means})
    return rows


def _set_value(res: dict, metric: str, dataset: str) -> float:
    ev = res["eval"][dataset]
    return ev["score"] if metric in GENERATION_METRICS else ev["teacher_forced"][metric]


def cost_rows(root: str | Path) -> list[dict]:
    """The rows of `COSTS` from the finished runs' cost records (``results.json`` ``cost``).

    Returns:
        one dict per row: ``claim``, ``statement``, ``paper``, ``metric`` ("iterations",
        "wall-clock" or "DDS share"), ``unit`` ("ratio" or "share"), ``ours`` (None when a run is
        missing), ``interval`` None (one measurement), ``bound``, ``verdict`` ("holds" when ours
        <= bound, "does not hold", or "not run"), ``runs``, ``values`` {run: the cost value}.
    """
    root = Path(root)
    rows = []
    for claim, statement, paper, a, b, key, bound in COSTS:
        ra = _results(root / a)
        rb = _results(root / b) if b else None
        metric = {"iterations": "iterations", "total_seconds": "wall-clock", "dds_share": "DDS share"}[key]
        row = {"claim": claim, "statement": statement, "paper": paper, "metric": metric,
               "unit": "share" if b is None else "ratio", "kind": "cost", "bound": bound, "interval": None,
               "runs": [a] + ([b] if b else [])}
        if ra is None or (b and rb is None):
            rows.append(row | {"ours": None, "verdict": "not run", "values": {}})
            continue
        if b is None:
            ours, values = ra["cost"]["dds_share"], {a: ra["cost"]["dds_seconds"]}
        else:
            values = {a: ra["cost"][key], b: rb["cost"][key]}
            ours = values[a] / values[b]
        rows.append(row | {"ours": ours, "verdict": "holds" if ours <= bound else "does not hold", "values": values})
    return rows


def claims_table(root: str | Path) -> list[dict]:
    """Every row of the claims table, comparisons then costs, ordered by claim number."""
    rows = comparison_rows(root) + cost_rows(root)
    return sorted(rows, key=lambda r: r["claim"])  # stable: each claim's rows keep their order


def write_claims(root: str | Path, out: str | Path) -> list[dict]:
    """`claims_table` written as ``out`` (JSON list of rows; the keys the issue names: ``claim``,
    ``paper``, ``ours``, ``interval``, ``verdict``, ``metric``, ``runs``, plus ``statement``,
    ``unit``, ``kind``, ``margin``/``bound`` and the run values) atomically; returns the rows."""
    from .io import write_json

    rows = claims_table(root)
    write_json(Path(out), rows)
    return rows


def add_teacher_forced(cfgs: dict, dataset: str = DATASET, chunk: int = 6, log=print) -> list[str]:
    """Teacher-forced metrics (`dakd.teacher_forced`) on ``dataset`` for every finished run of
    ``cfgs`` whose ``results.json`` lacks them, with one teacher pass per ``chunk`` students
    (`dakd.teacher_forced.teacher_forced_many`): the study's runs share their teacher, whose
    forward pass over the set costs several times a 6-layer student's.

    Each result is written into that run's ``results.json`` as ``eval[dataset]["teacher_forced"]``
    (the same record a run trained with ``teacher_forced=True`` has, with ``computed_with`` naming
    the runs scored in the same pass), atomically.

    Args:
        cfgs: {run name: DistillConfig}, one teacher and one tokenizer for all (else ValueError).
        dataset: a ROUGE-L set every run was evaluated on.
        chunk: students held in memory at once (~0.2 GB of weights each for the 6-layer cut, fp32;
            their logits are computed one student at a time).

    Returns:
        the run names that got metrics now.

    Raises:
        ValueError: runs with different teachers, prompt styles, lengths, ``teacher_forced_samples``,
            dtypes or evaluation batch sizes; as
            `dakd.teacher_forced.evaluate_set`.
    """
    from . import teacher_forced
    from .io import write_json
    from .models import check_pair, load_frozen, load_model, load_tokenizer

    todo = []
    for name, cfg in cfgs.items():
        res = _results(cfg.output_dir)
        ev = None if res is None else res["eval"].get(dataset)
        if ev is not None and "teacher_forced" not in ev:
            todo.append(name)
    if not todo:
        return []
    keys = {(cfgs[n].teacher, cfgs[n].prompt_style, cfgs[n].max_prompt_length, cfgs[n].max_length,
             cfgs[n].teacher_forced_samples, cfgs[n].dtype, cfgs[n].eval_batch_size) for n in todo}
    if len(keys) != 1:
        raise ValueError("add_teacher_forced scores runs of one teacher, prompt style, lengths, set size, dtype and "
                         f"batch size; got {sorted(keys, key=str)}")
    cfg0 = cfgs[todo[0]]
    teacher = load_frozen(cfg0.teacher, cfg0.dtype, cfg0.trust_remote_code)
    tok = load_tokenizer(cfg0.teacher, cfg0.trust_remote_code)
    examples, report = teacher_forced.set_examples(dataset, tok, cfg0.prompt_style, cfg0.max_prompt_length,
                                                   cfg0.max_length, cfg0.teacher_forced_samples)
    for i in range(0, len(todo), chunk):
        part = todo[i:i + chunk]
        t0 = time.perf_counter()
        students = {n: load_model(Path(cfgs[n].output_dir) / "student", cfgs[n].dtype) for n in part}
        vocab = check_pair(tok, tok, teacher, next(iter(students.values())))
        out = teacher_forced.teacher_forced_many(students, teacher, examples, tok.pad_token_id,
                                                 cfg0.eval_batch_size, vocab=vocab,
                                                 desc=f"{dataset} teacher-forced x{len(part)}")
        seconds = time.perf_counter() - t0
        for n in part:
            path = Path(cfgs[n].output_dir) / "results.json"
            res = json.loads(path.read_text())
            res["eval"][dataset]["teacher_forced"] = out[n] | {
                "filter": report, "num_records": report["loaded"], "seconds": seconds / len(part),
                "computed_with": part}
            write_json(path, res)
            tf = out[n]
            log(f"[dakd] {n} teacher-forced on {dataset}: student CE {tf['student_ce']:.4f}, forward KL "
                f"{tf['forward_kl']:.4f} nats/token, top-1 agreement {tf['top1_agreement']:.3f} "
                f"({tf['num_prompts']} prompts, {tf['num_tokens']} tokens)")
        del students
    return todo


def run_study(preset: str = "cpu-claims", root: str | Path | None = None, out: str | Path | None = None,
              log=print) -> list[dict]:
    """Train every missing run of ``preset`` in this process (`dakd.pipeline.run`: finished runs
    are reused, so a study resumes run by run), add the teacher-forced metrics
    (`add_teacher_forced`), and write the claims table (`write_claims`) to ``out`` (default
    ``figures/<preset>/claims.json``) and the study record (`study_record`) beside it as
    ``study.json``.

    Returns:
        the claims rows.

    Raises:
        as `dakd.pipeline.run` and `add_teacher_forced`.
    """
    from .io import write_json
    from .pipeline import run
    from .presets import get_preset

    root = Path(root or f"runs/{preset}")
    out = Path(out or f"figures/{preset}/claims.json")
    cfgs = get_preset(preset, str(root))
    t0 = time.perf_counter()
    for i, (name, cfg) in enumerate(cfgs.items()):
        t1 = time.perf_counter()
        log(f"[dakd] claims study: run {i + 1}/{len(cfgs)} {name}")
        run(cfg)
        log(f"[dakd] claims study: {name} done in {time.perf_counter() - t1:.0f}s "
            f"({(time.perf_counter() - t0) / 60:.1f} min so far)")
    t1 = time.perf_counter()
    add_teacher_forced(cfgs, log=log)
    log(f"[dakd] claims study: teacher-forced metrics in {time.perf_counter() - t1:.0f}s")
    rows = write_claims(root, out)
    write_json(out.parent / "study.json", study_record(cfgs))
    return rows


def study_record(cfgs: dict) -> dict:
    """What the study measured besides the claims, from its finished runs: per run the label, the
    set-level ROUGE-L and teacher-forced metrics, the cost record and the seconds of training and
    evaluation (``runs``); the sum of every run's ``seconds`` (``total_minutes``, training and
    evaluation as `dakd.pipeline.run` timed them, plus the teacher-forced pass); and the top-k
    cache's effect: ``dakd`` (cached teacher) against ``dakd_exact`` (live teacher), the paired
    differences of ROUGE-L and of the student CE with their intervals (``topk_effect``, per metric
    `signed_difference`: positive = the cached-teacher run is better).
    """
    from .teacher_forced import METRICS as TF_METRICS

    loaded = {name: _results(cfg.output_dir) for name, cfg in cfgs.items()}
    runs, minutes, tf_seconds = {}, 0.0, 0.0
    for name, res in loaded.items():
        if res is None:
            runs[name] = None
            continue
        ev = res["eval"][DATASET]
        tf = ev.get("teacher_forced", {})
        runs[name] = {"label": res["label"], "rougeL": ev["score"], "num_prompts": ev["num_prompts"],
                      **{m: tf.get(m) for m in TF_METRICS},
                      "teacher_forced_prompts": tf.get("num_prompts"), "teacher_forced_tokens": tf.get("num_tokens"),
                      "cost": res.get("cost"), "seconds": res["seconds"]}
        minutes += sum(res["seconds"].values()) / 60
        tf_seconds += tf.get("seconds", 0.0)
    record = {"runs": runs, "total_minutes": minutes + tf_seconds / 60, "teacher_forced_minutes": tf_seconds / 60}
    a, b = loaded.get("dakd"), loaded.get("dakd_exact")
    if a is not None and b is not None and "teacher_forced" in a["eval"][DATASET] and \
            "teacher_forced" in b["eval"][DATASET]:
        record["topk_effect"] = {m: signed_difference(a, b, m) for m in METRICS}
    return record


def signed_difference(run_a, run_b, metric: str, dataset: str = DATASET) -> dict:
    """`dakd.compare.paired_difference` of a and b, signed as the claims rows are: ``ours``
    (positive = a is better: higher ROUGE-L, lower student CE) and ``interval`` [low, high] in that
    sign, beside the raw ``a_minus_b`` record."""
    d = paired_difference(run_a, run_b, dataset, metric)
    sign = 1 if METRICS[metric][2] else -1
    return {"ours": sign * d["mean"], "interval": sorted((sign * d["low"], sign * d["high"])),
            "metric": METRICS[metric][0], "unit": METRICS[metric][1], "a_minus_b": d}


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "share":
        return f"{100 * v:.1f} %"
    if unit == "ratio":
        return f"{v:.2f}x"
    return f"{v:+.2f}" if unit == "points x100" else f"{v:+.4f}"


def ours_text(row: dict) -> str:
    """A row's estimate as text: ``+0.31 [-0.12, +0.74]`` (differences, with the interval),
    ``0.82x`` (ratios), ``8.1 %`` (the DDS share), ``-`` (not run)."""
    text = _fmt(row["ours"], row["unit"])
    if row.get("interval"):
        lo, hi = row["interval"]
        text += f" [{_fmt(lo, row['unit'])}, {_fmt(hi, row['unit'])}]"
    return text


def claims_frame(rows: list[dict]):
    """The rows as a pandas DataFrame for display: claim, statement, metric, ours (with its
    interval, `ours_text`), verdict, runs, paper."""
    import pandas as pd

    return pd.DataFrame([{"claim": r["claim"], "statement": r["statement"], "metric": r["metric"],
                          "ours [95 % interval]": ours_text(r), "verdict": r["verdict"],
                          "runs": " vs ".join(r["runs"]), "paper": r["paper"]} for r in rows])


def claims_markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (the README's headline table): one line per row, with
    ``# | statement | metric | ours [95 % interval] | verdict``; the paper's numbers are in the
    notebook and in claims.json."""
    out = ["| # | claim | metric | ours [95 % interval] | verdict |", "|---|---|---|---|---|"]
    out += [f"| {r['claim']} | {r['statement']} | {r['metric']} | {ours_text(r)} | **{r['verdict']}** |"
            for r in rows]
    return "\n".join(out)


def smallest_judged(rows: list[dict]) -> dict[str, dict]:
    """Per metric label, the comparison row whose estimate is closest to 0 (the smallest
    difference the table judges): the scale the top-k cache's effect must be small against."""
    out = {}
    for r in rows:
        judged = r["kind"] in ("beats", "matches") and r["ours"] is not None
        if judged and (r["metric"] not in out or abs(r["ours"]) < abs(out[r["metric"]]["ours"])):
            out[r["metric"]] = r
    return out


def forest_plot(rows: list[dict], path: str | Path) -> Path:
    """One panel per metric: each comparison's estimate (dot) and 95 % interval (bar), positive =
    the claim's direction, the non-inferiority margin of "matches" rows as a tick; coloured by
    verdict. Written as PNG to ``path``; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .results.figures import _save

    comp = [r for r in rows if r["kind"] in ("beats", "matches") and r["ours"] is not None]
    metrics = list(dict.fromkeys(r["metric"] for r in comp))
    colour = {"holds": "tab:green", "does not hold": "tab:red", "cannot tell": "tab:gray"}
    n = max((sum(r["metric"] == m for r in comp) for m in metrics), default=1)
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(6.2 * max(len(metrics), 1), 0.42 * n + 1.4),
                             squeeze=False)
    for ax, m in zip(axes[0], metrics):
        mine = [r for r in comp if r["metric"] == m]
        for y, r in enumerate(mine):
            lo, hi = r["interval"]
            ax.plot([lo, hi], [y, y], color=colour[r["verdict"]], lw=2)
            ax.plot([r["ours"]], [y], "o", color=colour[r["verdict"]])
            if r["kind"] == "matches":
                ax.plot([-r["margin"]], [y], "|", color="black", ms=10)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(mine)))
        ax.set_yticklabels([f"{r['claim']}: {' vs '.join(r['runs'])}" for r in mine], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{m} ({mine[0]['unit']})", fontsize=10)
        ax.set_xlabel("difference, positive = in the claim's direction", fontsize=9)
    handles = [plt.Line2D([], [], color=c, marker="o", lw=2, label=v) for v, c in colour.items()]
    handles.append(plt.Line2D([], [], color="black", marker="|", lw=0, ms=10, label="-margin (matches)"))
    axes[0][0].legend(handles=handles, loc="best", fontsize=7)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, Path(path))
