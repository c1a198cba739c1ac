"""Copy a finished preset's executed notebooks over the sources in notebooks/, so the repository
shows them with their outputs (tables, figures, per-epoch DDS statistics) on a code host.

    .venv/bin/python tools/publish_notebooks.py cpu-full        # after ./run_all.sh --preset cpu-full

Each published notebook gets a ``dakd`` block in its metadata: the package version, the preset, the
git commit of the code that ran it, and the config hash of every run its outputs read;
``tests/test_published_notebooks.py`` checks those hashes against the current code's presets and
the notebook's code cells against ``tools/make_notebooks.py``. Absolute paths of this checkout are
made relative (outputs and papermill metadata), so no machine's paths are committed.
``01_distill`` is published from the preset's DA-KD run (``01_distill_dakd.ipynb``).

A published notebook has one parameters cell, the one ``tools/make_notebooks.py`` writes (the
default preset's values), and no papermill ``injected-parameters`` cell, so Run All in JupyterLab
after ``./run_all.sh`` uses that preset's folders. A notebook whose injected values differ from its
parameters cell (other than ``EXECUTION_ONLY``) was run for another preset and is not published
(exit status 1): 00-02 are published from ``cpu``, 03-05 (whose parameters name ``cpu-full``) from
``cpu-full``::

    .venv/bin/python tools/publish_notebooks.py cpu 00_quickstart 01_distill 02_results
    .venv/bin/python tools/publish_notebooks.py cpu-full 03_ablations 04_task_specific 05_cost
    .venv/bin/python tools/publish_notebooks.py cpu-claims 06_claims

Progress residue is dropped from the outputs: tqdm's ``IProgress not found`` warning, progress-bar
text on stderr and progress-bar widgets (``progress_residue``).

    .venv/bin/python tools/publish_notebooks.py --refresh

rewrites the committed notebooks' cells from ``tools/make_notebooks.py`` (which writes bare
sources over them), keeping the outputs of every code cell whose source is unchanged and clearing
the others, with the same cleaning.
"""

import argparse
import ast
import importlib.util
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
           "04_task_specific": "04_task_specific.ipynb", "05_cost": "05_cost.ipynb",
           "06_claims": "06_claims.ipynb"}
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


# parameters run_all.sh passes that do not change what a notebook shows
EXECUTION_ONLY = {"overwrite"}
# a tqdm bar as text: "desc:  40%|####      | 2/5 [00:01<00:02, 1.2it/s]" or "desc: 7it [00:01, ...]"
_BAR = re.compile(r"(\d+%\|.*\|)|(\|\s*[\d.]+[kMG]?/[\d.?]+[kMG]? \[)|(\d+it \[\d)")


def _is_bar_line(line: str) -> bool:
    parts = [p for p in line.split("\r") if p.strip()]
    return bool(parts) and all(_BAR.search(p) for p in parts)


def progress_residue(output: dict) -> dict | None:
    """``output`` without progress residue, or None when nothing else is left: tqdm's ``TqdmWarning:
    IProgress not found`` (and the source line printed under it), stderr lines that are progress
    bars, and progress-bar widgets (a widget view whose text is a bar)."""
    if output.get("output_type") == "stream" and output.get("name") == "stderr":
        kept, skip_next = [], False
        for line in output.get("text", "").split("\n"):
            if skip_next and line.startswith("  "):  # the warning's source line
                skip_next = False
                continue
            skip_next = False
            if "TqdmWarning" in line:
                skip_next = True
                continue
            if not _is_bar_line(line):
                kept.append(line)
        text = "\n".join(kept)
        if not text.strip():
            return None
        return output | {"text": text}
    data = output.get("data") or {}
    if "application/vnd.jupyter.widget-view+json" in data:
        plain = data.get("text/plain", "")
        if not plain.strip() or _BAR.search(plain) or plain.startswith(("HBox(", "FloatProgress(", "IntProgress(")):
            return None
    return output


def clean_outputs(outputs: list) -> list:
    """The outputs of a code cell with `progress_residue` removed, as nbformat nodes."""
    out = []
    for o in outputs:
        kept = progress_residue(dict(o))
        if kept is not None:
            out.append(nbformat.from_dict(kept))
    return out


def parameter_values(source: str) -> dict:
    """{name: value} of the plain assignments in a parameters cell (literals only)."""
    values = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return values


def drop_injected_parameters(nb) -> dict:
    """Remove papermill's ``injected-parameters`` cells from ``nb``; returns {name: (parameters
    cell value, injected value)} for every injected value that differs from the parameters cell's
    (``EXECUTION_ONLY`` names left out): empty when the outputs belong to the parameters cell."""
    params = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    defaults = parameter_values(params.source) if params is not None else {}
    differ = {}
    for c in [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]:
        for k, v in parameter_values(c.source).items():
            if k not in EXECUTION_ONLY and defaults.get(k, object()) != v:
                differ[k] = (defaults.get(k), v)
        nb.cells.remove(c)
    return differ


def _clean(nb) -> None:
    """Scrub paths and progress residue from every cell and the metadata (widget state included)."""
    for cell in nb.cells:
        cell.source = scrub(cell.source)
        if cell.cell_type == "code":
            cell.outputs = clean_outputs(nbformat.from_dict(_scrub_obj(o)) for o in cell.outputs)
    nb.metadata.pop("widgets", None)
    nb.metadata = nbformat.from_dict(_scrub_obj(nb.metadata))


def _built() -> dict:
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "tools" / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build()


def refresh(names=None, base: dict | None = None) -> list[Path]:
    """Rewrite committed notebooks with the cells of ``tools/make_notebooks.py``, keeping the outputs
    (and metadata) of ``base[name]`` (default: the notebook file as it is) for each code cell whose
    source is unchanged; other cells come bare, and so do all when ``base[name]`` ran with injected
    parameters other than its parameters cell's. Injected parameters and progress residue are
    dropped. A published notebook left without any output loses its ``dakd`` block."""
    built, out = _built(), []
    for name in names or list(built):
        path = ROOT / "notebooks" / f"{name}.ipynb"
        old = (base or {}).get(name) or nbformat.read(path, as_version=4)
        differ = drop_injected_parameters(old)
        by_source = {c.source: c for c in old.cells if c.cell_type == "code"}
        if differ:  # its outputs belong to other parameters than the cell shows: none are kept
            print(f"{name}: outputs cleared, they were made with " + ", ".join(f"{k}={v!r}" for k, (_, v) in differ.items()))
            by_source = {}
        nb = built[name]
        for cell in nb.cells:
            prev = by_source.get(cell.source)
            if cell.cell_type == "code" and prev is not None:
                cell.outputs, cell.execution_count = prev.outputs, prev.get("execution_count")
                cell.metadata = prev.metadata
        for k, v in old.metadata.items():
            nb.metadata.setdefault(k, v)
        _clean(nb)
        if not any(c.cell_type == "code" and c.outputs for c in nb.cells):
            nb.metadata.pop("dakd", None)
            nb.metadata.pop("papermill", None)
            for c in nb.cells:
                c.metadata.pop("papermill", None)
                if c.cell_type == "code":
                    c.execution_count = None
        nbformat.write(nb, path)
        out.append(path)
        print(f"refreshed {path.relative_to(ROOT)}: {sum(bool(c.get('outputs')) for c in nb.cells)} cells with output")
    return out


def publish(preset: str, names=None) -> list[Path]:
    import dakd
    from dakd.presets import get_preset, get_tables

    runs = get_preset(preset)
    table_runs = sorted(set().union(*get_tables(preset).values()))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or None
    out, refused = [], []
    for name, src in SOURCES.items():
        if names and name not in names:
            continue
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
        differ = drop_injected_parameters(nb)
        if differ:
            refused.append(name)
            print(f"not published {name}: run with parameters other than its parameters cell's "
                  + ", ".join(f"{k}={v!r} (cell: {d!r})" for k, (d, v) in differ.items())
                  + "; publish it from the preset its parameters cell names")
            continue
        _clean(nb)
        nb.metadata["dakd"] = {"version": dakd.__version__, "preset": preset, "commit": commit,
                               "config_hashes": hashes}
        dst = ROOT / "notebooks" / f"{name}.ipynb"
        nbformat.write(nb, dst)
        out.append(dst)
        print(f"published {dst.relative_to(ROOT)} ({len(hashes)} runs)")
    if refused:
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset", nargs="?", help="publish runs/<preset>/notebooks/ (not with --refresh)")
    ap.add_argument("names", nargs="*", help="only these notebooks (e.g. 01_distill); default: all")
    ap.add_argument("--refresh", action="store_true", help="rewrite the committed notebooks' cells from "
                    "tools/make_notebooks.py, keeping the outputs of unchanged code cells")
    a = ap.parse_args()
    if a.refresh:
        refresh([a.preset, *a.names] if a.preset else None)
    elif not a.preset:
        ap.error("a preset is needed (or --refresh)")
    else:
        publish(a.preset, a.names)
