"""Command line entry points used by ``run_all.sh`` and ``accelerate launch``.

    python -m dakd.cli train --config request.json       # one training (any number of processes)
    python -m dakd.cli evaluate --config request.json --out eval.json  # data-parallel evaluation
    python -m dakd.cli evaluate --config request.json --out eval.json --model DIR --datasets dolly
                                                          # another model (an epoch's student), other sets
    python -m dakd.cli preset-params cpu runs/cpu/params  # one papermill YAML per run of a preset
    python -m dakd.cli preset-runs cpu                    # the run names of a preset, one per line
    python -m dakd.cli preset-runs cpu-full --table table4  # the runs a table needs, in run order
    python -m dakd.cli preset-tables cpu-full             # the tables of a preset, one per line
    python -m dakd.cli preset-timeout cpu                 # seconds papermill gives one notebook cell
    python -m dakd.cli plan llama2-7b-sheared-2.7b --gpus 4 --gpu-memory 80
                                                          # memory per GPU of each stage and strategy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand and return the exit status 0;
    argparse exits with status 2 on bad arguments, and errors of the subcommand propagate (an
    unknown preset or table: ValueError naming the known ones)."""
    p = argparse.ArgumentParser(prog="python -m dakd.cli")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one run from a config JSON")
    t.add_argument("--config", required=True)
    t.add_argument("--stop-after", type=int, default=None,
                   help="return after this many epochs (checkpointed); the next call resumes")
    e = sub.add_parser("evaluate", help="evaluate one run's model on its eval_datasets (data-parallel "
                                        "under accelerate launch); the main process writes --out")
    e.add_argument("--config", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--model", default=None, help="evaluate this model folder instead of the run's own")
    e.add_argument("--datasets", nargs="+", default=None, help="these sets instead of the run's eval_datasets")
    pp = sub.add_parser("preset-params", help="write one papermill parameter file per run of a preset")
    pp.add_argument("preset")
    pp.add_argument("folder")
    pr = sub.add_parser("preset-runs", help="print the run names of a preset (with --table: the runs that "
                                            "table needs, its teacher-SFT runs included), in run order")
    pr.add_argument("preset")
    pr.add_argument("--table", action="append", default=None,
                    help="one of the preset's tables (preset-tables); may be repeated")
    pt = sub.add_parser("preset-tables", help="print the tables (and figures) a preset makes")
    pt.add_argument("preset")
    po = sub.add_parser("preset-timeout", help="print the seconds papermill gives one notebook cell of a preset")
    po.add_argument("preset")
    pl = sub.add_parser("plan", help="estimate the memory per GPU of each stage of a preset under each "
                                     "strategy (ddp, deepspeed_zero2, fsdp, deepspeed_zero3) and whether it fits")
    pl.add_argument("preset")
    pl.add_argument("--gpus", type=int, required=True, help="GPUs (processes)")
    pl.add_argument("--gpu-memory", type=float, required=True, help="memory of one GPU, GB (10^9 bytes)")
    pl.add_argument("--headroom", type=float, default=None, help="fraction left unplanned (default 0.1)")
    pl.add_argument("--strategy", action="append", default=None, help="only this strategy; may be repeated")
    pl.add_argument("--teacher", default=None, help="a model folder (or plan hub name) replacing the teacher")
    pl.add_argument("--student", default=None, help="a model folder (or plan hub name) replacing the student")
    pl.add_argument("--ddp-bucket-view", action="store_true",
                    help="plan DDP with gradient_as_bucket_view=True (no second gradient copy)")
    a = p.parse_args(argv)
    if a.cmd == "train":
        from .config import DistillConfig
        from .train import train

        train(DistillConfig.from_dict(json.loads(Path(a.config).read_text())), stop_after=a.stop_after)
    elif a.cmd == "evaluate":
        from .config import DistillConfig
        from .io import write_json
        from .launch import make_accelerator
        from .pipeline import evaluate_run

        cfg = DistillConfig.from_dict(json.loads(Path(a.config).read_text()))
        acc = make_accelerator(cfg.dtype)
        evals = evaluate_run(cfg, acc,
                             model_path=a.model, datasets=a.datasets)
        if acc.is_main_process:
            write_json(a.out, evals)
        acc.wait_for_everyone()
    elif a.cmd == "preset-params":
        from .presets import write_papermill_params

        for path in write_papermill_params(a.preset, a.folder):
            print(path)
    elif a.cmd == "preset-runs":
        from .presets import get_preset, needed_runs

        print("\n".join(needed_runs(a.preset, a.table) if a.table else get_preset(a.preset)))
    elif a.cmd == "preset-tables":
        from .presets import get_tables

        print("\n".join(get_tables(a.preset)))
    elif a.cmd == "preset-timeout":
        from .presets import notebook_timeout

        print(notebook_timeout(a.preset))
    elif a.cmd == "plan":
        from .plan import HEADROOM, plan_text

        print(plan_text(a.preset, a.gpus, a.gpu_memory, HEADROOM if a.headroom is None else a.headroom,
                        strategies=a.strategy, teacher=a.teacher, student=a.student,
                        ddp_bucket_view=a.ddp_bucket_view))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
