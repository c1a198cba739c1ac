"""Write the notebooks' source (unexecuted) from this one file, so their cells stay reviewable as
code. Run: python tools/make_notebooks.py. The executed copies are written by run_all.sh."""

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
              "cpu = False         # with num_processes > 1 and no GPU: gloo processes on the CPU"]
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
output_dir = "runs/quickstart\""""),
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
    md("""## 3. One short DA-KD run

Epoch 0 trains on all samples; before each later epoch the student's CE over all samples gives the
DDS, and stratified data updating keeps r(e) * N of them (mostly the hardest, a share tau from the
rest), with BDL as the loss."""),
    code("""cfg = DistillConfig(teacher=teacher, student=student, method="dakd", loss="bdl", prompt_style=prompt_style,
                    train_samples=distill_samples, epochs=distill_epochs, lr=1e-4,
                    max_prompt_length=max_prompt_length, max_length=max_length,
                    eval_samples=8, eval_seeds=(10,), max_new_tokens=64, seed=seed,
                    output_dir=str(out / "dakd"), save_checkpoints=False)
result = pipeline.run(cfg)
log = json.loads((out / "dakd" / "train_log.json").read_text())
pd.DataFrame([{k: e.get(k) for k in ("epoch", "ratio", "subset_size", "n_high", "n_low", "mean_loss", "steps")}
              for e in log["epochs"]])"""),
    code("""print(result["eval"]["dolly"]["examples"][0]["prompt"][-200:])
print("--- student:", result["eval"]["dolly"]["examples"][0]["response"][:300])
summary = {"dakd_version": dakd.__version__, "config_hash": cfg.config_hash(),
           "bdl_by_lambda": dict(zip(map(str, lams), bdl_curve["BDL (nats/token)"])),
           "forward_kl": fkl, "reverse_kl": rkl, "dds": dds.tolist(), "teacher_ce": ce_t.tolist(),
           "student_ce": ce_s.tolist(), "distill_rougeL": result["eval"]["dolly"]["rougeL"],
           "distill_epochs": log["epochs"].__len__()}
(out / "quickstart.json").write_text(json.dumps(summary, indent=1))
print("wrote", out / "quickstart.json")"""),
])

distill = nb([
    md("""# Distil one student (SFT, KD or DA-KD) and evaluate it

Trains one run of the paper's protocol and evaluates it by ROUGE-L (METHOD.md section 5). The
parameters below are the fields of `dakd.config.DistillConfig`; `run_all.sh` fills them from a
preset through papermill. Outputs in `output_dir`: `config.json` (resolved config, hash, package
versions), `train_log.json` (filter counts, per-epoch DDS statistics, Table 3's cost record),
`results.json` (ROUGE-L per seed and mean) and `student/` (the distilled weights).

`method`: `teacher` (evaluate the teacher only), `sft`, `kd` (full data every epoch with `loss`) or
`dakd` (DiffUp with `selection` and `schedule`, and `loss`, BDL by default). With
`num_processes > 1` the training cell runs through `accelerate launch` in a subprocess."""),
    params(distill_parameters()),
    code("""import json
from pathlib import Path

import pandas as pd

from dakd import pipeline, results
from dakd.config import DistillConfig

fields = {f: globals()[f] for f in DistillConfig.__dataclass_fields__}
cfg = DistillConfig.from_dict(fields)
print(f"{pipeline.method_label(cfg)}: config {cfg.config_hash()} -> {cfg.output_dir}")"""),
    code("""res = pipeline.run(cfg, num_processes=num_processes, cpu=cpu)"""),
    code("""ev = res["eval"]
# .get: a reused results.json written before SAMSum/GSM8K support has ROUGE-L only
pd.DataFrame([{"dataset": d, "metric": e.get("metric", "rougeL"), "score": e.get("score", e.get("rougeL")),
               "std over seeds": e.get("score_std", e.get("rougeL_std")), "prompts": e["num_prompts"],
               "seeds": len(e["per_seed"]), "processes": e.get("num_processes", 1),
               "eval seconds": round(e["seconds"], 1), "note": e.get("subset_note") or ""} for d, e in ev.items()])"""),
    code("""runs = {Path(cfg.output_dir).name: results.collect(Path(cfg.output_dir).parent)[Path(cfg.output_dir).name]}
if res.get("cost"):
    print(json.dumps(res["cost"], indent=1))
    display(results.epoch_table(runs))
for ex in ev[cfg.eval_datasets[0]]["examples"][:2]:
    print("PROMPT:", ex["prompt"][-300:], "\\nREFERENCE:", str(ex["references"])[:300], "\\nRESPONSE:", ex["response"][:300], "\\n")"""),
])

results_nb = nb([
    md("""# Results: the method table beside the paper's, and the figures

Reads every finished run under `run_root` (a folder per run with `results.json`), builds the
method table with the paper's DollyEval ROUGE-L (Table 1, Llama2-7B teacher; both students)
beside ours, the per-epoch DDS table, and draws the figures into `figures_dir`: per-epoch DDS
distributions, selection ratio and subset size, training loss, ROUGE-L per method.
The table is also written as `results_table.json` in `run_root`."""),
    params("""run_root = "runs/cpu"
figures_dir = "figures/cpu"
dataset = "dolly\""""),
    code("""import json
from pathlib import Path

from IPython.display import Image, display

import dakd
from dakd import results

runs = results.collect(run_root)
print(f"{len(runs)} finished runs in {run_root}: {', '.join(runs)}")
table = results.method_table(runs, dataset)
table.round(2)"""),
    code("""# Table 1 layout: ROUGE-L on every instruction set the runs were evaluated on, each with the paper's
# value for the same method (Llama2-7B -> table1_student) and our difference; UnNI marked "(prefix)"
table1_student = "Sheared-LLaMA-1.3B"
table1 = results.table1(runs, table1_student)
table1.round(2)"""),
    code("""epochs = results.epoch_table(runs)
epochs.round(3)"""),
    code("""paths = results.plot_all(runs, figures_dir, dataset)
for p in paths:
    display(Image(filename=str(p)))"""),
    code("""out = {"dakd_version": dakd.__version__, "dataset": dataset, "run_root": run_root,
       "config_hashes": {k: r["config_hash"] for k, r in runs.items()},
       "table": json.loads(table.reset_index().to_json(orient="records")),
       "table1": json.loads(table1.reset_index().to_json(orient="records")), "table1_student": table1_student,
       "figures": [str(p) for p in paths],
       "paper_citation": results.paper_tables()["citation"]}
Path(run_root, "results_table.json").write_text(json.dumps(out, indent=1))
print("table:", Path(run_root, "results_table.json"))
print("figures:", *paths, sep="\\n  ")"""),
])

for name, book in [("00_quickstart", quickstart), ("01_distill", distill), ("02_results", results_nb)]:
    nbf.write(book, HERE / f"{name}.ipynb")
    print("wrote", HERE / f"{name}.ipynb")
