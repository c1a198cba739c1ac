"""Evaluation throughput (issue 4, target 6): batched generation with the KV cache and
length-sorted batches (`dakd.evaluate.generate`, as evaluation runs it) against one prompt at a time.

    .venv/bin/python benchmarks/generation.py            # CPU-preset teacher, 16 DollyEval prompts, 64 tokens, ~3 min
    .venv/bin/python benchmarks/generation.py --quick    # tiny random teacher, 8 prompts, 16 tokens, < 1 min

The same prompts (the first DollyEval test records, ChatML as the CPU preset formats them) are
generated greedily (so every variant computes the same continuation, up to float round-off from
left padding) with ``max_new_tokens`` new tokens at batch sizes 1, 8 and 16, each after an untimed
warm-up. ``generate`` stops a sequence at EOS; a batch runs until its longest sequence stops, and
only tokens before each EOS count as generated (``stats["generated_tokens"]``). Throughput =
generated tokens / wall seconds of the whole `generate` call (tokenization and decoding included).
``generate`` sorts prompts by their length in characters (a proxy for tokens) before cutting
batches, so batch 8 shows the sorted split; batch 16 over 16 prompts is one batch.

Last line: generated tokens per second of batch 16 against batch 1.
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the table

import torch  # noqa: E402

from dakd import data as D  # noqa: E402
from dakd import tasks as T  # noqa: E402
from dakd.evaluate import generate  # noqa: E402
from dakd.models import DEFAULT_TEACHER, TINY_TEACHER, load_model, load_tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random teacher, 8 prompts, 16 tokens")
    ap.add_argument("--model", help=f"model alias or folder (default {DEFAULT_TEACHER})")
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.model or (TINY_TEACHER if args.quick else DEFAULT_TEACHER)
    n = args.prompts or (8 if args.quick else 16)
    new = args.max_new_tokens or (16 if args.quick else 64)
    tok, model = load_tokenizer(name), load_model(name).eval()
    records = T.load_eval_records("dolly", n)
    prompts, _, report, _ = D.prompts_for_generation(records, tok, "chatml", 256)
    lens = [len(tok(p).input_ids) for p in prompts]
    print(f"{name}: {len(prompts)} DollyEval prompts ({report}), {min(lens)}-{max(lens)} tokens, "
          f"{new} new tokens, greedy, {torch.get_num_threads()} threads", flush=True)

    generate(model, tok, prompts[:1], None, 4, 1)  # warm-up, not timed
    res, texts = {}, {}
    for bs in args.batch_sizes:
        stats = {"generated_tokens": 0}
        t0 = time.perf_counter()
        texts[bs] = generate(model, tok, prompts, None, new, bs, stats=stats)
        sec = time.perf_counter() - t0
        res[bs] = (stats["generated_tokens"], sec)
        print(f"batch {bs}: {stats['generated_tokens']} tokens in {sec:.1f} s", flush=True)

    ref = args.batch_sizes[0]
    print(f"\n| batch | generated tokens | seconds | tokens/s | x batch {ref} | same text as batch {ref} |")
    print("|---|---|---|---|---|---|")
    for bs, (k, sec) in res.items():
        same = sum(a == b for a, b in zip(texts[bs], texts[ref]))
        print(f"| {bs} | {k} | {sec:.1f} | {k / sec:.1f} | {(k / sec) / (res[ref][0] / res[ref][1]):.2f} | "
              f"{same}/{len(prompts)} |")
    hi = max(args.batch_sizes)
    tps = {bs: k / sec for bs, (k, sec) in res.items()}
    print(f"generated tokens/s, batch {hi} / batch {ref}: {tps[hi]:.1f} / {tps[ref]:.1f} = {tps[hi] / tps[ref]:.2f}x")


if __name__ == "__main__":
    main()
