"""Golden runs: the training loop reproduces, per method and per launch (one process, two gloo
processes), the per-epoch selections, step counts, losses, DDS values, generated batches, SGO
probabilities and final weights recorded in `tests/data/golden_train.json` (see tests/golden.py).

These guard the order of draws on the run's generator (selection, epoch permutation, length
grouping, per-batch coin, generation seed): config hashes do not cover code, so a change there
would make committed results silently stop reproducing."""

import math
import os

import pytest

from golden import golden_configs, load_golden, run_golden, save_golden

UPDATE = os.environ.get("DAKD_UPDATE_GOLDEN") == "1"
NAMES = list(golden_configs("/tmp"))
_new: dict = {}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.delenv("DAKD_ACCELERATE_CONFIG", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _close(a, b, rel=1e-4, abs_=1e-6):
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


@pytest.mark.parametrize("name", NAMES)
def test_golden_run_reproduces(name, tmp_path):
    cfg, processes = golden_configs(tmp_path)[name]
    got = run_golden(name, cfg, processes)
    if UPDATE:
        _new[name] = got
        save_golden(load_golden() | _new)
        return
    want = load_golden().get(name)
    assert want is not None, f"no golden record for {name}: run with DAKD_UPDATE_GOLDEN=1"
    assert len(got["epochs"]) == len(want["epochs"])
    for e, (g, w) in enumerate(zip(got["epochs"], want["epochs"])):
        for key in ("subset_ids", "steps", "iterations_end", "generated_batches", "replay_batches", "n_high", "n_low"):
            assert g[key] == w[key], f"{name} epoch {e} {key}: {g[key]} != {w[key]}"
        assert _close(g["p_sgo"], w["p_sgo"]), f"{name} epoch {e} p_sgo"
        assert _close(g["val_loss"], w["val_loss"]), f"{name} epoch {e} val_loss"
        assert _close(g["mean_loss"], w["mean_loss"]), f"{name} epoch {e} mean_loss {g['mean_loss']} != {w['mean_loss']}"
        if w["dds_values"] is None:
            assert g["dds_values"] is None
        else:
            assert len(g["dds_values"]) == len(w["dds_values"])
            bad = [(i, a, b) for i, (a, b) in enumerate(zip(g["dds_values"], w["dds_values"])) if not _close(a, b, 1e-3, 1e-4)]
            assert not bad, f"{name} epoch {e} dds_values differ at {bad[:3]}"
    for key in ("iterations", "response_tokens_seen", "tokens_seen"):
        assert got[key] == want[key], key
    gs, ws = got["weights"]["sums"], want["weights"]["sums"]
    assert gs.keys() == ws.keys()
    bad = [k for k in ws if not _close(gs[k], ws[k], 1e-4, 1e-4)]
    assert not bad, f"{name}: final weights differ in {bad[:3]} ({[(gs[k], ws[k]) for k in bad[:3]]})"
    # bitwise on the CPU model the reference was made on (another CPU may round differently; the
    # sums above then say how far apart the weights are)
    if got["cpu"] == want["cpu"]:
        assert got["weights"]["sha256"] == want["weights"]["sha256"], f"{name}: final weights not bit-identical"
