"""Evaluation by the MiniLLM/DistiLLM protocol the paper follows (METHOD.md section 5).

Responses are sampled (temperature 1.0, top-p 1.0, top-k 0, no-repeat-ngram 6) with seeds
10, 20, 30, 40, 50, and scored with ROUGE-L F1 from ``rouge_score`` (stemming on, max over the
references, x100); the reported number is the mean over seeds. Prompts are generated in batches,
left-padded and grouped by length so that little compute goes to padding; the KV cache is on.
"""

from __future__ import annotations

import statistics
import time

import torch
from rouge_score import rouge_scorer
from tqdm.auto import tqdm

from . import data as D

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: list[str] | str) -> float:
    """ROUGE-L F1 x 100 of ``prediction`` against the best of ``references`` (rouge_score, stemmed)."""
    refs = [references] if isinstance(references, str) else references
    if not refs:
        raise ValueError("at least one reference is needed")
    return 100.0 * max(_SCORER.score(r, prediction)["rougeL"].fmeasure for r in refs)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], seed: int | None, max_new_tokens: int = 256,
             batch_size: int = 8, no_repeat_ngram_size: int = 6, desc: str = "generate",
             stats: dict | None = None) -> list[str]:
    """Generate one response per prompt, returned in prompt order.

    Args:
        seed: sampling seed (temperature 1.0, top-p 1.0, top-k 0); ``None`` means greedy decoding.
        max_new_tokens: tokens per response; generation also stops at the EOS token.

    Prompts are sorted by length and left-padded per batch; the seed is set once before the first
    batch, so the same seed, prompts and batch size give the same text on the CPU. If ``stats`` is
    given, ``stats["generated_tokens"]`` is increased by the number of tokens generated before EOS.
    """
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str | None] = [None] * len(prompts)
    kw = dict(max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size,
              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if seed is None:
        kw |= dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kw |= dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for s in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            idx = order[s:s + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=True).to(device)
            gen = model.generate(**enc, **kw, use_cache=True)
            new = gen[:, enc["input_ids"].shape[1]:]
            if stats is not None:
                # tokens up to, not including, the first EOS (padding after it is EOS too here)
                done = (new == tokenizer.eos_token_id).int().cumsum(1) > 0
                stats["generated_tokens"] = stats.get("generated_tokens", 0) + int((~done).sum())
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            for i, t in zip(idx, texts):
                out[i] = t.strip()
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return out  # type: ignore[return-value]


def evaluate_model(model, tokenizer, dataset: str = "dolly", prompt_style: str = "alpaca",
                   seeds=(10, 20, 30, 40, 50), limit: int | None = None, max_new_tokens: int = 256,
                   batch_size: int = 8, max_prompt_length: int = 256, keep_generations: int = 20) -> dict:
    """ROUGE-L of ``model`` on the test split of ``dataset``, per seed and averaged.

    Args:
        limit: evaluate the first ``limit`` test records (None: all).
        keep_generations: how many (prompt, reference, response) triples of the first seed to keep.

    Returns:
        dict with ``rougeL`` (mean over seeds), ``rougeL_std`` (over seeds), ``per_seed``
        ({seed: mean ROUGE-L}), ``num_prompts``, ``filter`` (prompts dropped for length),
        ``seconds``, ``generated_tokens``, ``examples``.
    """
    records = D.load_split(dataset, "test", limit=limit, allow_list_output=True)
    prompts, refs, report = D.prompts_for_generation(records, tokenizer, prompt_style, max_prompt_length)
    t0 = time.perf_counter()
    per_seed, examples, stats = {}, [], {"generated_tokens": 0}
    for seed in seeds:
        outs = generate(model, tokenizer, prompts, seed, max_new_tokens, batch_size,
                        desc=f"{dataset} seed {seed}", stats=stats)
        per_seed[str(seed)] = statistics.fmean(rouge_l(o, r) for o, r in zip(outs, refs))
        if not examples:
            examples = [{"prompt": p, "references": r, "response": o}
                        for p, r, o in list(zip(prompts, refs, outs))[:keep_generations]]
    vals = list(per_seed.values())
    return {"dataset": dataset, "rougeL": statistics.fmean(vals),
            "rougeL_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "per_seed": per_seed, "num_prompts": len(prompts), "filter": report.to_dict(),
            "seconds": time.perf_counter() - t0, "generated_tokens": stats["generated_tokens"], "examples": examples}
