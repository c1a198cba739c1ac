"""Decoding fully specified by dakd, for every generation path (evaluation, SeqKD's teacher samples,
GKD's and DistiLLM's on-policy student samples), and the record of it that every result carries.

A checkpoint's ``generation_config.json`` may set ``repetition_penalty`` (Qwen2.5-Instruct ships
1.05), ``min_new_tokens``, ``num_beams``, ``typical_p``, ``min_p``, ``no_repeat_ngram_size`` ... and
transformers' ``generate`` fills every setting its caller leaves unset (None) from it, even when a
``GenerationConfig`` is passed (transformers 5: ``_prepare_generation_config`` updates the passed
config with ``model.generation_config`` where it is None). So the protocol's config is built from
`GenerationConfig` with every decoding setting given (`protocol_generation_config`), and
`generate_ids` runs ``generate`` with the model's own config replaced by it for the call: nothing of
the checkpoint's reaches decoding (issue 13).
"""

from __future__ import annotations

import copy

import torch
from transformers import GenerationConfig

# The settings the protocol fixes on top of the sampling ones: the neutral value of everything a
# checkpoint could otherwise set (transformers' own defaults where they are neutral).
# (no min_new_tokens: with min_length 0 it is off, and setting both makes transformers warn at every
# call; a checkpoint's own min_new_tokens never reaches generate, whose config is this one alone)
NEUTRAL_SETTINGS = dict(num_beams=1, num_beam_groups=1, num_return_sequences=1, min_length=0,
                        repetition_penalty=1.0, encoder_repetition_penalty=1.0,
                        length_penalty=1.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
                        diversity_penalty=0.0, encoder_no_repeat_ngram_size=0, early_stopping=False,
                        renormalize_logits=False, remove_invalid_values=False, use_cache=True,
                        output_scores=False, output_logits=False, return_dict_in_generate=False)

STOP_RULE = "first EOS (eos_token_id) or max_new_tokens"


def protocol_generation_config(*, do_sample: bool, max_new_tokens: int, pad_token_id: int, eos_token_id: int,
                               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                               no_repeat_ngram_size: int = 0) -> GenerationConfig:
    """A `transformers.GenerationConfig` holding the whole decoding of one generation pass.

    Sampling (``do_sample``): ancestral sampling at ``temperature`` with ``top_k`` (0: off) and
    ``top_p`` (1.0: off), the MiniLLM/DistiLLM protocol (METHOD.md section 5: T 1.0, top-k 0,
    top-p 1.0, no-repeat-ngram 6 at test time). Greedy: temperature/top-k/top-p unset (unused).
    Everything else is `NEUTRAL_SETTINGS` (one beam, no penalties, no minimum length, no
    typical/epsilon/eta/min-p truncation). Stops at ``eos_token_id`` or after ``max_new_tokens``.

    Raises:
        ValueError: max_new_tokens < 1, temperature <= 0 when sampling, or a setting
            `GenerationConfig.validate` refuses.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    sampling = (dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p)) if do_sample
                else {})
    cfg = GenerationConfig(do_sample=bool(do_sample), max_new_tokens=int(max_new_tokens),
                           no_repeat_ngram_size=int(no_repeat_ngram_size), pad_token_id=pad_token_id,
                           eos_token_id=eos_token_id, **sampling, **NEUTRAL_SETTINGS)
    cfg.validate(strict=True)
    return cfg


def left_pad(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists into a batch for a decoder-only ``generate``.

    Returns:
        (``input_ids`` [B, W] int64 padded with ``pad_token_id``, ``attention_mask`` [B, W] int64,
        1 on prompt tokens), W = the longest prompt.

    Raises:
        ValueError: no prompt, or an empty prompt.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("cannot left-pad an empty batch or an empty prompt")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attn[r, width - len(p):] = 1
    return ids, attn


@torch.no_grad()
def generate_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 generation_config: GenerationConfig, synced_gpus: bool = False) -> torch.Tensor:
    """``model.generate`` with ``generation_config`` and nothing of the checkpoint's own
    ``model.generation_config``: that attribute is replaced by a copy of ``generation_config``
    for the call and restored after it (also on error).

    Args:
        input_ids, attention_mask: ``[B, W]`` int64, left-padded (`left_pad`), on the model's device.
        synced_gpus: keep running forward passes until every process has finished (transformers'
            ``synced_gpus``): needed when the weights are sharded (FSDP2, ZeRO-3), whose every
            forward gathers them from all processes.

    Returns:
        ``[B, W + n]`` int64: the prompts followed by n <= max_new_tokens generated tokens
        (padded with the pad id after a row's EOS).
    """
    saved = model.generation_config
    model.generation_config = copy.deepcopy(generation_config)
    try:
        return model.generate(input_ids=input_ids, attention_mask=attention_mask,
                              generation_config=copy.deepcopy(generation_config), synced_gpus=synced_gpus)
    finally:
        model.generation_config = saved


def decoding_record(seeds, max_new_tokens: int, no_repeat_ngram_size: int, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0) -> dict:
    """The full decoding of an evaluation, as stored in its result (``decoding_config``) and
    compared by `check_same_decoding`: ``mode`` ("greedy", "sampled", or "mixed" when greedy and
    sampled passes are averaged), ``temperature``, ``top_k``, ``top_p`` (None when greedy), ``no_repeat_ngram_size``,
    ``max_new_tokens``, ``seeds`` (list; None = a greedy pass), ``num_beams`` 1,
    ``repetition_penalty`` 1.0 and ``stop`` (`STOP_RULE`)."""
    seeds = [None if s is None else int(s) for s in seeds]
    mode = ("greedy" if all(s is None for s in seeds) else
            "sampled" if all(s is not None for s in seeds) else "mixed")
    sampled = mode != "greedy"
    return {"mode": mode, "temperature": float(temperature) if sampled else None,
            "top_k": int(top_k) if sampled else None, "top_p": float(top_p) if sampled else None,
            "no_repeat_ngram_size": int(no_repeat_ngram_size), "max_new_tokens": int(max_new_tokens),
            "seeds": seeds, "num_beams": 1, "repetition_penalty": 1.0, "stop": STOP_RULE}


# what every evaluation used before results recorded their decoding (dakd.evaluate's fixed protocol)
_LEGACY_NO_REPEAT_NGRAM = 6


def decoding_of(evaluation: dict) -> dict:
    """The decoding of one evaluation result (an `dakd.evaluate.evaluate_model` dict): its
    ``decoding_config``, or for a result written before that key existed, the record rebuilt from
    what it holds (``per_seed`` keys, ``max_new_tokens``) and the protocol then fixed in code
    (T 1.0, top-k 0, top-p 1.0, no-repeat-ngram 6, stop at EOS)."""
    if "decoding_config" in evaluation:
        return evaluation["decoding_config"]
    seeds = [None if k == "greedy" else int(k) for k in evaluation.get("per_seed", {})]
    return decoding_record(seeds, evaluation.get("max_new_tokens", 0), _LEGACY_NO_REPEAT_NGRAM)


def check_same_decoding(runs: dict[str, dict], table: str = "table") -> None:
    """Refuse to put differently decoded runs in one column: for every evaluation set any run of
    ``runs`` ({run name: results.json dict with ``eval``}) was scored on, every run scored on it
    must have the same `decoding_of`.

    Raises:
        ValueError: naming the table, the set, two runs that differ and the settings they differ in.
    """
    first: dict[str, tuple[str, dict]] = {}
    for name, r in runs.items():
        for ds, ev in ((r or {}).get("eval") or {}).items():
            d = decoding_of(ev)
            if ds not in first:
                first[ds] = (name, d)
                continue
            other, d0 = first[ds]
            if d != d0:
                diff = {k: (d0.get(k), d.get(k)) for k in sorted(set(d0) | set(d)) if d0.get(k) != d.get(k)}
                raise ValueError(f"{table}: runs {other!r} and {name!r} were decoded differently on {ds!r} "
                                 f"({', '.join(f'{k}: {a!r} vs {b!r}' for k, (a, b) in diff.items())}); "
                                 "a column compares runs of one decoding only: evaluate them alike")
