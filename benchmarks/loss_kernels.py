"""Loss kernels (issue 4, target 1): forward + backward of the shipped BDL against a plain BDL and
against TRL's generalized JSD, in one run, on the same inputs.

    .venv/bin/python benchmarks/loss_kernels.py                      # [8, 256, 49152], a few minutes
    .venv/bin/python benchmarks/loss_kernels.py --shape 2 64 4096    # quick check

Variants (student logits require grad, teacher logits do not, every token is a response token):
  dakd   dakd.losses.bdl(lam=0.9), chunked over tokens as shipped (CHUNK_SIZE tokens per chunk,
         each chunk recomputed in backward).
  plain  the same BDL written the obvious way: two log-softmaxes and both mixtures materialised
         over the whole [B, T, V] tensor in float32 (plain_bdl below).
  trl    TRL's GKDTrainer.generalized_jsd_loss (beta 0.5, labels all != -100, as GKDTrainer calls
         it); skipped with a note if trl does not import (install: pip install -e .[bench]).

Method. Each variant runs in its own fresh process (this script re-run with --variant X), so one
variant's allocations cannot hide or inflate another's. The child builds the inputs from a fixed
seed (identical bytes in every child), runs the loss once on a tiny input (lazy imports), reads its resident set size (VmRSS in /proc/self/status),
then runs forward + backward --repeats times, keeping the best wall time. Peak extra memory is
ru_maxrss (the process's high-water resident set) minus that post-input RSS: the memory the loss
needs on top of its inputs, allocator caching included. The dakd and plain children save the loss
and the student gradient; the parent checks they agree to 1e-5 relative (|a - b| / |b| for the
loss, ||g_a - g_b|| / ||g_b|| for the gradient). Run it on an otherwise idle machine.

Last line: the ratios, throughput (= time of the other / time of dakd) and memory (= peak extra of
dakd / peak extra of the other). Issue 4 asks for throughput >= 1.0x and memory <= 0.5x of both.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

VARIANTS = ("dakd", "plain", "trl")
LAM = 0.9


def plain_bdl(student_logits, teacher_logits, mask, lam=LAM):
    """KL(P_m || Q_m), P_m = (1 - lam) p + lam q, Q_m = lam p + (1 - lam) q, all of [B, T, V] at once."""
    lp = F.log_softmax(teacher_logits.float(), -1)
    lq = F.log_softmax(student_logits.float(), -1)
    lpm = torch.logaddexp(lp + math.log1p(-lam), lq + math.log(lam))
    lqm = torch.logaddexp(lp + math.log(lam), lq + math.log1p(-lam))
    tok = (lpm.exp() * (lpm - lqm)).sum(-1)
    mask = mask.float()
    return (tok * mask).sum() / mask.sum().clamp_min(1)


def _loss_fn(variant):
    if variant == "dakd":
        from dakd.losses import bdl
        return lambda s, t, m: bdl(s, t, m, lam=LAM)
    if variant == "plain":
        return plain_bdl
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
    def trl_loss(s, t, m):
        # labels: -100 off the response, as GKDTrainer passes them ([B, T], negligible cost)
        return GKDTrainer.generalized_jsd_loss(s, t, labels=torch.where(m, 0, -100), beta=0.5)
    return trl_loss


def _rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(variant, shape, repeats, save_dir):
    try:
        fn = _loss_fn(variant)
    except ImportError as e:
        print(json.dumps({"variant": variant, "skipped": f"{type(e).__name__}: {e}"}))
        return
    B, T, V = shape
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(B, T, V, generator=g) * 3.0
    student = (torch.randn(B, T, V, generator=g) * 3.0).requires_grad_()
    mask = torch.ones(B, T, dtype=torch.bool)
    # warm-up on a tiny input: loads the code the loss imports lazily (checkpoint pulls in ~100 MB
    # of torch modules on first use), which is a one-time cost, not the kernel's memory
    w = torch.randn(1, 2, 8, generator=g)
    fn(w.clone().requires_grad_(), w, torch.ones(1, 2, dtype=torch.bool)).backward()
    base = _rss_bytes()
    best, loss = math.inf, None
    for _ in range(repeats):
        student.grad = None
        t0 = time.perf_counter()
        loss = fn(student, teacher, mask)
        loss.backward()
        best = min(best, time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    if save_dir and variant in ("dakd", "plain"):
        torch.save({"loss": loss.detach(), "grad": student.grad},
                   os.path.join(save_dir, f"{variant}.pt"))
    print(json.dumps({"variant": variant, "seconds": best, "extra_bytes": peak - base,
                      "input_bytes": 2 * student.numel() * student.element_size(),
                      "loss": loss.item()}))


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[8, 256, 49152], metavar=("B", "T", "V"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--save-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        child(args.variant, args.shape, args.repeats, args.save_dir)
        return

    print(f"shape {args.shape}, best of {args.repeats}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in VARIANTS:
            cmd = [sys.executable, os.path.abspath(__file__), "--variant", v, "--shape",
                   *map(str, args.shape), "--repeats", str(args.repeats), "--save-dir", tmp]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"variant {v} failed:\n{out.stderr}")
            res[v] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {v}: {res[v]}", flush=True)
        a = torch.load(os.path.join(tmp, "dakd.pt"))
        b = torch.load(os.path.join(tmp, "plain.pt"))
        loss_rel = _rel(a["loss"], b["loss"])
        grad_rel = _rel(a["grad"], b["grad"])
    ok = loss_rel <= 1e-5 and grad_rel <= 1e-5
    print(f"dakd vs plain: loss rel diff {loss_rel:.2e}, grad rel diff {grad_rel:.2e} "
          f"({'match' if ok else 'MISMATCH'} at 1e-5)")

    gb = 2 ** 30
    print(f"\n| variant | fwd+bwd s | peak extra GB | loss |\n|---|---|---|---|")
    for v in VARIANTS:
        r = res[v]
        if "skipped" in r:
            print(f"| {v} | skipped: {r['skipped']} | | |")
        else:
            print(f"| {v} | {r['seconds']:.3f} | {r['extra_bytes'] / gb:.3f} | {r['loss']:.6f} |")
    print(f"(inputs: {res['dakd']['input_bytes'] / gb:.2f} GB, not counted)")
    parts = []
    for other in ("plain", "trl"):
        if "skipped" in res[other]:
            parts.append(f"dakd/{'TRL' if other == 'trl' else other} skipped")
            continue
        thr = res[other]["seconds"] / res["dakd"]["seconds"]
        mem = res["dakd"]["extra_bytes"] / max(res[other]["extra_bytes"], 1)
        parts.append(f"dakd/{'TRL' if other == 'trl' else other} throughput {thr:.2f}x, "
                     f"memory {mem:.2f}x")
    if not ok:
        parts.append("MISMATCH dakd vs plain")
    print("; ".join(parts))


if __name__ == "__main__":
    main()
