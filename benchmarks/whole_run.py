"""Whole-run cost (issue 4, target 5): DA-KD against full-data KD with the same loss and epochs,
trained back to back in this one process on the same data, then evaluated alike.

    .venv/bin/python benchmarks/whole_run.py --threads 2     # CPU preset's DA-KD config, ~6 min idle
    .venv/bin/python benchmarks/whole_run.py --quick         # tiny random pair, about a minute
    .venv/bin/python benchmarks/whole_run.py --dakd runs/cpu-full/dakd --full runs/cpu-full/dakd_full
                                                             # read two finished runs, train nothing

Variants (each a `dakd.pipeline.run` of the CPU preset's ``dakd`` config, ``save_checkpoints`` off,
into ``runs/bench/whole_run[_quick]/<variant>``, trained in this order):
  full       ``selection="full"``: BDL on every sample every epoch (Table 4's "w/o DiffUp" row, the
             paper's full-data KD with DA-KD's loss).
  dakd       the paper's DA-KD (DDS, cosine selection ratio, tau 0.1); CE_teacher once per run.
  dakd_topk  the same with ``teacher_cache_k=256``: the package's fast path. Its cache is built
             inside the timed run (a fresh ``DAKD_CACHE_DIR`` whose ``models`` links to the real one),
             so the teacher pass that writes it is counted.
``--variants`` picks a subset (add ``full_topk`` to see what the cache buys full-data KD alike);
``--eval-sets dolly self_instruct vicuna sinst uinst`` evaluates on the five instruction sets (the
preset evaluates DollyEval only) for a tighter ROUGE-L interval; ``--out`` another folder for it.

Times per variant: ``wall`` = the training call's wall-clock (`pipeline.run`'s ``seconds.train``:
model loading, top-k cache build, DDS scoring and every step; evaluation excluded), and the paper's
Table 3 split (``cost``: DDS seconds + train seconds). Quality: ROUGE-L on every ROUGE-L evaluation
set of the preset (the same prompts and seeds for all variants) and the paired difference against
``full`` over every (set, seed, prompt) score both runs have, with a 95 % bootstrap interval
(`dakd.compare.bootstrap_mean`: 10,000 resamples of prompts, a prompt's seeds together; seed 0):
"not lower" means the interval's upper end is >= 0 (a difference the prompts cannot tell from none).

Bound: with the paper's schedule (epoch 0 on all of D, then r(e) = 0.5 cos(pi e / E) +
0.5) the iterations of DA-KD are sum_e ceil(round(r(e) N) / B) of E ceil(N / B), about 0.5 + 0.5 / E
of full-data KD, and with the exact teacher each iteration costs the same in both, so the wall-clock
ratio cannot fall below that fraction (0.67 at E = 3, 0.55 at E = 10) plus the DDS share. The printed iterations ratio is that fraction for the kept samples.

Last line: wall-clock ratio to ``full`` of each variant, its iterations ratio and ROUGE-L verdict
(issue 4 target: wall-clock ratio at most 0.5 with ROUGE-L not lower).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

EXPECTED_DIFF = {"method", "selection", "output_dir", "save_checkpoints", "loss", "teacher_cache_k"}
VARIANTS = ("full", "dakd", "dakd_topk", "full_topk")
TOPK = 256


def read_run(folder: Path) -> tuple[dict | None, str]:
    """(record with config, cost, wall, ROUGE-L and per-prompt scores per set, or None; a note)."""
    res, log = folder / "results.json", folder / "train_log.json"
    for path in (res, log):
        if path.exists():
            try:
                d = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                return None, f"{path}: unreadable ({type(e).__name__})"
            if "cost" not in d:
                return None, f"{path}: no cost record"
            evals = {ds: ev for ds, ev in d.get("eval", {}).items() if ev.get("rougeL") is not None}
            rouge = {ds: ev["rougeL"] for ds, ev in evals.items()}
            # {(set, seed, prompt id): ROUGE-L}: every seed's score of every prompt (the table's
            # ROUGE-L is their mean), keyed so that two runs pair the same prompt under the same seed
            per_prompt = {}
            for ds, ev in evals.items():
                ids = ev.get("prompt_ids")
                for seed, scores in (ev.get("per_prompt") or {}).items():
                    keys = ids if ids is not None and len(ids) == len(scores) else range(len(scores))
                    per_prompt |= {(ds, seed, k): v for k, v in zip(keys, scores)}
            note = f"{path}" + ("" if rouge else " (no evaluation: ROUGE-L absent)")
            wall = d.get("seconds", {}).get("train")  # None from a train_log.json
            tc = d.get("teacher_cache")
            if tc is None and log.exists() and path != log:
                try:  # the top-k cache record is in the train log, not in results.json
                    tc = json.loads(log.read_text()).get("teacher_cache")
                except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                    tc = None
            return {"config": d.get("config", {}), "cost": d["cost"], "rouge": rouge, "per_prompt": per_prompt,
                    "wall": wall,
                    "teacher_cache": tc, "label": d.get("label", folder.name)}, note
    return None, f"{folder}: absent (neither results.json nor train_log.json)"


def paired_difference(a: dict, b: dict, resamples: int | None = None, seed: int = 0) -> tuple[float, float, float, int] | None:
    """Mean ROUGE-L difference a - b over the (set, seed, prompt) scores both runs have, with a 95 %
    percentile bootstrap interval over prompts (a prompt's scores under every seed resampled
    together; the package's `dakd.compare.bootstrap_mean`, 10,000 resamples by default, each prompt
    weighted by its number of shared scores): (mean, low, high, number of prompts), or None when
    they share none. Unlike `dakd.compare.paired_difference` (one set, the same prompts required)
    it pools every set and pairs whatever prompts both runs have."""
    from dakd.compare import RESAMPLES, bootstrap_mean

    shared = sorted(set(a["per_prompt"]) & set(b["per_prompt"]), key=str)
    if not shared:
        return None
    by_prompt: dict = {}
    for key in shared:
        by_prompt.setdefault((key[0], key[2]), []).append(a["per_prompt"][key] - b["per_prompt"][key])
    groups = list(by_prompt.values())
    # group means weighted by group sizes: the mean of every shared score's difference, and each
    # resample of prompts the same statistic
    mean, low, high = bootstrap_mean([sum(g) / len(g) for g in groups], [len(g) for g in groups],
                                     resamples or RESAMPLES, seed)
    return mean, low, high, len(groups)


def train_variants(args) -> dict[str, Path]:
    """Run the chosen variants back to back; returns their output folders."""
    import torch

    from dakd import pipeline
    from dakd.models import cache_dir
    from dakd.presets import get_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = "tiny" if args.quick else "cpu"
    root = Path(args.out or f"runs/bench/whole_run{'_quick' if args.quick else ''}")
    base = get_preset(preset)["dakd"].replace(save_checkpoints=False)
    if args.eval_sets:
        base = base.replace(eval_datasets=tuple(args.eval_sets))
    real_cache = cache_dir()
    # a fresh cache folder for the top-k files, so that their build is inside the timed run; the
    # models folder is the real one (linked), so nothing is rebuilt or downloaded
    tmp = tempfile.TemporaryDirectory(prefix="whole_run_cache_")  # removed when the runs end
    fresh = Path(tmp.name)
    (fresh / "models").symlink_to(real_cache / "models", target_is_directory=True)
    saved_env = os.environ.get("DAKD_CACHE_DIR")
    cfgs = {"full": base.replace(selection="full"), "dakd": base,
            "dakd_topk": base.replace(teacher_cache_k=TOPK),
            "full_topk": base.replace(selection="full", teacher_cache_k=TOPK)}
    print(f"preset {preset!r} dakd config {base.config_hash()}: {base.train_samples} samples, {base.epochs} "
          f"epochs, batch {base.batch_size}, loss {base.loss}; torch threads {torch.get_num_threads()}")
    folders = {}
    try:
        for name in args.variants:
            cfg = cfgs[name].replace(output_dir=str(root / name))
            if name.endswith("_topk"):
                os.environ["DAKD_CACHE_DIR"] = str(fresh)
                for f in (fresh / "topk").glob("*.pt") if (fresh / "topk").exists() else ():
                    f.unlink()  # each cached variant builds its own file: its cost is counted
            elif saved_env is None:
                os.environ.pop("DAKD_CACHE_DIR", None)
            else:
                os.environ["DAKD_CACHE_DIR"] = saved_env
            t0 = time.perf_counter()
            pipeline.run(cfg, force=True)
            print(f"[whole_run] {name}: trained and evaluated in {time.perf_counter() - t0:.0f} s")
            folders[name] = Path(cfg.output_dir)
    finally:
        if saved_env is None:
            os.environ.pop("DAKD_CACHE_DIR", None)
        else:
            os.environ["DAKD_CACHE_DIR"] = saved_env
        tmp.cleanup()
    return folders


def report(folders: dict[str, Path]) -> None:
    runs = {}
    for key, folder in folders.items():
        runs[key], note = read_run(folder)
        print(f"{key}: {note}")
    ref_key = "full"
    if runs.get(ref_key) is None or all(runs[k] is None for k in runs if k != ref_key):
        missing = [k for k in runs if runs[k] is None]
        print(f"whole-run ratios: not computed, {' and '.join(missing)} run absent (train them with this "
              f"script without --dakd/--full, or pass two finished run folders)")
        raise SystemExit(1)
    ref = runs[ref_key]
    if any(r is not None and r["wall"] is None for r in runs.values()):
        # a folder without results.json has no process wall-clock: compare the Table 3 figure alike
        print("wall = cost.total_seconds (DDS + training) for every run: a folder lacks results.json")
        for r in runs.values():
            if r is not None:
                r["wall"] = r["cost"].get("total_seconds", float("nan"))
    for key, r in runs.items():
        if r is None or key == ref_key:
            continue
        diff = sorted(k for k in set(r["config"]) | set(ref["config"])
                      if k not in EXPECTED_DIFF and r["config"].get(k) != ref["config"].get(k))
        if diff:
            print(f"{key}: configs also differ in: " + ", ".join(
                f"{k} ({r['config'].get(k)!r} vs {ref['config'].get(k)!r})" for k in diff))
        for k in ("loss", "epochs"):
            if r["config"].get(k) != ref["config"].get(k):
                print(f"WARNING {key}: not the same {k}: {r['config'].get(k)!r} vs {ref['config'].get(k)!r}")
    sets = list(ref["rouge"])
    print("\n| run | label | iterations | DDS s | train s | top-k build s | wall s | "
          + " | ".join(sets) + " | avg |\n|---|---|---|---|---|---|---|" + "---|" * (len(sets) + 1))
    for key, r in runs.items():
        if r is None:
            continue
        c, tc = r["cost"], r["teacher_cache"] or {}
        build = "" if not tc else f"{tc.get('seconds', 0):.0f}" + (" (reused)" if tc.get("from_cache") else "")
        vals = [r["rouge"].get(ds) for ds in sets]
        avg = sum(v for v in vals if v is not None) / max(1, sum(v is not None for v in vals))
        print(f"| {key} | {r['label']} | {c.get('iterations')} | {c.get('dds_seconds', 0):.1f} | "
              f"{c.get('train_seconds', 0):.1f} | {build} | {r['wall']:.0f} | "
              + " | ".join("-" if v is None else f"{v:.2f}" for v in vals) + f" | {avg:.2f} |")
    parts = []
    for key, r in runs.items():
        if r is None or key == ref_key:
            continue
        it = r["cost"]["iterations"] / max(ref["cost"]["iterations"], 1)
        wall = r["wall"] / max(ref["wall"], 1e-9)
        share = r["cost"].get("dds_seconds", 0) / max(r["cost"].get("total_seconds", 0), 1e-9)
        pd = paired_difference(r, ref)
        if pd is None:
            verdict = "ROUGE-L not compared (no per-prompt scores)"
        else:
            m, lo, hi, n = pd
            verdict = (f"ROUGE-L {m:+.2f} [{lo:+.2f}, {hi:+.2f}] over {n} prompts "
                       f"({'not lower' if hi >= 0 else 'LOWER'})")
        print(f"{key}: DDS share (of DDS + train s) {100 * share:.1f} %; iterations {it:.2f}x; wall {wall:.2f}x; {verdict}")
        parts.append(f"{key} wall {wall:.2f}x (iterations {it:.2f}x), {verdict}")
    print(f"vs full-data KD (target wall <= 0.5x, ROUGE-L not lower): " + "; ".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random pair (the tiny preset's dakd config)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--variants", nargs="+", default=["full", "dakd", "dakd_topk"], choices=VARIANTS,
                    help="which variants to train; 'full' is the reference and is always included")
    ap.add_argument("--out", default=None, help="output root (default runs/bench/whole_run[_quick])")
    ap.add_argument("--eval-sets", nargs="+", default=None,
                    help="evaluation sets (default: the preset's, DollyEval only for the CPU preset); more "
                         "sets give the paired ROUGE-L difference more prompts")
    ap.add_argument("--dakd", default=None, help="read this finished DA-KD run folder (with --full)")
    ap.add_argument("--full", default=None, help="read this finished full-data run folder (with --dakd)")
    args = ap.parse_args()
    if (args.dakd is None) != (args.full is None):
        ap.error("--dakd and --full go together (two finished run folders to read)")
    if args.dakd is not None:
        report({"full": Path(args.full), "dakd": Path(args.dakd)})
        return
    if "full" not in args.variants:
        args.variants = ["full"] + list(args.variants)
    sys.stdout.reconfigure(line_buffering=True)
    report(train_variants(args))


if __name__ == "__main__":
    main()
