"""Two gloo processes on the CPU through `accelerate launch`: data-parallel evaluation scores every
prompt exactly once and in prompt order, as one process does (also for another model folder and
other sets, Figure 1's per-epoch evaluation); a tiny DA-KD job trains with the same plan, scores
every sample's DDS once, and matches a one-process run."""

import json
import math
from pathlib import Path

import pytest

import dakd.train as T
from dakd.pipeline import accelerate_command, evaluate_run, launch_env, launch_evaluation, launch_training
from dakd.presets import get_preset


@pytest.fixture(autouse=True)
def _plain_launch(monkeypatch):
    # a user's accelerate config must not leak into these runs; one thread per process (2 cores)
    monkeypatch.delenv("DAKD_ACCELERATE_CONFIG", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _arg(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def test_cpu_processes_are_started_by_torchrun_not_by_accelerates_cpu_flag():
    # regression: `accelerate launch --cpu --num_processes 2` starts ONE process (it expects mpirun)
    cmd = accelerate_command(2, cpu=True)
    assert "--multi_gpu" in cmd and "--cpu" not in cmd and _arg(cmd, "--num_processes") == "2"
    assert launch_env(cpu=True)["ACCELERATE_USE_CPU"] == "true"
    assert "ACCELERATE_USE_CPU" not in launch_env(cpu=False) or launch_env(cpu=False)["ACCELERATE_USE_CPU"] != "true"
    one = accelerate_command(1, cpu=True)
    assert "--cpu" in one and "--multi_gpu" not in one
    assert 0 < int(_arg(cmd, "--main_process_port")) < 65536


def test_an_accelerate_config_file_is_passed_through(tmp_path, monkeypatch):
    cfg = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp.yaml"
    cmd = accelerate_command(4, config_file=str(cfg))
    assert _arg(cmd, "--config_file") == str(cfg) and _arg(cmd, "--num_processes") == "4"
    # the file decides the distributed type and precision: no flag may override it
    assert "--multi_gpu" not in cmd and "--mixed_precision" not in cmd
    monkeypatch.setenv("DAKD_ACCELERATE_CONFIG", str(cfg))
    assert _arg(accelerate_command(2), "--config_file") == str(cfg)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        accelerate_command(2, config_file=str(tmp_path / "nope.yaml"))


# ---------------------------------------------------------------- data-parallel evaluation

def test_two_process_evaluation_scores_every_prompt_exactly_once(tmp_path):
    # greedy decoding one prompt at a time: the text cannot depend on how prompts are split
    cfg = get_preset("tiny", root=str(tmp_path))["teacher"].replace(
        eval_datasets=("dolly", "sinst"), eval_samples=7, eval_seeds=(None,), eval_batch_size=1,
        max_new_tokens=6, max_prompt_length=256, max_length=320)
    one = evaluate_run(cfg)  # also builds the tiny teacher before two processes want it
    two = launch_evaluation(cfg, num_processes=2, cpu=True)
    assert set(json.loads((tmp_path / "teacher" / "eval.json").read_text())) == set(cfg.eval_datasets)
    for ds in cfg.eval_datasets:
        a, b = one[ds], two[ds]
        assert (a["num_processes"], b["num_processes"]) == (1, 2)
        n = b["num_prompts"]
        assert n == a["num_prompts"] >= 3 and n + b["filter"]["prompt_too_long"] == 7
        # every prompt once, in prompt order, with the same score and text as one process gives
        assert b["prompt_ids"] == a["prompt_ids"] and len(set(b["prompt_ids"])) == n
        assert len(b["per_prompt"]["greedy"]) == n
        assert b["per_prompt"] == a["per_prompt"]
        assert [e["response"] for e in b["examples"]] == [e["response"] for e in a["examples"]]
        assert b["generated_tokens"] == a["generated_tokens"] > 0
        assert b["rougeL"] == pytest.approx(a["rougeL"])


def test_two_process_evaluation_of_another_model_on_other_sets(tmp_path):
    # Figure 1's path: an epoch's student evaluated through the same launch, on eval_datasets[0]
    import shutil

    from dakd.models import TINY_STUDENT, resolve_model

    folder = tmp_path / "epoch_students" / "epoch0"
    shutil.copytree(resolve_model(TINY_STUDENT), folder)
    cfg = get_preset("tiny", root=str(tmp_path))["dakd"].replace(
        output_dir=str(tmp_path), eval_datasets=("vicuna", "dolly"), eval_samples=5, eval_seeds=(None,),
        eval_batch_size=1, max_new_tokens=5)
    two = launch_evaluation(cfg, num_processes=2, cpu=True, model_path=folder, datasets=("vicuna",))
    assert json.loads((folder / "eval.json").read_text()) == two  # written beside that model
    one = evaluate_run(cfg, model_path=folder, datasets=("vicuna",))
    assert list(two) == list(one) == ["vicuna"]
    assert two["vicuna"]["num_processes"] == 2 and two["vicuna"]["num_prompts"] == one["vicuna"]["num_prompts"] == 5
    assert two["vicuna"]["per_prompt"] == one["vicuna"]["per_prompt"]
    assert two["vicuna"]["generated_tokens"] == one["vicuna"]["generated_tokens"] > 0


# ---------------------------------------------------------------- two-process training

def test_two_process_dakd_training_matches_one_process(tmp_path):
    cfg = get_preset("tiny", root=str(tmp_path))["dakd"]
    log2 = launch_training(cfg, num_processes=2, cpu=True)
    log1 = T.train(cfg.replace(output_dir=str(tmp_path / "one_process")))
    meta = json.loads((tmp_path / "dakd" / "config.json").read_text())
    assert meta["num_processes"] == 2
    assert (tmp_path / "dakd" / "student" / "config.json").exists()
    n = log2["num_samples"]
    assert n == log1["num_samples"] > 0
    assert len(log2["epochs"]) == cfg.epochs == 2
    # the same plan: subset sizes and optimiser steps (batch 4 is global, split over 2 processes)
    assert [e["subset_size"] for e in log2["epochs"]] == [e["subset_size"] for e in log1["epochs"]]
    steps = [math.ceil(e["subset_size"] / cfg.batch_size) for e in log2["epochs"]]
    assert [e["steps"] for e in log2["epochs"]] == steps
    assert log2["cost"]["iterations"] == log1["cost"]["iterations"] == sum(steps)
    for e in log2["epochs"]:
        assert len(set(e["subset_ids"])) == len(e["subset_ids"]) == e["subset_size"]
    e0, e1 = log2["epochs"]
    assert e0["subset_size"] == n and e1["subset_size"] < n
    # DDS of every sample exactly once: a sample scored on both processes, or on none, would show
    # as a doubled or zero CE against the one-process run
    assert len(e1["dds_by_sample"]) == n and min(e1["dds_by_sample"].values()) > 0
    assert e1["dds_by_sample"] == pytest.approx(log1["epochs"][1]["dds_by_sample"], rel=1e-4, abs=1e-5)
    assert e1["teacher_ce"] == pytest.approx(log1["epochs"][1]["teacher_ce"], rel=1e-5)
    assert e0["mean_loss"] == pytest.approx(log1["epochs"][0]["mean_loss"], rel=1e-4)


# ---------------------------------------------------------------- shipped accelerate configs

@pytest.mark.parametrize("name,kind,extra", [
    ("ddp", "MULTI_GPU", {}), ("fsdp", "FSDP", {"fsdp_version": 2, "fsdp_state_dict_type": "FULL_STATE_DICT",
                                                   "fsdp_cpu_ram_efficient_loading": False}),
    ("deepspeed_zero2", "DEEPSPEED", {"zero_stage": 2}), ("deepspeed_zero3", "DEEPSPEED", {"zero_stage": 3})])
def test_shipped_accelerate_configs_are_read_by_accelerate(name, kind, extra):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / f"{name}.yaml"
    c = load_config_from_file(str(path))  # raises on a field accelerate does not know
    assert str(c.distributed_type).endswith(kind) and c.num_machines == 1
    settings = c.fsdp_config if kind == "FSDP" else c.deepspeed_config
    assert extra.items() <= settings.items()
    # and the launcher turns it into the intended mode, with our process count winning
    args = launch_command_parser().parse_args(
        accelerate_command(2, config_file=str(path))[3:] + ["-m", "dakd.cli", "train"])
    args = _validate_launch_command(args)[0]
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == (kind == "MULTI_GPU", kind == "FSDP",
                                                                    kind == "DEEPSPEED")
    assert args.num_processes == 2


# ---------------------------------------------------------------- top-k cache over two processes

def test_two_processes_build_the_topk_cache_once_then_hit_it_without_the_teacher(tmp_path, monkeypatch):
    """The hit is decided alike on both processes (one gather) before anyone builds: a miss builds
    one file (main process) that both read; the same run again loads no teacher on either process."""
    from dakd.models import cache_dir

    fresh = tmp_path / "cache"  # a cache folder of its own; the built models are the real ones
    fresh.mkdir()
    (fresh / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    monkeypatch.setenv("DAKD_CACHE_DIR", str(fresh))
    cfg = get_preset("tiny", root=str(tmp_path))["kd_rkl"].replace(teacher_cache_k=16, train_samples=8, epochs=1)
    miss = launch_training(cfg, num_processes=2, cpu=True)
    assert not miss["teacher_cache"]["from_cache"] and miss["teacher_cache"]["teacher_loaded"]
    assert len(list((fresh / "topk").glob("*.pt"))) == 1
    hit = launch_training(cfg.replace(output_dir=str(tmp_path / "hit")), num_processes=2, cpu=True)
    assert hit["teacher_cache"]["from_cache"] and not hit["teacher_cache"]["teacher_loaded"]
    assert hit["teacher_cache"]["path"] == miss["teacher_cache"]["path"]
    assert [e["mean_loss"] for e in hit["epochs"]] == [e["mean_loss"] for e in miss["epochs"]]
