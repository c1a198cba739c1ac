"""Every training method as one declaration: which samples an epoch trains on (the *selector*),
where a batch's responses come from (the *source*), and what the student minimises (the
*objective*). `dakd.train` runs any declaration with one spine and one step; nothing there
branches on the method's name.

Built-in methods (``DistillConfig.method``):

==========  ==========  =============  ============  =========================================
method      selector    source         objective     paper
==========  ==========  =============  ============  =========================================
teacher     (no training: evaluates the teacher)     Table 1's Teacher row
sft         all         ground_truth   ce            SFT
kd          all         ground_truth   divergence    KD-KL, KD-RKL (any registered loss)
dakd        diffup      ground_truth   divergence    DA-KD: DiffUp (Algorithm 1) + BDL (Eq. 4)
seqkd       all         ground_truth   ce            SeqKD (responses sampled from the teacher once)
gkd         all         on_policy      divergence    GKD (on-policy student samples, JSD)
distillm    all         sgo            divergence    DistiLLM (adaptive SGO + replay, skew KL)
==========  ==========  =============  ============  =========================================

The parts live in `dakd.methods.selectors` (all samples; DiffUp with DDS), `dakd.methods.sources`
(ground truth; GKD's on-policy samples; DistiLLM's SGO with its replay buffer) and
`dakd.methods.objectives` (cross-entropy; a registered divergence against the live teacher or the
top-k cache). Methods compose: DiffUp with on-policy responses is

    register_method(Method("dakd_on_policy", "DA-KD (on-policy)", selector="diffup", source="on_policy"))

Losses are declared in `dakd.losses` (`register_loss`), the DiffUp selection rules in
`dakd.updater` (`register_selection`).
"""

from __future__ import annotations

from dataclasses import dataclass

# config fields every training method reads (models, data, optimisation, evaluation, output)
COMMON_FIELDS = ("teacher", "student", "dtype", "trust_remote_code", "dataset", "train_samples", "prompt_style",
                 "max_prompt_length", "max_length", "epochs", "batch_size", "micro_batch_size", "lr",
                 "weight_decay", "warmup_ratio", "max_grad_norm", "group_by_length", "seed")
_GENERATION = ("gen_max_new_tokens", "gen_temperature")


@dataclass(frozen=True)
class Method:
    """Declaration of one training method.

    name: ``DistillConfig.method``. label: the table row name (KD and DA-KD add their loss and
    settings: `run_label`). selector: a key of `dakd.methods.selectors.SELECTORS` ("all",
    "diffup"). source: a key of `dakd.methods.sources.SOURCES` ("ground_truth", "on_policy",
    "sgo"). objective: a key of `dakd.methods.objectives.OBJECTIVES` ("ce", "divergence").
    teacher_responses: the training responses are sampled from the teacher once before training
    (SeqKD). losses: the ``loss`` values it accepts (the first is its default); None = any
    registered loss; () = it uses none. fields: the config fields it reads beyond `COMMON_FIELDS`.
    trains: False for the evaluation-only Teacher row.
    """
    name: str
    label: str
    selector: str = "all"
    source: str = "ground_truth"
    objective: str = "divergence"
    teacher_responses: bool = False
    losses: tuple[str, ...] | None = None
    fields: tuple[str, ...] = ()
    trains: bool = True

    @property
    def needs_teacher(self) -> bool:
        """Whether training reads the teacher's distribution (every divergence objective)."""
        return self.trains and self.objective == "divergence"

    @property
    def reads_loss(self) -> bool:
        """Whether ``cfg.loss`` (and its weight field) matters."""
        return self.losses != ()


METHODS: dict[str, Method] = {}  # in the order of the paper's table rows


def register_method(method: Method) -> Method:
    """Declare a method: ``DistillConfig(method=name)`` then validates and `dakd.train.train` runs it.

    Raises:
        ValueError: the name is taken, or a part name is unknown.
    """
    from .objectives import OBJECTIVES
    from .selectors import SELECTORS
    from .sources import SOURCES

    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    for kind, value, valid in (("selector", method.selector, tuple(SELECTORS)),
                               ("source", method.source, tuple(SOURCES)),
                               ("objective", method.objective, tuple(OBJECTIVES))):
        if value not in valid:
            raise ValueError(f"{kind} of method {method.name!r} must be one of {valid}, got {value!r}")
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a registered method (for tests that declare a toy method)."""
    METHODS.pop(name)


_DIFFUP = ("schedule", "tau", "selection", "dds_eps")
register_method(Method("teacher", "Teacher", losses=(), trains=False))
register_method(Method("sft", "SFT", objective="ce", losses=()))
register_method(Method("kd", "KD", fields=("loss", "lam", "alpha", "beta", "teacher_cache_k")))
register_method(Method("seqkd", "SeqKD", objective="ce", teacher_responses=True, losses=(),
                       fields=(*_GENERATION, "eval_batch_size")))
register_method(Method("gkd", "GKD", source="on_policy", losses=("js_divergence",),
                       fields=("loss", "beta", "student_data_fraction", *_GENERATION)))
# DistiLLM with skew reverse KL (alpha 0.1) first: its setting for decoder LLMs (dakd.config)
register_method(Method("distillm", "DistiLLM", source="sgo", losses=("skew_reverse_kl", "skew_kl"),
                       fields=("loss", "alpha", "sgo_init_prob", "sgo_prob_step", "sgo_loss_eps", "sgo_max_prob",
                               "replay_buffer_size", "sgo_val_samples", *_GENERATION)))
register_method(Method("dakd", "DA-KD", selector="diffup",
                       fields=("loss", "lam", "alpha", "beta", "teacher_cache_k", *_DIFFUP)))

# DA-KD's settings in the paper (METHOD.md 5); a run differing from them says so in its label
DAKD_DEFAULTS = {"loss": "bdl", "selection": "dds", "lam": 0.9, "tau": 0.1, "schedule": "cosine"}


def run_label(cfg) -> str:
    """Row name of a run in the paper's tables.

    Teacher (method "teacher", or an "sft" run whose student is the teacher model: the paper's
    teacher-SFT stage), SFT, SeqKD, GKD, DistiLLM; KD-KL, KD-RKL (KD-<loss label> for other
    losses); DA-KD, and a DiffUp run that departs from the paper's settings lists how, in Table 4/5
    and sweep terms: "DA-KD (w/o DDS)", "(w/o SDU)", "(w/o DiffUp)", "(KL)" ... "(SRKL)",
    "(lambda=0.7)", "(tau=0.3)", "(linear schedule)", joined by ", ". A registered method that
    composes DiffUp with another source is named by its own label plus the same list.

    Raises:
        ValueError: an unknown method.
    """
    from ..losses import loss_spec
    from ..updater import SELECTION_MODES

    if cfg.method not in METHODS:
        raise ValueError(f"no table row name for method {cfg.method!r}")
    m = METHODS[cfg.method]
    if cfg.method == "sft" and cfg.student == cfg.teacher:
        return "Teacher"
    if m.selector == "all" and m.losses is None:
        return f"{m.label}-{loss_spec(cfg.loss).label}"
    if m.selector != "diffup":
        return m.label
    mode = SELECTION_MODES[cfg.selection]
    loss = loss_spec(cfg.loss).label
    extra = [] if mode.label is None else [mode.label]
    extra += [] if loss == "BDL" else [loss]
    if loss == "BDL" and cfg.lam != DAKD_DEFAULTS["lam"]:
        extra.append(f"lambda={cfg.lam:g}")
    if cfg.tau != DAKD_DEFAULTS["tau"] and cfg.selection == "dds":
        extra.append(f"tau={cfg.tau:g}")
    if cfg.schedule != DAKD_DEFAULTS["schedule"] and mode.shrinks:
        extra.append(f"{cfg.schedule} schedule")
    return m.label + (f" ({', '.join(extra)})" if extra else "")


def build_parts(run):
    """The selector, source and objective of ``run.cfg.method``, each built for ``run`` (a
    `dakd.runstate.Run`)."""
    from .objectives import OBJECTIVES
    from .selectors import SELECTORS
    from .sources import SOURCES

    m = METHODS[run.cfg.method]
    return SELECTORS[m.selector](run), SOURCES[m.source](run), OBJECTIVES[m.objective](run)
