"""Named presets: each is a dict run name -> DistillConfig, run in order, and a table registry
saying which of those runs make each of the paper's tables and figures (`get_tables`).

A run name is one config: a run shared by several tables (DA-KD with the paper's settings is the
DiffUp row of Table 4, the BDL row of Table 5, lambda 0.9, tau 0.1 and the cosine schedule) is
trained once, and `dakd.pipeline.run` reuses any finished run with the same config hash, so a
preset's run list is the union of its tables' runs.

Presets
-------
``cpu`` (default, ``./run_all.sh``): the offline SmolLM2 pair on 128 Dolly samples; Table 1's
    core rows (Teacher, SFT, KD-KL, KD-RKL, DA-KD) on DollyEval; 22 min measured here (README).
    Its configs are pinned (tests/test_presets.py): the committed CPU results stay valid.
``tiny``: the same five rows on tiny random models (seconds); the tests' smoke preset.
``cpu-full``: every table and figure of the paper at CPU scale on the SmolLM2 pair, about 90 min
    here (2 cores); see `cpu_full` for what each table costs.
``tiny-full``: the same tables as ``cpu-full`` on the tiny pair (seconds per run), for the tests.
Paper presets (hub names, bf16, the paper's settings, for GPUs; `PAPER_PRESET_NEEDS` says what
    each needs): ``llama2-7b-sheared-1.3b``, ``llama2-7b-sheared-2.7b``, ``qwen2.5-7b-1.5b``,
    ``qwen2.5-7b-0.5b``, ``llama3.2-3b-1b``.

Table names (`TABLES`): ``table1`` (instruction following, five sets), ``table2`` (SAMSum and
GSM8K, each method trained on that task's train split), ``table3`` (training cost), ``figure1``
(ROUGE-L against iterations, DA-KD vs full-data KD with BDL), ``table4`` (DiffUp ablation),
``table5`` (loss ablation with DiffUp), ``lambda_sweep``, ``tau_sweep``, ``schedules``; and
``claims`` (the claims study, `dakd.claims`: presets ``cpu-claims`` and ``tiny-claims`` only).
"""

from __future__ import annotations

from pathlib import Path

from .config import DistillConfig
from .methods import METHODS
from .models import DEFAULT_STUDENT, DEFAULT_TEACHER, TINY_STUDENT, TINY_TEACHER

TABLES = ("table1", "table2", "table3", "figure1", "table4", "table5", "lambda_sweep", "tau_sweep",
          "schedules", "claims")
# the paper's tables and figures (every table but the claims study's, which has its own preset)
PAPER_TABLES = tuple(t for t in TABLES if t != "claims")
# Table 1's five instruction-following sets, DollyEval first (Figure 1 evaluates eval_datasets[0])
INSTRUCTION_SETS = ("dolly", "self_instruct", "vicuna", "sinst", "uinst")
TASK_SETS = ("samsum", "gsm8k")  # Table 2
LAMBDAS = (0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # the paper's lambda figure
TAUS = (0.0, 0.1, 0.3, 0.5)
# Table 5's losses (DiffUp with each), in the paper's row order; BDL is the shared `dakd` run
TABLE5_LOSSES = {"dakd_kl": "forward_kl", "dakd_rkl": "reverse_kl", "dakd_jsd": "js_divergence",
                 "dakd_skl": "skew_kl", "dakd_srkl": "skew_reverse_kl", "dakd": "bdl"}
# Table 4's variants: selection mode of DiffUp (METHOD.md 3)
TABLE4_SELECTIONS = {"dakd": "dds", "dakd_random": "random", "dakd_top": "top", "dakd_full": "full"}


def _methods(base: DistillConfig, root: str) -> dict[str, DistillConfig]:
    """The rows of the method table: teacher, SFT, KD-KL, KD-RKL and DA-KD, on one base config."""
    runs = {"teacher": base.replace(method="teacher"), "sft": base.replace(method="sft"),
            "kd_kl": base.replace(method="kd", loss="forward_kl"),
            "kd_rkl": base.replace(method="kd", loss="reverse_kl"),
            "dakd": base.replace(method="dakd", loss="bdl")}
    return {k: v.replace(output_dir=f"{root}/{k}") for k, v in runs.items()}


def _num(x: float) -> str:
    """0.1 -> "0.1", 0.0 -> "0" (run-name suffixes)."""
    return f"{x:g}"


def _suite(base: DistillConfig, root: str, tables: tuple[str, ...], *,
           table1_eval: tuple[str, ...] = INSTRUCTION_SETS, ablation_eval: tuple[str, ...] = INSTRUCTION_SETS,
           task: dict | None = None, baseline: dict | None = None,
           teacher_sft: bool = False) -> tuple[dict[str, DistillConfig], dict[str, list[str]]]:
    """The runs of ``tables`` on one base config, and which runs make each table.

    ``base`` carries the model pair and the training and evaluation settings of the Dolly runs.
    ``table1_eval``: the sets of Table 1's runs (the shared ``dakd`` run among them);
    ``ablation_eval``: the sets of the ablation-only runs (Tables 4, 5, sweeps, Figure 1's KD run);
    both must start with "dolly". ``task``: DistillConfig fields overriding ``base`` for the
    Table 2 runs (``dataset`` and ``eval_datasets`` are set per task); its key "baseline" (a dict)
    updates ``baseline`` there. ``baseline``: fields
    overriding the SeqKD, GKD and DistiLLM runs only (their generation settings, `dakd.baselines`),
    so that the other runs keep the hash they have without them. ``teacher_sft``: first
    fine-tune the teacher (method "sft" with the teacher as student) on each training set used,
    and name ``<that run>/student`` as every later run's teacher; the SFT run is then also the
    Teacher row (its evaluation is the fine-tuned teacher's). Without it the teacher is used as
    given and a method "teacher" run is the Teacher row.

    Returns:
        (runs in run order, {table: [run names]}); every table's runs are keys of the runs dict.

    Raises:
        ValueError: an unknown table name, or an evaluation list not starting with "dolly".
    """
    unknown = set(tables) - set(PAPER_TABLES)
    if unknown:
        raise ValueError(f"unknown tables {sorted(unknown)}; known: {PAPER_TABLES}")
    for sets in (table1_eval, ablation_eval):
        if sets[0] != "dolly":
            raise ValueError(f"the Dolly-trained runs must be evaluated on dolly first, got {sets}")
    suite = _Suite(root, base.teacher, teacher_sft)
    if _DOLLY_TABLES & set(tables):
        suite.dolly(base, tables, table1_eval, ablation_eval, baseline or {})
    if "table2" in tables:
        suite.tasks(base, task or {}, baseline or {})
    runs, tab = suite.runs, suite.tab
    # run order: teacher fine-tuning first (later runs load its output), then the rest as added
    order = sorted(runs, key=lambda k: not k.endswith("teacher_sft"))
    return {k: runs[k] for k in order}, {t: tab[t] for t in TABLES if t in tab}


_DOLLY_TABLES = {"table1", "table3", "figure1", "table4", "table5", "lambda_sweep", "tau_sweep", "schedules"}


def _baselines(inst: DistillConfig, gen: DistillConfig) -> dict[str, DistillConfig]:
    """Table 1's baseline rows on a base config (``gen``: the base with the generation settings of
    SeqKD, GKD and DistiLLM); GKD and DistiLLM train with their declared default loss
    (`dakd.methods.METHODS`: JSD; skew reverse KL, DistiLLM's setting for decoder LLMs)."""
    return {"sft": inst.replace(method="sft"),
            "kd_kl": inst.replace(method="kd", loss="forward_kl"),
            "kd_rkl": inst.replace(method="kd", loss="reverse_kl"),
            "seqkd": gen.replace(method="seqkd"),
            "gkd": gen.replace(method="gkd", loss=METHODS["gkd"].losses[0]),
            "distillm": gen.replace(method="distillm", loss=METHODS["distillm"].losses[0])}


class _Suite:
    """The runs of a suite being built: {name: config} and {table: [run names]}, one config per name."""

    def __init__(self, root: str, hub_teacher: str, teacher_sft: bool):
        self.root, self.hub_teacher, self.teacher_sft = root, hub_teacher, teacher_sft
        self.runs: dict[str, DistillConfig] = {}
        self.tab: dict[str, list[str]] = {}

    def add(self, name: str, cfg: DistillConfig) -> str:
        cfg = cfg.replace(output_dir=f"{self.root}/{name}")
        if name in self.runs and self.runs[name] != cfg:  # one run name is one config
            raise AssertionError(f"run {name!r} defined twice with different configs")
        self.runs[name] = cfg
        return name

    def teacher_of(self, prefix: str, fam: DistillConfig) -> tuple[str, DistillConfig]:
        """The Teacher-row run of one training set and the base its students use."""
        if self.teacher_sft:
            name = self.add(f"{prefix}teacher_sft", fam.replace(method="sft", student=self.hub_teacher,
                                                                teacher=self.hub_teacher, save_epoch_students=False))
            return name, fam.replace(teacher=f"{self.root}/{name}/student")
        return self.add(f"{prefix}teacher", fam.replace(method="teacher")), fam

    def dolly(self, base, tables, table1_eval, ablation_eval, baseline: dict) -> None:
        """Tables 1, 3, 4, 5, Figure 1 and the sweeps: the Dolly-trained runs."""
        fam = base.replace(dataset="dolly")
        main_eval = table1_eval if "table1" in tables else ablation_eval
        save = "figure1" in tables  # Figure 1 evaluates every epoch's student of these two runs
        t_name, fam = self.teacher_of("", fam.replace(eval_datasets=main_eval))
        inst = fam.replace(eval_datasets=main_eval, save_epoch_students=False)
        rows = _baselines(inst, inst.replace(**baseline)) if {"table1", "table3"} & set(tables) else {}
        for k, v in rows.items():
            self.add(k, v)
        dakd = self.add("dakd", inst.replace(method="dakd", loss="bdl", save_epoch_students=save))
        if "table1" in tables:
            self.tab["table1"] = [t_name, *rows, dakd]
        if "table3" in tables:
            self.tab["table3"] = [*rows, dakd]
        variant = fam.replace(eval_datasets=ablation_eval, save_epoch_students=False, method="dakd", loss="bdl")
        self.ablations(tables, self.runs[dakd], variant, save)

    def ablations(self, tables, dakd_cfg: DistillConfig, variant: DistillConfig, save: bool) -> None:
        """Table 4 (DiffUp modes), Table 5 (losses), Figure 1's full-data run and the sweeps."""
        add, tab = self.add, self.tab
        if "table4" in tables or "figure1" in tables:
            for name, sel in TABLE4_SELECTIONS.items():
                if name != "dakd" and (name == "dakd_full" or "table4" in tables):
                    add(name, variant.replace(selection=sel, save_epoch_students=save and name == "dakd_full"))
        if "figure1" in tables:
            tab["figure1"] = ["dakd", "dakd_full"]  # DA-KD, and full-data KD with the same loss (BDL)
        if "table4" in tables:
            tab["table4"] = list(TABLE4_SELECTIONS)
        if "table5" in tables:
            for name, loss in TABLE5_LOSSES.items():
                if name != "dakd":
                    add(name, variant.replace(loss=loss))
            tab["table5"] = list(TABLE5_LOSSES)
        if "lambda_sweep" in tables:
            tab["lambda_sweep"] = [
                "dakd" if lam == dakd_cfg.lam else add(f"dakd_lam{_num(lam)}", variant.replace(
                    lam=lam, allow_degenerate_loss=lam == 0.5))  # 0.5: BDL is 0, the collapse the paper shows
                for lam in LAMBDAS]
        if "tau_sweep" in tables:
            tab["tau_sweep"] = ["dakd" if tau == dakd_cfg.tau else add(f"dakd_tau{_num(tau)}", variant.replace(tau=tau))
                                for tau in TAUS]
        if "schedules" in tables:
            tab["schedules"] = ["dakd", add("dakd_linear", variant.replace(schedule="linear"))]

    def tasks(self, base, task: dict, baseline: dict) -> None:
        """Table 2: each method trained and evaluated on SAMSum and on GSM8K."""
        self.tab["table2"] = []
        for ds in TASK_SETS:
            fam = base.replace(**{k: v for k, v in task.items() if k != "baseline"})
            fam = fam.replace(dataset=ds, eval_datasets=(ds,), save_epoch_students=False)
            t_name, fam = self.teacher_of(f"{ds}_", fam)
            rows = _baselines(fam, fam.replace(**(baseline | task.get("baseline", {}))))
            rows = {k: v for k, v in rows.items() if k != "seqkd"} | {"dakd": fam.replace(method="dakd", loss="bdl")}
            self.tab["table2"] += [t_name] + [self.add(f"{ds}_{k}", cfg) for k, cfg in rows.items()]


# ------------------------------------------------------------------------------------ CPU presets

def cpu(root: str = "runs/cpu") -> dict[str, DistillConfig]:
    """Default CPU preset, sized for about 30 minutes on 2 cores (README: what it measured).

    A KD step on 8 Dolly samples cost ~8 s here on a shared machine (teacher forward + student
    forward/backward + loss over 49,152 classes; ~2.4 s on the idle machine with the response-rows
    heads), so four methods x 3 epochs fit ~128 samples; ChatML prompts, because
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


def cpu_full(root: str = "runs/cpu-full") -> tuple[dict[str, DistillConfig], dict[str, list[str]]]:
    """Every table and figure of the paper at CPU scale, on the offline SmolLM2 pair: 42 runs,
    about 90 minutes on this machine (2 CPU cores, fp32); `./run_all.sh --preset cpu-full`.

    Smaller than ``cpu`` per run so that all of it fits: 32 Dolly training samples (seeded
    subset), 3 epochs, global batch 8, lr 1e-4, ChatML prompts (<= 192 tokens, total <= 256),
    one sampling seed (10), 64 new tokens, batches of 16 prompts. Table 1's runs (the shared DA-KD
    run among them) are evaluated on the first 16 prompts of each of the five instruction sets;
    the ablation-only runs on the same 16 DollyEval prompts only (their tables compare the Dolly
    column). Table 2: 32 training samples of SAMSum / GSM8K each, the first 16 test prompts, up
    to 128 new tokens (SAMSum's own cap; GSM8K's chains of thought need more than 64), prompts
    <= 256 tokens and total <= 320 (SAMSum's dialogues are long, its summaries short). SeqKD, GKD
    and DistiLLM generate at most 64 new tokens (128 for the tasks) while training, and DistiLLM's
    adaptive schedule validates on 16 dev records (its default, 1,000, would cost minutes per epoch).

    No teacher SFT at CPU scale: the paper fine-tunes its teachers on Dolly first, but one teacher
    pass over Dolly's 11,435 training samples alone takes about an hour here; SmolLM2-135M-Instruct
    is already instruction-tuned and is used as shipped (README, "No teacher SFT").

    Estimated minutes here, from: a KD step on 8 samples of <= 256 tokens ~5 s (an SFT step about
    half), a DDS pass over 32 samples ~10 s, generation ~1 s per 10 new tokens per batch of 16
    (the 30-layer teacher ~2.5x slower), ~15 s of loading and notebook start per run. KD: 3 x 4
    steps; DA-KD (cosine, r = 1, 0.75, 0.25): 4 + 3 + 1 steps plus two DDS passes. SeqKD, GKD and
    DistiLLM add teacher / student generation (SeqKD once, GKD and DistiLLM during training), the
    least certain part of these estimates.

    ========================  ======================================================  =======
    table                     runs (new ones, if run in this order)                   minutes
    ========================  ======================================================  =======
    table1                    teacher, sft, kd_kl, kd_rkl, seqkd, gkd, distillm, dakd  ~26
    table4                    + dakd_random, dakd_top, dakd_full                       ~6
    table5                    + dakd_kl, dakd_rkl, dakd_jsd, dakd_skl, dakd_srkl      ~10
    lambda_sweep              + 8 lambdas (0.9 is dakd)                                ~16
    tau_sweep                 + 3 taus (0.1 is dakd)                                   ~6
    schedules                 + dakd_linear (cosine is dakd)                           ~2
    table2                    14 runs: samsum_* and gsm8k_* (7 rows each)              ~31
    table3, figure1           none new (Table 1's runs; dakd and dakd_full)            0
    02_results, quickstart                                                             ~4
    ========================  ======================================================  =======

    Conservative (Dolly samples average ~160 tokens, so most batches are cheaper than 256 tokens):
    about 90 minutes in all. Checkpoints are off (42 runs x ~0.6 GB); a killed run restarts.
    """
    base = DistillConfig(teacher=DEFAULT_TEACHER, student=DEFAULT_STUDENT, prompt_style="chatml",
                         train_samples=32, epochs=3, batch_size=8, micro_batch_size=8, lr=1e-4,
                         max_prompt_length=192, max_length=256, eval_samples=16, eval_seeds=(10,),
                         max_new_tokens=64, eval_batch_size=16, seed=42, save_checkpoints=False)
    # SeqKD / GKD / DistiLLM generate as many tokens as the evaluation (the default 256 is capped by
    # max_length anyway); DistiLLM's adaptive SGO rule validates on 16 Dolly dev records, not 1,000
    return _suite(base, root, PAPER_TABLES, table1_eval=INSTRUCTION_SETS, ablation_eval=("dolly",),
                  task={"max_prompt_length": 256, "max_length": 320, "max_new_tokens": 128,
                        "baseline": {"gen_max_new_tokens": 128}},
                  baseline={"gen_max_new_tokens": 64, "sgo_val_samples": 16})


def tiny_full(root: str = "runs/tiny-full") -> tuple[dict[str, DistillConfig], dict[str, list[str]]]:
    """The tables of ``cpu-full`` on the tiny random pair: ~2 s per run, for the tests of the table
    notebooks (03, 04, 05). 6 training samples in global batches of 3 (2 steps at epoch 0, 1 at
    epoch 1 of DA-KD), the first 2 test prompts of each set (prompts <= 112 tokens keep at least
    one of them in every instruction set; <= 224 for SAMSum), 4 new tokens; the numbers mean
    nothing."""
    base = DistillConfig(teacher=TINY_TEACHER, student=TINY_STUDENT, prompt_style="chatml",
                         train_samples=6, epochs=2, batch_size=3, micro_batch_size=3, lr=1e-3,
                         max_prompt_length=112, max_length=128, eval_samples=2, eval_seeds=(10,),
                         max_new_tokens=4, eval_batch_size=2, seed=42, save_checkpoints=False)
    return _suite(base, root, PAPER_TABLES, table1_eval=INSTRUCTION_SETS, ablation_eval=("dolly",),
                  task={"max_prompt_length": 224, "max_length": 256},
                  baseline={"gen_max_new_tokens": 4, "sgo_val_samples": 2})


# the claims study's runs (dakd.claims.COMPARISONS and COSTS name them)
CLAIMS_STUDENT = DEFAULT_STUDENT  # the 6-layer cut (benchmarks/claims_student.py: why)


def cpu_claims(root: str = "runs/cpu-claims") -> tuple[dict[str, DistillConfig], dict[str, list[str]]]:
    """The claims study (issue 15, `dakd.claims`): the runs behind the paper's claims, in the
    paper's regime (10 epochs, cosine selection ratio and learning rate, lambda 0.9, tau 0.1), on
    the offline SmolLM2 pair; one table, ``claims``, made by notebooks/06_claims.ipynb
    (``./run_all.sh --preset cpu-claims``).

    Runs: full-data KD-KL, KD-RKL and BDL (``dakd_full``, Table 4's "w/o DiffUp"); DA-KD
    (``dakd``); DiffUp with KL, RKL, JSD, SKL, SRKL (Table 5); DiffUp with a random subset and with
    every sample from the top (Table 4); lambda 0.5, 0.6, 0.7, 0.8 (0.9 is ``dakd``); DA-KD with the
    live teacher (``dakd_exact``: the top-k cache's effect, and the cost beside DistiLLM); DistiLLM
    (its default loss, SRKL; the live teacher: it scores its own samples).

    Every KD and DiffUp run but ``dakd_exact`` reads the teacher from the top-k cache (k = 256,
    built once, ~1 min): its step is the student's alone. The student
    (`CLAIMS_STUDENT`) and the sizes are chosen in benchmarks/claims_student.py and the README's
    claims section, with the numbers. ROUGE-L on the first ``eval_samples`` DollyEval prompts,
    sampled as the protocol says (temperature 1, top-k 0, top-p 1), each seed of ``eval_seeds``;
    teacher-forced metrics on the whole DollyEval set, added after training by one teacher pass
    for all runs (`dakd.claims.add_teacher_forced`). Checkpoints off; each finished run is reused,
    so the study resumes run by run.
    """
    base = DistillConfig(teacher=DEFAULT_TEACHER, student=CLAIMS_STUDENT, prompt_style="chatml", dataset="dolly",
                         train_samples=128, epochs=10, batch_size=8, micro_batch_size=8, lr=1e-4,
                         max_prompt_length=192, max_length=256, eval_samples=256, eval_seeds=(10,),
                         max_new_tokens=64, eval_batch_size=16, seed=42, save_checkpoints=False,
                         method="dakd", loss="bdl", teacher_cache_k=256)
    gen = {"gen_max_new_tokens": 64, "sgo_val_samples": 16}
    # run order: the claims' core runs first, so a study stopped early has answered the most
    runs = {"dakd": base,
            "dakd_full": base.replace(selection="full"),
            "kd_kl": base.replace(method="kd", loss="forward_kl"),
            "kd_rkl": base.replace(method="kd", loss="reverse_kl"),
            "dakd_random": base.replace(selection="random"),
            "dakd_top": base.replace(selection="top"),
            **{k: base.replace(loss=loss) for k, loss in TABLE5_LOSSES.items() if k != "dakd"},
            **{f"dakd_lam{_num(lam)}": base.replace(lam=lam, allow_degenerate_loss=lam == 0.5)
               for lam in (0.5, 0.6, 0.7, 0.8)},
            "dakd_exact": base.replace(teacher_cache_k=None),
            "distillm": base.replace(method="distillm", loss=METHODS["distillm"].losses[0], teacher_cache_k=None,
                                     **gen)}
    runs = {k: v.replace(output_dir=f"{root}/{k}") for k, v in runs.items()}
    return runs, {"claims": list(runs)}


def tiny_claims(root: str = "runs/tiny-claims") -> tuple[dict[str, DistillConfig], dict[str, list[str]]]:
    """The runs of ``cpu-claims`` on the tiny random pair (2 epochs, 6 samples, 4 prompts): seconds
    per run, for the tests of `dakd.claims` and notebooks/06_claims.ipynb; the numbers mean nothing."""
    runs, tables = cpu_claims(root)
    tiny_fields = dict(teacher=TINY_TEACHER, student=TINY_STUDENT, train_samples=6, epochs=2, batch_size=3,
                       micro_batch_size=3, lr=1e-3, max_prompt_length=112, max_length=128, eval_samples=4,
                       max_new_tokens=4, eval_batch_size=4, teacher_forced_samples=8)
    out = {k: v.replace(**tiny_fields) for k, v in runs.items()}
    out["distillm"] = out["distillm"].replace(gen_max_new_tokens=4, sgo_val_samples=2)
    return out, tables


# ---------------------------------------------------------------------------------- paper presets

# Teacher and students (hub names), and the tables each paper pair appears in
_PAPER_PAIRS = {
    "llama2-7b-sheared-1.3b": ("meta-llama/Llama-2-7b-hf", "princeton-nlp/Sheared-LLaMA-1.3B",
                               ("table1", "table2", "table4", "table5", "lambda_sweep", "tau_sweep", "schedules")),
    "llama2-7b-sheared-2.7b": ("meta-llama/Llama-2-7b-hf", "princeton-nlp/Sheared-LLaMA-2.7B",
                               ("table1", "table3", "figure1")),
    "qwen2.5-7b-1.5b": ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-1.5B", ("table1", "table2")),
    "qwen2.5-7b-0.5b": ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-0.5B", ("table1",)),
    "llama3.2-3b-1b": ("meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.2-1B", ("table2",)),
}

# What each paper preset needs, by our estimate (no GPU run of these presets has been made here).
# Memory: `dakd.plan` (python -m dakd.cli plan PRESET --gpus 4 --gpu-memory 80), with training as it
# runs after the mixed-precision fix: fp32 trained weights and AdamW moments (16 bytes per trained
# parameter before sharding, plus the bf16 compute copies), the frozen teacher 2 bytes/parameter on
# every GPU, activations of micro-batch 2 x 512 tokens (no activation checkpointing) and the logits;
# the strategies named below are the least sharded that fit with 10 % headroom on 4 GPUs.
# Hours: scaled from the paper's Table 3 (4 x A800 80 GB, Llama2-7B -> Sheared-LLaMA-2.7B, 11,435
# Dolly samples x 10 epochs: SFT 63 min, KD 141, SeqKD 160, GKD 408, DistiLLM 213, DA-KD 106) by
# training FLOPs (3 x student + 1 x teacher parameters per token) and by training-set size (SAMSum
# 14,732, GSM8K 7,473), plus evaluation (5 seeds x 256 new tokens over ~3,800 instruction prompts:
# ~15 min per student and ~45 min per 7B teacher on 4 GPUs). Treat them as +-50 %.
PAPER_PRESET_NEEDS = {
    "llama2-7b-sheared-1.3b": {
        "gpus": "4-8 x 80 GB (A100/A800/H100)",
        "teacher_sft": "Llama-2-7B full fine-tune: ~44 GB per GPU with configs/accelerate/deepspeed_zero2.yaml "
                       "(80 GB cards), ~36 GB with fsdp.yaml (40 GB cards, tight); DDP needs ~156 GB",
        "students": "Sheared-LLaMA-1.3B beside the 13.5 GB bf16 teacher: ~46 GB per GPU with "
                    "configs/accelerate/ddp.yaml (80 GB cards), ~24 GB with deepspeed_zero2.yaml (40 GB)",
        "hours_4gpu": {"teacher_sft (dolly, samsum, gsm8k)": 8, "table1": 13, "table2": 25,
                       "table4/5, sweeps (20 DA-KD runs)": 32, "evaluation": 10, "total": 88},
    },
    "llama2-7b-sheared-2.7b": {
        "gpus": "4 x 80 GB (the paper's Table 3: 4 x A800)",
        "teacher_sft": "Llama-2-7B full fine-tune: configs/accelerate/deepspeed_zero2.yaml on 80 GB cards, "
                       "fsdp.yaml on 40 GB (as above)",
        "students": "Sheared-LLaMA-2.7B beside the 13.5 GB bf16 teacher: ~33 GB per GPU with "
                    "configs/accelerate/deepspeed_zero2.yaml (80 or 40 GB cards); DDP needs ~78 GB",
        "hours_4gpu": {"teacher_sft": 2.8, "table1/table3 (7 methods)": 21, "figure1 (dakd_full + epoch evals)": 5,
                       "evaluation": 3, "total": 32},
    },
    "qwen2.5-7b-1.5b": {
        "gpus": "4-8 x 80 GB",
        "teacher_sft": "Qwen2.5-7B full fine-tune: ~52 GB per GPU with configs/accelerate/deepspeed_zero2.yaml "
                       "on 4 x 80 GB; no strategy fits 4 x 40 GB (ZeRO-3 ~42 GB)",
        "students": "Qwen2.5-1.5B beside the 15 GB bf16 teacher: ~55 GB per GPU with configs/accelerate/ddp.yaml "
                    "(80 GB cards), ~30 GB with deepspeed_zero2.yaml (40 GB)",
        "hours_4gpu": {"teacher_sft (dolly, samsum, gsm8k)": 9, "table1": 15, "table2": 28, "evaluation": 6,
                       "total": 58},
    },
    "qwen2.5-7b-0.5b": {
        "gpus": "4 x 80 GB (the teacher SFT does not fit 4 x 40 GB)",
        "teacher_sft": "Qwen2.5-7B full fine-tune: configs/accelerate/deepspeed_zero2.yaml on 80 GB cards "
                       "(as above; 40 GB cards are too small for it)",
        "students": "Qwen2.5-0.5B beside the 15 GB bf16 teacher: ~30 GB per GPU with configs/accelerate/ddp.yaml",
        "hours_4gpu": {"teacher_sft": 3, "table1": 11, "evaluation": 3, "total": 17},
    },
    "llama3.2-3b-1b": {
        "gpus": "4 x 40-80 GB",
        "teacher_sft": "Llama-3.2-3B full fine-tune: ~24 GB per GPU with configs/accelerate/deepspeed_zero2.yaml "
                       "(80 or 40 GB cards); DDP needs ~77 GB",
        "students": "Llama-3.2-1B beside the 6.4 GB bf16 teacher: ~38 GB per GPU with configs/accelerate/ddp.yaml "
                    "(80 GB cards), ~18 GB with deepspeed_zero2.yaml (40 GB)",
        "hours_4gpu": {"teacher_sft (samsum, gsm8k)": 3, "table2": 14, "evaluation": 1, "total": 18},
    },
}


def paper(name: str, root: str | None = None) -> tuple[dict[str, DistillConfig], dict[str, list[str]]]:
    """A paper preset: the pair's hub names and the paper's settings (METHOD.md 5), made explicit.

    bf16 weights; global batch 32 (micro-batches of 2 per process, accumulated), AdamW lr 1e-5,
    cosine LR, 10 epochs; DA-KD with tau 0.1, lambda 0.9, cosine ratio schedule; MiniLLM's Alpaca
    prompts (<= 256 tokens, total <= 512); evaluation on the full test sets, 5 sampling seeds
    (10 ... 50), 256 new tokens, batches of 32. The first run, ``teacher_sft`` (method "sft" with
    the teacher as student, on Dolly's whole train split), is the teacher of every later Dolly run
    (``<root>/teacher_sft/student``) and Table 1's Teacher row; it uses the students' settings
    above (the paper gives none for the teacher SFT). Table 2's runs use a teacher
    fine-tuned on the same task's train split (``samsum_teacher_sft``, ``gsm8k_teacher_sft``): our
    reading of the paper's task-specific setting, which does not say.

    The paper's "batch size 8" is per GPU: its Table 3 counts 3,570 full-data iterations for
    11,435 samples x 10 epochs, i.e. 32 samples per iteration on its 4 GPUs. These presets set the
    global batch to 32 (``batch_size`` is global here, METHOD.md 6.2), so the optimisation and the
    iteration counts are the paper's on any number of GPUs (8 per GPU on 4, 4 on 8 ...).

    Raises:
        ValueError: unknown paper preset.
    """
    if name not in _PAPER_PAIRS:
        raise ValueError(f"unknown paper preset {name!r}; known: {', '.join(_PAPER_PAIRS)}")
    teacher, student, tables = _PAPER_PAIRS[name]
    base = DistillConfig(teacher=teacher, student=student, dtype="bfloat16", prompt_style="alpaca",
                         train_samples=None, epochs=10, batch_size=32, micro_batch_size=2, lr=1e-5,
                         weight_decay=0.0, warmup_ratio=0.0, max_grad_norm=1.0, schedule="cosine",
                         tau=0.1, lam=0.9, alpha=0.1, selection="dds", max_prompt_length=256, max_length=512,
                         eval_samples=None, eval_seeds=(10, 20, 30, 40, 50), max_new_tokens=256,
                         eval_batch_size=32, seed=42, save_checkpoints=True)
    return _suite(base, root or f"runs/{name}", tables, teacher_sft=True)


# which published numbers each preset's tables are compared with: Table 1's student (the Teacher
# row is its teacher's) and Table 2's family. The CPU presets' SmolLM2 pair (135M -> 49.5M, ~1/3
# of the teacher) is compared with the Llama2-7B -> Sheared-LLaMA-1.3B pair (~1/5), the ablations'
# pair in the paper.
PAPER_COMPARISON = {
    "llama2-7b-sheared-1.3b": {"table1_student": "Sheared-LLaMA-1.3B", "table2_family": "Llama2"},
    "llama2-7b-sheared-2.7b": {"table1_student": "Sheared-LLaMA-2.7B", "table2_family": None},
    "qwen2.5-7b-1.5b": {"table1_student": "Qwen2.5-1.5B", "table2_family": "Qwen2.5"},
    "qwen2.5-7b-0.5b": {"table1_student": "Qwen2.5-0.5B", "table2_family": None},
    "llama3.2-3b-1b": {"table1_student": None, "table2_family": "Llama3.2"},
}


def paper_comparison(name: str) -> dict:
    """{``table1_student``, ``table2_family``}: the paper's student (Table 1) and model family
    (Table 2) whose published numbers stand beside preset ``name``'s; Sheared-LLaMA-1.3B and
    Llama2 for the CPU and tiny presets. Tables 3-5 have one published pair each."""
    return PAPER_COMPARISON.get(name, {"table1_student": "Sheared-LLaMA-1.3B", "table2_family": "Llama2"})


PRESETS = {"cpu": cpu, "tiny": tiny, "cpu-full": cpu_full, "tiny-full": tiny_full, "cpu-claims": cpu_claims,
           "tiny-claims": tiny_claims,
           **{name: (lambda root, _n=name: paper(_n, root)) for name in _PAPER_PAIRS}}


def _build(name: str, root: str | None) -> tuple[dict[str, DistillConfig], dict[str, list[str]]]:
    """(runs, tables) of preset ``name``; the single-table presets get their registry here."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    built = PRESETS[name](root or f"runs/{name}")
    if isinstance(built, tuple):
        return built
    # cpu and tiny: Table 1's core rows on DollyEval (run_all.sh runs no table notebook for them)
    return built, {"table1": list(built)}


def get_preset(name: str, root: str | None = None) -> dict[str, DistillConfig]:
    """Runs of preset ``name`` with output folders under ``root`` (default ``runs/<name>``), in the
    order to run them (a ``*teacher_sft`` run before every run whose teacher it is).

    Raises:
        ValueError: unknown preset (the message lists the known ones).
    """
    return _build(name, root)[0]


def get_tables(name: str) -> dict[str, list[str]]:
    """{table: [run names]} of preset ``name``, for the tables it has (a subset of `TABLES`, in that
    order); every name is a run of `get_preset`. A run shared by tables is one config.

    Raises:
        ValueError: unknown preset.
    """
    return _build(name, None)[1]


def needed_runs(name: str, tables: list[str] | tuple[str, ...], root: str | None = None) -> list[str]:
    """The runs to make ``tables`` of preset ``name``, in run order: the tables' runs plus every run
    whose ``<output_dir>/student`` one of them uses as its teacher (a teacher SFT run).

    Raises:
        ValueError: unknown preset, or a table the preset does not have.
    """
    runs, tabs = _build(name, root)
    missing = [t for t in tables if t not in tabs]
    if missing:
        raise ValueError(f"preset {name!r} has no {missing}; it has {list(tabs)}")
    want = {r for t in tables for r in tabs[t]}
    by_student = {str(Path(c.output_dir) / "student"): k for k, c in runs.items()}
    for r in list(want):
        dep = by_student.get(str(Path(runs[r].teacher)))
        if dep is not None:
            want.add(dep)
    return [k for k in runs if k in want]


# Upper bounds, minutes per run, for papermill's --execution-timeout (run_all.sh): measured here
# (2 CPU cores) a tiny run takes well under a minute and a cpu / cpu-full run 1-9 minutes (training
# plus evaluation, the machine shared); a paper run on 4 GPUs takes up to ~7 hours
# (PAPER_PRESET_NEEDS: GKD on Dolly, scaled from the paper's Table 3). About 3x headroom.
RUN_MINUTES_BOUND = {"tiny": 5, "tiny-full": 5, "cpu": 30, "cpu-full": 30, "tiny-claims": 5, "cpu-claims": 30}
PAPER_RUN_MINUTES_BOUND = 24 * 60


def notebook_timeout(name: str) -> int:
    """Seconds papermill waits for one notebook cell of preset ``name`` before failing the run
    (``--execution-timeout`` in run_all.sh; ``--notebook-timeout`` or ``$DAKD_NOTEBOOK_TIMEOUT``
    override it). A table notebook trains all its missing runs in one cell, so the bound is the
    preset's number of runs times its per-run bound (`RUN_MINUTES_BOUND`, else
    `PAPER_RUN_MINUTES_BOUND`).

    Raises:
        ValueError: unknown preset.
    """
    runs = get_preset(name)
    return int(60 * RUN_MINUTES_BOUND.get(name, PAPER_RUN_MINUTES_BOUND) * max(len(runs), 1))


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
