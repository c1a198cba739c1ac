"""One dataclass configures a run; presets are named constructors of it.

Every result file of a run carries the resolved config, its hash, and the package versions, so a
table can always be traced back to the exact settings and code that produced it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass, field

from . import __version__

# "teacher" evaluates the teacher as it is (no training), the first row of every table; "seqkd",
# "gkd" and "distillm" are the baselines of Tables 1-3 (dakd.baselines documents each)
METHODS = ("teacher", "sft", "kd", "dakd", "seqkd", "gkd", "distillm")

# The loss each baseline trains with, and which `loss` names it accepts. GKD: generalized JSD with
# `beta` (Agarwal et al. 2024). DistiLLM (Ko et al., ICML 2024): skew KL or skew reverse KL with
# `alpha`; its released scripts (github.com/jongwooko/distillm, scripts/*/distillm/*.sh) train GPT-2
# with `--type adaptive-sfkl` (skew KL) but OPT and OpenLLaMA2 with skew reverse KL
# (`adaptive-srkl`, `srkl-...`); DA-KD's pairs are Llama/Qwen decoders like the latter, so skew
# reverse KL is the default here and `loss="skew_kl"` selects the GPT-2 variant.
METHOD_LOSSES = {"gkd": ("js_divergence",), "distillm": ("skew_reverse_kl", "skew_kl")}

# Fields added after results were first published. While at their default they are left out of
# `config_hash`, so a config that does not use them keeps the hash it had before they existed
# (and its finished results stay reusable); any other value changes the hash.
_HASH_OMIT_AT_DEFAULT = ("beta", "student_data_fraction", "gen_max_new_tokens", "gen_temperature",
                         "sgo_init_prob", "sgo_prob_step", "sgo_loss_eps", "sgo_max_prob",
                         "replay_buffer_size", "sgo_val_samples", "teacher_cache_k")


@dataclass
class DistillConfig:
    """Settings of one distillation run (training plus evaluation).

    Paper defaults (METHOD.md section 5) unless the field says otherwise. A notebook's
    ``parameters`` cell overrides these fields by name.
    """

    # models
    teacher: str = "smollm2-135m-instruct"  # alias, local folder or hub name
    student: str = "smollm2-student-l6"
    dtype: str = "float32"  # parameter dtype; "bfloat16" on GPUs
    trust_remote_code: bool = False
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
    dds_eps: float = 1e-6  # nats; keeps DDS finite when the teacher's CE is ~0 (Eq. 1)
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
    # data
    dataset: str = "dolly"  # training set: "dolly" (Table 1), "samsum" or "gsm8k" (Table 2)
    train_samples: int | None = None  # None = the whole train split; else a seeded subset
    prompt_style: str = "alpaca"  # "alpaca" (MiniLLM template) or "chatml" (the model's template)
    max_prompt_length: int = 256  # tokens; longer prompts are dropped and counted
    max_length: int = 512  # tokens, prompt + response; longer responses are cut and counted
    # optimisation
    epochs: int = 10
    batch_size: int = 8  # global: samples per optimiser step over all processes (METHOD.md 6.2)
    micro_batch_size: int = 8  # per process per forward; gradient accumulation makes up the rest
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    group_by_length: bool = True  # batches of similar length (less padding); order still seeded
    seed: int = 42  # data order, subset sampling, DiffUp draws; generation uses eval_seeds
    # evaluation
    eval_datasets: tuple[str, ...] = ("dolly",)
    eval_samples: int | None = None  # None = the whole test set; else the first n records
    eval_seeds: tuple[int, ...] = (10, 20, 30, 40, 50)
    max_new_tokens: int = 256
    eval_batch_size: int = 8
    # output
    output_dir: str = "runs/default/dakd"
    save_checkpoints: bool = True
    save_epoch_students: bool = False  # save the student after every epoch (Figure 1 curves)
    keep_checkpoint: bool = False  # keep output_dir/checkpoint (~568 MB for the cpu preset) once the
    # run is finished; by default dakd.pipeline.run deletes it then (it serves only to resume)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
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
            if self.method not in ("kd", "dakd"):
                raise ValueError(f"teacher_cache_k applies to methods 'kd' and 'dakd' (the cache holds the "
                                 f"teacher on ground-truth responses), not {self.method!r}")
        # fail at construction, not at epoch 1 after an epoch of training
        from .data import DATASETS, PROMPT_STYLES
        from .losses import canonical_loss_name
        from .tasks import TASK_FILES
        from .updater import MODES, SCHEDULES

        loss = canonical_loss_name(self.loss)  # ValueError listing the valid names
        if self.method in METHOD_LOSSES:
            valid = METHOD_LOSSES[self.method]
            if loss == "bdl":  # the field's default: the method's own loss
                self.loss = loss = valid[0]
            if loss not in valid:
                raise ValueError(f"loss of method {self.method!r} must be one of {valid}, got {self.loss!r}")
        train_sets = tuple(k for k, v in DATASETS.items() if "train" in v) + tuple(TASK_FILES)
        if self.dataset not in train_sets:
            raise ValueError(f"dataset must be one of {train_sets} (a set with a train split), "
                             f"got {self.dataset!r}")
        for name, value, valid in (("selection", self.selection, MODES), ("schedule", self.schedule, SCHEDULES),
                                   ("prompt_style", self.prompt_style, PROMPT_STYLES)):
            if value not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {value!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("epochs, batch_size and micro_batch_size must be >= 1")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        if self.dtype == "float16" and self.method != "teacher":
            # measured: AdamW keeps its state in the weights' dtype, and in float16 g^2 of a
            # gradient below ~2e-3 underflows to 0 while eps 1e-8 rounds to 0, so the first step
            # turns those weights into inf (the run then stops with NonFiniteLossError)
            raise ValueError("dtype 'float16' cannot be trained with AdamW (its state underflows: "
                             "inf weights after one step); use 'bfloat16' or 'float32' "
                             "(float16 is fine for method 'teacher', evaluation only)")
        self.eval_datasets = tuple(self.eval_datasets)
        self.eval_seeds = tuple(self.eval_seeds)

    def to_dict(self) -> dict:
        """Every field by name (tuples stay tuples), as written to ``config.json``."""
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """Short sha256 (12 hex digits) of the settings that change results: every field except
        the output folder and what is saved (``save_checkpoints``, ``save_epoch_students``,
        ``keep_checkpoint``); the
        fields of ``_HASH_OMIT_AT_DEFAULT`` only when they differ from their default."""
        d = self.to_dict()
        for name in ("output_dir", "save_checkpoints", "save_epoch_students", "keep_checkpoint"):
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


def run_metadata(cfg: DistillConfig) -> dict:
    """The block written beside every result: resolved config, its hash, package versions."""
    return {"config": cfg.to_dict(), "config_hash": cfg.config_hash(), "versions": package_versions()}
