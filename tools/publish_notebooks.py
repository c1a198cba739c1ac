"""Copy a finished preset's executed notebooks over the sources in notebooks/, so the repository
shows them with their outputs (tables, figures, per-epoch DDS statistics) on a code host.

    .venv/bin/python tools/publish_notebooks.py cpu-full        # after ./run_all.sh --preset cpu-full

Each published notebook gets a ``dakd`` block in its metadata: the package version, the preset, the
git commit of the code that ran it, and the config hash of every run its outputs read;
``tests/test_published_notebooks.py`` checks those hashes against the current code's presets and
the notebook's code cells against ``tools/make_notebooks.py``. Absolute paths of this checkout are
made relative (outputs and papermill metadata), so no machine's paths are committed.
``01_distill`` is published from the preset's DA-KD run (``01_distill_dakd.ipynb``).
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# published name -> executed notebook in runs/<preset>/notebooks/
SOURCES = {"00_quickstart": "00_quickstart.ipynb", "01_distill": "01_distill_dakd.ipynb",
           "02_results": "02_results.ipynb", "03_ablations": "03_ablations.ipynb",
           "04_task_specific": "04_task_specific.ipynb", "05_cost": "05_cost.ipynb"}
# which runs each notebook's outputs come from: None = every table run of the preset
RUNS = {"00_quickstart": [], "01_distill": ["dakd"]}


def scrub(text: str) -> str:
    """Make this checkout's absolute paths relative and drop any other absolute home of it."""
    text = text.replace(str(ROOT) + "/", "").replace(str(ROOT), ".")
    return re.sub(r"/(?:work|home|tmp)/[^\s'\"]*?/(?=(?:runs|figures|notebooks|dakd|\.venv|\.cache)/)", "", text)


def _scrub_obj(obj):
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, list):
        return [_scrub_obj(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _scrub_obj(v) for k, v in obj.items()}
    return obj


def publish(preset: str) -> list[Path]:
    import dakd
    from dakd.presets import get_preset, get_tables

    runs = get_preset(preset)
    table_runs = sorted(set().union(*get_tables(preset).values()))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or None
    out = []
    for name, src in SOURCES.items():
        path = ROOT / "runs" / preset / "notebooks" / src
        if not path.exists():
            print(f"skipped {name}: {path.relative_to(ROOT)} not found (run ./run_all.sh --preset {preset})")
            continue
        nb = nbformat.read(path, as_version=4)
        hashes = {}
        for run in (table_runs if RUNS.get(name) is None else RUNS[name]):
            res = Path(runs[run].output_dir) / "results.json"
            if not (ROOT / res).exists():
                continue
            hashes[run] = json.loads((ROOT / res).read_text())["config_hash"]
        for cell in nb.cells:
            cell.source = scrub(cell.source)
            if cell.cell_type == "code":
                cell.outputs = [nbformat.from_dict(_scrub_obj(o)) for o in cell.outputs]
        nb.metadata = nbformat.from_dict(_scrub_obj(nb.metadata))
        nb.metadata["dakd"] = {"version": dakd.__version__, "preset": preset, "commit": commit,
                               "config_hashes": hashes}
        dst = ROOT / "notebooks" / f"{name}.ipynb"
        nbformat.write(nb, dst)
        out.append(dst)
        print(f"published {dst.relative_to(ROOT)} ({len(hashes)} runs)")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset")
    publish(ap.parse_args().preset)
