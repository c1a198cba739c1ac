"""GPU memory plan: the estimated memory per GPU of each stage of a preset under each launch strategy,
so that a user picks a strategy (``configs/accelerate/<strategy>.yaml``) before renting GPUs.

    python -m dakd.cli plan llama2-7b-sheared-2.7b --gpus 4 --gpu-memory 80

Stages: the teacher SFT (where the preset has one: the teacher is the trained model, no frozen
teacher), the student training with the live frozen teacher (KD, DA-KD; the largest of a preset's
student runs), and evaluation (generation with the largest evaluated model, the fine-tuned teacher
of the Teacher row). Every number is an estimate of the peak, in bytes (GB = 10^9 bytes in the
table); it is checked against ``(1 - headroom) x gpu_memory``, the headroom (default 10 %) standing
for the CUDA context (~0.5 GB), allocator fragmentation and the communication buffers not counted.
An "80 GB" card holds 80 GiB = 85.9 GB, so the check is a further 7 % conservative.

Mixed precision, as training runs once the fp32-master fix is in (issue 12): the trained weights and
AdamW's two moments are fp32, compute runs in the preset's ``dtype`` (bf16, c = 2 bytes). Per
trained parameter Psi, on N GPUs (`state_bytes`):

==================  ====================================  ===================================  ==========
strategy            weights                               gradients                            optimizer
==================  ====================================  ===================================  ==========
ddp                 4 (fp32) + c (autocast's bf16 copy    4 (fp32 .grad) + 4 (DDP's bucket     8
                    of each weight, held for backward)    copy; 0 with gradient_as_bucket_view)
deepspeed_zero2     c (bf16 module, replicated)           c/N (bf16 partition) + largest       12/N (fp32
                                                          single gradient (V x h) before its   master 4 +
                                                          reduce                               moments 8)
fsdp (FSDP2)        4/N (fp32 shard) + c x (root unit +   4/N (fp32 shard) + c x (root unit +  8/N
                    2 decoder layers) all-gathered        one layer) unsharded, bf16 reduce
deepspeed_zero3     c/N (bf16 partition) + c x (one       c/N (bf16 partition) + largest       12/N
                    layer + V x h) all-gathered           single gradient (V x h)
==================  ====================================  ===================================  ==========

The DeepSpeed rows follow the ZeRO paper's mixed-precision accounting (Rajbhandari et al. 2020,
Sec. 3: 2 + 2 + K bytes per parameter, K = 12 for the fp32 master and Adam's moments): DeepSpeed's
bf16 mode keeps the module in bf16 and the fp32 master inside the optimizer, and accumulates
gradients in the model dtype unless ``data_types.grad_accum_dtype`` says fp32 (it is cast to fp32 per
partition at the step, when activations are already freed: not the peak). FSDP2 runs accelerate's
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16)`` over fp32 sharded parameters, whose
sharded gradients are fp32; its root unit (embeddings, LM head, final norm: everything outside the
decoder layers) stays gathered from forward to backward. DDP under accelerate's autocast keeps fp32
weights, and ``torch.autocast`` keeps a bf16 copy of every matmul weight alive until its backward
(an upper bound: the input embedding is not cast). The frozen teacher is loaded in ``dtype``
(c bytes per parameter), whole on every GPU, outside any sharding.

Activations (`activation_bytes`), no activation checkpointing, per token and decoder layer: the
count of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
Sec. 4.1: 34 s b h + 5 a s^2 b bytes per layer in 16-bit) redone for a Llama/Qwen layer: no dropout
(its masks go), SDPA / flash attention (O(s) memory: the 5 a s^2 b term goes), a SwiGLU MLP of width
i, and HF's RMSNorm that upcasts to fp32:

    bytes = c x (7 h + 4 i) + 2 x (4 + r) h

7 h: the inputs of the q/k/v, o and gate/up matmuls, q, k and v (k, v repeated to every head, as
HF's SDPA path does with a padding mask) and the attention output; 4 i: gate, up, SiLU(gate) and the
down-projection input; per RMSNorm its fp32 input (4 h) and the normalised tensor in the residual
stream's dtype (r h): r = 4 under DDP's autocast (fp32 weights make an fp32 residual stream), r = c
otherwise. For Llama-2-7B at c = r = 2 this is 47.5 h, against Korthikanti's 34 h for a GPT layer.
Tokens: micro_batch_size x max_length (every sequence at full length).

Logits (`logits_bytes`), M = micro_batch_size x max_length rows (an upper bound on the response
rows): a wrapped student (every strategy wraps it) runs its full forward, so its [b, s, V] logits (or
their gradient in backward) exist once besides the gathered response rows, all in the compute dtype;
the teacher's response rows [M, V_t] in its dtype; the loss (`dakd.losses`) keeps the student rows'
gradient [M, V] in their dtype and holds about 8 float32 [CHUNK_SIZE, V] intermediates of one chunk
(counted in ``_mix_k``, BDL: both casts, both softmaxes, the mixtures, log z and the gradient). A
teacher SFT (cross-entropy) holds the full logits, the rows, their fp32 cast and the fp32
log-softmax saved by ``cross_entropy``. Evaluation: ~4 float32 [eval_batch_size, V] copies per
generated token (transformers keeps one row per sequence), plus the KV cache
(eval_batch_size x max_length x layers x 2 x kv_heads x head_dim x c), counted under activations
with the prefill's one-layer working set (eval_batch_size x max_prompt_length x c x (6 h + 3 i)).

Not counted: the top-k teacher cache (it replaces the live teacher), GKD's and DistiLLM's generation
during training, DDS scoring passes (no gradients: below a training step), the transient fp32
gradient partition at a DeepSpeed step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GB = 1e9  # bytes
HEADROOM = 0.10  # fraction of each GPU's memory left unplanned
LOSS_CHUNK_TENSORS = 8  # float32 [CHUNK_SIZE, V] tensors alive in one chunk of the loss (see module doc)
# least to most sharded: the order of the table and of the recommendation
STRATEGIES = ("ddp", "deepspeed_zero2", "fsdp", "deepspeed_zero3")
COMPONENTS = ("weights", "gradients", "optimizer", "teacher", "activations", "logits")
CONFIGS = {s: f"configs/accelerate/{s}.yaml" for s in STRATEGIES}
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

# The paper presets' hub models: the values of their published config.json files
# (https://huggingface.co/<name>/blob/main/config.json). Parameter counts follow from them
# (`ModelSize.from_config_values`) and are checked in tests/test_plan.py against the model cards
# (Llama-2-7B: 6,738,415,616; Qwen2.5-7B 7.61B, -1.5B 1.54B, -0.5B 0.49B; Llama-3.2-3B 3.21B, -1B 1.24B;
# Sheared-LLaMA 1.3B and 2.7B). Qwen2 has biases on q, k and v; the small Qwen2.5 and Llama-3.2
# models tie their LM head to the input embedding.
HUB_MODELS = {
    "meta-llama/Llama-2-7b-hf": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                     tie_word_embeddings=False, qkv_bias=False),
    "princeton-nlp/Sheared-LLaMA-1.3B": dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24,
                                             num_attention_heads=16, num_key_value_heads=16, vocab_size=32000,
                                             tie_word_embeddings=False, qkv_bias=False),
    "princeton-nlp/Sheared-LLaMA-2.7B": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=32,
                                             num_attention_heads=20, num_key_value_heads=20, vocab_size=32000,
                                             tie_word_embeddings=False, qkv_bias=False),
    "Qwen/Qwen2.5-7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                            num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                            tie_word_embeddings=False, qkv_bias=True),
    "Qwen/Qwen2.5-1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                              num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                              tie_word_embeddings=True, qkv_bias=True),
    "Qwen/Qwen2.5-0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                              num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                              tie_word_embeddings=True, qkv_bias=True),
    "meta-llama/Llama-3.2-3B": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                    num_attention_heads=24, num_key_value_heads=8, vocab_size=128256,
                                    tie_word_embeddings=True, qkv_bias=False),
    "meta-llama/Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                    num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                    tie_word_embeddings=True, qkv_bias=False),
}


@dataclass(frozen=True)
class ModelSize:
    """What the plan needs of a model: parameter counts and shapes.

    ``params``: all parameters (a tied head counted once); ``layer_params``: the largest decoder layer's;
    ``nonlayer_params``: the rest (embeddings, LM head if untied, final norm)."""

    name: str
    params: int
    layer_params: int
    nonlayer_params: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config_values(cls, name: str, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
                           num_attention_heads: int, num_key_value_heads: int, vocab_size: int,
                           tie_word_embeddings: bool, qkv_bias: bool = False, head_dim: int | None = None):
        """A Llama/Qwen2-style decoder from its config.json values, parameters counted in closed form:
        embeddings V h (twice if untied), per layer q and o (h x heads d), k and v (h x kv_heads d),
        the q/k/v biases if any, the SwiGLU MLP (3 h i) and two RMSNorms (2 h), and the final norm (h)."""
        d = head_dim or hidden_size // num_attention_heads
        q, kv = num_attention_heads * d, num_key_value_heads * d
        layer = 2 * hidden_size * q + 2 * hidden_size * kv + (q + 2 * kv if qkv_bias else 0) \
            + 3 * hidden_size * intermediate_size + 2 * hidden_size
        nonlayer = vocab_size * hidden_size * (1 if tie_word_embeddings else 2) + hidden_size
        return cls(name, layer * num_hidden_layers + nonlayer, layer, nonlayer, hidden_size, intermediate_size,
                   num_hidden_layers, num_attention_heads, num_key_value_heads, d, vocab_size)


def _from_folder(path: Path) -> ModelSize:
    """Count a local model folder's parameters on the meta device (no weights read, any architecture)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(path)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == text.num_hidden_layers]
    sizes = [sum(p.numel() for p in layer.parameters()) for layer in stacks[0]] if stacks else [0]
    heads = text.num_attention_heads
    return ModelSize(str(path), total, max(sizes), total - sum(sizes), text.hidden_size,
                     getattr(text, "intermediate_size", 4 * text.hidden_size), text.num_hidden_layers, heads,
                     getattr(text, "num_key_value_heads", None) or heads,
                     getattr(text, "head_dim", None) or text.hidden_size // heads, text.vocab_size)


def model_size(name_or_path: str | Path) -> ModelSize:
    """The `ModelSize` of a hub name of `HUB_MODELS`, of a local model folder (its config.json read by
    transformers' AutoConfig, parameters counted on the meta device), or of one of the package's
    offline aliases (``smollm2-135m-instruct``, ``tiny-teacher``, ...) once built in the cache.

    Raises:
        ValueError: ``name_or_path`` is none of these (no hub access here: pass a local folder).
    """
    key = str(name_or_path)
    if key in HUB_MODELS:
        return ModelSize.from_config_values(key, **HUB_MODELS[key])
    path = Path(key)
    if not (path / "config.json").is_file():
        from .models import cache_dir

        path = cache_dir() / "models" / key
    if (path / "config.json").is_file():
        return _from_folder(path)
    raise ValueError(f"model {key!r}: not a local folder with a config.json, not a built dakd alias, and not "
                     f"one of the plan's hub models ({', '.join(HUB_MODELS)}); pass a local folder")


def _check_gpus(n_gpus) -> None:
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, int) or n_gpus < 1:
        raise ValueError(f"gpus must be an integer >= 1, got {n_gpus!r}")


def _check(strategy: str, n_gpus: int) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    _check_gpus(n_gpus)


def state_bytes(model: ModelSize, strategy: str, n_gpus: int, compute_bytes: int = 2,
                ddp_bucket_view: bool = False) -> dict[str, float]:
    """Bytes per GPU of a trained model's weights, gradients and optimizer state (AdamW, fp32 masters
    and moments; compute in ``compute_bytes`` per element: 2 for bf16, 4 for fp32, where no separate
    master or compute copy exists) under ``strategy`` on ``n_gpus`` GPUs: the table of the module
    docstring. ``ddp_bucket_view``: DDP's ``gradient_as_bucket_view`` (accelerate's default, and
    dakd's, is False: DDP keeps a second copy of the gradients in its buckets).

    Returns:
        {"weights", "gradients", "optimizer"}: bytes per GPU (floats: sharded terms divide by N).

    Raises:
        ValueError: unknown strategy, or ``n_gpus`` < 1.
    """
    _check(strategy, n_gpus)
    c, p, n = compute_bytes, model.params, n_gpus
    low = c < 4  # mixed precision: fp32 masters beside a compute-dtype copy
    largest = model.vocab * model.hidden  # the embedding / LM head matrix: the largest single weight
    if strategy == "ddp":
        return {"weights": (4 + (c if low else 0)) * p, "gradients": (4 + (0 if ddp_bucket_view else 4)) * p,
                "optimizer": 8 * p}
    if strategy == "deepspeed_zero2":
        return {"weights": c * p, "gradients": c * p / n + c * largest,
                "optimizer": ((4 if low else 0) + 8) * p / n}
    if strategy == "fsdp":
        return {"weights": 4 * p / n + c * (2 * model.layer_params + model.nonlayer_params),
                "gradients": 4 * p / n + c * (model.layer_params + model.nonlayer_params),
                "optimizer": 8 * p / n}
    return {"weights": c * p / n + c * (model.layer_params + largest), "gradients": c * p / n + c * largest,
            "optimizer": ((4 if low else 0) + 8) * p / n}


def activation_bytes(model: ModelSize, tokens: int, compute_bytes: int = 2, residual_bytes: int = 2) -> int:
    """Bytes of the activations a training forward keeps for backward, without activation
    checkpointing: ``tokens x layers x (c (7 h + 4 i) + 2 (4 + r) h)`` with c = ``compute_bytes``
    and r = ``residual_bytes`` (the module docstring derives it from Korthikanti et al. 2022).

    Raises:
        ValueError: ``tokens`` < 1.
    """
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    h, i, c, r = model.hidden, model.intermediate, compute_bytes, residual_bytes
    return tokens * model.layers * (c * (7 * h + 4 * i) + 2 * (4 + r) * h)


def logits_bytes(stage: str, tokens: int, vocab: int, teacher_vocab: int | None = None,
                 compute_bytes: int = 2) -> int:
    """Peak bytes of the logits and the loss's working set of one micro-batch of ``tokens`` rows.

    ``stage`` "distill": ``tokens x (3 c V + c V_t) + 8 x CHUNK_SIZE x min(V, V_t) x 4`` (the
    student's full logits or their gradient, its response rows and their saved gradient, the
    teacher's rows; one loss chunk). "sft": ``tokens x V x (2 c + 8)`` (full logits, rows, their fp32
    cast and fp32 log-softmax). "generate": ``tokens x V x 16`` (4 fp32 copies of one row per
    sequence; ``tokens`` = the generation batch).

    Raises:
        ValueError: unknown ``stage``, or a "distill" without ``teacher_vocab``.
    """
    from .losses import CHUNK_SIZE as chunk

    c = compute_bytes
    if stage == "sft":
        return tokens * vocab * (2 * c + 8)
    if stage == "generate":
        return tokens * vocab * 16
    if stage != "distill":
        raise ValueError(f"unknown stage {stage!r}; known: distill, sft, generate")
    if teacher_vocab is None:
        raise ValueError("teacher_vocab is needed for stage 'distill'")
    return tokens * (3 * c * vocab + c * teacher_vocab) + LOSS_CHUNK_TENSORS * chunk * min(vocab, teacher_vocab) * 4


@dataclass(frozen=True)
class Settings:
    """The run settings the plan reads from a preset: tokens per micro-batch and generation sizes."""

    micro_batch_size: int
    max_length: int
    max_prompt_length: int
    eval_batch_size: int
    dtype: str


def _preset_models(preset: str):
    """(teacher SFT model or None, student, frozen teacher, evaluated models, Settings) of a preset."""
    from .methods import METHODS
    from .presets import get_preset

    runs = get_preset(preset)
    sft_out = {str(Path(c.output_dir) / "student"): c.student for k, c in runs.items() if k.endswith("teacher_sft")}
    sft_model = next(iter(sft_out.values()), None)
    distill = [c for c in runs.values() if c.method != "teacher" and not str(c.output_dir).endswith("teacher_sft")
               and METHODS[c.method].objective != "ce"]
    base = distill[0] if distill else next(iter(runs.values()))
    teacher = sft_out.get(str(base.teacher), base.teacher)
    evaluated = [teacher, base.student]
    s = Settings(base.micro_batch_size, base.max_length, base.max_prompt_length, base.eval_batch_size, base.dtype)
    return sft_model, base.student, teacher, evaluated, s


def plan_memory(preset: str, gpus: int, gpu_memory_gb: float, headroom: float = HEADROOM,
                strategies=None, teacher: str | None = None, student: str | None = None,
                ddp_bucket_view: bool = False) -> list[dict]:
    """Estimated peak memory per GPU of each stage of ``preset`` under each strategy.

    Args:
        preset: a preset name (`dakd.presets.PRESETS`); its micro-batch, lengths and dtype are read
            from its runs, its models from `HUB_MODELS` or local folders (`model_size`).
        gpus: GPUs (processes); gpu_memory_gb: memory of one GPU in GB (10^9 bytes);
        headroom: fraction of it left unplanned (0 <= headroom < 1).
        strategies: a subset of `STRATEGIES` (default all).
        teacher, student: model names or local folders replacing the preset's pair (a user's own pair;
            the teacher SFT, where the preset has one, then trains ``teacher``).
        ddp_bucket_view: see `state_bytes`.

    Returns:
        One dict per stage x strategy, in stage order then `STRATEGIES` order: "stage" ("teacher_sft",
        "students", "evaluation"), "model" (the trained or evaluated model), "strategy" ("any" for
        evaluation: the model is loaded whole on every GPU whatever the strategy), the `COMPONENTS`
        and "total" in bytes per GPU, "budget" (bytes usable: (1 - headroom) x gpu_memory_gb x 10^9)
        and "fits" (total <= budget).

    Raises:
        ValueError: unknown preset, strategy or model; gpus < 1; gpu_memory_gb <= 0; headroom outside [0, 1).
    """
    _check_gpus(gpus)
    strategies = tuple(STRATEGIES if strategies is None else strategies)
    for s in strategies:
        _check(s, gpus)
    strategies = [s for s in STRATEGIES if s in strategies]  # least sharded first, as recommendations reads
    if not gpu_memory_gb > 0:
        raise ValueError(f"gpu_memory_gb must be > 0, got {gpu_memory_gb!r}")
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be in [0, 1), got {headroom!r}")
    sft_model, stu, tea, evaluated, st = _preset_models(preset)
    if teacher is not None:
        sft_model = teacher if sft_model is not None else None
        tea = teacher
    if student is not None:
        stu = student
    evaluated = [tea, stu]
    if st.dtype not in _DTYPE_BYTES:
        raise ValueError(f"preset {preset!r}: dtype {st.dtype!r} has no byte size; known: {list(_DTYPE_BYTES)}")
    c = _DTYPE_BYTES[st.dtype]
    budget = (1 - headroom) * gpu_memory_gb * GB
    tokens = st.micro_batch_size * st.max_length
    rows = []

    def row(stage, name, strategy, parts):
        parts = {k: float(parts.get(k, 0)) for k in COMPONENTS}
        total = sum(parts.values())
        rows.append({"stage": stage, "model": name, "strategy": strategy, **parts, "total": total,
                     "budget": budget, "fits": total <= budget})

    def residual(strategy):  # DDP's autocast over fp32 weights makes an fp32 residual stream
        return 4 if (strategy == "ddp" and c < 4) else c

    if sft_model is not None:
        m = model_size(sft_model)
        for s in strategies:
            row("teacher_sft", m.name, s, {**state_bytes(m, s, gpus, c, ddp_bucket_view),
                                           "activations": activation_bytes(m, tokens, c, residual(s)),
                                           "logits": logits_bytes("sft", tokens, m.vocab, compute_bytes=c)})
    ms, mt = model_size(stu), model_size(tea)
    for s in strategies:
        row("students", ms.name, s, {**state_bytes(ms, s, gpus, c, ddp_bucket_view), "teacher": c * mt.params,
                                     "activations": activation_bytes(ms, tokens, c, residual(s)),
                                     "logits": logits_bytes("distill", tokens, ms.vocab, mt.vocab, c)})
    me = max((model_size(x) for x in evaluated), key=lambda m: m.params)
    kv = st.eval_batch_size * st.max_length * me.layers * 2 * me.kv_heads * me.head_dim * c
    prefill = st.eval_batch_size * st.max_prompt_length * c * (6 * me.hidden + 3 * me.intermediate)
    row("evaluation", me.name, "any", {"weights": c * me.params, "activations": kv + prefill,
                                       "logits": logits_bytes("generate", st.eval_batch_size, me.vocab)})
    return rows


STAGE_LABELS = {"teacher_sft": "teacher SFT", "students": "students (live teacher)", "evaluation": "evaluation"}


def recommendations(rows: list[dict]) -> dict[str, str]:
    """One line per stage of `plan_memory`'s rows: the least-sharded strategy that fits (in
    `STRATEGIES` order) with its config file and total, or, when none fits, the smallest total.

    Raises:
        ValueError: ``rows`` is empty.
    """
    if not rows:
        raise ValueError("no plan rows")
    out = {}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = [r for r in rows if r["stage"] == stage]
        budget = mine[0]["budget"] / GB
        fit = next((r for r in mine if r["fits"]), None)
        label = f"{STAGE_LABELS[stage]}, {mine[0]['model']}"
        if fit is None:
            best = min(mine, key=lambda r: r["total"])
            out[stage] = (f"{label}: nothing fits (smallest: {best['strategy']}, {best['total'] / GB:.1f} GB > "
                          f"{budget:.1f} GB usable); use more or larger GPUs")
        elif fit["strategy"] == "any":
            out[stage] = (f"{label}: {fit['total'] / GB:.1f} GB of {budget:.1f} GB usable, under any strategy "
                          "(the model is whole on every GPU)")
        else:
            out[stage] = (f"{label}: {fit['strategy']} ({CONFIGS[fit['strategy']]}), {fit['total'] / GB:.1f} GB "
                          f"of {budget:.1f} GB usable")
        if fit is not None and fit["budget"] - fit["total"] < GB:
            out[stage] += " (tight: under 1 GB spare)"
    return out


def pick(rows: list[dict], stage: str) -> str:
    """The strategy `recommendations` names for ``stage`` ("any" for evaluation), or "none" when
    nothing fits.

    Raises:
        ValueError: ``stage`` is not in ``rows``.
    """
    mine = [r for r in rows if r["stage"] == stage]
    if not mine:
        raise ValueError(f"no rows of stage {stage!r}; stages: {sorted({r['stage'] for r in rows})}")
    return next((r["strategy"] for r in mine if r["fits"]), "none")


def summary_table(presets, gpus: int, memories_gb=(80, 40), headroom: float = HEADROOM) -> str:
    """One Markdown table over several presets (the README's): per preset and stage, the total GB per
    GPU under each strategy on ``gpus`` GPUs and the strategy picked (`pick`) for each GPU memory of
    ``memories_gb`` (GB). The totals are `plan_memory`'s, which do not depend on the GPU memory.

    Raises:
        ValueError: as `plan_memory`.
    """
    head = ["preset", "stage: model", *STRATEGIES, *(f"pick, {gpus} x {m:g} GB" for m in memories_gb)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(STRATEGIES) + "---|" * len(memories_gb)]
    for preset in presets:
        plans = [plan_memory(preset, gpus, m, headroom) for m in memories_gb]
        for stage in dict.fromkeys(r["stage"] for r in plans[0]):
            mine = {r["strategy"]: r["total"] for r in plans[0] if r["stage"] == stage}
            cells = [f"{mine.get(s, mine.get('any')) / GB:.1f}" for s in STRATEGIES]
            model = next(r["model"] for r in plans[0] if r["stage"] == stage).rsplit("/", 1)[-1]
            lines.append("| " + " | ".join([f"`{preset}`", f"{STAGE_LABELS[stage]}: {model}", *cells,
                                            *(pick(p, stage) for p in plans)]) + " |")
    return "\n".join(lines)


def format_plan(rows: list[dict]) -> str:
    """`plan_memory`'s rows as a Markdown table in GB (10^9 bytes), one row per stage x strategy,
    followed by `recommendations`' lines.

    Raises:
        ValueError: ``rows`` is empty.
    """
    recs = recommendations(rows)
    head = ["stage", "strategy", *COMPONENTS, "total GB", "fits"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(COMPONENTS) + 1) + "---|"]
    for r in rows:
        cells = [STAGE_LABELS[r["stage"]], r["strategy"], *(f"{r[k] / GB:.1f}" for k in COMPONENTS),
                 f"{r['total'] / GB:.1f}", "yes" if r["fits"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {line}" for line in recs.values())


def plan_text(preset: str, gpus: int, gpu_memory_gb: float, headroom: float = HEADROOM, **kw) -> str:
    """What ``python -m dakd.cli plan`` prints: a title line, `format_plan`'s table and lines.

    Raises:
        ValueError: as `plan_memory`.
    """
    rows = plan_memory(preset, gpus, gpu_memory_gb, headroom, **kw)
    title = (f"{preset} on {gpus} x {gpu_memory_gb:g} GB, {headroom:.0%} headroom "
             f"({rows[0]['budget'] / GB:.1f} GB usable per GPU); GB = 10^9 bytes")
    return title + "\n\n" + format_plan(rows)

