"""Whole-run cost (issue 4, target 5): DA-KD against full-data KD with the same loss and epochs, read
from two finished run folders (nothing is trained here).

    .venv/bin/python benchmarks/whole_run.py                                   # runs/cpu/dakd vs runs/cpu/dakd_full
    .venv/bin/python benchmarks/whole_run.py --dakd runs/cpu-full/dakd --full runs/cpu-full/dakd_full
    .venv/bin/python benchmarks/whole_run.py --quick                           # the same; reading is instant

Each folder is a `dakd.pipeline.run` output: ``results.json`` (ROUGE-L per evaluation set, the cost
record) or, for a run trained but not evaluated, ``train_log.json`` (cost only). The full-data run
is DA-KD's config with every sample every epoch: ``method="kd", loss="bdl"`` (or ``method="dakd",
selection="full"``); the script lists every config field in which the two runs differ besides those,
so a comparison of unlike runs shows. Wall-clock = ``cost.total_seconds`` (training + DDS scoring,
the paper's Table 3 split); iterations = optimiser steps. A missing file or field is named.

Last line: iterations ratio, wall-clock ratio and ROUGE-L of each (issue 4 target: wall-clock ratio
at most 0.5 with ROUGE-L not lower).
"""

import argparse
import json
from pathlib import Path

EXPECTED_DIFF = {"method", "selection", "output_dir", "save_checkpoints", "loss"}


def read_run(folder: Path) -> tuple[dict | None, str]:
    """(record with config, cost and ROUGE-L per set, or None; a note on what was found)."""
    res, log = folder / "results.json", folder / "train_log.json"
    for path in (res, log):
        if path.exists():
            try:
                d = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                return None, f"{path}: unreadable ({type(e).__name__})"
            rouge = {ds: ev.get("rougeL") for ds, ev in d.get("eval", {}).items()}
            note = f"{path}" + ("" if rouge else " (no evaluation: ROUGE-L absent)")
            if "cost" not in d:
                return None, f"{path}: no cost record"
            return {"config": d.get("config", {}), "cost": d["cost"], "rouge": rouge,
                    "label": d.get("label", folder.name)}, note
    return None, f"{folder}: absent (neither results.json nor train_log.json)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dakd", default="runs/cpu/dakd", help="the DA-KD run folder")
    ap.add_argument("--full", default="runs/cpu/dakd_full", help="the full-data run folder, same loss and epochs")
    ap.add_argument("--quick", action="store_true", help="no effect: this script only reads two files")
    args = ap.parse_args()
    runs = {}
    for key, folder in (("dakd", args.dakd), ("full", args.full)):
        runs[key], note = read_run(Path(folder))
        print(f"{key}: {note}")
    a, b = runs["dakd"], runs["full"]
    if a is None or b is None:
        missing = [k for k in runs if runs[k] is None]
        print(f"whole-run ratios: not computed, {' and '.join(missing)} run absent "
              f"(./run_all.sh --preset cpu-full writes both as runs/cpu-full/dakd and runs/cpu-full/dakd_full: "
              f"pass --dakd and --full; or dakd.pipeline.run on the CPU preset's dakd config with "
              f"selection='full')")
        return
    diff = sorted(k for k in set(a["config"]) | set(b["config"])
                  if k not in EXPECTED_DIFF and a["config"].get(k) != b["config"].get(k))
    if diff:
        print("configs also differ in: " + ", ".join(f"{k} ({a['config'].get(k)!r} vs {b['config'].get(k)!r})"
                                                     for k in diff))
    for key in ("loss", "epochs"):
        if a["config"].get(key) != b["config"].get(key):
            print(f"WARNING: not the same {key}: {a['config'].get(key)!r} vs {b['config'].get(key)!r}")
    print("\n| run | label | iterations | DDS s | train s | total s | ROUGE-L |\n|---|---|---|---|---|---|---|")
    for key, r in runs.items():
        c = r["cost"]
        rouge = ", ".join(f"{ds} {v:.2f}" for ds, v in r["rouge"].items() if v is not None) or "absent"
        print(f"| {key} | {r['label']} | {c.get('iterations')} | {c.get('dds_seconds', 0):.0f} | "
              f"{c.get('train_seconds', 0):.0f} | {c.get('total_seconds', float('nan')):.0f} | {rouge} |")
    it = a["cost"]["iterations"] / max(b["cost"]["iterations"], 1)
    wall = a["cost"]["total_seconds"] / max(b["cost"]["total_seconds"], 1e-9)
    ra, rb = a["rouge"].get("dolly"), b["rouge"].get("dolly")
    rouge = (f"ROUGE-L dolly {ra:.2f} vs {rb:.2f} ({'not lower' if ra >= rb else 'LOWER'})"
             if ra is not None and rb is not None else
             f"ROUGE-L dolly: {'absent' if ra is None else f'{ra:.2f}'} vs {'absent' if rb is None else f'{rb:.2f}'}")
    print(f"DA-KD / full-data: iterations {it:.2f}x, wall-clock (train + DDS) {wall:.2f}x (target <= 0.5); {rouge}")


if __name__ == "__main__":
    main()
