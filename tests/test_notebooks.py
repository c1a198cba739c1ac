"""Each notebook executed by papermill with tiny parameters, checking the JSON it writes; the
launcher's failure path; and the committed parameters cell against its source of truth. The table
notebooks 03, 04 and 05 run the ``tiny-full`` preset in one shared run folder, as run_all.sh does."""

import math

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
from dakd.presets import get_preset, get_tables, write_papermill_params

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
    assert len(dakd_log["epochs"][1]["dds_by_sample"]) == dakd_log["num_samples"]


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


# ------------------------------------------------------------ the table notebooks (03, 04, 05)

def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def full_root(tmp_path_factory):
    """03, 04 and 05 executed with the tiny-full preset into one run folder (05 reuses 03's runs).
    One torch thread per kernel: the 2-core machine is shared."""
    root = tmp_path_factory.mktemp("tiny_full")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the kernels papermill starts
    try:
        for name in ("03_ablations", "04_task_specific", "05_cost"):
            pm.execute_notebook(str(NB / f"{name}.ipynb"), str(root / f"{name}.ipynb"),
                                parameters={"preset": "tiny-full", "run_root": str(root / "runs"),
                                            "figures_dir": str(root / "fig")}, **KW)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return root


def _rows(root, table):
    out = json.loads((root / "runs" / f"{table}.json").read_text())
    assert out["preset"] == "tiny-full" and out["table"] == table
    return out


def test_ablation_notebook_writes_tables_4_5_and_the_sweeps(full_root):
    tabs = get_tables("tiny-full")
    t4 = _rows(full_root, "table4")
    assert [r["variant"] for r in t4["rows"]] == ["DiffUp (full DA-KD)", "w/o DDS", "w/o SDU", "w/o DiffUp"]
    assert [r["run"] for r in t4["rows"]] == tabs["table4"] == ["dakd", "dakd_random", "dakd_top", "dakd_full"]
    assert [r["Dolly paper"] for r in t4["rows"]] == [26.75, 26.05, 26.65, 26.73]  # Table 4, Dolly
    for r in t4["rows"]:
        assert _finite(r["Dolly"]) and 0 <= r["Dolly"] <= 100
        assert r["Dolly diff"] == pytest.approx(r["Dolly"] - r["Dolly paper"])
    # DiffUp trains on fewer samples than full data: fewer iterations
    it = {r["variant"]: r["iterations"] for r in t4["rows"]}
    assert it["DiffUp (full DA-KD)"] < it["w/o DiffUp"]
    t5 = _rows(full_root, "table5")
    assert [r["loss"] for r in t5["rows"]] == ["KL", "RKL", "JSD", "SKL", "SRKL", "BDL"]
    assert all(_finite(r["Dolly"]) for r in t5["rows"]) and t5["rows"][0]["Dolly paper"] == 23.69
    lam = _rows(full_root, "lambda_sweep")
    assert [r["lam"] for r in lam["rows"]] == [0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    assert all(_finite(r["Dolly"]) for r in lam["rows"]) and "no numbers" in lam["note"]
    # BDL at lambda 0.5 is identically zero: the run trains on a zero loss
    assert next(r for r in lam["rows"] if r["lam"] == 0.5)["last epoch loss (nats/token)"] == 0.0
    assert [r["tau"] for r in _rows(full_root, "tau_sweep")["rows"]] == [0.0, 0.1, 0.3, 0.5]
    assert [r["schedule"] for r in _rows(full_root, "schedules")["rows"]] == ["cosine", "linear"]
    assert sorted(p.name for p in (full_root / "fig").glob("*.png")) == [
        "figure1.png", "lambda_sweep.png", "table2.png", "table3.png", "table4.png", "table5.png"]


def test_task_notebook_writes_table_2(full_root):
    t2 = _rows(full_root, "table2")
    assert [r["method"] for r in t2["rows"]] == ["Teacher", "SFT", "KD-KL", "KD-RKL", "GKD", "DistiLLM", "DA-KD"]
    assert "Llama2" in t2["paper"]
    for r in t2["rows"]:
        for col in ("SAMSum ROUGE-L", "GSM8K accuracy"):
            assert _finite(r[col]) and 0 <= r[col] <= 100, (r["method"], col)
            assert r[f"{col} diff"] == pytest.approx(r[col] - r[f"{col} paper"])
    da = t2["rows"][-1]
    assert (da["SAMSum ROUGE-L run"], da["GSM8K accuracy run"]) == ("samsum_dakd", "gsm8k_dakd")
    assert (da["SAMSum ROUGE-L paper"], da["GSM8K accuracy paper"]) == (39.2, 14.56)


def test_cost_notebook_writes_table_3_and_figure_1(full_root):
    t3 = _rows(full_root, "table3")
    rows = {r["method"]: r for r in t3["rows"]}
    assert list(rows) == ["SFT", "KD-KL", "KD-RKL", "SeqKD", "GKD", "DistiLLM", "DA-KD"]
    for m, r in rows.items():
        assert _finite(r["iterations"]) and _finite(r["minutes"]) and r["minutes"] > 0, m
        assert r["minutes / KD-KL diff"] == pytest.approx(r["minutes / KD-KL"] - r["minutes / KD-KL paper"])
    assert rows["KD-KL"]["minutes / KD-KL"] == 1.0
    assert rows["DA-KD"]["iterations / KD-KL"] < 1 and _finite(rows["DA-KD"]["DDS share"])
    fig = json.loads((full_root / "runs" / "figure1.json").read_text())
    cfg = get_preset("tiny-full")["dakd"]
    curves = {}
    for p in fig["points"]:
        curves.setdefault(p["run"], []).append(p)
    assert set(curves) == {"dakd", "dakd_full"}
    for run, pts in curves.items():
        assert [p["epoch"] for p in pts] == list(range(cfg.epochs))
        assert all(_finite(p["score"]) for p in pts)
        its = [p["iterations"] for p in pts]
        assert its == sorted(its) and its[0] > 0
    # the last epoch's student is the final one: the same score as the run's own evaluation
    res = json.loads((full_root / "runs" / "dakd" / "results.json").read_text())
    assert curves["dakd"][-1]["score"] == pytest.approx(res["eval"]["dolly"]["score"])
    assert curves["dakd"][-1]["iterations"] == res["cost"]["iterations"]
    # 05 ran after 03: the shared DA-KD runs were reused, not retrained
    nb = nbformat.read(full_root / "05_cost.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"dakd: complete (config {cfg.config_hash()}), reused" in printed


def test_results_notebook_gathers_the_saved_tables(full_root, tmp_path):
    pm.execute_notebook(str(NB / "02_results.ipynb"), str(tmp_path / "02.ipynb"),
                        parameters={"run_root": str(full_root / "runs"), "figures_dir": str(tmp_path / "fig"),
                                    "preset": "tiny-full"}, **KW)
    out = json.loads((full_root / "runs" / "results_table.json").read_text())
    # the preset's Table 1 runs only, though the folder holds every table's runs; the teacher row is
    # Table 1's alone (01_distill runs it), so it is not among the runs 03-05 made
    assert [r["run"] for r in out["table1"]] == [k for k in get_tables("tiny-full")["table1"] if k != "teacher"]
    assert [r["method"] for r in out["table1"]] == ["SFT", "KD-KL", "KD-RKL", "SeqKD", "GKD", "DistiLLM", "DA-KD"]
    assert out["other_tables"] == {t: True for t in ("table2", "table3", "figure1", "table4", "table5",
                                                      "lambda_sweep", "tau_sweep", "schedules")}


def test_a_distill_notebook_older_than_a_config_field_still_runs(tiny_root, tmp_path):
    # regression: a parameters cell (and parameter file) written before DistillConfig gained
    # `teacher_cache_k` stopped 01_distill with KeyError: 'teacher_cache_k'; the field now keeps
    # its default and the finished run is found by its unchanged config hash
    nb = nbformat.read(NB / "01_distill.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(l for l in cell.source.splitlines() if not l.startswith("teacher_cache_k"))
    old = tmp_path / "old_01.ipynb"
    nbformat.write(nb, old)
    params = yaml.safe_load((tiny_root / "params" / "sft.yaml").read_text())
    params.pop("teacher_cache_k")
    pm.execute_notebook(str(old), str(tmp_path / "ran.ipynb"), parameters=params, **KW)
    ran = nbformat.read(tmp_path / "ran.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in ran.cells if c.cell_type == "code" for o in c.outputs)
    assert f"complete (config {get_preset('tiny')['sft'].config_hash()}), reused" in printed


def test_run_all_refuses_a_missing_option_value_and_an_unknown_preset():
    # regression: `--preset` alone died on "$2: unbound variable", and an unknown preset printed a
    # traceback after creating runs/<name>/params
    p = subprocess.run(["bash", str(REPO / "run_all.sh"), "--preset"], capture_output=True, text=True)
    assert p.returncode == 2 and "--preset needs a value" in p.stderr
    p = subprocess.run(["bash", str(REPO / "run_all.sh"), "--preset", "no-such-preset"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "unknown preset 'no-such-preset'; known: cpu tiny" in p.stderr
    assert not (REPO / "runs" / "no-such-preset").exists()
