"""The table and figure builders of `dakd.results` on hand-made run dicts: every number below is
computed by hand from the dicts and from dakd/paper_tables.json (the paper's published values)."""

import json
import math

import pytest

from dakd import results as R

DAKD = {"method": "dakd", "loss": "bdl", "selection": "dds", "lam": 0.9, "tau": 0.1, "schedule": "cosine"}


def run(label, scores, cost=None, epochs=None, epoch_eval=None, **config):
    """A results.json-like dict: ``scores`` {set: score}; config = DA-KD's defaults updated."""
    r = {"label": label, "config": DAKD | config,
         "eval": {ds: {"metric": "accuracy" if ds == "gsm8k" else "rougeL", "score": s,
                       ("accuracy" if ds == "gsm8k" else "rougeL"): s} for ds, s in scores.items()}}
    if cost is not None:
        r["cost"] = cost
    r["train_log"] = {"epochs": epochs} if epochs is not None else None
    if epoch_eval is not None:
        r["epoch_eval"] = epoch_eval
    return r


def nan(x):
    return isinstance(x, float) and math.isnan(x)


def absent(x):
    """The run column's marker of a missing run (None; pandas may store it as NaN)."""
    return x is None or nan(x)


# ---------------------------------------------------------------------------------------- table 4

def test_table4_rows_paper_values_and_differences():
    runs = {"dakd": run("DA-KD", {"dolly": 20.0, "sinst": 30.0}, cost={"iterations": 13}),
            "dakd_random": run("DA-KD (w/o DDS)", {"dolly": 18.5, "sinst": 28.0}, selection="random"),
            "dakd_full": run("DA-KD (w/o DiffUp)", {"dolly": 21.0}, selection="full")}
    t = R.table4(runs)
    assert list(t.index) == ["DiffUp (full DA-KD)", "w/o DDS", "w/o SDU", "w/o DiffUp"]
    # the default columns: the sets every present run has (dakd_full has Dolly only)
    assert "S-NI" not in t.columns and "Dolly" in t.columns
    assert t.loc["w/o DDS", "run"] == "dakd_random"
    assert t.loc["w/o DDS", "Dolly"] == 18.5
    assert t.loc["w/o DDS", "Dolly paper"] == 26.05  # Table 4, w/o DDS, Dolly
    assert t.loc["w/o DDS", "Dolly diff"] == 18.5 - 26.05
    assert t.loc["DiffUp (full DA-KD)", "iterations"] == 13
    # the missing run: an explicit None run and NaN ours, the paper's value still shown
    assert absent(t.loc["w/o SDU", "run"])
    assert nan(t.loc["w/o SDU", "Dolly"]) and nan(t.loc["w/o SDU", "Dolly diff"])
    assert t.loc["w/o SDU", "Dolly paper"] == 26.65
    assert "Llama2-7B -> Sheared-LLaMA-1.3B" in t.attrs["paper"]


def test_table4_average_over_the_chosen_sets():
    runs = {"dakd": run("DA-KD", {"dolly": 20.0, "sinst": 30.0}),
            "dakd_full": run("DA-KD (w/o DiffUp)", {"dolly": 21.0}, selection="full")}
    t = R.table4(runs, datasets=["dolly", "sinst"])
    row = t.loc["DiffUp (full DA-KD)"]
    assert row["Avg"] == 25.0
    assert row["Avg paper"] == pytest.approx((26.75 + 32.35) / 2)
    assert row["Avg diff"] == pytest.approx(25.0 - (26.75 + 32.35) / 2)
    # a run not evaluated on a shown set: NaN there and in its average, not a crash
    assert nan(t.loc["w/o DiffUp", "S-NI"]) and nan(t.loc["w/o DiffUp", "Avg"])
    assert t.loc["w/o DiffUp", "S-NI paper"] == 32.07


def test_a_run_that_is_no_row_or_a_second_run_of_a_row_is_refused():
    with pytest.raises(ValueError, match="'kd_kl'.*not a row"):
        R.table4({"kd_kl": run("KD-KL", {"dolly": 1.0}, method="kd", loss="forward_kl")})
    with pytest.raises(ValueError, match="not a row"):  # lambda differs: a sweep run, not Table 4's
        R.table4({"dakd_lam0.7": run("DA-KD (lambda=0.7)", {"dolly": 1.0}, lam=0.7)})
    with pytest.raises(ValueError, match="both row"):
        R.table4({"a": run("DA-KD", {"dolly": 1.0}), "b": run("DA-KD", {"dolly": 2.0})})


# ---------------------------------------------------------------------------------------- table 5

def test_table5_keys_rows_by_loss_aliases_included():
    runs = {"dakd_kl": run("DA-KD (KL)", {"dolly": 22.0}, loss="fkl"),
            "dakd_srkl": run("DA-KD (SRKL)", {"dolly": 24.5}, loss="skew_reverse_kl"),
            "dakd": run("DA-KD", {"dolly": 25.0})}
    t = R.table5(runs)
    assert list(t.index) == ["KL", "RKL", "JSD", "SKL", "SRKL", "BDL"]
    assert t.loc["KL", "run"] == "dakd_kl" and t.loc["KL", "Dolly paper"] == 23.69
    assert t.loc["KL", "Dolly diff"] == 22.0 - 23.69
    assert t.loc["SRKL", "Dolly diff"] == 24.5 - 26.43
    assert t.loc["BDL", "Dolly"] == 25.0 and t.loc["BDL", "Dolly paper"] == 26.75
    assert absent(t.loc["JSD", "run"]) and nan(t.loc["JSD", "Dolly"]) and t.loc["JSD", "Dolly paper"] == 24.8


# ---------------------------------------------------------------------------------------- table 2

def test_table2_places_runs_by_method_and_set_with_the_chosen_family():
    runs = {"samsum_teacher": run("Teacher", {"samsum": 30.0}, method="teacher"),
            "samsum_dakd": run("DA-KD", {"samsum": 35.0}),
            "gsm8k_dakd": run("DA-KD", {"gsm8k": 12.5})}
    t = R.table2(runs, "Qwen2.5")
    assert list(t.index) == ["Teacher", "SFT", "KD-KL", "KD-RKL", "GKD", "DistiLLM", "DA-KD"]
    assert t.loc["DA-KD", "SAMSum ROUGE-L"] == 35.0 and t.loc["DA-KD", "SAMSum ROUGE-L paper"] == 40.05
    assert t.loc["DA-KD", "SAMSum ROUGE-L diff"] == 35.0 - 40.05
    assert t.loc["DA-KD", "GSM8K accuracy"] == 12.5 and t.loc["DA-KD", "GSM8K accuracy paper"] == 54.66
    assert t.loc["DA-KD", "GSM8K accuracy diff"] == 12.5 - 54.66
    assert t.loc["DA-KD", "GSM8K accuracy run"] == "gsm8k_dakd"
    assert t.loc["Teacher", "SAMSum ROUGE-L paper"] == 39.7
    assert nan(t.loc["Teacher", "GSM8K accuracy"]) and absent(t.loc["Teacher", "GSM8K accuracy run"])
    assert nan(t.loc["SFT", "SAMSum ROUGE-L"]) and t.loc["SFT", "SAMSum ROUGE-L paper"] == 37.74
    assert "Qwen2.5 (7B→1.5B)" in t.attrs["paper"]
    assert R.table2(runs, "llama3.2").loc["DA-KD", "GSM8K accuracy paper"] == 22.37


def test_table2_refuses_unknown_family_and_stray_runs():
    with pytest.raises(ValueError, match="matches 0"):
        R.table2({}, "Mistral")
    with pytest.raises(ValueError, match="not a row of Table 2"):
        R.table2({"dakd": run("DA-KD", {"dolly": 20.0})})
    with pytest.raises(ValueError, match="both DA-KD on samsum"):
        R.table2({"a": run("DA-KD", {"samsum": 1.0}), "b": run("DA-KD", {"samsum": 2.0})})


# ---------------------------------------------------------------------------------------- table 3

def test_table3_cost_ratios_and_dds_share_beside_the_paper():
    runs = {"kd_kl": run("KD-KL", {}, cost={"iterations": 18, "total_seconds": 600.0, "dds_seconds": 0.0,
                                            "train_seconds": 600.0}, method="kd", loss="forward_kl"),
            # no total_seconds: minutes = train + DDS seconds
            "dakd": run("DA-KD", {}, cost={"iterations": 13, "dds_seconds": 120.0, "train_seconds": 360.0})}
    t = R.table3(runs)
    assert list(t.index) == ["SFT", "KD-KL", "KD-RKL", "SeqKD", "GKD", "DistiLLM", "DA-KD"]
    d = t.loc["DA-KD"]
    assert (d["iterations"], d["minutes"], d["DDS minutes"], d["DDS share"]) == (13, 8.0, 2.0, 25.0)
    assert d["iterations / KD-KL"] == 13 / 18 and d["minutes / KD-KL"] == 8.0 / 10.0
    assert d["iterations paper"] == 1963 and d["minutes paper"] == 106.35
    assert d["iterations / KD-KL paper"] == 1963 / 3570 and d["minutes / KD-KL paper"] == 106.35 / 140.75
    assert d["DDS share paper"] == 100 * 28.31 / 106.35
    assert d["iterations / KD-KL diff"] == 13 / 18 - 1963 / 3570
    assert d["minutes / KD-KL diff"] == 8.0 / 10.0 - 106.35 / 140.75
    assert d["DDS share diff"] == 25.0 - 100 * 28.31 / 106.35
    kd = t.loc["KD-KL"]
    assert kd["minutes / KD-KL"] == 1.0 and kd["DDS share"] == 0.0 and nan(kd["DDS share paper"])
    assert absent(t.loc["SeqKD", "run"]) and nan(t.loc["SeqKD", "minutes"])
    assert t.loc["SeqKD", "minutes paper"] == 159.73 and nan(t.loc["SeqKD", "minutes / KD-KL diff"])


def test_table3_without_kd_gives_nan_ratios_not_a_crash():
    t = R.table3({"dakd": run("DA-KD", {}, cost={"iterations": 4, "total_seconds": 60.0, "dds_seconds": 6.0})})
    assert nan(t.loc["DA-KD", "iterations / KD-KL"]) and t.loc["DA-KD", "DDS share"] == pytest.approx(10.0)


# ------------------------------------------------------------------------------------------ sweeps

def test_lambda_sweep_rows_missing_values_and_the_no_numbers_note():
    runs = {"dakd_lam0.5": run("DA-KD (lambda=0.5)", {"dolly": 5.0}, lam=0.5, cost={"iterations": 13},
                               epochs=[{"mean_loss": 0.0}, {"mean_loss": 0.0}]),
            "dakd": run("DA-KD", {"dolly": 20.0}, cost={"iterations": 13},
                        epochs=[{"mean_loss": 0.8}, {"mean_loss": 0.6}])}
    t = R.lambda_sweep(runs)
    assert list(t.index) == [0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    assert t.loc[0.5, "Dolly"] == 5.0 and t.loc[0.9, "Dolly"] == 20.0 and t.loc[0.9, "run"] == "dakd"
    assert t.loc[0.9, "last epoch loss (nats/token)"] == 0.6 and t.loc[0.9, "Avg"] == 20.0
    assert absent(t.loc[0.7, "run"]) and nan(t.loc[0.7, "Dolly"]) and nan(t.loc[0.7, "iterations"])
    assert "no numbers" in t.attrs["note"] and not any("paper" in c for c in t.columns)


def test_tau_and_schedule_tables_key_by_their_field():
    runs = {"dakd_tau0": run("DA-KD (tau=0)", {"dolly": 19.0}, tau=0.0), "dakd": run("DA-KD", {"dolly": 20.0})}
    t = R.tau_sweep(runs)
    assert list(t.index) == [0.0, 0.1, 0.3, 0.5] and t.loc[0.0, "Dolly"] == 19.0 and nan(t.loc[0.3, "Dolly"])
    s = R.schedule_table({"dakd": runs["dakd"],
                          "dakd_linear": run("DA-KD (linear schedule)", {"dolly": 17.0}, schedule="linear",
                                             cost={"iterations": 12})})
    assert list(s.index) == ["cosine", "linear"] and s.loc["linear", "Dolly"] == 17.0
    assert s.loc["linear", "iterations"] == 12 and nan(s.loc["cosine", "iterations"])


# -------------------------------------------------------------------------------- table 1, figures

def test_table1_has_the_new_baselines_with_their_paper_values():
    runs = {"seqkd": run("SeqKD", {"dolly": 20.0}, method="seqkd"),
            "distillm": run("DistiLLM", {"dolly": 21.0}, method="distillm")}
    t = R.table1(runs, "Sheared-LLaMA-1.3B")
    assert t.loc["seqkd", "Dolly paper"] == 25.98 and t.loc["seqkd", "Dolly diff"] == 20.0 - 25.98
    assert t.loc["distillm", "Dolly paper"] == 27.16
    assert R.PAPER_METHODS == ("Teacher", "SFT", "KD-KL", "KD-RKL", "SeqKD", "GKD", "DistiLLM", "DA-KD")


def test_figure1_points_and_png(tmp_path):
    pts = [{"epoch": 0, "iterations_end": 6, "dataset": "dolly", "score": 10.0},
           {"epoch": 1, "iterations_end": 11, "dataset": "dolly", "score": 12.0}]
    runs = {"dakd": run("DA-KD", {"dolly": 12.0}, epoch_eval=pts),
            "dakd_full": run("DA-KD (w/o DiffUp)", {"dolly": 11.0}, selection="full",
                             epoch_eval=[{"epoch": 0, "iterations_end": 6, "dataset": "dolly", "score": 9.0}]),
            "old": run("DA-KD", {"dolly": 1.0})}  # trained without save_epoch_students
    df = R.figure1_points(runs)
    assert df[df.run == "dakd"][["iterations", "score"]].values.tolist() == [[6, 10.0], [11, 12.0]]
    assert df[df.run == "dakd_full"]["curve"].tolist() == ["KD, full data (BDL)"]
    old = df[df.run == "old"]
    assert len(old) == 1 and nan(old["score"].iloc[0])
    path = R.figure1(runs, tmp_path / "fig" / "figure1.png")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_lambda_figure_and_table_json(tmp_path):
    runs = {"dakd": run("DA-KD", {"dolly": 20.0})}
    assert R.lambda_figure(runs, tmp_path / "lam.png").read_bytes()[:4] == b"\x89PNG"
    j = R.table_json(R.lambda_sweep(runs))
    json.dumps(j, allow_nan=False)  # NaN written as null: valid JSON for any reader
    rows = {r["lam"]: r for r in j["rows"]}
    assert rows[0.9]["Dolly"] == 20.0 and rows[0.7]["Dolly"] is None and rows[0.7]["run"] is None
    assert "no numbers" in j["note"]


def test_paper_bars_and_saved_tables(tmp_path):
    t = R.table5({"dakd": run("DA-KD", {"dolly": 25.0})})
    png = R.paper_bars(t, ["Dolly"], tmp_path / "f" / "t5.png", t.attrs["paper"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "table5.json").write_text(json.dumps(R.table_json(t)))
    saved = R.saved_tables(tmp_path)
    assert list(saved) == list(R.SAVED_TABLES)
    assert saved["table4"] is None  # absent: None, not an error
    assert [r["loss"] for r in saved["table5"]["rows"]] == list(R.TABLE5_ROWS)
    assert saved["table5"]["rows"][-1]["Dolly diff"] == 25.0 - 26.75


def test_saving_the_same_figure_twice_gives_identical_bytes_without_the_matplotlib_version(tmp_path):
    # a rerun with the same numbers must leave `git status` clean: no environment-dependent PNG
    # metadata (matplotlib wrote "Software: Matplotlib version3.x")
    t = R.table5({"dakd": run("DA-KD", {"dolly": 25.0})})
    a = R.paper_bars(t, ["Dolly"], tmp_path / "a.png", t.attrs["paper"]).read_bytes()
    b = R.paper_bars(t, ["Dolly"], tmp_path / "b.png", t.attrs["paper"]).read_bytes()
    assert a == b
    assert b"Software" not in a and b"Matplotlib" not in a


def _log():
    quart = {"q0.0": 0.5, "q0.1": 0.6, "q0.25": 0.8, "q0.5": 1.0, "q0.75": 1.5, "q0.9": 2.5, "q1.0": 4.0, "mean": 1.3}
    return {"num_samples": 8, "epochs": [
        {"epoch": 0, "ratio": 1.0, "num_samples": 8, "subset_size": 8, "steps": 2, "mean_loss": 3.0,
         "dds_seconds": 0.0, "train_seconds": 10.0},
        {"epoch": 1, "ratio": 0.5, "num_samples": 8, "subset_size": 4, "n_high": 3, "n_low": 1, "dds": quart,
         "student_ce": {"mean": 4.2}, "steps": 1, "mean_loss": 2.0, "dds_seconds": 1.5, "train_seconds": 5.0}]}


def test_training_record_shows_each_epochs_ratio_subset_dds_loss_and_time():
    rec = R.training_record(_log())
    assert list(rec.index) == [0, 1]
    assert rec.loc[1, ["ratio r(e)", "samples", "of N", "from D_high", "from D_low"]].tolist() == [0.5, 4, 8, 3, 1]
    assert (rec.loc[1, "DDS median"], rec.loc[1, "DDS q0.9"], rec.loc[1, "student CE"]) == (1.0, 2.5, 4.2)
    assert rec["DDS median"].isna().tolist() == [True, False]  # no DDS before epoch 0
    assert rec["loss (nats/token)"].tolist() == [3.0, 2.0]
    assert (rec.loc[1, "DDS seconds"], rec.loc[1, "train seconds"]) == (1.5, 5.0)


def test_training_figure_has_three_labelled_panels(tmp_path):
    fig = R.training_figure(_log(), tmp_path / "t.png", title="a run")
    assert (tmp_path / "t.png").stat().st_size > 0
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "samples trained on" in labels and "selection ratio r(e)" in labels
    assert "DDS = CE_student / CE_teacher" in labels and "mean training loss (nats/token)" in labels


def test_rows_follow_the_config_not_the_stored_label_text():
    # the table builders key rows by config (issue 11): a run whose results.json carries a label
    # from older code, or a stale one, lands in the row its settings say
    runs = {"kd": run("KD (old label)", {"dolly": 12.0}, method="kd", loss="fkl"),
            "dakd": run("something else", {"dolly": 14.0}),
            "dakd_top": run("DA-KD", {"dolly": 13.0}, selection="top")}
    assert [R.row_name(r) for r in runs.values()] == ["KD-KL", "DA-KD", "DA-KD (w/o SDU)"]
    ablation = {k: v for k, v in runs.items() if k != "kd"} | {"dakd_random": run("nonsense", {"dolly": 11.0},
                                                                                  selection="random")}
    t4 = R.table4(ablation, datasets=["dolly"])
    assert t4.loc["w/o SDU", "run"] == "dakd_top" and t4.loc["w/o DDS", "run"] == "dakd_random"
