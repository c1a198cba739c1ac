"""Less padding (issue 4, target 4): length-grouped batches (`dakd.train.length_grouped`, the
default ``group_by_length``) against plain random batches cut from the same shuffled order, so both
see the same samples in an epoch.

    .venv/bin/python benchmarks/padding.py             # CPU preset: 125 examples, every batch timed, ~12 min
    .venv/bin/python benchmarks/padding.py --steps 4   # 4 evenly spaced batches of each kind
    .venv/bin/python benchmarks/padding.py --quick     # tiny random pair, 24 examples, 4 steps, < 1 min

Padding fraction: exact, over every batch of one epoch: padded positions / (batch rows x longest
length), summed over batches (the tokens the models run on that are not the sample's).

Step time: a KD step as `dakd.train` runs it, on batches of each kind: `token_losses` (teacher
forward, student forward, BDL lam 0.9, `dakd.train.token_losses` itself), backward, gradient
clipping and an AdamW step. By default every batch of the epoch is timed, so the ratio is that of
whole epochs (grouped batches differ a lot in length: a few of them say little). ``--steps N`` times
N batches of each kind, evenly spaced through the epoch's batch list; the printed ``padded tokens``
of the timed batches against the epoch's mean then says how representative they are. The two kinds
alternate, so a load change on a shared machine hits both. One untimed warm-up step first.

Last line: padding fraction of each and the step-time ratio random / grouped.
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the table

import torch  # noqa: E402

from dakd import data as D  # noqa: E402
from dakd.models import check_pair, load_model, load_tokenizer  # noqa: E402
from dakd.presets import get_preset  # noqa: E402
from dakd.train import length_grouped, token_losses  # noqa: E402


def padding(batches, lengths):
    """(padded positions, positions) over all batches: rows x longest - sum of lengths."""
    pad = total = 0
    for b in batches:
        longest = max(lengths[i] for i in b)
        total += longest * len(b)
        pad += sum(longest - lengths[i] for i in b)
    return pad, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random pair, 24 examples")
    ap.add_argument("--samples", type=int, help="training samples to load (default: the preset's)")
    ap.add_argument("--steps", type=int, help="timed steps of each kind (default: all batches; 4 with --quick)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps is None:
        args.steps = 4 if args.quick else 0
    cfg = get_preset("tiny" if args.quick else "cpu")["kd_rkl"].replace(loss="bdl")
    if args.samples:
        cfg = cfg.replace(train_samples=args.samples)
    tok = load_tokenizer(cfg.student)
    records = D.load_split(cfg.dataset, "train", limit=cfg.train_samples, seed=cfg.seed)
    examples, report = D.tokenize_records(records, tok, cfg.prompt_style, cfg.max_prompt_length, cfg.max_length)
    lengths = [len(e["input_ids"]) for e in examples]
    n = len(examples)

    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(n, generator=gen).tolist()  # one shuffled order for both kinds
    kinds = {"random": [order[s:s + cfg.batch_size] for s in range(0, n, cfg.batch_size)],
             "grouped": length_grouped(order, lengths, cfg.batch_size, gen)}
    for name, batches in kinds.items():
        assert sorted(i for b in batches for i in b) == list(range(n)), name  # same samples, once each
    frac = {}
    print(f"{report}; batch {cfg.batch_size}, max_length {cfg.max_length}, {torch.get_num_threads()} threads")
    for name, batches in kinds.items():
        pad, total = padding(batches, lengths)
        frac[name] = pad / total
        print(f"{name}: {len(batches)} batches, {total} positions, {pad} padding = {100 * frac[name]:.1f}%")

    teacher = load_model(cfg.teacher).eval().requires_grad_(False)
    student = load_model(cfg.student)
    student.config.use_cache = False
    vocab = check_pair(tok, tok, teacher, student)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    collate = D.DistillCollator(tok.pad_token_id)

    def step(batch):
        b = collate([examples[i] for i in batch])
        t0 = time.perf_counter()
        per_tok, t_logits = token_losses(cfg, student, teacher, b, vocab)
        del t_logits
        loss = per_tok.sum() / max(int(b["response_mask"][:, 1:].sum()), 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, b["input_ids"].numel()

    student.train()
    step(kinds["grouped"][0])  # warm-up, not timed
    k = min(b for b in map(len, kinds.values()))
    m = k if args.steps <= 0 else min(args.steps, k)
    picks = [round(j * (k - 1) / max(m - 1, 1)) for j in range(m)]
    times = {name: [] for name in kinds}
    padded = {name: 0 for name in kinds}
    for j, p in enumerate(picks):
        names = list(kinds) if j % 2 == 0 else list(kinds)[::-1]
        for name in names:
            sec, size = step(kinds[name][p])
            times[name].append(sec)
            padded[name] += size
            print(f"step {j + 1}/{m} {name}: batch {p}, {size} padded tokens, {sec:.2f} s", flush=True)

    print("\n| batches | padding | epoch mean padded tokens per batch | timed: mean padded tokens | "
          "mean step s | s per 1k padded tokens |")
    print("|---|---|---|---|---|---|")
    mean_step = {}
    for name, batches in kinds.items():
        _, total = padding(batches, lengths)
        mean_step[name] = sum(times[name]) / len(times[name])
        print(f"| {name} | {100 * frac[name]:.1f}% | {total / len(batches):.0f} | {padded[name] / m:.0f} | "
              f"{mean_step[name]:.2f} | {1000 * sum(times[name]) / padded[name]:.3f} |")
    print(f"padding: random {100 * frac['random']:.1f}%, grouped {100 * frac['grouped']:.1f}%; "
          f"KD step time random / grouped ({'the whole epoch, ' if m == k else ''}{m} steps each): "
          f"{mean_step['random'] / mean_step['grouped']:.2f}x")


if __name__ == "__main__":
    main()
