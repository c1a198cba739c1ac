"""One dataclass configures a run; presets are named constructors of it.

Every result file of a run carries the resolved config, its hash, and the package versions, so a
table can always be traced back to the exact settings and code that produced it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass

from . import __version__

# The methods and the losses each accepts come from their declarations (`dakd.methods.METHODS`):
# "teacher" evaluates the teacher as it is (no training), the first row of every table; "seqkd",
# "gkd" and "distillm" are the baselines of Tables 1-3 (dakd.baselines documents each). GKD trains
# with the generalized JSD with `beta` (Agarwal et al. 2024). DistiLLM (Ko et al., ICML 2024): skew
# KL or skew reverse KL with `alpha`; its released scripts (github.com/jongwooko/distillm,
# scripts/*/distillm/*.sh) train GPT-2 with `--type adaptive-sfkl` (skew KL) but OPT and OpenLLaMA2
# with skew reverse KL (`adaptive-srkl`, `srkl-...`); DA-KD's pairs are Llama/Qwen decoders like the
# latter, so skew reverse KL is its default and `loss="skew_kl"` selects the GPT-2 variant.
from .methods import METHODS as _DECLARED  # noqa: E402

METHODS = tuple(_DECLARED)  # the built-in names, in table order (registered later ones are accepted too)
METHOD_LOSSES = {k: m.losses for k, m in _DECLARED.items() if m.losses}

# Fields added after results were first published. While at their default they are left out of
# `config_hash`, so a config that does not use them keeps the hash it had before they existed
# (and its finished results stay reusable); any other value changes the hash.
_HASH_OMIT_AT_DEFAULT = ("beta", "student_data_fraction", "gen_max_new_tokens", "gen_temperature",
                         "sgo_init_prob", "sgo_prob_step", "sgo_loss_eps", "sgo_max_prob",
                         "replay_buffer_size", "sgo_val_samples", "teacher_cache_k",
                         "save_dtype", "teacher_forced", "teacher_forced_samples")

# parameter dtypes a run may ask for (`dakd.models.load_model` takes the torch dtype of that name)
DTYPES = ("float32", "bfloat16", "float16", "float64")


def _parse_list(name: str, value, item_type: type, allow_none: bool = False) -> tuple:
    """A list-valued field as a tuple, parsed from JSON/YAML text when given as a string (papermill's
    ``-p`` passes ``'["dolly", "vicuna"]'`` as text; ``-y`` passes YAML that arrives as a list); a
    bare name (no brackets) is a one-item list.

    Raises:
        ValueError: naming the field, for text that is not a list or items of another type.
    """
    if isinstance(value, str):
        import yaml

        text = value.strip()
        try:
            parsed = yaml.safe_load(text) if text.startswith("[") else [text]
        except yaml.YAMLError as e:
            raise ValueError(f"{name} given as text {value!r} is not a list ({e.__class__.__name__}); "
                             f"pass a list, e.g. with papermill -y '{name}: [...]'") from None
        value = parsed
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of {item_type.__name__}, got {type(value).__name__} {value!r}")
    for v in value:
        ok = (v is None and allow_none) or (isinstance(v, item_type) and not isinstance(v, bool))
        if not ok:
            raise ValueError(f"{name} must be a list of {item_type.__name__}"
                             f"{' (or None)' if allow_none else ''}, got item {v!r} in {value!r}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    return tuple(value)


@dataclass
class DistillConfig:
    """Settings of one distillation run (training plus evaluation).

    Paper defaults (METHOD.md section 5) unless the field says otherwise. A notebook's
    ``parameters`` cell overrides these fields by name.
    """

    # models
    teacher: str = "smollm2-135m-instruct"  # alias, local folder or hub name
    student: str = "smollm2-student-l6"  # alias, local folder or hub name; same tokenizer as the teacher
    dtype: str = "float32"  # compute dtype: the frozen teacher's weights and the student's forward
    # ("bfloat16" on GPUs: accelerate's mixed precision, the student's weights and AdamW state kept
    # in float32 as master copies); evaluation loads models in it
    save_dtype: str = "float32"  # dtype of the saved student (its weights train in float32)
    trust_remote_code: bool = False  # passed to from_pretrained as set; True runs the model repo's code
    # method
    method: str = "dakd"  # "teacher" (eval only), "sft", "kd" (full data, `loss`), "dakd" (DiffUp + `loss`),
    # "seqkd" (SFT on teacher-generated responses), "gkd" (on-policy JSD), "distillm" (skew KL + SGO)
    loss: str = "bdl"  # any name of dakd.losses.get_loss; ignored by sft and seqkd. gkd and distillm
    # accept only METHOD_LOSSES[method]; the default "bdl" stands for the method's first one there
    lam: float = 0.9  # BDL lambda (Eq. 4)
    alpha: float = 0.1  # skew KL / skew reverse KL (DistiLLM)
    schedule: str = "cosine"  # selection-ratio schedule (Eq. 2): cosine, linear, constant
    tau: float = 0.1  # share of the subset drawn from the low-DDS stratum (Algorithm 1)
    selection: str = "dds"  # dds (SDU), random (w/o DDS), top (w/o SDU), full (w/o DiffUp)
    dds_eps: float = 1e-6  # nats, a floor of CE_teacher: DDS = CE_student / max(CE_teacher, eps) (Eq. 1)
    # baselines (dakd.baselines): generation, GKD and DistiLLM settings
    beta: float = 0.5  # generalized JSD weight of GKD (loss js_divergence; 0.5 = plain JSD)
    student_data_fraction: float = 0.5  # GKD lambda: probability that a batch is student-generated
    gen_max_new_tokens: int = 256  # tokens generated per response (SeqKD teacher, GKD/DistiLLM
    # student); also capped by max_length - prompt length. 256 = MiniLLM's 512 - 256
    gen_temperature: float = 1.0  # sampling temperature of those generations (top-k 0, top-p 1.0)
    sgo_init_prob: float = 0.0  # DistiLLM: initial probability of student-generated outputs (SGO)
    sgo_prob_step: float = 0.1  # DistiLLM: SGO probability added when the validation loss worsens
    sgo_loss_eps: float = 0.1  # DistiLLM: nats of validation-loss increase that count as worse
    sgo_max_prob: float = 1.0  # DistiLLM: cap of the SGO probability
    replay_buffer_size: int = 1000  # DistiLLM: replay buffer capacity, samples per process
    sgo_val_samples: int = 1000  # DistiLLM: validation records for the adaptive SGO rule
    # opt-in (not in the paper): read the teacher's top-k next-token distributions from a cache
    # written once per teacher + data (dakd.teacher_cache) instead of a teacher forward every step;
    # None = the exact teacher. kd and dakd only; DDS keeps the exact teacher CE
    teacher_cache_k: int | None = None
    # a training loss that is identically 0 (BDL at lam 0.5, generalized JSD at beta 0 or 1, skew
    # (reverse) KL at alpha 1) is refused unless this is True (the lambda sweep's 0.5 point)
    allow_degenerate_loss: bool = False
    # data
    dataset: str = "dolly"  # training set: "dolly" (Table 1), "samsum" or "gsm8k" (Table 2)
    train_samples: int | None = None  # None = the whole train split; else a seeded subset
    prompt_style: str = "alpaca"  # "alpaca" (MiniLLM template) or "chatml" (the model's template)
    max_prompt_length: int = 256  # tokens; longer prompts are dropped and counted
    max_length: int = 512  # tokens, prompt + response; longer responses are cut and counted
    # optimisation
    epochs: int = 10  # passes over the data (DA-KD: all of it in epoch 0, DiffUp subsets from epoch 1)
    batch_size: int = 8  # global: samples per optimiser step over all processes (METHOD.md 6.2)
    micro_batch_size: int = 8  # per process per forward; gradient accumulation makes up the rest
    lr: float = 1e-5  # AdamW peak learning rate, cosine decay to 0 over the planned steps
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.0  # share of the planned optimiser steps with a linear warm-up
    max_grad_norm: float = 1.0  # clip the gradient's global L2 norm before each optimiser step
    group_by_length: bool = True  # batches of similar length (less padding); order still seeded
    seed: int = 42  # data order, subset sampling, DiffUp draws; generation uses eval_seeds
    # evaluation
    eval_datasets: tuple[str, ...] = ("dolly",)  # test sets: names of dakd.tasks.EVAL_SETS
    eval_samples: int | None = None  # None = the whole test set; else the first n records
    eval_seeds: tuple[int, ...] = (10, 20, 30, 40, 50)  # one sampled pass per seed, scores averaged; None = greedy
    max_new_tokens: int = 256  # evaluation: tokens per response (also caps SAMSum's and GSM8K's own limits)
    eval_batch_size: int = 8  # prompts generated together (left-padded, grouped by length)
    teacher_forced: bool = False  # also record teacher-forced metrics on every ROUGE-L set's references
    # (dakd.teacher_forced: student and teacher CE, forward KL, top-1 agreement; eval[<set>]["teacher_forced"])
    teacher_forced_samples: int | None = None  # None = the whole test set; else its first n records
    # output
    output_dir: str = "runs/default/dakd"  # the run's folder: config.json, train_log.json, results.json, student/
    save_checkpoints: bool = True  # checkpoint after every epoch, so that a killed run resumes there
    save_epoch_students: bool = False  # save the student after every epoch (Figure 1 curves)
    keep_checkpoint: bool = False  # keep output_dir/checkpoint (~568 MB for the cpu preset) once the
    # run is finished; by default dakd.pipeline.run deletes it then (it serves only to resume)

    def __post_init__(self) -> None:
        if self.method not in _DECLARED:
            raise ValueError(f"method must be one of {tuple(_DECLARED)}, got {self.method!r}")
        declared = _DECLARED[self.method]
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        # parsed first: text from papermill -p would otherwise become a tuple of characters
        self.eval_datasets = _parse_list("eval_datasets", self.eval_datasets, str)
        self.eval_seeds = _parse_list("eval_seeds", self.eval_seeds, int, allow_none=True)
        for name in ("lam", "alpha", "tau", "beta", "student_data_fraction", "sgo_init_prob",
                     "sgo_prob_step", "sgo_max_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:  # also rejects nan
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.sgo_init_prob > self.sgo_max_prob:
            raise ValueError(f"sgo_init_prob ({self.sgo_init_prob}) must not exceed sgo_max_prob "
                             f"({self.sgo_max_prob})")
        if not self.sgo_loss_eps >= 0.0:
            raise ValueError(f"sgo_loss_eps must be >= 0 nats, got {self.sgo_loss_eps}")
        if not (self.gen_temperature > 0.0 and self.gen_temperature != float("inf")):
            raise ValueError(f"gen_temperature must be a finite number > 0, got {self.gen_temperature}")
        for name in ("gen_max_new_tokens", "replay_buffer_size", "sgo_val_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.teacher_cache_k is not None:
            if self.teacher_cache_k < 1:
                raise ValueError(f"teacher_cache_k must be None (exact teacher) or >= 1, got {self.teacher_cache_k}")
            if "teacher_cache_k" not in declared.fields:
                takers = [k for k, m in _DECLARED.items() if "teacher_cache_k" in m.fields]
                raise ValueError(f"teacher_cache_k applies to methods {takers} (the cache holds the "
                                 f"teacher on ground-truth responses), not {self.method!r}")
        # fail at construction, not at epoch 1 after an epoch of training
        from .data import DATASETS, PROMPT_STYLES
        from .losses import canonical_loss_name
        from .tasks import TASK_FILES
        from .updater import SCHEDULES, SELECTION_MODES

        loss = canonical_loss_name(self.loss)  # ValueError listing the valid names
        if declared.losses:
            valid = declared.losses
            if loss == "bdl":  # the field's default: the method's own loss
                self.loss = loss = valid[0]
            if loss not in valid:
                raise ValueError(f"loss of method {self.method!r} must be one of {valid}, got {self.loss!r}")
        train_sets = tuple(k for k, v in DATASETS.items() if "train" in v) + tuple(TASK_FILES)
        if self.dataset not in train_sets:
            raise ValueError(f"dataset must be one of {train_sets} (a set with a train split), "
                             f"got {self.dataset!r}")
        for name, value, valid in (("selection", self.selection, tuple(SELECTION_MODES)), ("schedule", self.schedule, SCHEDULES),
                                   ("prompt_style", self.prompt_style, PROMPT_STYLES)):
            if value not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {value!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("epochs, batch_size and micro_batch_size must be >= 1")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        from .tasks import EVAL_SETS

        unknown = [d for d in self.eval_datasets if d not in EVAL_SETS]
        if unknown:
            raise ValueError(f"eval_datasets: unknown evaluation set(s) {unknown}; known: {sorted(EVAL_SETS)}")
        if self.method == "dakd" and self.epochs < 2:
            # epoch 0 trains on all of D (Algorithm 1): one epoch is plain KD with no DDS
            raise ValueError(f"method 'dakd' with epochs={self.epochs} is plain KD (epoch 0 uses all of the "
                             "data and DiffUp starts at epoch 1): set epochs >= 2, or method 'kd'")
        if self.method in ("kd", "dakd", "gkd", "distillm") and not self.allow_degenerate_loss:
            from .losses import degenerate_reason

            why = degenerate_reason(loss, lam=self.lam, alpha=self.alpha, beta=self.beta)
            if why:
                raise ValueError(f"loss {loss!r}: {why}, so training would not move the student; set "
                                 "allow_degenerate_loss=True to run it anyway (e.g. to show the collapse)")
        if self.dtype == "float16" and self.method != "teacher":
            # float16 compute needs loss scaling (accelerate's fp16 GradScaler), which the loop's
            # gradient-norm check before the step does not account for; bfloat16 needs none
            raise ValueError("dtype 'float16' is not supported for training (fp16 compute needs loss "
                             "scaling); use 'bfloat16' or 'float32' (float16 is fine for method "
                             "'teacher', evaluation only)")
        if self.dtype == "float64" and self.method != "teacher":
            raise ValueError("dtype 'float64' is for evaluation (method 'teacher') only: training keeps float32 "
                             "master weights and computes in float32 or bfloat16")
        if self.teacher_forced_samples is not None and (isinstance(self.teacher_forced_samples, bool) or
                                                        not isinstance(self.teacher_forced_samples, int) or
                                                        self.teacher_forced_samples < 1):
            raise ValueError(f"teacher_forced_samples must be None (the whole set) or an int >= 1, "
                             f"got {self.teacher_forced_samples!r}")
        if self.save_dtype not in DTYPES:
            raise ValueError(f"save_dtype must be one of {DTYPES}, got {self.save_dtype!r}")

    def to_dict(self) -> dict:
        """Every field by name (tuples stay tuples), as written to ``config.json``."""
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """Short sha256 (12 hex digits) of the settings that change results: every field except
        the output folder, what is saved (``save_checkpoints``, ``save_epoch_students``,
        ``keep_checkpoint``) and the permission ``allow_degenerate_loss`` (it changes no result,
        only whether the run may start); the fields of ``_HASH_OMIT_AT_DEFAULT`` only when they
        differ from their default."""
        d = self.to_dict()
        for name in ("output_dir", "save_checkpoints", "save_epoch_students", "keep_checkpoint", "allow_degenerate_loss"):
            d.pop(name)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in _HASH_OMIT_AT_DEFAULT:
            if d[name] == defaults[name]:
                d.pop(name)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **kw) -> "DistillConfig":
        """A copy with the given fields changed, validated again (ValueError as the constructor)."""
        return dataclasses.replace(self, **kw)


def package_versions() -> dict:
    """Versions of Python, dakd and the libraries that change results."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "dakd": __version__, "platform": platform.platform()}
    for pkg in ("torch", "transformers", "accelerate", "datasets", "rouge-score", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else `platform.processor`), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version (``/proc/driver/nvidia/version``, else ``nvidia-smi``), or None."""
    import re
    import subprocess

    try:
        with open("/proc/driver/nvidia/version") as f:
            m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", f.read())
            if m:
                return m.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
        return out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware_info() -> dict:
    """The machine a result was produced on: ``cpu_model`` (str or None), ``cpu_threads`` (logical
    CPUs, `os.cpu_count`), ``torch_threads`` (intra-op threads torch uses), ``gpu_count`` (CUDA
    devices visible), ``gpu_names`` (list of str, one per device), ``cuda_version`` (the CUDA torch
    was built with, None for a CPU build), ``cudnn_version`` (int or None) and ``driver_version``
    (NVIDIA driver, None where there is none). Never raises: what cannot be read is None."""
    import os

    import torch

    cuda = torch.cuda.is_available()
    n = torch.cuda.device_count() if cuda else 0
    return {"cpu_model": _cpu_model(), "cpu_threads": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu_count": n, "gpu_names": [torch.cuda.get_device_name(i) for i in range(n)],
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if cuda else None,
            "driver_version": _nvidia_driver() if cuda else None}


def run_metadata(cfg: DistillConfig) -> dict:
    """The block written beside every result: resolved config, its hash, package versions and the
    hardware (`hardware_info`)."""
    return {"config": cfg.to_dict(), "config_hash": cfg.config_hash(), "versions": package_versions(),
            "hardware": hardware_info()}
