"""Write the notebooks' source (unexecuted) from this one file, so their cells stay reviewable as
code. Run: python tools/make_notebooks.py. The executed copies are written by run_all.sh into
runs/<preset>/notebooks/; tools/publish_notebooks.py copies a preset's executed copies over these
(same cells, plus outputs), and tests/test_published_notebooks.py checks that they still match."""

from pathlib import Path

import nbformat as nbf
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parents[1] / "notebooks"


def nb(cells):
    out = new_notebook(cells=cells)
    out.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out.metadata["language_info"] = {"name": "python"}
    return out


def params(src):
    c = new_code_cell(src)
    c.metadata["tags"] = ["parameters"]
    return c


md, code = new_markdown_cell, new_code_cell


def distill_parameters() -> str:
    """The parameters cell of 01_distill: every DistillConfig field, defaults = the CPU preset's
    DA-KD run, so the notebook run by hand reproduces that row of the table."""
    from dakd.presets import get_preset

    cfg = get_preset("cpu")["dakd"].to_dict()
    lines = [f"{k} = {list(v) if isinstance(v, tuple) else v!r}" for k, v in cfg.items()]
    lines += ["num_processes = 1   # > 1: training through `accelerate launch` subprocesses",
              "cpu = False         # with num_processes > 1 and no GPU: gloo processes on the CPU",
              "overwrite = False   # True: retrain into an output_dir holding another config's finished run"]
    return "\n".join(lines)

quickstart = nb([
    md("""# DA-KD quickstart: the loss, the difficulty score and one short distillation

A tour of DA-KD (He et al., *Difficulty-Aware Knowledge Distillation for Efficient Large Language
Models*, ICML 2025) on real data: Dolly instructions, the SmolLM2-135M-Instruct teacher and its
6-layer student. It shows

1. the **bidirectional discrepancy loss** (BDL, Eq. 4) against its mixing weight lambda, beside
   forward and reverse KL, on the real teacher's and student's next-token distributions;
2. the **distillation difficulty score** (DDS, Eq. 1) of real Dolly samples: which ones the student
   finds hard while the teacher finds them easy;
3. one **short DA-KD run** (DiffUp + BDL, Algorithm 1) and its per-epoch records.

Every cell calls the `dakd` package; the numbers are written to `quickstart.json` in `output_dir`."""),
    params("""teacher = "smollm2-135m-instruct"   # alias, local folder or hub name
student = "smollm2-student-l6"
prompt_style = "chatml"
num_samples = 16        # Dolly training samples for the loss and DDS tour
distill_samples = 32    # samples for the short distillation
distill_epochs = 2
max_prompt_length = 192
max_length = 320
seed = 42
output_dir = "runs/cpu/quickstart"   # where ./run_all.sh runs this tour: Run All after it reuses the run\""""),
    code("""import json
from pathlib import Path

import pandas as pd
import torch

import dakd
from dakd import data, difficulty, losses, models, pipeline
from dakd.config import DistillConfig

torch.manual_seed(seed)
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
tok = models.load_tokenizer(teacher)
T = models.load_model(teacher).eval()
S = models.load_model(student).eval()
vocab = models.check_pair(tok, models.load_tokenizer(student), T, S)
records = data.load_split("dolly", "train", limit=num_samples, seed=seed)
examples, report = data.tokenize_records(records, tok, prompt_style, max_prompt_length, max_length)
print(report)
batch = data.DistillCollator(tok.pad_token_id)(examples)
with torch.no_grad():
    t_logits = T(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :vocab]
    s_logits = S(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :vocab]
mask = batch["response_mask"][:, 1:]
print(f"{int(mask.sum())} response tokens over {len(examples)} samples")"""),
    md("""## 1. BDL against lambda

BDL(p, q) = KL(P_m || Q_m) with P_m = (1 - lam) p + lam q and Q_m = lam p + (1 - lam) q.
At lam = 0 it is forward KL, at lam = 1 reverse KL, at lam = 0.5 exactly zero (no signal), and for
0.5 < lam < 1 every token is bounded by log(lam / (1 - lam)). The paper uses lam = 0.9."""),
    code("""lams = [0.0, 0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
bdl_curve = pd.DataFrame({"lambda": lams,
                          "BDL (nats/token)": [float(losses.bdl(s_logits, t_logits, mask, lam=l)) for l in lams]})
fkl = float(losses.forward_kl(s_logits, t_logits, mask))
rkl = float(losses.reverse_kl(s_logits, t_logits, mask))
print(f"forward KL {fkl:.4f}, reverse KL {rkl:.4f} nats/token")
ax = bdl_curve.plot(x="lambda", y="BDL (nats/token)", marker="o", figsize=(6, 3.5), title="BDL on real logits")
ax.axhline(fkl, ls="--", c="gray", label="forward KL")
ax.axhline(rkl, ls=":", c="black", label="reverse KL")
ax.legend();"""),
    md("""## 2. DDS of real Dolly samples

DDS(x) = CE_student(x) / CE_teacher(x): mean cross-entropy of the ground-truth response under
teacher forcing, for the student over the teacher. A high score marks a sample the teacher handles
well and the student does not: that is where distillation pays."""),
    code("""ce_s = difficulty.score_dataset(S, examples, tok.pad_token_id)
ce_t = difficulty.score_dataset(T, examples, tok.pad_token_id)
dds = difficulty.difficulty_scores(ce_s, ce_t)
dds_table = pd.DataFrame({"instruction": [records[e["sample_id"]]["instruction"][:70] for e in examples],
                          "CE teacher": ce_t.numpy(), "CE student": ce_s.numpy(), "DDS": dds.numpy()})
dds_table.sort_values("DDS", ascending=False).round(3)"""),
    md("""What the table shows: the rows sorted by DDS, hardest for the student (relative to the teacher)
first. Before any distillation the 6-layer student is worse than guessing: its CE is above
ln(49,152) = 10.8 nats, the CE of a uniform guess over the vocabulary, while the teacher's is a few
nats. So every DDS is large and the ranking mostly follows where the teacher is confident. These
are a handful of samples from one seed; the ranking, not the exact values, is the point."""),
    md("""## 3. One short DA-KD run

Epoch 0 trains on all samples; before each later epoch the student's CE over all samples gives the
DDS, and stratified data updating keeps r(e) * N of them (mostly the hardest, a share tau from the
rest), with BDL as the loss."""),
    code("""cfg = DistillConfig(teacher=teacher, student=student, method="dakd", loss="bdl", prompt_style=prompt_style,
                    train_samples=distill_samples, epochs=distill_epochs, lr=1e-4,
                    max_prompt_length=max_prompt_length, max_length=max_length,
                    eval_samples=8, eval_seeds=(10,), max_new_tokens=64, seed=seed,
                    output_dir=str(out / "dakd"), save_checkpoints=False)
# the tour's own folder: a changed parameter retrains it (the old results.json is kept aside)
result = pipeline.run(cfg, overwrite=True)
from dakd import results

# the per-epoch record, read back from train_log.json (also when the run above was reused)
log = json.loads((out / "dakd" / "train_log.json").read_text())
results.training_figure(log, title=f"short DA-KD run, config {cfg.config_hash()}")
results.training_record(log).round(3)"""),
    md("""What the record shows, epoch by epoch: the selection ratio r(e) and how many samples the epoch
trained on (all of them in epoch 0, then the cosine schedule's share), how many came from the hard
part D_high and from the rest D_low (a share tau), the DDS quartiles over all samples before the
epoch, the mean loss (BDL, nats/token) and the seconds spent scoring and training. DDS is scored
only from epoch 1 on, so epoch 0's DDS columns are empty. With a few dozen samples and two epochs
this shows the mechanics of DiffUp, not a better student."""),
    code("""print(result["eval"]["dolly"]["examples"][0]["prompt"][-200:])
print("--- student:", result["eval"]["dolly"]["examples"][0]["response"][:300])
summary = {"dakd_version": dakd.__version__, "config_hash": cfg.config_hash(),
           "bdl_by_lambda": dict(zip(map(str, lams), bdl_curve["BDL (nats/token)"])),
           "forward_kl": fkl, "reverse_kl": rkl, "dds": dds.tolist(), "teacher_ce": ce_t.tolist(),
           "student_ce": ce_s.tolist(), "distill_rougeL": result["eval"]["dolly"]["rougeL"],
           "distill_epochs": log["epochs"].__len__()}
(out / "quickstart.json").write_text(json.dumps(summary, indent=1))
print("wrote", out / "quickstart.json")"""),
    md("""## The paper's numbers beside ours

The paper's DA-KD row of Table 1 (DollyEval ROUGE-L, mean of 5 seeds, Llama2-7B teacher) beside this
short run's: a 135M teacher and a few dozen samples here, so only the pipeline is comparable, not
the number. `notebooks/02_results.ipynb` has every method and set."""),
    code("""from dakd import results

pd.DataFrame([{"run": "this tour (SmolLM2 pair, DA-KD)", "DollyEval ROUGE-L": result["eval"]["dolly"]["rougeL"]}]
             + [{"run": f"paper: Llama2-7B -> {s} (DA-KD)", "DollyEval ROUGE-L": results.paper_table1(s)["DA-KD"]}
                for s in ("Sheared-LLaMA-2.7B", "Sheared-LLaMA-1.3B")]).round(2)"""),
])

distill = nb([
    md("""# Distil one student (SFT, KD or DA-KD) and evaluate it

Trains one run of the paper's protocol and evaluates it by ROUGE-L (METHOD.md section 5). The
parameters below are the fields of `dakd.config.DistillConfig`; `run_all.sh` fills them from a
preset through papermill. Outputs in `output_dir`: `config.json` (resolved config, hash, package
versions), `train_log.json` (filter counts, per-epoch DDS statistics, Table 3's cost record),
`results.json` (ROUGE-L per seed and mean) and `student/` (the distilled weights).

`method`: `teacher` (evaluate the teacher only), `sft`, `kd` (full data every epoch with `loss`),
`dakd` (DiffUp with `selection` and `schedule`, and `loss`, BDL by default), or the baselines
`seqkd` (SFT on the teacher's generated responses), `gkd` (on-policy generalized JSD) and `distillm`
(skew KL with student-generated outputs). With `num_processes > 1` the training cell runs through
`accelerate launch` in a subprocess.

A finished run in `output_dir` with the same config is reused; one of another config is refused
(nothing is changed) unless `overwrite = True`. A variant of your own gets its own folder, e.g.

    mkdir -p runs/lam07 && papermill notebooks/01_distill.ipynb runs/lam07/01_distill.ipynb -p lam 0.7 -p output_dir runs/lam07/dakd"""),
    params(distill_parameters()),
    code("""import json
from pathlib import Path

import pandas as pd

from dakd import pipeline, results
from dakd.config import DistillConfig

# a field missing from the parameters (a parameter file written before it existed) keeps its default
fields = {f: globals()[f] for f in DistillConfig.__dataclass_fields__ if f in globals()}
cfg = DistillConfig.from_dict(fields)
print(f"{pipeline.method_label(cfg)}: config {cfg.config_hash()} -> {cfg.output_dir}")"""),
    code("""res = pipeline.run(cfg, num_processes=num_processes, cpu=cpu, overwrite=overwrite)"""),
    code("""ev = res["eval"]
# .get: a reused results.json written before SAMSum/GSM8K support has ROUGE-L only
pd.DataFrame([{"dataset": d, "metric": e.get("metric", "rougeL"), "score": e.get("score", e.get("rougeL")),
               "std over seeds": e.get("score_std", e.get("rougeL_std")), "prompts": e["num_prompts"],
               "seeds": len(e["per_seed"]), "processes": e.get("num_processes", 1),
               "eval seconds": round(e["seconds"], 1), "note": e.get("subset_note") or ""} for d, e in ev.items()])"""),
    md("""The table above is the run's score on each evaluation set: ROUGE-L (x100) of sampled responses
against the references, averaged over the seeds. At CPU scale the students mostly write fluent
word salad, and ROUGE-L then mostly counts shared function words (the, a, of, to), so scores of
5-10 are what a CPU student gets, and differences under about a point are noise (40 prompts, one
seed). Below: the run's training, epoch by epoch (read from `train_log.json`, also for a reused run)."""),
    code("""if cfg.method != "teacher":
    log = json.loads((Path(cfg.output_dir) / "train_log.json").read_text())
    results.training_figure(log, title=f"{pipeline.method_label(cfg)}, config {cfg.config_hash()}")
    display(results.training_record(log).round(3))
    print(f"{res['cost']['iterations']} optimiser steps, {res['cost']['total_seconds'] / 60:.2f} training minutes "
          f"(DDS scoring {res['cost'].get('dds_seconds', 0.0) / 60:.2f})")"""),
    md("""Per epoch: the selection ratio r(e) and the samples trained on (DA-KD: all in epoch 0, then
fewer on the cosine schedule; SFT and KD: all every epoch), how many came from the hard part D_high
and from the rest D_low, the DDS quartiles before the epoch (DA-KD from epoch 1), the mean loss in
nats per token (each method's own objective, so losses of different methods do not compare) and
the seconds. Then two of the evaluation's prompts with the reference and this student's answer."""),
    code("""for ex in ev[cfg.eval_datasets[0]]["examples"][:2]:
    print("PROMPT:", ex["prompt"][:300], "\\nREFERENCE:", str(ex["references"])[:300], "\\nRESPONSE:", ex["response"][:300], "\\n")"""),
    md("""## The paper's numbers beside ours

This run's score on each Table 1 set it was evaluated on, beside the paper's for the same row
(Table 1, Llama2-7B -> Sheared-LLaMA-1.3B, mean of 5 seeds) and the difference; a row or set the
paper does not have is left empty. Table 2's sets are compared in `04_task_specific.ipynb`."""),
    code("""label = pipeline.method_label(cfg)
rows = []
for d, e in ev.items():
    column = results.TABLE1_COLUMNS.get(d)
    paper = results.paper_table1("Sheared-LLaMA-1.3B", column).get(label) if column else None
    ours = e.get("score", e.get("rougeL"))
    rows.append({"set": d, "row": label, "ours": ours, "paper 7B -> 1.3B": paper,
                 "diff": None if paper is None else ours - paper})
pd.DataFrame(rows).round(2)"""),
])

results_nb = nb([
    md("""# Results: the method table beside the paper's, every table present, and the figures

Reads every finished run under `run_root` (a folder per run with `results.json`), builds the
method table with the paper's DollyEval ROUGE-L (Table 1, Llama2-7B teacher; both students)
beside ours, the Table 1 layout over every instruction set, the per-epoch DDS table, and draws the
figures into `figures_dir`: per-epoch DDS distributions, selection ratio and subset size, training
loss, ROUGE-L per method. With `preset` set, these use that preset's Table 1 runs only. The table is
also written as `results_table.json` in `run_root`.

It then gathers the tables the notebooks 03 (Tables 4, 5, sweeps), 04 (Table 2) and 05 (Table 3,
Figure 1) wrote into `run_root`, each with the paper's numbers beside ours; an absent one is named
with the notebook that makes it."""),
    params("""run_root = "runs/cpu"
figures_dir = "figures/cpu"
dataset = "dolly"
preset = "cpu"   # a preset name: use its Table 1 runs only ("": every run in run_root with `dataset`)"""),
    code("""import json
from pathlib import Path

import pandas as pd
from IPython.display import Image, display

import dakd
from dakd import presets, results

all_runs = results.collect(run_root)
if preset:
    names = presets.get_tables(preset).get("table1", [])
else:
    names = [k for k, r in all_runs.items() if dataset in r["eval"]]
runs = {k: all_runs[k] for k in names if k in all_runs}
print(f"{len(all_runs)} finished runs in {run_root}; the method table uses {len(runs)}: {', '.join(runs)}")
if set(all_runs) - set(runs):
    print("not in it (other tables' runs):", ", ".join(sorted(set(all_runs) - set(runs))))
table = results.method_table(runs, dataset)
table.round(2)"""),
    md("""Each method's ROUGE-L (x100) on DollyEval beside the paper's Table 1 for the same method. Ours
distils a 135M teacher into a 6-layer student on a hundred-odd samples on a CPU; the paper distils
Llama2-7B on 11,435 samples for 10 epochs, so only the pipeline compares, not the numbers. The CPU
students write fluent word salad, and ROUGE-L then mostly counts shared function words: with 40
prompts and one seed, differences under about one point are noise. The iterations show DiffUp's
saving: DA-KD trains on a shrinking subset, so fewer optimiser steps than full-data KD."""),
    code("""# Table 1 layout: ROUGE-L on every instruction set the runs were evaluated on, each with the paper's
# value for the same method (Llama2-7B -> table1_student) and our difference; UnNI marked "(prefix)"
table1_student = presets.paper_comparison(preset)["table1_student"] or "Sheared-LLaMA-1.3B"
table1 = results.table1(runs, table1_student)
table1.round(2)"""),
    md("""The same runs on every instruction set they were evaluated on, each with the paper's value and
our difference (ours minus the paper's): the differences are large and negative everywhere, which
is the scale of the models and data, not a finding about DA-KD."""),
    code("""epochs = results.epoch_table(runs)
epochs.round(3)"""),
    md("""Per epoch of every trained run: selection ratio, subset size, how many samples came from D_high
and D_low, DDS quantiles before the epoch (DA-KD from epoch 1; empty for full-data methods) and the
mean training loss in nats per token (each method's own objective: SFT's cross-entropy and a
divergence do not compare)."""),
    code("""paths = results.plot_all(runs, figures_dir, dataset)
for p in paths:
    display(Image(filename=str(p)))"""),
    md("""## The other tables (written by notebooks 03, 04 and 05)"""),
    code("""made_by = {"table2": "04_task_specific", "table3": "05_cost", "figure1": "05_cost", "table4": "03_ablations",
           "table5": "03_ablations", "lambda_sweep": "03_ablations", "tau_sweep": "03_ablations",
           "schedules": "03_ablations"}
saved = results.saved_tables(run_root)
for name, t in saved.items():
    if t is None:
        print(f"{name}: absent from {run_root} (made by notebooks/{made_by[name]}.ipynb)")
        continue
    print(f"{name}: {t.get('paper')}" + (f" -- {t['note']}" if t.get("note") else ""))
    display(pd.DataFrame(t["rows"] if "rows" in t else t["points"]).round(2))"""),
    code("""out = {"dakd_version": dakd.__version__, "dataset": dataset, "run_root": run_root, "preset": preset,
       "config_hashes": {k: r["config_hash"] for k, r in runs.items()},
       "table": json.loads(table.reset_index().to_json(orient="records")),
       "table1": json.loads(table1.reset_index().to_json(orient="records")), "table1_student": table1_student,
       "other_tables": {k: v is not None for k, v in saved.items()},
       "figures": [str(p) for p in paths],
       "paper_citation": results.paper_tables()["citation"]}
Path(run_root, "results_table.json").write_text(json.dumps(out, indent=1))
print("table:", Path(run_root, "results_table.json"))
print("figures:", *paths, sep="\\n  ")"""),
])


def table_parameters(table_note: str) -> str:
    """The parameters cell of the table notebooks 03-05."""
    return f'''preset = "cpu-full"          # a preset of dakd.presets with {table_note}
run_root = "runs/cpu-full"    # its run folders (finished runs here are reused, not redone)
figures_dir = "figures/cpu-full"
num_processes = 1             # > 1: each run trains and evaluates through `accelerate launch`
cpu = False                   # with num_processes > 1 and no GPU: gloo processes on the CPU
overwrite = False             # True: retrain a run whose folder holds another config's finished run'''


def run_missing(tables: str) -> str:
    """The cell that trains and evaluates the runs a notebook's tables need (finished ones reused)."""
    return f'''import json
from pathlib import Path

from IPython.display import Image, display

import dakd
from dakd import pipeline, presets, results

wanted = {tables}
have = presets.get_tables(preset)
mine = [t for t in wanted if t in have]
for t in wanted:
    if t not in have:
        print(f"preset {{preset!r}} has no {{t}}: skipped (it has {{list(have)}})")
configs = presets.get_preset(preset, root=run_root)
todo = presets.needed_runs(preset, mine, root=run_root) if mine else []
print(f"{{len(todo)}} runs for {{mine}}: {{', '.join(todo)}}")
for name in todo:
    pipeline.run(configs[name], num_processes=num_processes, cpu=cpu, overwrite=overwrite)'''


def collect_cell() -> str:
    """Collect the finished runs and a helper giving one table's runs."""
    return '''all_runs = results.collect(run_root)
comparison = presets.paper_comparison(preset)


def runs_of(table):
    """{run name: results} of one table, in the table's order (every run is finished above)."""
    return {k: all_runs[k] for k in have[table] if k in all_runs}


def save(table, df, **extra):
    """Write <run_root>/<table>.json: the rows (NaN as null), the paper source and run hashes."""
    out = results.table_json(df) | {"table": table, "preset": preset, "dakd_version": dakd.__version__,
                                    "config_hashes": {k: r["config_hash"] for k, r in runs_of(table).items()},
                                    "paper_citation": results.paper_tables()["citation"]} | extra
    path = Path(run_root, f"{table}.json")
    path.write_text(json.dumps(out, indent=1))
    print("wrote", path, "|", df.attrs.get("paper"), "|", df.attrs.get("note") or "")
    return path


tables = {}'''


def show_table(table: str, builder: str, figure: str | None = None) -> str:
    """Build, show and save one table (and its bar figure) if the preset has it."""
    fig = ""
    if figure:
        fig = f'''
    display(Image(filename=str({figure})))'''
    return f'''if "{table}" in mine:
    tables["{table}"] = df = {builder}
    save("{table}", df){fig}
    display(df.round(2))'''


ablations = nb([
    md("""# Ablations: Tables 4 and 5, the lambda and tau sweeps, the ratio schedules

Regenerates the paper's ablations of DA-KD (He et al., ICML 2025) on a preset's runs:

- **Table 4**, DiffUp ablation (BDL throughout): DiffUp with DDS and stratified data updating,
  w/o DDS (a random subset of the same size each epoch), w/o SDU (all of it from the high-DDS
  part), w/o DiffUp (full data every epoch);
- **Table 5**, loss ablation with DiffUp: KL, RKL, JSD, SKL, SRKL and BDL;
- the **lambda sweep** of BDL (the paper's lambda figure: no numbers published), the **tau sweep**
  (share of the subset from the low-DDS part) and the **cosine vs linear** ratio schedule (Eq. 2).

The runs a table needs and has not got yet are trained and evaluated here (`dakd.pipeline.run`;
a finished run with the same config is reused, so runs shared with Table 1, such as `dakd`, cost
nothing twice). Each table shows ours, the paper's value (Llama2-7B -> Sheared-LLaMA-1.3B) and our
difference, and is written to `<run_root>/<table>.json`; figures go to `figures_dir`."""),
    params(table_parameters("table4, table5, lambda_sweep, tau_sweep or schedules")),
    code(run_missing('("table4", "table5", "lambda_sweep", "tau_sweep", "schedules")')),
    code(collect_cell()),
    md("## Table 4: DiffUp ablation"),
    code(show_table("table4", 'results.table4(runs_of("table4"))',
                    'results.paper_bars(df, ["Dolly"], Path(figures_dir, "table4.png"), df.attrs["paper"])')),
    md("""Table 4 compares ways of choosing each epoch's data, all with BDL. At this scale (a few
dozen samples, one seed, 16 prompts) the differences are within noise, and "w/o DiffUp" (full data
every epoch, so more optimiser steps) scores at least as well as DA-KD: with so little data, every
sample helps more than choosing the hard ones. The paper's gaps are under one ROUGE-L point too."""),
    md("## Table 5: loss ablation with DiffUp"),
    code(show_table("table5", 'results.table5(runs_of("table5"))',
                    'results.paper_bars(df, ["Dolly"], Path(figures_dir, "table5.png"), df.attrs["paper"])')),
    md("""Table 5 keeps DiffUp and changes the loss. Differences of a few points at 16 prompts and one
seed are noise; the losses' own scales differ, so only the ROUGE-L columns compare."""),
    md("## Lambda sweep (BDL, Eq. 4; the paper publishes a figure without numbers)"),
    code(show_table("lambda_sweep", 'results.lambda_sweep(runs_of("lambda_sweep"))',
                    'results.lambda_figure(runs_of("lambda_sweep"), Path(figures_dir, "lambda_sweep.png"))')),
    md("""lambda = 0.5 makes BDL identically zero (the two mixtures coincide), so that run does not learn
from the teacher at all; near 0 and 1 BDL approaches forward and reverse KL."""),
    md("## Tau sweep and ratio schedules"),
    code(show_table("tau_sweep", 'results.tau_sweep(runs_of("tau_sweep"))')),
    code(show_table("schedules", 'results.schedule_table(runs_of("schedules"))')),
    md("## The paper's numbers beside ours"),
    code('''for name in ("table4", "table5"):
    if name in tables:
        cols = [c for c in ("Dolly", "Dolly paper", "Dolly diff", "Avg", "Avg paper", "Avg diff") if c in tables[name]]
        print(tables[name].attrs["paper"])
        display(tables[name][cols].round(2))
for name in ("lambda_sweep", "tau_sweep", "schedules"):
    if name in tables:
        print(f"{name}: {tables[name].attrs['note']}")'''),
])

task_specific = nb([
    md("""# Table 2: task-specific distillation (SAMSum and GSM8K)

Regenerates the paper's Table 2 (He et al., DA-KD, ICML 2025) on a preset's runs: every method
(Teacher, SFT, KD-KL, KD-RKL, GKD, DistiLLM, DA-KD) trained on the task's own train split and
evaluated on its test set: SAMSum by ROUGE-L, GSM8K by zero-shot accuracy of the final number
(`dakd.tasks` documents prompts, decoding and answer extraction).

Missing runs are trained and evaluated here (finished ones are reused). The table shows ours, the
paper's value for the family `family` (default: the preset's, `dakd.presets.paper_comparison`;
Llama2 7B -> 1.3B for the CPU presets) and our difference; it is written to
`<run_root>/table2.json`, its figure to `figures_dir`."""),
    params(table_parameters("table2") + '\nfamily = None                 # "Llama2", "Qwen2.5" or "Llama3.2"; None: the preset\'s'),
    code(run_missing('("table2",)')),
    code(collect_cell()),
    md("## Table 2"),
    code('''family = family or comparison["table2_family"] or "Llama2"
''' + show_table("table2", 'results.table2(runs_of("table2"), family)',
                 'results.paper_bars(df, ["SAMSum ROUGE-L", "GSM8K accuracy"], Path(figures_dir, "table2.png"), '
                 'df.attrs["paper"])')),
    md("""SAMSum is scored by ROUGE-L of the summary, GSM8K by the accuracy of the final number. A
CPU-scale student solves almost no GSM8K problem, so accuracies near 0 are expected; the rows show
the pipeline regenerating Table 2, not the paper's numbers."""),
    md("## The paper's numbers beside ours"),
    code('''if "table2" in tables:
    print(tables["table2"].attrs["paper"])
    display(tables["table2"].drop(columns=[c for c in tables["table2"] if c.endswith(" run")]).round(2))'''),
])

cost = nb([
    md("""# Table 3 and Figure 1: training cost, and ROUGE-L against iterations

Regenerates the paper's Table 3 (He et al., DA-KD, ICML 2025: iterations and minutes per method,
Llama2-7B -> Sheared-LLaMA-2.7B on 4 x A800, DA-KD's minutes split into DDS scoring and
distillation) and Figure 1 (ROUGE-L against training iterations, DA-KD beside full-data KD with
the same loss, BDL), from a preset's runs. Minutes here are this machine's; what compares with
the paper is each method's ratio to KD-KL and DA-KD's DDS share, shown with the difference.
Figure 1's points are each epoch's saved student evaluated on DollyEval (`epoch_eval` in the
runs' `results.json`, written when `save_epoch_students` is set).

Missing runs are trained and evaluated here (finished ones are reused). Written:
`<run_root>/table3.json`, `<run_root>/figure1.json`, and the figures in `figures_dir`."""),
    params(table_parameters("table3 or figure1")),
    code(run_missing('("table3", "figure1")')),
    code(collect_cell()),
    md("## Table 3: training cost"),
    code(show_table("table3", 'results.table3(runs_of("table3"))',
                    'results.paper_bars(df, ["minutes / KD-KL", "iterations / KD-KL"], Path(figures_dir, "table3.png"), '
                    'df.attrs["paper"])')),
    md("""Our minutes are shared-CPU wall-clock of this preset's runs, the paper's are 4 x A800 GPU
minutes; only the ratios to KD-KL compare. DA-KD's ratio below 1 comes from training on fewer
samples per epoch; its DDS share is the time of the student's scoring passes before each epoch."""),
    md("## Figure 1: ROUGE-L against training iterations"),
    code('''if "figure1" in mine:
    points = results.figure1_points(runs_of("figure1"))
    fig1 = results.figure1(runs_of("figure1"), Path(figures_dir, "figure1.png"))
    out = {"table": "figure1", "preset": preset, "points": json.loads(points.to_json(orient="records")),
           "config_hashes": {k: r["config_hash"] for k, r in runs_of("figure1").items()},
           "paper": "Figure 1 (curves, no numbers published)", "figure": str(fig1)}
    Path(run_root, "figure1.json").write_text(json.dumps(out, indent=1))
    print("wrote", Path(run_root, "figure1.json"))
    display(Image(filename=str(fig1)))
    display(points.round(2))'''),
    md("## The paper's numbers beside ours"),
    code('''if "table3" in tables:
    t3 = tables["table3"]
    print(t3.attrs["paper"])
    display(t3[["minutes / KD-KL", "minutes / KD-KL paper", "minutes / KD-KL diff", "iterations / KD-KL",
                "iterations / KD-KL paper", "iterations / KD-KL diff", "DDS share", "DDS share paper"]].round(3))'''),
])

claims_nb = nb([
    md("""# Does DA-KD work? The paper's claims, tested at CPU scale

DA-KD (He et al., ICML 2025) makes claims a reproduction can test: DA-KD matches full-data KD with
about half the iterations (Tables 3 and 4), beats KD-KL and KD-RKL (Table 1), BDL is at least as
good as the other losses under DiffUp (Table 5), DDS beats a random subset and stratified updating beats taking the hardest
samples (Table 4), lambda 0.5 collapses while 0.6-0.9 train (Figure 4), and it costs less than
full-data KD and DistiLLM (Table 3). This notebook trains the runs behind them (the `cpu-claims`
preset, `dakd.presets.cpu_claims`; finished runs are reused, so it resumes run by run) and judges
each claim by a paired difference over DollyEval prompts with its 95 % bootstrap interval
(`dakd.claims`).

**Scale.** The teacher is SmolLM2-135M-Instruct (30 layers, 135M parameters), not Llama2-7B; the
student is a 6-layer cut of it; 128 Dolly training samples, not 11,435; CPU minutes, not A800
hours. A verdict here says what DA-KD does in this regime, not what it does at 7B.

**Verdicts**, fixed in `dakd.claims` before any result was seen and never tuned: a *beats* claim
**holds** when the interval lies above 0, **does not hold** when it lies below 0, else **cannot
tell**; a *matches* claim (non-inferiority) holds when the interval lies above minus the margin
(0.5 ROUGE-L points; 0.01 nats/token of student CE), does not hold when it lies wholly below it,
else cannot tell; a cost row holds when the measured ratio or share is at most the bound it states. Every difference is
signed so that positive is the claim's direction.

**Metrics.** ROUGE-L (the paper's), on the first `eval_samples` DollyEval prompts sampled as the
protocol says; and the teacher-forced student cross-entropy of the reference responses over the
whole DollyEval set (`dakd.teacher_forced`, nats per response token, lower is better): one forward
pass per model, every response token counts, so it resolves differences sampled ROUGE-L cannot."""),
    params('''preset = "cpu-claims"          # dakd.presets: cpu-claims, or tiny-claims (the tests' tiny pair)
run_root = "runs/cpu-claims"    # the study's run folders (finished runs are reused, not redone)
figures_dir = "figures/cpu-claims"'''),
    code('''import json
from pathlib import Path

import pandas as pd
from IPython.display import Image, display

from dakd import claims, presets

configs = presets.get_preset(preset, root=run_root)
print(f"{len(configs)} runs: {', '.join(configs)}")
rows = claims.run_study(preset, run_root, Path(figures_dir, "claims.json"))
study = json.loads(Path(figures_dir, "study.json").read_text())
print(f"study time (training and evaluation of every run, and the teacher-forced pass, as recorded): "
      f"{study['total_minutes']:.1f} min")'''),
    md("## The claims table"),
    code('''pd.set_option("display.max_colwidth", 90)
display(claims.claims_frame(rows).drop(columns=["paper"]))
fig = claims.forest_plot(rows, Path(figures_dir, "claims_forest.png"))
display(Image(filename=str(fig)))'''),
    md("""Each line of the figure is one comparison: the dot is our estimate, the bar its 95 % interval,
green where the claim holds, red where it does not, grey where the prompts cannot tell. On
*matches* rows the black tick is minus the margin: the interval must stay right of it."""),
    md("""## The runs

Every run of the study on DollyEval: ROUGE-L (x100) on the sampled prompts; the teacher-forced
metrics on the whole set (student CE and forward KL from the teacher in nats per response token,
top-1 agreement a share); the run's cost (Table 3's quantity: DDS scoring plus the step loop, in
minutes of this machine) and its optimiser steps."""),
    code('''per_run = pd.DataFrame([
    {"run": k, "label": r["label"], "ROUGE-L": r["rougeL"], "student CE": r["student_ce"],
     "forward KL": r["forward_kl"], "top-1 agreement": r["top1_agreement"],
     "iterations": r["cost"]["iterations"], "cost min": r["cost"]["total_seconds"] / 60,
     "DDS share": r["cost"]["dds_share"]}
    for k, r in study["runs"].items() if r is not None])
display(per_run.round(4))
teacher_ce = next((r["teacher_ce"] for r in study["runs"].values() if r and r["teacher_ce"] is not None), None)
if teacher_ce is not None:
    print(f"the teacher's CE of the same reference tokens: {teacher_ce:.4f} nats/token")'''),
    md("""## Claim by claim

### 1. DA-KD matches full-data KD with the same loss, with ~55 % of the iterations

Table 4's "w/o DiffUp" row trains BDL on every sample every epoch (`dakd_full`); DA-KD trains on
all of D at epoch 0, then on the DiffUp subset of ratio r(e) = 0.5 cos(pi e / E) + 0.5: at least
0.55 of the iterations over 10 epochs."""),
    code('''def show(claim):
    """The claim's rows as a table and one line each, then the paper's statement."""
    mine = [r for r in rows if r["claim"] == claim]
    display(claims.claims_frame(mine).drop(columns=["claim", "paper"]))
    for r in mine:
        print(f"{r['statement']} [{r['metric']}]: {claims.ours_text(r)} -> {r['verdict']}")
    print("paper:", mine[0]["paper"])


show(1)'''),
    md("""### 2. DA-KD beats KD-KL and KD-RKL (Table 1)

Full-data KD with forward KL (`kd_kl`) and with reverse KL (`kd_rkl`), with the same data, epochs
and schedule, against DA-KD (DiffUp and BDL)."""),
    code("show(2)"),
    md("""### 3. BDL is at least as good as KL, RKL, JSD, SKL and SRKL under DiffUp (Table 5)

The same DiffUp selection with each loss (`dakd_<loss>`) against BDL (`dakd`): a *matches* claim,
BDL must not be worse by more than the margin."""),
    code("show(3)"),
    md("""### 4. DDS selection beats a random subset of the same size (Table 4, "w/o DDS")"""),
    code("show(4)"),
    md("""### 5. Stratified updating beats taking every sample from the top (Table 4, "w/o SDU")

`dakd_top` keeps as many samples as DA-KD each epoch, all of the highest DDS."""),
    code("show(5)"),
    md("""### 6. lambda 0.5 collapses, 0.6-0.9 train (Figure 4)

At lambda 0.5 BDL is identically zero (its two terms cancel), so no gradient reaches the student:
that run stays the untrained cut, the collapse. Each other lambda must beat it."""),
    code("show(6)"),
    md("""### 7. Cost (Table 3)

Cost is DDS scoring plus the step loop (DistiLLM's generation and validation included), measured
in this one process on this machine for every run; model loading, evaluation and the top-k teacher
cache's one-off build (shared by every run that reads it) are not in it. DA-KD against KD-KL and
against full-data BDL: all three read the cached teacher. Against DistiLLM: both with the live
teacher (`dakd_exact`), since DistiLLM scores its own samples with the teacher at every step. One
measurement each: no interval."""),
    code('''show(7)
cost_runs = [k for k in ("dakd", "dakd_full", "kd_kl", "dakd_exact", "distillm") if study["runs"].get(k)]
display(pd.DataFrame([{"run": k, **{c: study["runs"][k]["cost"][c] for c in
                                   ("iterations", "dds_seconds", "train_seconds", "generation_seconds",
                                    "validation_seconds", "total_seconds", "dds_share")}}
                      for k in cost_runs]).round(3))'''),
    md("""## Is the top-k teacher cache accurate enough?

Every KD and DiffUp run but `dakd_exact` reads the teacher's 256 most likely next tokens from a
cache instead of running the teacher. `dakd_exact` is DA-KD with the live teacher: the paired
difference of the two is the cache's whole effect on the outcome, to be set beside the smallest
difference the claims table judges."""),
    code('''small = claims.smallest_judged(rows)
effect = study.get("topk_effect")
if effect is None:
    print("dakd_exact is not finished: the cache's effect is not measured yet")
else:
    for metric, e in effect.items():
        s = small.get(e["metric"])
        lo, hi = e["interval"]
        print(f"{e['metric']}: cached vs live teacher {e['ours']:+.4f} [{lo:+.4f}, {hi:+.4f}] {e['unit']} "
              f"(positive: the cached-teacher run is better); the smallest difference judged: "
              + (f"{s['ours']:+.4f} ({' vs '.join(s['runs'])})" if s else "none"))'''),
    md("""## The student

Three cuts of the teacher were measured with `benchmarks/claims_student.py` (6, 10 and 15 of its
30 layers, evenly spaced; teacher-forced on the first 200 DollyEval prompts, as cut and after the
same 18 KD steps; the seconds of one step of 8 samples):"""),
    code('''choice = Path(figures_dir, "student_choice.json")
if choice.exists():
    display(pd.DataFrame(json.loads(choice.read_text())).T.round(3))
else:
    print(f"{choice} is not written (benchmarks/claims_student.py writes runs/claims_student/summary.json)")'''),
    md("""Cutting layers breaks the model whatever the depth: as cut, the three score 13.7-14.9
nats/token of student CE against the teacher's 2.7. After the same 18 KD steps they are within
0.25 nats/token of each other (6 layers 7.67, 10 layers 7.68, 15 layers 7.44), while a step costs
1.87, 2.51 and 3.39 s. In a fixed budget the 6-layer student gets about 1.8x the steps of the
15-layer one for a 3 % higher CE after the same steps: the study uses the 6-layer cut, the
package's default student."""),
    md("""## Training: how far did the runs converge?

The per-epoch training loss (nats per response token) of the full-data runs and of DA-KD. Each
loss is its own objective: compare the shapes, not the levels across losses."""),
    code('''import matplotlib.pyplot as plt

curves = {}
for k in ("dakd_full", "kd_kl", "kd_rkl", "dakd"):
    log = Path(configs[k].output_dir, "train_log.json")
    if log.exists():
        curves[k] = [e["mean_loss"] for e in json.loads(log.read_text())["epochs"]]
fig, ax = plt.subplots(figsize=(6, 3.2))
for k, v in curves.items():
    ax.plot(range(len(v)), v, marker="o", label=k)
ax.set_xlabel("epoch")
ax.set_ylabel("training loss (nats/token)")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
display(pd.DataFrame(curves).round(4))'''),
])


def build() -> dict:
    """Every notebook, by name, as nbformat objects with stable cell ids."""
    books = {"00_quickstart": quickstart, "01_distill": distill, "02_results": results_nb,
             "03_ablations": ablations, "04_task_specific": task_specific, "05_cost": cost,
             "06_claims": claims_nb}
    for name, book in books.items():
        for i, cell in enumerate(book.cells):  # stable cell ids: regenerating changes only what changed
            cell.id = f"{name[:2]}-{i:02d}"
    return books


if __name__ == "__main__":
    import sys

    only = sys.argv[1:]  # notebook names to write (default: all of them)
    for name, book in build().items():
        if only and name not in only:
            continue
        nbf.write(book, HERE / f"{name}.ipynb")
        print("wrote", HERE / f"{name}.ipynb")
