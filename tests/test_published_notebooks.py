"""The notebooks committed in notebooks/ (issue 6): their cells are the ones tools/make_notebooks.py
writes, and when they carry outputs (published by tools/publish_notebooks.py from an executed
preset) those outputs come from runs of the current code's configs."""

import ast
import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

import dakd
from dakd.config import DistillConfig
from dakd.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["00_quickstart", "01_distill", "02_results", "03_ablations", "04_task_specific", "05_cost", "06_claims"]


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
    for c in nb.cells:  # the one parameters cell (no injected cell: test_no_injected_parameters_cell)
        if "parameters" in c.metadata.get("tags", []):
            for node in ast.parse(c.source).body:
                if isinstance(node, ast.Assign):
                    values[node.targets[0].id] = ast.literal_eval(node.value)
    cfg = DistillConfig.from_dict({k: v for k, v in values.items() if k in DistillConfig.__dataclass_fields__})
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"config {cfg.config_hash()}" in printed
    assert nb.metadata["dakd"]["config_hashes"]["dakd"] == cfg.config_hash()


@pytest.mark.parametrize("name", NAMES)
def test_no_injected_parameters_cell(name):
    # regression (issue 14): every notebook kept papermill's injected cell from the cpu-full run
    # after its parameters cell, so Run All in JupyterLab trained into runs/cpu-full
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    tags = [t for c in nb.cells for t in c.metadata.get("tags", [])]
    assert "injected-parameters" not in tags
    assert tags.count("parameters") == 1


@pytest.mark.parametrize("name", NAMES)
def test_no_warning_or_progress_bar_among_the_outputs(name):
    # regression (issue 14): a red "TqdmWarning: IProgress not found" box in every notebook and one
    # stored stderr output per progress-bar update (350 in 03_ablations)
    path = ROOT / "notebooks" / f"{name}.ipynb"
    assert "TqdmWarning" not in path.read_text()
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        for o in c.get("outputs", []):
            assert publish.progress_residue(dict(o)) == dict(o), f"{name}: progress residue {o}"
            assert "application/vnd.jupyter.widget-view+json" not in o.get("data", {})
    assert "widgets" not in nb.metadata


sys.path.insert(0, str(ROOT / "tools"))
import publish_notebooks as publish  # noqa: E402


def test_progress_residue_drops_the_tqdm_warning_and_bars_and_keeps_the_rest():
    warning = {"output_type": "stream", "name": "stderr",
               "text": ".venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found. "
                       "Please update jupyter and ipywidgets.\n  from .autonotebook import tqdm as notebook_tqdm\n"}
    assert publish.progress_residue(warning) is None
    bar = {"output_type": "stream", "name": "stderr",
           "text": "\rLoading weights:  40%|####      | 2/5 [00:00<00:01, 3.1it/s]"
                   "\rLoading weights: 100%|##########| 5/5 [00:01<00:00, 3.2it/s]\n"}
    assert publish.progress_residue(bar) is None
    assert publish.progress_residue({"output_type": "stream", "name": "stderr", "text": "dakd epoch 0: 3it [00:02, 1.4it/s]"}) is None
    mixed = {"output_type": "stream", "name": "stderr", "text": "\rx:  50%|#####     | 1/2 [00:01<00:01, 1.0it/s]\nreal warning\n"}
    assert publish.progress_residue(mixed)["text"].strip() == "real warning"
    widget = {"output_type": "display_data", "metadata": {},
              "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "ab", "version_major": 2},
                       "text/plain": "x:   0%|          | 0/3 [00:00<?, ?it/s]"}}
    assert publish.progress_residue(widget) is None
    printed = {"output_type": "stream", "name": "stdout", "text": "[dakd] DA-KD on dolly: rougeL 6.79 (40 prompts)\n"}
    assert publish.progress_residue(printed) == printed


def test_a_notebook_run_with_other_parameters_is_named_not_published():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('preset = "cpu"\noverwrite = False'),
                                         nbformat.v4.new_code_cell('preset = "cpu-full"\noverwrite = True'),
                                         nbformat.v4.new_code_cell("print(preset)")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.cells[1].metadata["tags"] = ["injected-parameters"]
    differ = publish.drop_injected_parameters(nb)
    assert differ == {"preset": ("cpu", "cpu-full")}  # overwrite changes nothing shown: not listed
    assert [c.source for c in nb.cells] == ['preset = "cpu"\noverwrite = False', "print(preset)"]
