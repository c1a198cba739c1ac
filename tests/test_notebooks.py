"""Each notebook executed by papermill with tiny parameters, checking the JSON it writes; the
launcher's failure path; and the committed parameters cell against its source of truth."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

from dakd.config import DistillConfig
from dakd.presets import get_preset, write_papermill_params

REPO = Path(__file__).resolve().parents[1]
NB = REPO / "notebooks"
KW = dict(kernel_name="python3", cwd=str(REPO), progress_bar=False, log_output=False)


def _params_cell(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    return cells[0].source


def test_distill_parameters_cell_matches_the_cpu_preset():
    # the notebook run by hand must reproduce the preset's DA-KD row: every DistillConfig field is a
    # parameter, with the preset's value
    ns = {}
    exec(_params_cell(NB / "01_distill.ipynb"), ns)
    cfg = get_preset("cpu")["dakd"].to_dict()
    for k, v in cfg.items():
        assert k in ns, f"parameter {k} missing from 01_distill.ipynb"
        assert (list(v) if isinstance(v, tuple) else v) == ns[k], k
    assert ns["num_processes"] == 1 and ns["cpu"] is False


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """The tiny preset executed through 01_distill, once per run (as run_all.sh does)."""
    root = tmp_path_factory.mktemp("tiny")
    params = write_papermill_params("tiny", root / "params", root=str(root))
    for p in params:
        pm.execute_notebook(str(NB / "01_distill.ipynb"), str(root / f"01_{p.stem}.ipynb"),
                            parameters=yaml.safe_load(p.read_text()), **KW)
    return root


def test_distill_notebook_writes_results_for_every_run(tiny_root):
    runs = get_preset("tiny", root=str(tiny_root))
    for name, cfg in runs.items():
        res = json.loads((tiny_root / name / "results.json").read_text())
        assert res["config_hash"] == cfg.config_hash()
        assert DistillConfig.from_dict(res["config"]) == cfg
        ev = res["eval"]["dolly"]
        assert ev["num_prompts"] + ev["filter"]["dropped"] == cfg.eval_samples
        assert 0.0 <= ev["rougeL"] <= 100.0 and list(ev["per_seed"]) == [str(s) for s in cfg.eval_seeds]
        if name == "teacher":
            assert "cost" not in res
        else:
            log = json.loads((tiny_root / name / "train_log.json").read_text())
            assert len(log["epochs"]) == cfg.epochs
            assert res["cost"]["iterations"] == sum(e["steps"] for e in log["epochs"])
    dakd_log = json.loads((tiny_root / "dakd" / "train_log.json").read_text())
    assert dakd_log["epochs"][1]["subset_size"] < dakd_log["epochs"][0]["subset_size"]
    assert len(dakd_log["epochs"][1]["dds_values"]) == dakd_log["num_samples"]


def test_results_notebook_builds_the_table_and_figures(tiny_root, tmp_path):
    pm.execute_notebook(str(NB / "02_results.ipynb"), str(tmp_path / "02.ipynb"),
                        parameters={"run_root": str(tiny_root), "figures_dir": str(tmp_path / "fig")}, **KW)
    out = json.loads((tiny_root / "results_table.json").read_text())
    methods = [r["method"] for r in out["table"]]
    assert methods == ["Teacher", "SFT", "KD-KL", "KD-RKL", "DA-KD"]
    paper = {r["method"]: r["paper 7B->1.3B"] for r in out["table"]}
    assert paper["DA-KD"] == 26.75 and paper["KD-RKL"] == 25.66  # Table 1, Sheared-LLaMA-1.3B, Dolly
    figs = sorted(p.name for p in (tmp_path / "fig").glob("*.png"))
    assert figs == ["dds_per_epoch.png", "rougeL_per_method.png", "selection_ratio.png", "training_loss.png"]


def test_quickstart_notebook_on_the_tiny_pair(tmp_path):
    pm.execute_notebook(str(NB / "00_quickstart.ipynb"), str(tmp_path / "00.ipynb"),
                        parameters={"teacher": "tiny-teacher", "student": "tiny-student", "num_samples": 4,
                                    "distill_samples": 12, "distill_epochs": 2, "max_prompt_length": 96,
                                    "max_length": 160, "output_dir": str(tmp_path / "qs")}, **KW)
    s = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert s["bdl_by_lambda"]["0.5"] == pytest.approx(0.0, abs=1e-7)
    assert s["bdl_by_lambda"]["0.0"] == pytest.approx(s["forward_kl"], rel=1e-5)
    assert s["bdl_by_lambda"]["1.0"] == pytest.approx(s["reverse_kl"], rel=1e-5)
    for d, cs, ct in zip(s["dds"], s["student_ce"], s["teacher_ce"]):
        assert d == pytest.approx(cs / (ct + 1e-6), rel=1e-5)
    assert s["distill_epochs"] == 2


def test_run_all_names_the_failing_notebook_and_cell(tmp_path):
    # a preset that cannot run (an unknown teacher folder) must stop the launcher with a non-zero
    # exit that names the notebook and the cell
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    bad = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(bad)], check=True)
    for f in ("dakd/presets.py", "run_all.sh", "notebooks/01_distill.ipynb"):
        (bad / f).write_bytes((REPO / f).read_bytes())
    presets = bad / "dakd" / "presets.py"
    presets.write_text(presets.read_text().replace("teacher=TINY_TEACHER", "teacher='/nonexistent/teacher'"))
    env["PYTHONPATH"] = str(bad)
    env["DAKD_CACHE_DIR"] = os.environ.get("DAKD_CACHE_DIR", str(REPO / ".cache" / "dakd"))
    p = subprocess.run(["bash", str(bad / "run_all.sh"), "--preset", "tiny"], cwd=bad, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0
    assert "FAILED: notebook notebooks/01_distill.ipynb" in p.stderr
    assert 'Exception encountered at "In [' in p.stderr


def test_rerunning_a_finished_run_reuses_it(tiny_root, tmp_path):
    # what a second ./run_all.sh does for each run: the notebook finds results.json of the same
    # config hash and neither trains nor evaluates again
    files = [tiny_root / "sft" / f for f in ("results.json", "train_log.json", "student/model.safetensors")]
    before = [(f.read_bytes(), f.stat().st_mtime_ns) for f in files]
    params = yaml.safe_load((tiny_root / "params" / "sft.yaml").read_text())
    pm.execute_notebook(str(NB / "01_distill.ipynb"), str(tmp_path / "again.ipynb"), parameters=params, **KW)
    assert [(f.read_bytes(), f.stat().st_mtime_ns) for f in files] == before
    nb = nbformat.read(tmp_path / "again.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"complete (config {get_preset('tiny')['sft'].config_hash()}), reused" in printed
