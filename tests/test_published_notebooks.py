"""The notebooks committed in notebooks/ (issue 6): their cells are the ones tools/make_notebooks.py
writes, and when they carry outputs (published by tools/publish_notebooks.py from an executed
preset) those outputs come from runs of the current code's configs."""

import ast
import importlib.util
from pathlib import Path

import nbformat
import pytest

import dakd
from dakd.config import DistillConfig
from dakd.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["00_quickstart", "01_distill", "02_results", "03_ablations", "04_task_specific", "05_cost"]


@pytest.fixture(scope="module")
def built():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "tools" / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build()


def _cells(nb):
    """(cell type, source) of every cell but papermill's injected parameters."""
    return [(c.cell_type, c.source) for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_the_generated_cells(name, built):
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    assert _cells(nb) == _cells(built[name]), (
        f"notebooks/{name}.ipynb differs from tools/make_notebooks.py: run it (and republish)")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1


@pytest.mark.parametrize("name", NAMES)
def test_published_outputs_come_from_the_current_codes_configs(name):
    path = ROOT / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    has_outputs = any(c.cell_type == "code" and c.outputs for c in nb.cells)
    meta = nb.metadata.get("dakd")
    if meta is None:  # an unpublished source notebook carries no outputs at all
        assert not has_outputs, f"{path} has outputs but no dakd metadata (publish with tools/publish_notebooks.py)"
        return
    assert has_outputs
    assert meta["version"] == dakd.__version__
    runs = get_preset(meta["preset"])
    for run, h in meta["config_hashes"].items():
        assert runs[run].config_hash() == h, f"{path}: run {run} was made by config {h}, now {runs[run].config_hash()}"
    # no machine's absolute paths are committed
    text = path.read_text()
    for place in (ROOT, ROOT.parent, Path.home()):  # the checkout, what holds it, a home folder
        assert str(place) + "/" not in text, f"{path} holds the absolute path {place}"


def test_published_distill_notebook_ran_the_config_its_parameters_give():
    nb = nbformat.read(ROOT / "notebooks" / "01_distill.ipynb", as_version=4)
    if "dakd" not in nb.metadata:
        pytest.skip("01_distill.ipynb is not published")
    values = {}
    for c in nb.cells:  # the defaults, then papermill's injected values over them
        tags = c.metadata.get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            for node in ast.parse(c.source).body:
                if isinstance(node, ast.Assign):
                    values[node.targets[0].id] = ast.literal_eval(node.value)
    cfg = DistillConfig.from_dict({k: v for k, v in values.items() if k in DistillConfig.__dataclass_fields__})
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"config {cfg.config_hash()}" in printed
    assert nb.metadata["dakd"]["config_hashes"]["dakd"] == cfg.config_hash()
