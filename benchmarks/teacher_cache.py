"""Top-k teacher cache (issue 4, target 3): cache build time, an epoch's teacher forward against
cache read + reconstruct, and the error the cache puts into BDL and into CE_teacher / DDS, at
k = 16, 64, 256, on the CPU preset's training data.

    .venv/bin/python benchmarks/teacher_cache.py            # CPU preset: 125 Dolly examples, ~10 min
    .venv/bin/python benchmarks/teacher_cache.py --quick    # tiny random pair, 24 examples, < 1 min

Method. The epoch is DA-KD's epoch 0 on the CPU preset (every example once, length-grouped batches
of batch_size, the seeded order of `dakd.train`). Per batch, in one pass:
  exact  the teacher's forward (timed), as `dakd.train.token_losses` runs it every step;
  cache  per k: `TopKTeacherCache.teacher_logprobs` (timed: reads the memory-mapped rows and builds
         the dense [B, T, V] stand-in for the teacher logits) and, separately timed, the
         `response_rows(...).dense()` [M, V] form that `cached_per_token_loss` uses; the file is
         opened once per epoch, inside the timed part.
Untimed in the same pass: the student's forward (its initial weights, no training), BDL (lam 0.9)
against the exact logits and against each reconstruction, and the response CEs. Errors are
relative to the exact teacher: BDL as |mean_k - mean_exact| / mean_exact over all response tokens
(and the per-token mean |BDL_k - BDL_exact| / mean_exact); CE_teacher (`topk_response_ce` against
`response_ce`) and DDS = CE_student / max(CE_teacher, eps) per example, mean and max of |x_k - x| / x;
the Spearman correlation of the DDS ranking. The same for ``topk_response_ce(exact=True)``, which
reads the exact ground-truth log-probs the build stores beside the top k. Each cache is built with `build_topk_cache` into a
temporary folder (float32 log-probs) and deleted afterwards.

Last line: speed-up (exact teacher forward / cache read + reconstruct) and errors at each k.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the table

import torch  # noqa: E402

from dakd import data as D  # noqa: E402
from dakd.difficulty import difficulty_scores, response_ce  # noqa: E402
from dakd.losses import bdl_per_token  # noqa: E402
from dakd.models import check_pair, load_model, load_tokenizer  # noqa: E402
from dakd.presets import get_preset  # noqa: E402
from dakd.teacher_cache import TopKTeacherCache, build_topk_cache, topk_response_ce  # noqa: E402
from dakd.train import length_grouped  # noqa: E402


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (x.argsort().argsort().double() for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).abs() / b.double().abs().clamp_min(1e-12)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random pair, 24 examples")
    ap.add_argument("--samples", type=int, help="training samples to load (default: the preset's)")
    ap.add_argument("--k", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_preset("tiny" if args.quick else "cpu")["dakd"]
    if args.samples:
        cfg = cfg.replace(train_samples=args.samples)
    tok = load_tokenizer(cfg.student)
    records = D.load_split(cfg.dataset, "train", limit=cfg.train_samples, seed=cfg.seed)
    examples, report = D.tokenize_records(records, tok, cfg.prompt_style, cfg.max_prompt_length, cfg.max_length)
    teacher, student = load_model(cfg.teacher).eval(), load_model(cfg.student).eval()
    V = check_pair(tok, tok, teacher, student)
    n, pad = len(examples), tok.pad_token_id
    print(f"{cfg.teacher} -> {cfg.student}, {report}, V {V}, batch {cfg.batch_size}, "
          f"{torch.get_num_threads()} threads", flush=True)

    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(n, generator=gen).tolist()
    batches = length_grouped(order, [len(e["input_ids"]) for e in examples], cfg.batch_size, gen)
    collate = D.DistillCollator(pad)

    with tempfile.TemporaryDirectory() as tmp:
        build, size, paths = {}, {}, {}
        for k in args.k:
            paths[k] = Path(tmp) / f"k{k}.pt"
            t0 = time.perf_counter()
            build_topk_cache(teacher, examples, pad, k, paths[k], cfg.micro_batch_size,
                             teacher_name=cfg.teacher, max_length=cfg.max_length, vocab=V)
            build[k] = time.perf_counter() - t0
            size[k] = paths[k].stat().st_size
            print(f"k {k}: built in {build[k]:.1f} s, {size[k] / 2**20:.1f} MiB", flush=True)

        t_exact, t_dense, t_rows = 0.0, dict.fromkeys(args.k, 0.0), dict.fromkeys(args.k, 0.0)
        caches = {}
        for k in args.k:
            t0 = time.perf_counter()
            caches[k] = TopKTeacherCache(paths[k], teacher_name=cfg.teacher, examples=examples, k=k,
                                         max_length=cfg.max_length, vocab=V)
            t_dense[k] += time.perf_counter() - t0
            t_rows[k] += time.perf_counter() - t0
        bdl_exact, bdl_k = 0.0, dict.fromkeys(args.k, 0.0)
        bdl_abs = dict.fromkeys(args.k, 0.0)
        n_tok = 0
        t_ce, s_ce = torch.zeros(n), torch.zeros(n)
        with torch.no_grad():
            # warm-up forward (first-call costs), not timed
            b = collate([examples[i] for i in batches[0]])
            teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            for j, batch in enumerate(batches):
                b = collate([examples[i] for i in batch])
                ids, attn, resp = b["input_ids"], b["attention_mask"], b["response_mask"]
                t0 = time.perf_counter()
                t_logits = teacher(input_ids=ids, attention_mask=attn).logits
                t_exact += time.perf_counter() - t0
                s_logits = student(input_ids=ids, attention_mask=attn).logits
                mask = resp[:, 1:]
                exact = bdl_per_token(s_logits[:, :-1, :V], t_logits[:, :-1, :V], mask, lam=cfg.lam)
                bdl_exact += float(exact.sum())
                n_tok += int(mask.sum())
                t_ce[batch] = response_ce(t_logits, ids, resp)
                s_ce[batch] = response_ce(s_logits, ids, resp)
                del t_logits
                for k in args.k:
                    t0 = time.perf_counter()
                    dense = caches[k].teacher_logprobs(b["sample_id"], resp)
                    t_dense[k] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    caches[k].response_rows(b["sample_id"], resp).dense()
                    t_rows[k] += time.perf_counter() - t0
                    approx = bdl_per_token(s_logits[:, :-1, :V], dense[:, :-1], mask, lam=cfg.lam)
                    bdl_k[k] += float(approx.sum())
                    bdl_abs[k] += float((approx - exact).abs().sum())
                    del dense
                print(f"batch {j + 1}/{len(batches)}: {tuple(ids.shape)}", flush=True)

        dds = difficulty_scores(s_ce, t_ce, cfg.dds_eps)
        bdl_mean = bdl_exact / n_tok
        print(f"\nexact: teacher forward {t_exact:.1f} s per epoch ({len(batches)} batches, {n_tok} response "
              f"tokens), BDL {bdl_mean:.5f} nats/token, mean CE_teacher {t_ce.mean():.4f} nats/token")
        print("\n| k | build s | file MiB | read+rebuild s/epoch [B,T,V] | [M,V] rows | speed-up | "
              "BDL rel err | BDL per-token err | CE_teacher rel err mean / max | DDS rel err mean / max "
              "| DDS Spearman |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        last, stored = [], {}
        for k in args.k:
            ce_k = topk_response_ce(caches[k], examples)
            dds_k = difficulty_scores(s_ce, ce_k, cfg.dds_eps)
            ce_err, dds_err = rel(ce_k, t_ce), rel(dds_k, dds)
            b_rel = abs(bdl_k[k] / n_tok - bdl_mean) / bdl_mean
            b_tok = bdl_abs[k] / n_tok / bdl_mean
            up = t_exact / t_dense[k]
            print(f"| {k} | {build[k]:.1f} | {size[k] / 2**20:.1f} | {t_dense[k]:.2f} | {t_rows[k]:.2f} | "
                  f"{up:.1f}x | {b_rel:.2e} | {b_tok:.2e} | {ce_err.mean():.2e} / {ce_err.max():.2e} | "
                  f"{dds_err.mean():.2e} / {dds_err.max():.2e} | {spearman(dds_k, dds):.4f} |")
            last.append(f"k={k}: speed-up {up:.1f}x, BDL rel err {b_rel:.1e}, DDS rel err mean "
                        f"{dds_err.mean():.1e}")
            ce_x = topk_response_ce(caches[k], examples, exact=True)
            stored[k] = (rel(ce_x, t_ce).max(), rel(difficulty_scores(s_ce, ce_x, cfg.dds_eps), dds).max())
        for k, (ce_e, dds_e) in stored.items():
            print(f"k {k}, CE_teacher from the stored ground-truth log-probs (exact=True): max rel err "
                  f"CE_teacher {ce_e:.1e}, DDS {dds_e:.1e}")
        del caches
    print("; ".join(last))


if __name__ == "__main__":
    main()
