"""The training loop's overhead (issue 4, target 5, second half): a DA-KD training step of
`dakd.train` against the bare work it cannot avoid, on the same batches of the CPU preset.

    .venv/bin/python benchmarks/loop_overhead.py            # CPU preset, 40 samples (5 steps), ~6 min
    .venv/bin/python benchmarks/loop_overhead.py --quick    # tiny random pair, 24 samples, < 1 min

Variants, each over the batches of DA-KD's epoch 0 (the seeded, length-grouped order `dakd.train`
draws for these samples; batch_size = micro_batch_size, so no accumulation):
  bare   written inline here: teacher forward (no_grad), student forward, both LM heads on the
         response rows only (the logits the loss reads, as `dakd.models.response_logits` does),
         `dakd.losses.bdl`, backward, AdamW step, zero_grad. The floor: nothing a loop could leave out.
  step   the loop's own step function, `dakd.train.train_step` (the very function), with the
         DA-KD objective (`dakd.methods.objectives.Divergence`, BDL): collation, the token-count
         scaling, the finiteness check, backward, gradient-norm clipping and its check, AdamW and
         LR-scheduler steps, zero_grad, the reduced step loss.
  loop   the real `dakd.train.train` (method dakd, epoch 0 of 2, no checkpoints) on the same samples;
         per step = its ``cost.train_seconds / cost.iterations``, which also counts collation,
         epoch 0's free CE_teacher (`response_ce` on the teacher logits), accelerate, tqdm and the
         records. It runs after the other two (it cannot be interleaved with them).
  loop_kd  the same with method kd (same BDL, same batches): no CE_teacher fill, so loop - loop_kd
         is what DA-KD's epoch 0 pays for getting CE_teacher without a teacher pass.
bare and step alternate batch by batch (so a load change on a shared machine hits both), after one
untimed warm-up step; both collate inside the timed part.

Last line: step / bare, loop / bare and loop_kd / bare time ratios (issue 4 target: at most 1.05).
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the table

import torch  # noqa: E402
from transformers import get_cosine_schedule_with_warmup  # noqa: E402

from dakd import data as D  # noqa: E402
from dakd.losses import bdl  # noqa: E402
from dakd.models import check_pair, load_model, load_tokenizer  # noqa: E402
from dakd.presets import get_preset  # noqa: E402
from dakd.methods.objectives import Divergence  # noqa: E402
from dakd.methods.sources import Share  # noqa: E402
from dakd.runstate import Run  # noqa: E402
from dakd.train import length_grouped, train, train_step  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random pair, 24 samples")
    ap.add_argument("--samples", type=int, help="training samples (default 40; 24 with --quick)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = get_preset("tiny" if args.quick else "cpu")["dakd"]
    cfg = base.replace(train_samples=args.samples or (24 if args.quick else 40), epochs=2,
                       micro_batch_size=base.batch_size, save_checkpoints=False)
    tok = load_tokenizer(cfg.student)
    records = D.load_split(cfg.dataset, "train", limit=cfg.train_samples, seed=cfg.seed)
    examples, report = D.tokenize_records(records, tok, cfg.prompt_style, cfg.max_prompt_length, cfg.max_length)
    n = len(examples)
    # the batch order dakd.train draws at epoch 0 (a fresh generator seeded with cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.arange(n)[torch.randperm(n, generator=gen)].tolist()
    batches = length_grouped(order, [len(e["input_ids"]) for e in examples], cfg.batch_size, gen)
    print(f"{cfg.teacher} -> {cfg.student}, {report}; {len(batches)} steps of {cfg.batch_size}, "
          f"{torch.get_num_threads()} threads", flush=True)

    teacher = load_model(cfg.teacher).eval().requires_grad_(False)
    vocab = check_pair(tok, tok, teacher, load_model(cfg.student))
    collate = D.DistillCollator(tok.pad_token_id)

    def make():
        s = load_model(cfg.student)
        s.config.use_cache = False
        s.train()
        opt = torch.optim.AdamW(s.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return s, opt

    s_bare, opt_bare = make()
    s_step, opt_step = make()
    sched = get_cosine_schedule_with_warmup(opt_step, 0, len(batches) + 1)

    from accelerate import Accelerator
    acc = Accelerator(cpu=True)
    s_step, opt_step = acc.prepare(s_step, opt_step)
    run = Run(cfg, acc, None, tok, examples, student=s_step, teacher=teacher, vocab=vocab, opt=opt_step,
              sched=sched)
    objective = Divergence(run)

    def bare(batch):
        t0 = time.perf_counter()
        b = collate([examples[i] for i in batch])
        ids, attn = b["input_ids"], b["attention_mask"]
        pos = torch.zeros_like(ids, dtype=torch.bool)
        pos[:, :-1] = b["response_mask"][:, 1:]  # positions that predict a response token
        with torch.no_grad():
            t = teacher.lm_head(teacher.model(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state[pos])
        s = s_bare.lm_head(s_bare.model(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state[pos])
        loss = bdl(s[None, :, :vocab], t[None, :, :vocab], None, lam=cfg.lam)
        loss.backward()
        opt_bare.step()
        opt_bare.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def step(batch):
        t0 = time.perf_counter()
        ex = [examples[i] for i in batch]
        share = Share(ex, 1.0, sum(len(e["input_ids"]) - e["prompt_length"] for e in ex),
                      sum(len(e["input_ids"]) for e in ex), [e["sample_id"] for e in ex])
        train_step(run, share, objective)
        return time.perf_counter() - t0

    bare(batches[0]), step(batches[0])  # warm-up: first-call costs and AdamW state, not timed
    times = {"bare": [], "step": []}
    for j, batch in enumerate(batches):
        for name in (("bare", "step") if j % 2 == 0 else ("step", "bare")):
            times[name].append((bare if name == "bare" else step)(batch))
        print(f"step {j + 1}/{len(batches)} ({len(batch)} samples): bare {times['bare'][-1]:.2f} s, "
              f"step {times['step'][-1]:.2f} s", flush=True)
    del s_bare, s_step, opt_bare, opt_step, run, objective

    per = {k: sum(v) / len(v) for k, v in times.items()}
    for name, method in (("loop", "dakd"), ("loop_kd", "kd")):
        with tempfile.TemporaryDirectory() as tmp:
            cost = train(cfg.replace(method=method, output_dir=tmp), stop_after=1)["cost"]  # epoch 0 only
        if cost["iterations"] != len(batches):
            raise SystemExit(f"dakd.train took {cost['iterations']} steps, expected {len(batches)}")
        per[name] = cost["train_seconds"] / cost["iterations"]
    print(f"\n| variant | s per step (mean of {len(batches)}) | / bare |\n|---|---|---|")
    for k in ("bare", "step", "loop", "loop_kd"):
        print(f"| {k} | {per[k]:.3f} | {per[k] / per['bare']:.3f} |")
    print(f"step / bare: {per['step'] / per['bare']:.3f}x; loop / bare: {per['loop'] / per['bare']:.3f}x; "
          f"loop_kd / bare: {per['loop_kd'] / per['bare']:.3f}x (target <= 1.05"
          + (", at the default size: with --quick a step is ~0.1 s and fixed costs dominate)" if args.quick else ")"))


if __name__ == "__main__":
    main()
