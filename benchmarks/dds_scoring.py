"""Difficulty scoring (issue 4, target 2): DDS with the teacher's CE computed once per run (ours)
against the paper's teacher + student rescoring at every epoch, on the same examples and models.

    .venv/bin/python benchmarks/dds_scoring.py            # CPU preset: 125 Dolly examples, 3 epochs, ~8 min
    .venv/bin/python benchmarks/dds_scoring.py --quick    # tiny random pair, 24 examples, < 1 min

DA-KD scores the training set before each of epochs 1 .. E-1 (epoch 0 trains on all of D), so both
variants do E - 1 scoring rounds, with the function `dakd.train` calls (`score_dataset`, batch size
``micro_batch_size``, length-sorted batches):
  ours   a student pass per round. CE_teacher comes from epoch 0's training step, which already has
         the teacher's logits: its cost is one `response_ce` per training batch, timed here on
         logits of the training batches' shapes (cross-entropy does the same work whatever the
         values; the teacher forward that produces them is the training step's, not scoring's).
  paper  a teacher pass and a student pass per round (the paper's Algorithm 1 recomputes both).
  cold   ours when epoch 0's logits are not at hand (a resumed run, or `teacher_ce_cached` on a new
         data set): one teacher pass, then the student passes; computed from the measured passes.

It also prints the DDS share of a finished CPU-preset DA-KD run (``cost.dds_share`` in
``runs/cpu/dakd/train_log.json``, or ``--train-log``), the figure issue 4 bounds at 10 percent
(paper Table 3: 28.31 of 106.35 minutes, 27 percent), and says so when the file is absent.

Last line: the scoring-time ratio paper / ours over E epochs (and paper / cold).
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the table

import torch  # noqa: E402

from dakd import data as D  # noqa: E402
from dakd.difficulty import difficulty_scores, response_ce, score_dataset  # noqa: E402
from dakd.models import load_model, load_tokenizer  # noqa: E402
from dakd.presets import get_preset  # noqa: E402
from dakd.train import length_grouped  # noqa: E402


def setup(quick: bool, samples: int | None):
    """(config, tokenizer, examples) of the CPU preset's DA-KD run (tiny preset with --quick)."""
    cfg = get_preset("tiny" if quick else "cpu")["dakd"]
    if samples:
        cfg = cfg.replace(train_samples=samples)
    tok = load_tokenizer(cfg.student)
    records = D.load_split(cfg.dataset, "train", limit=cfg.train_samples, seed=cfg.seed)
    examples, report = D.tokenize_records(records, tok, cfg.prompt_style, cfg.max_prompt_length, cfg.max_length)
    print(f"{cfg.teacher} -> {cfg.student}, {report}, max_length {cfg.max_length}, "
          f"{torch.get_num_threads()} threads", flush=True)
    return cfg, tok, examples


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def free_teacher_ce_seconds(cfg, examples, pad, vocab) -> float:
    """Time of `response_ce` on every training batch of epoch 0 (length-grouped, batch_size), on
    random logits of the batch's shape [B, T, V]."""
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(examples), generator=gen).tolist()
    lengths = [len(e["input_ids"]) for e in examples]
    collate, total = D.DistillCollator(pad), 0.0
    for batch in length_grouped(order, lengths, cfg.batch_size, gen):
        b = collate([examples[i] for i in batch])
        logits = torch.randn(*b["input_ids"].shape, vocab)
        total += timed(response_ce, logits, b["input_ids"], b["response_mask"])[1]
    return total


def read_dds_share(path: Path) -> str:
    if not path.exists():
        return (f"DDS share of a finished run: {path} is absent (./run_all.sh writes runs/cpu/dakd/train_log.json, "
                f"benchmarks/whole_run.py runs/bench/whole_run/dakd/train_log.json; pass one with --train-log)")
    cost = json.loads(path.read_text()).get("cost", {})
    if "dds_share" not in cost:
        return f"DDS share of a finished run: {path} has no cost.dds_share (unfinished run?)"
    return (f"DDS share of {path}: {100 * cost['dds_share']:.1f}% ({cost['dds_seconds']:.0f} s DDS of "
            f"{cost['total_seconds']:.0f} s DDS + training; issue 4 target <= 10%, paper Table 3: 27%)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random pair, 24 examples")
    ap.add_argument("--samples", type=int, help="training samples to load (default: the preset's)")
    ap.add_argument("--epochs", type=int, help="E (default: the preset's)")
    ap.add_argument("--train-log", default="runs/cpu/dakd/train_log.json")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, tok, examples = setup(args.quick, args.samples)
    E = args.epochs or cfg.epochs
    if E < 2:
        raise SystemExit("--epochs must be >= 2: DA-KD scores before epochs 1 .. E-1")
    teacher = load_model(cfg.teacher).eval()
    student = load_model(cfg.student)
    pad, bs = tok.pad_token_id, cfg.micro_batch_size
    score_dataset(student, examples[:bs], pad, bs)  # warm-up (first-call costs), not timed

    ce_free = free_teacher_ce_seconds(cfg, examples, pad, teacher.get_output_embeddings().weight.shape[0])
    ours, paper_t, paper_s = [], [], []
    for r in range(1, E):  # interleaved, so load changes on a shared machine hit both variants
        s_ce, t = timed(score_dataset, student, examples, pad, bs)
        ours.append(t)
        t_ce, t = timed(score_dataset, teacher, examples, pad, bs)
        paper_t.append(t)
        paper_s.append(timed(score_dataset, student, examples, pad, bs)[1])
        print(f"round {r}: student pass {ours[-1]:.1f} s | teacher pass {paper_t[-1]:.1f} s + student pass "
              f"{paper_s[-1]:.1f} s", flush=True)
    difficulty_scores(s_ce, t_ce, cfg.dds_eps)  # the scores both variants produce (sanity: finite, >= 0)

    ours_total = ce_free + sum(ours)
    paper_total = sum(paper_t) + sum(paper_s)
    cold_total = paper_t[0] + sum(ours)
    n = len(examples)
    print(f"\n| variant | what runs over {E} epochs ({E - 1} scoring rounds, {n} examples) | seconds |")
    print("|---|---|---|")
    print(f"| ours | CE_teacher from epoch 0's logits ({ce_free:.2f} s) + {E - 1} student passes | {ours_total:.1f} |")
    print(f"| cold | 1 teacher pass + {E - 1} student passes | {cold_total:.1f} |")
    print(f"| paper | {E - 1} x (teacher pass + student pass) | {paper_total:.1f} |")
    print(read_dds_share(Path(args.train_log)))
    print(f"scoring time over {E} epochs, paper / ours: {paper_total:.1f} / {ours_total:.1f} s = "
          f"{paper_total / ours_total:.2f}x; paper / cold: {paper_total / cold_total:.2f}x")


if __name__ == "__main__":
    main()
