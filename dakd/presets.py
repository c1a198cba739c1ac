"""Named presets: each is a dict run name -> DistillConfig, run in order by ``run_all.sh``.

``cpu`` is the default: the offline SmolLM2 pair on a Dolly subset, sized to finish in about half
an hour on a 2-core CPU. ``tiny`` is a smoke test with tiny random models (seconds). Paper-scale
presets with hub names belong to the baselines issue.
"""

from __future__ import annotations

from pathlib import Path

from .config import DistillConfig
from .models import DEFAULT_STUDENT, DEFAULT_TEACHER, TINY_STUDENT, TINY_TEACHER


def _methods(base: DistillConfig, root: str) -> dict[str, DistillConfig]:
    """The rows of the method table: teacher, SFT, KD-KL, KD-RKL and DA-KD, on one base config."""
    runs = {"teacher": base.replace(method="teacher"), "sft": base.replace(method="sft"),
            "kd_kl": base.replace(method="kd", loss="forward_kl"),
            "kd_rkl": base.replace(method="kd", loss="reverse_kl"),
            "dakd": base.replace(method="dakd", loss="bdl")}
    return {k: v.replace(output_dir=f"{root}/{k}") for k, v in runs.items()}


def cpu(root: str = "runs/cpu") -> dict[str, DistillConfig]:
    """Default CPU preset, sized for about 30 minutes on 2 cores (README: what it measured).

    A KD step on 8 Dolly samples costs ~8 s here (teacher forward + student forward/backward +
    loss over 49,152 classes), so four methods x 3 epochs fit ~128 samples; ChatML prompts, because
    the shipped teacher stops cleanly with them; lr 1e-4 because the 6-layer student cut from the
    teacher has to heal in a few dozen steps."""
    base = DistillConfig(teacher=DEFAULT_TEACHER, student=DEFAULT_STUDENT, prompt_style="chatml",
                         train_samples=128, epochs=3, batch_size=8, micro_batch_size=8, lr=1e-4,
                         max_prompt_length=256, max_length=320, eval_samples=40, eval_seeds=(10,),
                         max_new_tokens=128, eval_batch_size=16, seed=42)
    return _methods(base, root)


def tiny(root: str = "runs/tiny") -> dict[str, DistillConfig]:
    """Smoke preset: tiny random models with the real tokenizer and data; seconds on a CPU."""
    base = DistillConfig(teacher=TINY_TEACHER, student=TINY_STUDENT, prompt_style="chatml",
                         train_samples=24, epochs=2, batch_size=4, micro_batch_size=2, lr=1e-3,
                         max_prompt_length=64, max_length=96, eval_samples=4, eval_seeds=(10,),
                         max_new_tokens=8, eval_batch_size=4, save_checkpoints=False)
    return _methods(base, root)


PRESETS = {"cpu": cpu, "tiny": tiny}


def get_preset(name: str, root: str | None = None) -> dict[str, DistillConfig]:
    """Runs of preset ``name`` with output folders under ``root`` (default ``runs/<name>``).

    Raises:
        ValueError: unknown preset (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name](root or f"runs/{name}")


def write_papermill_params(name: str, folder: str | Path, root: str | None = None) -> list[Path]:
    """Write one papermill parameter file (YAML) per run; returns their paths.

    ``yaml.safe_dump`` writes floats that YAML reads back as floats (JSON's ``1e-06`` is a string
    to a YAML 1.1 reader such as papermill's)."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for run, cfg in get_preset(name, root).items():
        path = folder / f"{run}.yaml"
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()}
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        paths.append(path)
    return paths
