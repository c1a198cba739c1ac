"""Logits at the response rows only (`dakd.models.response_logits`) against the full ``[B, T, V]``
forward, for a KD training step and for a DDS scoring pass, on the CPU preset's batches.

    .venv/bin/python benchmarks/response_rows.py            # CPU preset, 8 batches of 8, ~2 min idle
    .venv/bin/python benchmarks/response_rows.py --quick    # tiny random pair, seconds

A distillation loss and a response CE read the logits of the response positions only, about half
of a batch's positions; the LM head (a [576, 49152] matmul per position for SmolLM2) is as costly as
the 6-layer student's decoder. Variants, alternating batch by batch over the same length-grouped
batches (one untimed warm-up of each first):
  step full   teacher forward (no_grad) and student forward over every position, BDL on the shifted
              masked logits, backward (the formula `dakd.train.token_losses` used before)
  step rows   `dakd.train.token_losses` as shipped (both models' head on the response rows), backward
  score full  student forward (no_grad) + `dakd.difficulty.response_ce` on the full logits
  score rows  `response_logits` + `response_ce_rows` (what `score_dataset` does per batch)
No optimiser step (the student's weights stay the same for every variant). The loss and CE values
of the two variants are compared too (largest relative difference printed).

Last line: step full / rows and score full / rows time ratios.
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from dakd import data as D  # noqa: E402
from dakd.difficulty import predicting_positions, response_ce, response_ce_rows  # noqa: E402
from dakd.losses import bdl_per_token  # noqa: E402
from dakd.models import check_pair, load_model, load_tokenizer, response_logits  # noqa: E402
from dakd.presets import get_preset  # noqa: E402
from dakd.train import length_grouped, token_losses  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random pair, the tiny preset's data")
    ap.add_argument("--batches", type=int, default=8, help="timed batches of each variant")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_preset("tiny" if args.quick else "cpu")["dakd"]
    tok = load_tokenizer(cfg.student)
    records = D.load_split(cfg.dataset, "train", limit=cfg.train_samples, seed=cfg.seed)
    examples, report = D.tokenize_records(records, tok, cfg.prompt_style, cfg.max_prompt_length, cfg.max_length)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(examples), generator=gen).tolist()
    batches = length_grouped(order, [len(e["input_ids"]) for e in examples], cfg.batch_size, gen)
    collate = D.DistillCollator(tok.pad_token_id)
    picks = [collate([examples[i] for i in b]) for b in batches[:args.batches + 1]]
    teacher = load_model(cfg.teacher).eval().requires_grad_(False)
    student = load_model(cfg.student)
    student.config.use_cache = False
    vocab = check_pair(tok, tok, teacher, student)
    resp = sum(int(b["response_mask"][:, 1:].sum()) for b in picks[1:])
    pos = sum(b["input_ids"].numel() for b in picks[1:])
    print(f"{report}; {len(picks) - 1} timed batches of {cfg.batch_size}: {resp} response rows of {pos} "
          f"positions ({100 * resp / pos:.0f} %); {torch.get_num_threads()} threads")

    def step_full(b):
        ids, attn, mask = b["input_ids"], b["attention_mask"], b["response_mask"][:, 1:]
        with torch.no_grad():
            t = teacher(input_ids=ids, attention_mask=attn).logits
        s = student(input_ids=ids, attention_mask=attn).logits
        tok_loss = bdl_per_token(s[:, :-1, :vocab], t[:, :-1, :vocab], mask, lam=cfg.lam)
        tok_loss.sum().backward()
        return tok_loss.detach()[mask.bool()]

    def step_rows(b):
        tok_loss, _ = token_losses(cfg, student, teacher, b, vocab)
        tok_loss.sum().backward()
        return tok_loss.detach()[b["response_mask"][:, 1:].bool()]

    @torch.no_grad()
    def score_full(b):
        logits = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        return response_ce(logits, b["input_ids"], b["response_mask"])

    @torch.no_grad()
    def score_rows(b):
        rows = response_logits(student, b["input_ids"], b["attention_mask"], predicting_positions(b["response_mask"]))
        return response_ce_rows(rows, b["input_ids"], b["response_mask"])

    pairs = {"step": (step_full, step_rows), "score": (score_full, score_rows)}
    times = {f"{k} {v}": 0.0 for k in pairs for v in ("full", "rows")}
    worst = dict.fromkeys(pairs, 0.0)
    for j, b in enumerate(picks):
        for kind, (full, rows) in pairs.items():
            out = {}
            for name, fn in (("full", full), ("rows", rows)) if j % 2 else (("rows", rows), ("full", full)):
                student.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                out[name] = fn(b)
                dt = time.perf_counter() - t0
                if j:  # batch 0 is the warm-up
                    times[f"{kind} {name}"] += dt
            rel = ((out["rows"] - out["full"]).abs() / out["full"].abs().clamp(min=1e-6)).max().item()
            worst[kind] = max(worst[kind], rel)
        if j:
            print(f"batch {j}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()) + " (cumulative)", flush=True)
    print("\n| variant | seconds | largest relative difference of its values, rows vs full |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {v:.2f} | {worst[k.split()[0]]:.1e} |")
    print(f"response rows only: KD step (fwd + bwd) full / rows {times['step full'] / times['step rows']:.2f}x, "
          f"scoring pass full / rows {times['score full'] / times['score rows']:.2f}x")


if __name__ == "__main__":
    main()
