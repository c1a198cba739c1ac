"""Paired comparisons of two runs evaluated on the same prompts (issue 15, part 1).

Two runs scored on the same prompts differ prompt by prompt; their difference is judged by the mean
per-prompt difference (a - b) and a 95 % percentile bootstrap interval over prompts (Efron and
Tibshirani 1993, ch. 13): prompts are resampled with replacement, the statistic recomputed on each
resample, and the 2.5th and 97.5th percentiles of those values are the interval. Pairing removes
what the prompts share (an easy prompt is easy for both runs), so the interval is much narrower
than one from two unpaired means.

Per-prompt values:
- ``rougeL`` (or ``accuracy``, the set's own metric): `dakd.evaluate.evaluate_model`'s
  ``per_prompt`` ({seed: [score per prompt]}) with its ``prompt_ids``, averaged over the seeds of
  each prompt (x100 units). Every prompt weighs the same, so the mean difference is exactly the
  difference of the two runs' reported scores. Runs decoded differently are refused
  (`dakd.decoding.check_same_decoding`).
- ``student_ce``, ``teacher_ce``, ``forward_kl`` (nats per response token), ``top1_agreement``
  (share): ``eval[<set>]["teacher_forced"]["per_prompt"]`` (`dakd.teacher_forced`), keyed by
  ``sample_id``. Each prompt is weighted by its response tokens, so the mean difference is exactly
  the difference of the two runs' token-weighted set values, and every resample is weighted alike.

A run is a ``results.json`` dict (`dakd.pipeline.run`, `dakd.results.collect`), a run folder or
the path of its ``results.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TEACHER_FORCED_METRICS = ("student_ce", "teacher_ce", "forward_kl", "top1_agreement")
GENERATION_METRICS = ("rougeL", "accuracy")
RESAMPLES = 10_000


def bootstrap_mean(values, weights=None, resamples: int = RESAMPLES, seed: int = 0,
                   confidence: float = 0.95) -> tuple[float, float, float]:
    """The (weighted) mean of ``values`` and its percentile bootstrap interval.

    Each resample draws ``len(values)`` indices with replacement (``numpy.random.default_rng(seed)``)
    and takes the weighted mean ``sum(w v) / sum(w)`` of the drawn items; the interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those means (numpy's linear
    interpolation). Values that are all equal give exactly that value three times (a resample of a
    constant is the constant; no round-off from summing).

    Args:
        values: ``[N]`` floats (per-prompt differences, any unit), N >= 1.
        weights: ``[N]`` non-negative floats with a positive sum (e.g. response tokens per
            prompt), or None for equal weights.
        resamples: bootstrap resamples (>= 1); 10,000 by default.
        seed: seed of the resampling (the same inputs and seed give the same interval).
        confidence: coverage of the interval, in (0, 1).

    Returns:
        (mean, low, high), floats in the unit of ``values``.

    Raises:
        ValueError: no values, a value or weight that is not finite, negative weights or weights
            summing to 0, weights of another length, resamples < 1, or confidence outside (0, 1).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("bootstrap_mean: no values (the runs share no prompt)")
    if not np.isfinite(v).all():
        raise ValueError("bootstrap_mean: values must be finite")
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != v.shape:
        raise ValueError(f"bootstrap_mean: {w.size} weights for {v.size} values")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("bootstrap_mean: weights must be finite, >= 0 and not all 0")
    if resamples < 1:
        raise ValueError(f"bootstrap_mean: resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_mean: confidence must be in (0, 1), got {confidence}")
    if (v == v[0]).all():
        c = float(v[0])
        return c, c, c
    mean = float((w * v).sum() / w.sum())
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2_000_000 // v.size)  # index blocks of about 16 MB
    for s in range(0, resamples, step):
        idx = rng.integers(0, v.size, size=(min(step, resamples - s), v.size))
        ww = w[idx]
        tot = ww.sum(1)
        # a resample drawing only zero-weight prompts has no weighted mean: it counts as the mean
        means[s:s + idx.shape[0]] = np.where(tot > 0, (ww * v[idx]).sum(1) / np.where(tot > 0, tot, 1), mean)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return mean, float(low), float(high)


def _load(run) -> tuple[dict, str]:
    """(results dict, a name for messages) of a run given as a dict, a folder or a results.json."""
    if isinstance(run, dict):
        cfg = run.get("config") or {}
        return run, str(cfg.get("output_dir") or run.get("label") or "<results dict>")
    path = Path(run)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json (the run is unfinished or the path is wrong)")
    return json.loads(path.read_text()), str(path.parent)


def per_prompt_values(run, dataset: str, metric: str) -> tuple[dict[int, float], dict[int, float]]:
    """One run's per-prompt values of ``metric`` on ``dataset``, keyed by prompt id.

    Args:
        run: a ``results.json`` dict, a run folder or a ``results.json`` path.
        dataset: an evaluation set of the run (``eval[<dataset>]``).
        metric: the set's generation metric (``rougeL`` or ``accuracy``: the mean over the seeds
            of each prompt, x100), or one of `TEACHER_FORCED_METRICS` (nats per response token;
            ``top1_agreement`` a share in [0, 1]).

    Returns:
        ({prompt id: value}, {prompt id: weight}): the weights are 1 for a generation metric and
        the prompt's response tokens for a teacher-forced one. The ids are positions in the set's
        loaded test records (``prompt_ids`` / ``sample_id``).

    Raises:
        ValueError: an unknown metric, a set the run was not evaluated on, a generation metric that
            is not the set's, or a run without the per-prompt record asked for (no ``per_prompt``;
            no ``teacher_forced``: run it with ``teacher_forced=True``); each names the run.
        FileNotFoundError: a path without a ``results.json``.
    """
    res, name = _load(run)
    if metric not in GENERATION_METRICS + TEACHER_FORCED_METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {GENERATION_METRICS + TEACHER_FORCED_METRICS}")
    ev = (res.get("eval") or {}).get(dataset)
    if ev is None:
        raise ValueError(f"run {name} was not evaluated on {dataset!r} (eval has {sorted(res.get('eval') or {})})")
    if metric in GENERATION_METRICS:
        if ev.get("metric") != metric:
            raise ValueError(f"run {name}: {dataset!r} is scored by {ev.get('metric')!r}, not {metric!r}")
        per, ids = ev.get("per_prompt"), ev.get("prompt_ids")
        if not per or ids is None:
            raise ValueError(f"run {name}: eval[{dataset!r}] has no per_prompt scores with prompt_ids "
                             "(evaluated before they were recorded: evaluate it again)")
        for seed, scores in per.items():
            if len(scores) != len(ids):
                raise ValueError(f"run {name}: eval[{dataset!r}]['per_prompt'][{seed!r}] has {len(scores)} "
                                 f"scores for {len(ids)} prompt_ids")
        vals = {int(i): float(np.mean([per[s][k] for s in per])) for k, i in enumerate(ids)}
        return vals, {i: 1.0 for i in vals}
    tf = ev.get("teacher_forced")
    if tf is None:
        raise ValueError(f"run {name}: eval[{dataset!r}] has no teacher_forced metrics (run it with "
                         "teacher_forced=True)")
    rows = tf["per_prompt"]
    return ({int(p["sample_id"]): float(p[metric]) for p in rows},
            {int(p["sample_id"]): float(p["num_tokens"]) for p in rows})


def paired_difference(run_a, run_b, dataset: str, metric: str = "rougeL", resamples: int = RESAMPLES,
                      seed: int = 0, confidence: float = 0.95) -> dict:
    """Mean per-prompt difference a - b of ``metric`` on ``dataset`` and its bootstrap interval.

    The two runs must have been evaluated on the same prompts (the same prompt ids); for a
    generation metric also with the same decoding (seeds, lengths). Per-prompt values and weights
    as `per_prompt_values`; the interval as `bootstrap_mean` over the prompts.

    Args:
        run_a, run_b: ``results.json`` dicts, run folders or ``results.json`` paths.
        dataset: an evaluation set both runs were scored on.
        metric: ``rougeL`` / ``accuracy`` (x100) or a teacher-forced metric (nats per response
            token; ``top1_agreement`` a share).
        resamples, seed, confidence: as `bootstrap_mean` (10,000 resamples, seed 0, 95 %).

    Returns:
        dict with ``mean``, ``low``, ``high`` (the metric's unit, a - b), ``num_prompts``,
        ``num_tokens`` (response tokens, teacher-forced metrics; None otherwise), ``dataset``,
        ``metric``, ``run_a``, ``run_b`` (names), ``resamples``, ``seed``, ``confidence``,
        ``weighting`` ("prompt" or "token").

    Raises:
        ValueError: the runs were scored on different prompt ids (naming both runs and some ids
            only one has), decoded differently (generation metrics), or have different token counts
            on a prompt (teacher-forced: tokenized differently); and as `per_prompt_values` and
            `bootstrap_mean`.
        FileNotFoundError: a path without a ``results.json``.
    """
    (res_a, name_a), (res_b, name_b) = _load(run_a), _load(run_b)
    va, wa = per_prompt_values(res_a, dataset, metric)
    vb, wb = per_prompt_values(res_b, dataset, metric)
    if set(va) != set(vb):
        only_a, only_b = sorted(set(va) - set(vb)), sorted(set(vb) - set(va))
        raise ValueError(f"runs {name_a} and {name_b} were scored on different prompts of {dataset!r} "
                         f"({len(va)} vs {len(vb)} prompts; only in {name_a}: {only_a[:5]}, only in "
                         f"{name_b}: {only_b[:5]}): a paired difference needs the same prompts")
    if metric in GENERATION_METRICS:
        from .decoding import check_same_decoding

        check_same_decoding({name_a: {"eval": {dataset: res_a["eval"][dataset]}},
                             name_b: {"eval": {dataset: res_b["eval"][dataset]}}}, "paired_difference")
    elif wa != wb:
        bad = sorted(i for i in wa if wa[i] != wb[i])
        raise ValueError(f"runs {name_a} and {name_b} scored different response tokens on {len(bad)} prompts of "
                         f"{dataset!r} (e.g. prompt {bad[0]}: {wa[bad[0]]:.0f} vs {wb[bad[0]]:.0f}): tokenized "
                         "differently (prompt style, lengths or tokenizer), not comparable")
    ids = sorted(va)
    mean, low, high = bootstrap_mean([va[i] - vb[i] for i in ids], [wa[i] for i in ids], resamples, seed,
                                     confidence)
    token = metric in TEACHER_FORCED_METRICS
    return {"mean": mean, "low": low, "high": high, "num_prompts": len(ids),
            "num_tokens": int(sum(wa.values())) if token else None, "dataset": dataset, "metric": metric,
            "run_a": name_a, "run_b": name_b, "resamples": resamples, "seed": seed, "confidence": confidence,
            "weighting": "token" if token else "prompt"}
