"""Evaluation by the MiniLLM/DistiLLM protocol the paper follows (METHOD.md section 5), on the five
instruction-following sets of Table 1 and the task-specific SAMSum and GSM8K of Table 2 (loading,
prompts and metrics of each set: `dakd.tasks`).

Responses are sampled (temperature 1.0, top-p 1.0, top-k 0, no-repeat-ngram 6) with seeds
10, 20, 30, 40, 50, and scored with ROUGE-L F1 from ``rouge_score`` (stemming on, max over the
references, x100); the reported number is the mean over seeds. Prompts are generated in batches,
left-padded and grouped by length so that little compute goes to padding; the KV cache is on.
With an accelerator of several processes the prompts are split between them and the scores
gathered (data-parallel evaluation, `evaluate_model`).
"""

from __future__ import annotations

import statistics
import time

import torch
from rouge_score import rouge_scorer
from tqdm.auto import tqdm

from . import data
from . import tasks
from .decoding import decoding_record, generate_ids, left_pad, protocol_generation_config

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
NO_REPEAT_NGRAM_SIZE = 6  # MiniLLM/DistiLLM test-time protocol (METHOD.md section 5)


def rouge_l(prediction: str, references: list[str] | str) -> float:
    """ROUGE-L F1 x 100 of ``prediction`` against the best of ``references`` (rouge_score, stemmed).

    Returns a float in [0, 100]. Raises ValueError for an empty list of references.
    """
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
        prompts: prompt texts, encoded by `dakd.data.encode_prompts` (the ids training used).
        seed: sampling seed (temperature 1.0, top-p 1.0, top-k 0); ``None`` means greedy decoding.
        max_new_tokens: tokens per response; generation also stops at the EOS token.
        no_repeat_ngram_size: no n-gram of this size repeats in a response (6 by the protocol; 0: off).

    The decoding is `dakd.decoding.protocol_generation_config` and nothing else: settings in the
    checkpoint's ``generation_config.json`` (repetition penalty, minimum length, beams, ...) are
    not used. Prompts are sorted by length and left-padded per batch; the seed is set once before
    the first batch, so the same seed, prompts and batch size give the same text on the CPU. If
    ``stats`` is given, ``stats["generated_tokens"]`` is increased by the number of tokens
    generated before EOS.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    ids = data.encode_prompts(tokenizer, prompts)
    out: list[str | None] = [None] * len(prompts)
    sampled = seed is not None
    gcfg = protocol_generation_config(do_sample=sampled, temperature=1.0, top_k=0, top_p=1.0,
                                      max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size,
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if sampled:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for s in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            idx = order[s:s + batch_size]
            input_ids, attn = left_pad([ids[i] for i in idx], tokenizer.pad_token_id)
            gen = generate_ids(model, input_ids.to(device), attn.to(device), gcfg)
            new = gen[:, input_ids.shape[1]:]
            if stats is not None:
                # tokens up to, not including, the first EOS (padding after it is EOS too here)
                done = (new == tokenizer.eos_token_id).int().cumsum(1) > 0
                stats["generated_tokens"] = stats.get("generated_tokens", 0) + int((~done).sum())
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            for i, t in zip(idx, texts):
                out[i] = t.strip()
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def evaluate_model(model, tokenizer, dataset: str = "dolly", prompt_style: str = "alpaca",
                   seeds=(10, 20, 30, 40, 50), limit: int | None = None, max_new_tokens: int | None = None,
                   batch_size: int = 8, max_prompt_length: int = 256, keep_generations: int = 20,
                   accelerator=None) -> dict:
    """Score ``model`` on the test split of ``dataset`` (any of `tasks.EVAL_SETS`), per seed and averaged.

    The five instruction sets (dolly, self_instruct, vicuna, sinst, uinst) and SAMSum are scored
    by ROUGE-L (MiniLLM/DistiLLM protocol, METHOD.md 5); GSM8K by zero-shot accuracy of the last
    number, decoded greedily once (`dakd.tasks` documents prompts, extraction and lengths).

    Data-parallel: with an ``accelerator`` of several processes, process r generates and scores
    prompts r, r + W, r + 2W, ... (W processes); the shares are gathered with
    ``accelerate.utils.gather_object`` and put back in prompt order, so every prompt is scored
    exactly once and every process returns the same dict. Each process seeds its own sampler with
    the same seed, so sampled text depends on W and on ``batch_size`` (greedy text does not, up to
    float round-off from padding).

    Args:
        seeds: one sampled generation pass per seed (T 1.0, top-p 1.0, top-k 0); a ``None`` seed
            means greedy decoding. Ignored for sets decoded greedily (GSM8K): one greedy pass.
        limit: evaluate the first ``limit`` test records (None: all).
        max_new_tokens: tokens per response; None: the set's own (`tasks.EvalSpec`), else 256.
        keep_generations: how many (prompt, reference, response) triples of the first seed to keep.
        accelerator: an ``accelerate.Accelerator`` to split the prompts over its processes; the
            model must already be on ``accelerator.device``. None: this process does everything.

    Returns:
        dict with ``metric`` ("rougeL" or "accuracy"), ``score`` (mean over seeds of the mean
        per-prompt score, 0-100) and ``score_std`` (over seeds), the same two under the metric's
        own name (``rougeL``/``rougeL_std`` or ``accuracy``/``accuracy_std``), ``per_seed``
        ({str(seed) or "greedy": mean score}), ``prompt_ids`` (positions in the loaded test
        records of the scored prompts, ascending), ``per_prompt`` ({seed key: [score per prompt, in
        prompt_ids order]}), ``num_prompts``, ``num_processes``, ``decoding``,
        ``decoding_config`` (the full decoding, `dakd.decoding.decoding_record`: mode,
        temperature, top-k, top-p, no-repeat n-gram size, max new tokens, seeds, stop rule),
        ``max_new_tokens``, ``filter`` (prompts dropped for length), ``subset_note`` (where the
        local file is only part of the paper's set, else None), ``reference_filter``,
        ``seconds``, ``generated_tokens`` (all processes), ``examples``.

    Raises:
        ValueError: unknown dataset; and as `tasks.load_eval_records`.
        RuntimeError: the processes gathered another number of scores than prompts (a broken
            data-parallel split; never silently averaged).
    """
    spec = tasks.eval_spec(dataset)
    records = tasks.load_eval_records(dataset, limit)
    prompts, _, report, kept = data.prompts_for_generation(records, tokenizer, prompt_style, max_prompt_length)
    refs = [tasks.references(dataset, records[i]) for i in kept]
    score = _scorer(spec.metric)
    if spec.greedy:
        seeds = (None,)
    max_new_tokens = max_new_tokens or spec.max_new_tokens or 256
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = list(range(rank, len(prompts), world))
    t0 = time.perf_counter()
    per_seed, per_prompt, examples, tokens = {}, {}, [], 0
    for seed in seeds:
        key = "greedy" if seed is None else str(seed)
        stats = {"generated_tokens": 0}
        outs = generate(model, tokenizer, [prompts[i] for i in mine], seed, max_new_tokens, batch_size,
                        NO_REPEAT_NGRAM_SIZE, desc=f"{dataset} {key}", stats=stats)
        rows = [(i, o, score(o, refs[i])) for i, o in zip(mine, outs)]
        if world > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)
            stats = {"generated_tokens": sum(s["generated_tokens"] for s in gather_object([stats]))}
        rows.sort(key=lambda r: r[0])
        if [r[0] for r in rows] != list(range(len(prompts))):  # the exactly-once guarantee
            raise RuntimeError(f"{dataset}: gathered {len(rows)} scores for {len(prompts)} prompts")
        tokens += stats["generated_tokens"]
        per_prompt[key] = [round(r[2], 4) for r in rows]
        per_seed[key] = statistics.fmean(r[2] for r in rows) if rows else float("nan")
        if not examples:
            examples = [{"prompt": prompts[i], "references": refs[i], "response": o}
                        for i, o, _ in rows[:keep_generations]]
    vals = list(per_seed.values())
    mean, std = statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"dataset": dataset, "metric": spec.metric, "score": mean, "score_std": std,
            spec.metric: mean, f"{spec.metric}_std": std, "per_seed": per_seed,
            "prompt_ids": kept, "per_prompt": per_prompt, "num_prompts": len(prompts),
            "num_processes": world, "decoding": "greedy" if all(s is None for s in seeds) else "sampled",
            "decoding_config": decoding_record(seeds, max_new_tokens, NO_REPEAT_NGRAM_SIZE),
            "max_new_tokens": max_new_tokens, "filter": report.to_dict(), "subset_note": spec.subset_note,
            "reference_filter": spec.reference_filter, "seconds": time.perf_counter() - t0,
            "generated_tokens": tokens, "examples": examples}


def _scorer(metric: str):
    if metric == "accuracy":
        return lambda out, gold: 100.0 * tasks.gsm8k_correct(out, gold)
    return rouge_l
