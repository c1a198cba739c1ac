import math

import numpy as np
import pytest
import torch

from dakd.updater import (MODES, dds_quantiles, selection_ratio, stratified_update,
                          stratified_update_with_info, subset_size)


def distinct_scores(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g).double() * 0.37 + 1.0


def topk_set(scores, k):
    # independent of the module: numpy's stable argsort on the negated scores
    return set(np.argsort(-scores.numpy(), kind="stable")[:k].tolist())


# --- selection ratio (Eq. 2) ---

def test_cosine_ratio_matches_method_list_at_ten_epochs():
    expected = [1.000, 0.976, 0.905, 0.794, 0.655, 0.500, 0.345, 0.206, 0.095, 0.024]
    got = [selection_ratio(e, 10) for e in range(10)]
    assert got == pytest.approx(expected, abs=1e-3)
    assert sum(got) / 10 == pytest.approx(0.55, abs=1e-12)


def test_linear_ratio_is_one_minus_e_over_E():
    assert [selection_ratio(e, 4, "linear") for e in range(4)] == pytest.approx([1, .75, .5, .25])


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_every_schedule_uses_all_data_at_epoch_zero(schedule):
    assert selection_ratio(0, 10, schedule) == 1.0
    assert selection_ratio(0, 1, schedule) == 1.0


def test_constant_schedule_is_always_one():
    assert all(selection_ratio(e, 10, "constant") == 1.0 for e in range(10))


def test_selection_ratio_rejects_bad_arguments():
    with pytest.raises(ValueError, match="cosine, linear, constant"):
        selection_ratio(0, 10, "step")
    with pytest.raises(ValueError):
        selection_ratio(10, 10)
    with pytest.raises(ValueError):
        selection_ratio(-1, 10)
    with pytest.raises(ValueError):
        selection_ratio(0, 0)


def test_cosine_subset_sizes_total_matches_paper_iteration_count():
    # paper: 1963 of 3570 full-data iterations (357 per epoch x 10 epochs); 0.55 * 3570 = 1963.5
    total = sum(subset_size(selection_ratio(e, 10), 357) for e in range(10))
    assert abs(total - 1963.5) <= 0.01 * 1963.5
    n = 11435  # Dolly train samples
    total = sum(subset_size(selection_ratio(e, 10), n) for e in range(10))
    assert abs(total - 0.55 * 10 * n) <= 0.01 * 0.55 * 10 * n


# --- subset size ---

def test_subset_size_rounds_half_up():
    assert subset_size(0.5, 5) == 3      # 2.5 -> 3, not banker's 2
    assert subset_size(0.25, 10) == 3    # 2.5 -> 3
    assert subset_size(0.976, 100) == 98
    assert subset_size(1.0, 7) == 7


def test_subset_size_keeps_at_least_one_sample():
    assert subset_size(0.024, 10) == 1
    assert subset_size(1e-9, 1) == 1
    assert subset_size(0.5, 0) == 0


# --- stratified update (Algorithm 1) and ablations ---

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ratio", [1.0, 0.976, 0.5, 0.024])
def test_every_mode_returns_unique_in_range_long_indices_of_subset_size(mode, ratio):
    n = 200
    idx = stratified_update(distinct_scores(n), ratio, generator=torch.Generator().manual_seed(1),
                            mode=mode)
    assert idx.dtype == torch.long and idx.dim() == 1
    assert idx.numel() == (n if mode == "full" else subset_size(ratio, n))
    assert idx.unique().numel() == idx.numel()
    assert 0 <= int(idx.min()) and int(idx.max()) < n
    assert torch.equal(idx, idx.sort().values)


def test_dds_takes_exact_shares_from_each_stratum():
    n, ratio, tau = 300, 0.5, 0.1
    scores = distinct_scores(n, seed=3)
    k = subset_size(ratio, n)
    n_low = math.floor(tau * k + 0.5)
    top = topk_set(scores, k)
    sel = stratified_update_with_info(scores, ratio, tau, torch.Generator().manual_seed(0))
    chosen = set(sel.indices.tolist())
    assert len(chosen & top) == k - n_low == sel.n_high
    assert len(chosen - top) == n_low == sel.n_low
    assert sel.threshold == pytest.approx(sorted(scores.tolist(), reverse=True)[k - 1])


def test_dds_with_tau_zero_is_top_k():
    scores = distinct_scores(50)
    assert set(stratified_update(scores, 0.4, tau=0.0).tolist()) == topk_set(scores, 20)


def test_top_mode_is_exactly_the_top_k_set():
    scores = distinct_scores(123, seed=5)
    k = subset_size(0.3, 123)
    assert set(stratified_update(scores, 0.3, mode="top").tolist()) == topk_set(scores, k)


def test_top_mode_breaks_ties_by_lower_index_first():
    scores = torch.tensor([1.0, 5.0, 5.0, 2.0, 5.0, 5.0])
    assert stratified_update(scores, 0.5, mode="top").tolist() == [1, 2, 4]
    sel = stratified_update_with_info(scores, 0.5, mode="top")
    assert sel.threshold == 5.0 and sel.n_high == 3 and sel.n_low == 0


def test_full_mode_ignores_ratio():
    assert stratified_update(distinct_scores(40), 0.1, mode="full").tolist() == list(range(40))


def test_infeasible_epoch_takes_all_of_d_low_and_fills_from_d_high():
    # METHOD.md 6.1: k = 98 but D_low has 2 < round(0.1 * 98) = 10 samples
    scores = distinct_scores(100, seed=7)
    top = topk_set(scores, 98)
    sel = stratified_update_with_info(scores, 0.976, 0.1, torch.Generator().manual_seed(0))
    chosen = set(sel.indices.tolist())
    assert len(chosen) == 98
    assert set(range(100)) - top <= chosen
    assert len(chosen & top) == 96 == sel.n_high and sel.n_low == 2


@pytest.mark.parametrize("mode", ["dds", "random"])
def test_same_seed_same_indices_different_seed_different(mode):
    scores = distinct_scores(500)

    def draw(seed):
        return stratified_update(scores, 0.5, generator=torch.Generator().manual_seed(seed),
                                 mode=mode)

    assert torch.equal(draw(11), draw(11))
    assert not torch.equal(draw(11), draw(12))


def test_dds_samples_each_stratum_uniformly():
    # N=100, r=0.5: k=50, n_low=5 of 50 in D_low (p=0.1), 45 of 50 in D_high (p=0.9);
    # 2000 draws: sd of a D_low frequency is 0.0067, tolerance 0.03 (fixed seed, cannot flake)
    n, draws = 100, 2000
    scores = distinct_scores(n, seed=2)
    top = torch.tensor(sorted(topk_set(scores, 50)))
    low = torch.tensor(sorted(set(range(n)) - set(top.tolist())))
    g = torch.Generator().manual_seed(123)
    counts = torch.zeros(n)
    for _ in range(draws):
        counts[stratified_update(scores, 0.5, 0.1, g)] += 1
    freq = counts / draws
    assert (freq[low] - 0.1).abs().max() < 0.03
    assert (freq[top] - 0.9).abs().max() < 0.03


def test_stratified_update_rejects_bad_inputs():
    s = distinct_scores(10)
    with pytest.raises(ValueError, match="NaN"):
        stratified_update(torch.tensor([1.0, float("nan"), 2.0]), 0.5)
    for ratio in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            stratified_update(s, ratio)
    for tau in (-0.1, 1.1):
        with pytest.raises(ValueError, match="tau"):
            stratified_update(s, 0.5, tau=tau)
    with pytest.raises(ValueError, match="dds, random, top, full"):
        stratified_update(s, 0.5, mode="hard")
    with pytest.raises(ValueError):
        stratified_update(torch.ones(2, 3), 0.5)
    with pytest.raises(ValueError):
        stratified_update(torch.empty(0), 0.5)


# --- logging helper ---

def test_dds_quantiles_keys_and_values():
    out = dds_quantiles(torch.arange(11.0))
    assert list(out) == ["q0.0", "q0.1", "q0.25", "q0.5", "q0.75", "q0.9", "q1.0", "mean"]
    assert out["q0.0"] == 0.0 and out["q0.5"] == 5.0 and out["q1.0"] == 10.0
    assert out["q0.1"] == pytest.approx(1.0) and out["mean"] == pytest.approx(5.0)


@pytest.mark.parametrize("ratio", [-0.5, 1.5, float("nan")])
def test_subset_size_refuses_a_ratio_outside_the_unit_interval(ratio):
    # regression: subset_size(-0.5, 10) returned -5 samples
    with pytest.raises(ValueError, match="ratio must lie in"):
        subset_size(ratio, 10)
