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

# "teacher" evaluates the teacher as it is (no training), the first row of every table
METHODS = ("teacher", "sft", "kd", "dakd")


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
    method: str = "dakd"  # "teacher" (eval only), "sft", "kd" (full data, `loss`), "dakd" (DiffUp + `loss`)
    loss: str = "bdl"  # any name of dakd.losses.get_loss; ignored by sft
    lam: float = 0.9  # BDL lambda (Eq. 4)
    alpha: float = 0.1  # skew KL / skew reverse KL (DistiLLM)
    schedule: str = "cosine"  # selection-ratio schedule (Eq. 2): cosine, linear, constant
    tau: float = 0.1  # share of the subset drawn from the low-DDS stratum (Algorithm 1)
    selection: str = "dds"  # dds (SDU), random (w/o DDS), top (w/o SDU), full (w/o DiffUp)
    dds_eps: float = 1e-6  # nats; keeps DDS finite when the teacher's CE is ~0 (Eq. 1)
    # data
    dataset: str = "dolly"
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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("lam", "alpha", "tau"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        # fail at construction, not at epoch 1 after an epoch of training
        from .data import PROMPT_STYLES
        from .losses import get_loss
        from .updater import MODES, SCHEDULES

        get_loss(self.loss)  # ValueError listing the valid names
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
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """Short sha256 of the settings that change results (the output folder excluded)."""
        d = self.to_dict()
        d.pop("output_dir")
        d.pop("save_checkpoints")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **kw) -> "DistillConfig":
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
