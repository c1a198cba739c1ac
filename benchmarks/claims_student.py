"""Which student for the claims study (issue 15): 6, 10 or 15 of the teacher's 30 layers?

Each candidate (`dakd.models.DEFAULT_STUDENT` and the `DEEPER_STUDENTS`, cut from
SmolLM2-135M-Instruct) is measured twice on the first 200 DollyEval prompts with teacher-forced
metrics (`dakd.teacher_forced`: student CE and forward KL from the teacher, nats per response token):
as cut (before any training) and after the same short KD run (forward KL, 160 Dolly samples of
which 144 are kept, 18 steps of 8, lr 1e-4, the top-k teacher cache at k = 256, as the claims preset trains). The KD run's
seconds per step (its step loop alone) is the cost; 16 sampled DollyEval answers (64 new tokens, seed 10) show whether
the text is fluent.

    .venv/bin/python benchmarks/claims_student.py      # about 8 min on 2 idle cores

Prints one JSON line per student and a table; writes runs/claims_student/summary.json (committed as
figures/cpu-claims/student_choice.json, which notebooks/06_claims.ipynb shows).
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

from transformers import AutoConfig

from dakd import teacher_forced
from dakd.config import DistillConfig
from dakd.models import (
    DEEPER_STUDENTS,
    DEFAULT_STUDENT,
    DEFAULT_TEACHER,
    load_model,
    load_tokenizer,
    resolve_model,
)
from dakd.pipeline import run

ROOT = Path("runs/claims_student")
CANDIDATES = (DEFAULT_STUDENT, *DEEPER_STUDENTS)


def base_config(student: str) -> DistillConfig:
    """The short KD run every candidate gets."""
    return DistillConfig(teacher=DEFAULT_TEACHER, student=student, prompt_style="chatml", method="kd",
                         loss="forward_kl", teacher_cache_k=256, train_samples=160, epochs=1,
                         batch_size=8, micro_batch_size=8, lr=1e-4, max_prompt_length=192, max_length=256,
                         eval_samples=16, eval_seeds=(10,), max_new_tokens=64, eval_batch_size=16, seed=42,
                         save_checkpoints=False, teacher_forced=True, teacher_forced_samples=200,
                         output_dir=str(ROOT / student))


def as_cut(cfg: DistillConfig) -> dict:
    """Teacher-forced metrics of the untrained student (the layer cut itself)."""
    student = load_model(cfg.student)
    tok = load_tokenizer(cfg.student)
    teacher, vocab = teacher_forced.load_teacher(cfg, student, tok, cfg.student, "cpu")
    return teacher_forced.evaluate_set(cfg, "dolly", student, tok, teacher, vocab)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    summary = {}
    for name in CANDIDATES:
        cfg = base_config(name)
        t0 = time.perf_counter()
        cut = as_cut(cfg)
        res = run(cfg)
        tf = res["eval"]["dolly"]["teacher_forced"]
        log = json.loads((Path(cfg.output_dir) / "train_log.json").read_text())
        steps = sum(e["steps"] for e in log["epochs"])
        step_seconds = sum(e["train_seconds"] for e in log["epochs"])  # the step loop (no loading, no cache build)
        row = {"layers": AutoConfig.from_pretrained(resolve_model(cfg.student)).num_hidden_layers,
               "cut_student_ce": cut["student_ce"], "cut_forward_kl": cut["forward_kl"],
               "trained_student_ce": tf["student_ce"], "trained_forward_kl": tf["forward_kl"],
               "teacher_ce": tf["teacher_ce"], "top1_agreement": tf["top1_agreement"],
               "rougeL": res["eval"]["dolly"]["rougeL"], "train_seconds": res["seconds"]["train"],
               "steps": steps, "seconds_per_step": step_seconds / max(steps, 1),
               "eval_seconds": res["seconds"]["eval"], "wall_seconds": time.perf_counter() - t0}
        summary[name] = row
        print(name, json.dumps(row), flush=True)
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{'student':22s} layers  cut CE  cut KL  KD CE   KD KL  agree  ROUGE-L  s/step")
    for name, r in summary.items():
        print(f"{name:22s} {r['layers']:6d}  {r['cut_student_ce']:6.3f}  {r['cut_forward_kl']:6.3f}  "
              f"{r['trained_student_ce']:6.3f}  {r['trained_forward_kl']:6.3f}  {r['top1_agreement']:.3f}  "
              f"{r['rougeL']:7.2f}  {r['seconds_per_step']:6.2f}")


if __name__ == "__main__":
    main()
