"""Presets and their table registry: every preset builds, every table names runs of its preset, a
run shared by tables is one config that differs from each table's other rows only in what the
table varies, the paper presets carry the paper's settings and hub names, the CPU preset keeps the
config hashes of its committed results; and the pipeline pieces the presets rely on (teacher-SFT
dependency, per-epoch evaluation for Figure 1, the CLI) on the tiny pair."""

import json
from pathlib import Path

import pytest

from dakd import cli, pipeline
from dakd import presets as P
from dakd.config import DistillConfig
from dakd.models import TINY_STUDENT, TINY_TEACHER

PAPER = ("llama2-7b-sheared-1.3b", "llama2-7b-sheared-2.7b", "qwen2.5-7b-1.5b", "qwen2.5-7b-0.5b", "llama3.2-3b-1b")
# computed from the cpu preset before the table registry was added (git 4216387^): the committed
# CPU results (README, figures/cpu) were produced by exactly these configs
CPU_HASHES = {"teacher": "bb0dc4697210", "sft": "2d0bb8c7e691", "kd_kl": "672b0a6da19f",
              "kd_rkl": "15396f016578", "dakd": "f14be87c6939"}


def test_cpu_preset_keeps_the_hashes_of_its_committed_results():
    runs = P.get_preset("cpu")
    assert {k: c.config_hash() for k, c in runs.items()} == CPU_HASHES
    assert list(runs) == list(CPU_HASHES) and P.get_tables("cpu") == {"table1": list(CPU_HASHES)}


@pytest.mark.parametrize("name", list(P.PRESETS))
def test_every_preset_builds_and_its_tables_name_its_runs(name):
    runs, tables = P.get_preset(name), P.get_tables(name)
    assert runs and tables and list(tables) == [t for t in P.TABLES if t in tables]
    for t, names in tables.items():
        assert names and set(names) <= set(runs), t
        assert len(set(names)) == len(names), t
    # one run name is one config: no two names train and evaluate the same thing
    hashes = [(c.config_hash(), c.eval_datasets) for c in runs.values()]
    assert len(set(hashes)) == len(hashes)
    for k, c in runs.items():
        assert Path(c.output_dir) == Path("runs") / name / k
    # every run is needed by some table, and the order puts a teacher before its students
    used = set(P.needed_runs(name, list(tables)))
    assert used == set(runs)
    order = list(runs)
    for k, c in runs.items():
        if Path(c.teacher).name == "student":
            assert order.index(Path(c.teacher).parent.name) < order.index(k)


def test_get_preset_and_needed_runs_refuse_unknown_names():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*cpu-full"):
        P.get_preset("nope")
    with pytest.raises(ValueError, match="has no \\['table4'\\]"):
        P.needed_runs("qwen2.5-7b-0.5b", ["table4"])


def _differs(a: DistillConfig, b: DistillConfig) -> set:
    # allow_degenerate_loss: a permission (the lambda sweep's 0.5 point), not a setting that changes results
    ignore = {"output_dir", "eval_datasets", "save_epoch_students", "allow_degenerate_loss"}
    return {k for k, v in a.to_dict().items() if k not in ignore and b.to_dict()[k] != v}


@pytest.mark.parametrize("name", ["cpu-full", "tiny-full", "llama2-7b-sheared-1.3b"])
def test_ablation_rows_differ_from_the_shared_dakd_run_only_in_what_they_vary(name):
    runs, tables = P.get_preset(name), P.get_tables(name)
    dakd = runs["dakd"]
    assert (dakd.method, dakd.loss, dakd.selection, dakd.lam, dakd.tau, dakd.schedule) == \
        ("dakd", "bdl", "dds", 0.9, 0.1, "cosine")
    varies = {"table4": "selection", "table5": "loss", "lambda_sweep": "lam", "tau_sweep": "tau",
              "schedules": "schedule"}
    for t, field in varies.items():
        assert "dakd" in tables[t], t  # the shared run is every table's paper-settings row
        for k in tables[t]:
            assert _differs(runs[k], dakd) == ({field} if k != "dakd" else set()), (t, k)
    assert [runs[k].selection for k in tables["table4"]] == ["dds", "random", "top", "full"]
    assert [runs[k].loss for k in tables["table5"]] == ["forward_kl", "reverse_kl", "js_divergence", "skew_kl",
                                                       "skew_reverse_kl", "bdl"]
    assert [runs[k].lam for k in tables["lambda_sweep"]] == [0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    assert [runs[k].tau for k in tables["tau_sweep"]] == [0.0, 0.1, 0.3, 0.5]
    assert [runs[k].schedule for k in tables["schedules"]] == ["cosine", "linear"]
    # Table 1's and Table 3's runs share one base: they differ from dakd only in the method's own fields
    for k in tables["table1"][1:]:
        assert _differs(runs[k], dakd) <= {"method", "loss", "gen_max_new_tokens", "sgo_val_samples"}, k


def test_labels_read_like_the_papers_rows():
    runs, tables = P.get_preset("tiny-full"), P.get_tables("tiny-full")
    label = {k: pipeline.method_label(c) for k, c in runs.items()}
    assert [label[k] for k in tables["table1"]] == ["Teacher", "SFT", "KD-KL", "KD-RKL", "SeqKD", "GKD",
                                                     "DistiLLM", "DA-KD"]
    assert [label[k] for k in tables["table4"]] == ["DA-KD", "DA-KD (w/o DDS)", "DA-KD (w/o SDU)",
                                                     "DA-KD (w/o DiffUp)"]
    assert [label[k] for k in tables["table5"]] == ["DA-KD (KL)", "DA-KD (RKL)", "DA-KD (JSD)", "DA-KD (SKL)",
                                                     "DA-KD (SRKL)", "DA-KD"]
    assert label["dakd_lam0.7"] == "DA-KD (lambda=0.7)" and label["dakd_tau0.3"] == "DA-KD (tau=0.3)"
    assert label["dakd_linear"] == "DA-KD (linear schedule)"
    assert [label[k] for k in tables["table2"][:7]] == ["Teacher", "SFT", "KD-KL", "KD-RKL", "GKD", "DistiLLM",
                                                         "DA-KD"]
    # the paper's teacher-SFT run is the Teacher row; a KD run with another loss names it
    assert pipeline.method_label(P.get_preset("qwen2.5-7b-0.5b")["teacher_sft"]) == "Teacher"
    assert pipeline.method_label(runs["kd_kl"].replace(loss="js_divergence")) == "KD-JSD"


def test_cpu_full_is_the_documented_cpu_scale():
    runs, tables = P.get_preset("cpu-full"), P.get_tables("cpu-full")
    assert list(tables) == list(P.PAPER_TABLES) and len(runs) == 42
    assert not any(k.endswith("teacher_sft") for k in runs)  # no teacher SFT at CPU scale
    for k, c in runs.items():
        assert (c.teacher, c.student, c.epochs, c.train_samples, c.eval_seeds, c.seed) == \
            ("smollm2-135m-instruct", "smollm2-student-l6", 3, 32, (10,), 42), k
        assert c.eval_samples == 16 and not c.save_checkpoints, k
    for k in tables["table1"]:
        assert runs[k].eval_datasets == P.INSTRUCTION_SETS and runs[k].max_new_tokens == 64
    ablation_only = set().union(*(tables[t] for t in ("table4", "table5", "lambda_sweep", "tau_sweep",
                                                      "schedules"))) - set(tables["table1"])
    assert ablation_only and all(runs[k].eval_datasets == ("dolly",) for k in ablation_only)
    for ds in P.TASK_SETS:
        task = [k for k in tables["table2"] if k.startswith(ds)]
        assert len(task) == 7 and all(runs[k].eval_datasets == (ds,) for k in task)
        assert all(runs[k].dataset == ds for k in task if runs[k].method != "teacher")
    # Figure 1: DA-KD and full-data KD with the same loss, each epoch's student kept
    assert tables["figure1"] == ["dakd", "dakd_full"]
    assert all(runs[k].save_epoch_students and runs[k].loss == "bdl" for k in tables["figure1"])
    assert runs["dakd_full"].selection == "full"
    assert sum(c.save_epoch_students for c in runs.values()) == 2


@pytest.mark.parametrize("name", PAPER)
def test_paper_presets_carry_the_papers_settings_and_hub_names(name):
    runs, tables = P.get_preset(name), P.get_tables(name)
    hub_teacher, hub_student, _ = P._PAPER_PAIRS[name]
    assert "/" in hub_teacher and "/" in hub_student
    sft_runs = [k for k in runs if k.endswith("teacher_sft")]
    assert sft_runs and list(runs)[:len(sft_runs)] == sft_runs  # teacher fine-tuning first
    if "table1" in tables:
        assert sft_runs[0] == "teacher_sft" and tables["table1"][0] == "teacher_sft"
    root = Path("runs") / name
    swept = {k for t in ("lambda_sweep", "tau_sweep", "schedules") for k in tables.get(t, []) if k != "dakd"}
    for k, c in runs.items():
        # batch 32 global = the paper's 8 per GPU on 4 GPUs (Table 3: 3,570 iterations for 11,435 x 10)
        assert (c.dtype, c.batch_size, c.lr, c.epochs) == ("bfloat16", 32, 1e-5, 10), k
        if k not in swept:
            assert (c.schedule, c.tau, c.lam) == ("cosine", 0.1, 0.9), k
        assert (c.max_prompt_length, c.max_length, c.prompt_style) == (256, 512, "alpaca"), k
        assert (c.eval_seeds, c.max_new_tokens, c.eval_samples, c.train_samples) == \
            ((10, 20, 30, 40, 50), 256, None, None), k
        assert c.eval_batch_size == 32 and c.method != "teacher", k
        if k in sft_runs:
            assert (c.method, c.student, c.teacher) == ("sft", hub_teacher, hub_teacher)
        else:
            assert c.student == hub_student
            prefix = k.split("_")[0] + "_" if k.split("_")[0] in P.TASK_SETS else ""
            assert Path(c.teacher) == root / f"{prefix}teacher_sft" / "student", k
            assert c.dataset == runs[f"{prefix}teacher_sft"].dataset
    assert name in P.PAPER_PRESET_NEEDS
    needs = P.PAPER_PRESET_NEEDS[name]
    assert "configs/accelerate/" in needs["teacher_sft"] + needs["students"]
    for cfg in ("ddp", "fsdp"):
        if f"{cfg}.yaml" in needs["teacher_sft"] + needs["students"]:
            assert (Path(__file__).resolve().parents[1] / "configs" / "accelerate" / f"{cfg}.yaml").is_file()
    h = needs["hours_4gpu"]
    assert h["total"] == pytest.approx(sum(v for k, v in h.items() if k != "total"), abs=0.5)


def test_paper_tables_are_where_the_paper_reports_them():
    t = {n: set(P.get_tables(n)) for n in PAPER}
    assert t["llama2-7b-sheared-1.3b"] >= {"table1", "table2", "table4", "table5", "lambda_sweep"}
    assert t["llama2-7b-sheared-2.7b"] == {"table1", "table3", "figure1"}  # Table 3: 7B -> 2.7B
    assert t["llama3.2-3b-1b"] == {"table2"}  # task-specific only
    assert P.paper_comparison("qwen2.5-7b-1.5b") == {"table1_student": "Qwen2.5-1.5B", "table2_family": "Qwen2.5"}
    assert P.paper_comparison("cpu-full")["table1_student"] == "Sheared-LLaMA-1.3B"


def test_cli_lists_a_tables_runs_and_a_presets_tables(capsys):
    assert cli.main(["preset-runs", "llama2-7b-sheared-1.3b", "--table", "table4"]) == 0
    assert capsys.readouterr().out.split() == ["teacher_sft", "dakd", "dakd_random", "dakd_top", "dakd_full"]
    assert cli.main(["preset-tables", "llama3.2-3b-1b"]) == 0
    assert capsys.readouterr().out.split() == ["table2"]
    assert cli.main(["preset-runs", "cpu"]) == 0
    assert capsys.readouterr().out.split() == list(CPU_HASHES)


# ------------------------------------------------------------------- pipeline pieces, tiny pair

def _tiny(tmp_path, **kw) -> DistillConfig:
    base = dict(teacher=TINY_TEACHER, student=TINY_STUDENT, prompt_style="chatml", train_samples=6, epochs=2,
                batch_size=3, micro_batch_size=3, lr=1e-3, max_prompt_length=64, max_length=96, eval_samples=3,
                eval_seeds=(10,), max_new_tokens=4, eval_batch_size=3, save_checkpoints=False)
    return DistillConfig(**(base | kw))


def test_teacher_sft_feeds_later_runs_and_retraining_it_makes_them_incomplete(tmp_path):
    # epochs 2: the suite holds a DA-KD run, and DA-KD with one epoch is refused (plain KD)
    runs, tables = P._suite(_tiny(tmp_path, epochs=2), str(tmp_path), ("table1",), table1_eval=("dolly",),
                            teacher_sft=True)
    assert tables["table1"][0] == "teacher_sft" and list(runs)[0] == "teacher_sft"
    sft, kd = runs["teacher_sft"], runs["kd_kl"]
    assert kd.teacher == f"{tmp_path}/teacher_sft/student"
    with pytest.raises(FileNotFoundError, match="run teacher_sft first"):
        pipeline.run(kd)
    pipeline.run(sft)
    res = pipeline.run(kd)
    assert res["teacher_run"] == {"output_dir": str(tmp_path / "teacher_sft"), "config_hash": sft.config_hash()}
    assert pipeline.load_complete(kd) is not None
    pipeline.run(sft.replace(lr=5e-4), overwrite=True)  # the teacher is retrained (another config, same folder)
    assert pipeline.load_complete(kd) is None


def test_epoch_students_are_evaluated_for_figure_1(tmp_path):
    cfg = _tiny(tmp_path, method="dakd", save_epoch_students=True, output_dir=str(tmp_path / "dakd"))
    res = pipeline.run(cfg)
    pts = res["epoch_eval"]
    log = json.loads((tmp_path / "dakd" / "train_log.json").read_text())
    assert [p["epoch"] for p in pts] == [0, 1]
    steps = [e["steps"] for e in log["epochs"]]
    assert [p["iterations_end"] for p in pts] == [steps[0], steps[0] + steps[1]] == [2, 3]
    assert all(p["dataset"] == "dolly" and p["num_prompts"] == res["eval"]["dolly"]["num_prompts"] for p in pts)
    # the last epoch's student is the final student: the same evaluation, the same score
    assert pts[-1]["score"] == res["eval"]["dolly"]["score"]
    # a finished run without the per-epoch evaluation does not pass for one that asks for it
    assert pipeline.load_complete(cfg) is not None
    stale = dict(res)
    stale.pop("epoch_eval")
    (tmp_path / "dakd" / "results.json").write_text(json.dumps(stale))
    assert pipeline.load_complete(cfg) is None and pipeline.load_complete(cfg.replace(save_epoch_students=False))
    # an epoch's student gone missing is named
    import shutil

    shutil.rmtree(tmp_path / "dakd" / "epoch_students" / "epoch0")
    with pytest.raises(FileNotFoundError, match=r"epoch\(s\) \[0\]"):
        pipeline.evaluate_epochs(cfg, log)


def test_cli_evaluate_takes_another_model_and_other_sets(tmp_path):
    cfg = _tiny(tmp_path, method="teacher", eval_datasets=("dolly", "vicuna"), eval_seeds=(None,),
                output_dir=str(tmp_path / "t"))
    req = tmp_path / "req.json"
    req.write_text(json.dumps(cfg.to_dict()))
    from dakd.models import resolve_model

    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--config", str(req), "--out", str(out), "--model", resolve_model(TINY_STUDENT),
                     "--datasets", "vicuna"]) == 0
    got = json.loads(out.read_text())
    assert list(got) == ["vicuna"]
    # the same as evaluating that model directly with the run's settings
    direct = pipeline.evaluate_run(cfg, model_path=resolve_model(TINY_STUDENT), datasets=("vicuna",))
    for k in ("prompt_ids", "per_prompt", "generated_tokens", "num_prompts", "max_new_tokens"):
        assert got["vicuna"][k] == direct["vicuna"][k], k
    # and --model is the model loaded: a folder that is not one fails, naming it
    with pytest.raises(Exception, match="no_model_here"):
        cli.main(["evaluate", "--config", str(req), "--out", str(out), "--model", str(tmp_path / "no_model_here")])
