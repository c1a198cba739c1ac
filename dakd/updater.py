"""DiffUp: which samples each epoch trains on (DA-KD, Eq. 2 and Algorithm 1).

The selection ratio r(e) shrinks the training set epoch by epoch; stratified data updating (SDU)
fills the epoch's r*N slots mostly with the hardest samples by DDS (D_high) plus a share tau taken
uniformly from the rest (D_low), so easy samples are revisited rather than forgotten.

Our choices where the paper is silent (METHOD.md section 6):
- Rounding: every count is rounded half up, floor(x + 0.5), never Python's banker's round, so that
  e.g. tau * k = 2.5 gives 3; a positive ratio always keeps at least one sample.
- Infeasible epoch (6.1): when r > 1/(1+tau) (epoch 1 of the paper's cosine schedule), D_low has
  fewer than round(tau*k) samples; we then take all of D_low and fill the remaining slots from
  D_high, so the subset still has exactly k samples.
- Ties in DDS are broken by sample index (lower index ranks higher), so the strata are
  deterministic given the scores; all randomness goes through the one `generator` argument.
"""

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("cosine", "linear", "constant")


def selection_ratio(epoch: int, num_epochs: int, schedule: str = "cosine") -> float:
    """Fraction r(e) of the training set used at 0-based `epoch` (paper Eq. 2).

    cosine: 0.5*cos(pi*e/E) + 0.5 (the paper's, E = 10); linear: 1 - e/E; constant: 1.0 (the
    "w/o DiffUp" ablation). Every schedule gives 1.0 at epoch 0 and stays > 0 for e < E.
    Raises ValueError for num_epochs < 1, epoch outside [0, num_epochs - 1] or an unknown schedule.
    """
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    if not 0 <= epoch < num_epochs:
        raise ValueError(f"epoch must be in [0, {num_epochs - 1}], got {epoch}")
    if schedule == "cosine":
        return 0.5 * math.cos(math.pi * epoch / num_epochs) + 0.5
    if schedule == "linear":
        return 1.0 - epoch / num_epochs
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def subset_size(ratio: float, n: int) -> int:
    """Number of samples k = round(ratio * n) for an epoch, rounded half up (floor(x + 0.5)).

    At least 1 when n >= 1 and ratio > 0: the last cosine epochs (r = 0.024) must not vanish on a
    small data set. Returns 0 for n == 0.

    Raises:
        ValueError: n < 0, or a ratio outside [0, 1] (nan included).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1], got {ratio}")
    k = _round_half_up(ratio * n)
    if n >= 1 and ratio > 0:
        k = max(k, 1)
    return min(k, n)


@dataclass
class Selection:
    """One epoch's subset plus what the trainer logs about it.

    indices: [k] int64 (CPU), sorted ascending, unique sample ids.
    n_high, n_low: how many of `indices` lie in D_high (the top-k by DDS) and in D_low (the rest);
    for every mode the strata are those of k = subset_size(ratio, N), so modes compare directly.
    threshold: the DDS of the lowest-ranked D_high sample (the k-th largest score).
    """

    indices: torch.Tensor
    n_high: int
    n_low: int
    threshold: float


def _pick(pool: torch.Tensor, m: int, generator) -> torch.Tensor:
    # uniform sample of m elements without replacement
    return pool[torch.randperm(pool.numel(), generator=generator)[:m]]


def _sdu(high, low, k, n, tau, generator):
    n_low = min(_round_half_up(tau * k), low.numel())
    return torch.cat([_pick(high, k - n_low, generator), _pick(low, n_low, generator)])


@dataclass(frozen=True)
class SelectionMode:
    """One DiffUp selection rule (Algorithm 1 and its Table 4 ablations), declared once.

    name: ``DistillConfig.selection``; label: how a run label names the ablation (None for the
    paper's own rule); uses_scores: whether it reads DDS (else the trainer skips the scoring pass);
    shrinks: whether the epoch's subset follows r(e) (False: all N samples every epoch); pick:
    ``fn(high [k] int64, low [N-k] int64, k, N, tau, generator) -> chosen ids`` (any order), where
    ``high`` holds the k highest-DDS ids in rank order and ``low`` the rest; every random draw goes
    through ``generator``."""
    name: str
    label: str | None
    uses_scores: bool
    shrinks: bool
    pick: object


SELECTION_MODES: dict[str, SelectionMode] = {}


def register_selection(mode: SelectionMode) -> SelectionMode:
    """Declare a selection rule (``cfg.selection`` then accepts its name).

    Raises:
        ValueError: the name is taken.
    """
    if mode.name in SELECTION_MODES:
        raise ValueError(f"selection mode {mode.name!r} is already registered")
    SELECTION_MODES[mode.name] = mode
    return mode


register_selection(SelectionMode("dds", None, True, True, _sdu))
register_selection(SelectionMode("random", "w/o DDS", False, True,
                                 lambda high, low, k, n, tau, g: torch.randperm(n, generator=g)[:k]))
register_selection(SelectionMode("top", "w/o SDU", True, True, lambda high, low, k, n, tau, g: high))
register_selection(SelectionMode("full", "w/o DiffUp", False, False, lambda high, low, k, n, tau, g: torch.arange(n)))
MODES = tuple(SELECTION_MODES)  # the four built-in modes, in Table 4's order


def _check(scores: torch.Tensor, ratio: float, tau: float, mode: str) -> None:
    if mode not in SELECTION_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(SELECTION_MODES)}")
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"scores must be a non-empty 1-D tensor, got shape {tuple(scores.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")


def stratified_update_with_info(scores: torch.Tensor, ratio: float, tau: float = 0.1,
                                generator: torch.Generator | None = None,
                                mode: str = "dds") -> Selection:
    """The epoch's subset of sample ids, with per-stratum counts and the DDS threshold.

    scores: [N] float, DDS per sample (index = sample id); any device, moved to CPU.
    ratio: r(e) in (0, 1]; k = subset_size(ratio, N). tau: D_low share, in [0, 1].
    generator: CPU torch.Generator used for every random draw (None = torch's global RNG).
    mode:
      "dds"    SDU, Algorithm 1: D_high = top-k by DDS (ties: lower index first), D_low = the rest;
               n_low = round(tau*k) uniform from D_low, k - n_low uniform from D_high. If
               |D_low| < n_low (METHOD.md 6.1, our rule) all of D_low is taken and D_high fills
               the rest, so the size is still k.
      "random" k uniform ids from all N ("w/o DDS").
      "top"    the top-k ids by DDS ("w/o SDU").
      "full"   all N ids whatever the ratio ("w/o DiffUp").
    Raises ValueError on NaN scores, non-1-D or empty scores, ratio outside (0, 1], tau outside
    [0, 1] or an unknown mode.
    """
    _check(scores, ratio, tau, mode)
    scores = scores.detach().cpu()
    n = scores.numel()
    k = subset_size(ratio, n)
    # stable descending sort keeps equal scores in index order: deterministic strata
    order = torch.sort(scores, descending=True, stable=True).indices
    high, low = order[:k], order[k:]

    chosen = SELECTION_MODES[mode].pick(high, low, k, n, tau, generator)
    in_high = torch.zeros(n, dtype=torch.bool)
    in_high[high] = True
    n_high = int(in_high[chosen].sum())
    return Selection(indices=torch.sort(chosen).values.long(), n_high=n_high,
                     n_low=chosen.numel() - n_high, threshold=float(scores[high[-1]]))


def stratified_update(scores: torch.Tensor, ratio: float, tau: float = 0.1,
                      generator: torch.Generator | None = None, mode: str = "dds") -> torch.Tensor:
    """[k] int64 sorted unique sample ids for the epoch (k = subset_size(ratio, N); N for "full").

    Same arguments, rules and errors as `stratified_update_with_info`; the trainer shuffles the
    batch order itself.
    """
    return stratified_update_with_info(scores, ratio, tau, generator, mode).indices


def dds_quantiles(scores: torch.Tensor,
                  qs=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)) -> dict[str, float]:
    """DDS summary for logging: {"q0.5": median, ..., "mean": mean} (linear interpolation).

    scores: [N] float, non-empty; computed in float64 on CPU.

    Raises:
        ValueError: empty ``scores``.
    """
    s = scores.detach().double().cpu().flatten()
    if s.numel() == 0:
        raise ValueError("scores must be non-empty")
    vals = torch.quantile(s, torch.tensor(qs, dtype=torch.float64))
    out = {f"q{q}": float(v) for q, v in zip(qs, vals)}
    out["mean"] = float(s.mean())
    return out
