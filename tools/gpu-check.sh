#!/usr/bin/env bash
# The prepared GPU run (issue 14): install offline, the CUDA tests, `resconf check --device cuda` per backend,
# the fused add+norm benchmarks against the copy roofline, all under one time budget, into one folder.
#
#   tools/gpu-check.sh OUT          on the GPU machine (no network, no asv): about 8 minutes at most
#   tools/gpu-check.sh --dry OUT    the same steps on the CPU (TRITON_INTERPRET=1, tiny shapes, a few
#                                   properties): proves the plumbing here (160 s on a busy 2-core VM);
#                                   its timeouts grow with the machine's load (GPU_CHECK_TIMEOUT_SCALE)
#
# OUT gets summary.txt (every step and its outcome, conformance per backend, the throughput table),
# gpu-check.log (every step's output), conformance.parquet (resconf's results schema), bench.parquet
# (resconf bench-export's columns plus back-to-back timings) and work.tar.gz (per-step files). Each step has
# its own timeout and a failing step does not stop the others. Exit status 0: every step passed or was
# skipped (liger not installed, say); 1: a step failed, timed out or did not fit the budget; 2: usage.
#
# Environment: GPU_CHECK_BUDGET_S (seconds for all steps but the last merges; 450 on the GPU, 600 x SCALE dry),
# GPU_CHECK_TIMEOUT_SCALE (a whole number every step's timeout is multiplied by; 1 on the GPU, whose time is
# the budget; dry: 1 + ceil(load average / CPUs), since a dry run proves the plumbing, not the speed, and a
# busy shared CPU must slow it down, not fail it),
# GPU_CHECK_PYTHON (default: the checkout's .venv if there, else python3), GPU_CHECK_INSTALL (auto: use an
# install that already points here, else `pip install -e` offline, else links on PYTHONPATH; or pip, shim),
# GPU_CHECK_PROFILE, GPU_CHECK_K (conformance profile and -k), GPU_CHECK_SHAPES (8192x4096,8192x8192),
# RESCONF_COMMIT (the commit to record where the copy has no .git).
set -u -o pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
MODE=gpu
OUT=
while (($#)); do
  case $1 in
    --dry) MODE=dry ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "gpu-check: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) [[ -z $OUT ]] || { echo "gpu-check: one output folder, got $OUT and $1" >&2; exit 2; }; OUT=$1 ;;
  esac
  shift
done
[[ -n $OUT ]] || { usage >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd -P) || exit 2
WORK=$OUT/work
LOG=$OUT/gpu-check.log
STEPS=$WORK/steps.tsv
rm -rf "$WORK" "$OUT"/{summary.txt,gpu-check.log,conformance.parquet,bench.parquet,work.tar.gz}
mkdir -p "$WORK" && : >"$LOG" && : >"$STEPS" || exit 2
cd "$REPO" || exit 2

PY=${GPU_CHECK_PYTHON:-}
[[ -n $PY ]] || { [[ -x $REPO/.venv/bin/python ]] && PY=$REPO/.venv/bin/python || PY=python3; }
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX would take 75% of the GPU at start

load_scale() {  # 1 + ceil(1-minute load average / CPUs): 2 on an idle machine, 5 at load 8 on 2 CPUs
  awk -v load="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)" -v cpus="$(nproc 2>/dev/null || echo 1)" \
    'BEGIN { x = load / cpus; s = int(x); if (s < x) s++; if (s < 1) s = 1; print s + 1 }'
}
if [[ $MODE == gpu ]]; then SCALE=${GPU_CHECK_TIMEOUT_SCALE:-1}; else SCALE=${GPU_CHECK_TIMEOUT_SCALE:-$(load_scale)}; fi
[[ $SCALE =~ ^[1-9][0-9]*$ ]] || { echo "gpu-check: GPU_CHECK_TIMEOUT_SCALE=$SCALE: expected a whole number >= 1" >&2; exit 2; }

if [[ $MODE == gpu ]]; then
  DEVICE=cuda STRICT=--strict BUDGET=${GPU_CHECK_BUDGET_S:-450}
  PROFILE=${GPU_CHECK_PROFILE:-ci} KEYWORD=${GPU_CHECK_K:-}
  SHAPES=${GPU_CHECK_SHAPES:-8192x4096,8192x8192}
  PRESET_SHAPES=2048x1024 MATMUL_SHAPES=8192x8192  # a stack's tokens x d_model; a matmul's n x n
  PLAN=(--warmup 3 --samples 15 --min-sample-s 0.02)
  EXTRA_TRITON=() EXTRA_COMPILE=()
else
  DEVICE=cpu STRICT= BUDGET=${GPU_CHECK_BUDGET_S:-$((600 * SCALE))}  # generous: a shared CPU can be slow
  PROFILE=${GPU_CHECK_PROFILE:-smoke} KEYWORD=${GPU_CHECK_K:-(test_identity_block or test_fused_add_norm) and float32}
  SHAPES=${GPU_CHECK_SHAPES:-16x64}
  PRESET_SHAPES=16x64 MATMUL_SHAPES=64x64
  PLAN=(--warmup 0 --samples 2 --min-sample-s 0)
  EXTRA_TRITON=(--interpreted-triton) EXTRA_COMPILE=(--max-cases 1)  # torch.compile: ~20 s a case on a CPU
  export TRITON_INTERPRET=1
fi
MIN_STEP_S=20  # a step with less of the budget left is not started ("not run", a failure)

say() { printf '[gpu-check %4ds] %s\n' "$SECONDS" "$*"; printf '[gpu-check %4ds] %s\n' "$SECONDS" "$*" >>"$LOG"; }
record() {  # record NAME STATUS SECONDS TIMEOUT NOTE: one line of steps.tsv
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$STEPS"
  say "$1: $2 (${3} s)${5:+: $5}"
}

# run_step NAME TIMEOUT CMD...: CMD's output goes to the log; exit 0 passed, 77 skipped (the helpers' "nothing
# could run here"), 124/137 timed out, else failed. The step's timeout, times SCALE, is cut to what is left of
# the budget, unless NO_BUDGET=1.
run_step() {
  local name=$1 limit=$(($2 * SCALE)) rc status t0=$SECONDS
  shift 2
  if [[ ${NO_BUDGET:-0} != 1 ]]; then
    local left=$((BUDGET - SECONDS))
    if ((left < MIN_STEP_S)); then
      record "$name" "not run" 0 "$limit" "the ${BUDGET} s budget was spent"
      return
    fi
    ((limit > left)) && limit=$left
  fi
  printf '\n==== %s (timeout %d s, at %d s)\n+ %s\n' "$name" "$limit" "$SECONDS" "$*" >>"$LOG"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  case $rc in
    0) status=passed ;;
    77) status=skipped ;;
    124 | 137) status="timed out" ;;
    *) status=failed ;;
  esac
  record "$name" "$status" $((SECONDS - t0)) "$limit" "$([[ $status == failed ]] && echo "exit status $rc")"
}

points_here() {  # whether `import resconf` (from a neutral folder) is this checkout
  [[ $(cd / && "$PY" -c 'import os, resconf.backends as b; print(os.path.realpath(b.__file__))' 2>/dev/null) \
    == "$REPO/backends/__init__.py" ]]
}

# The project as `resconf.*`, without network: an install that already points here; else an editable
# install (pyproject's build backend, setuptools>=77 and setuptools-scm, must already be there: no build
# isolation, no index);
# else links resconf/{backends,conformance,reports} -> the checkout on PYTHONPATH, and the pytest plugin
# (normally an entry point) through PYTEST_PLUGINS.
install() {
  local t0=$SECONDS how=${GPU_CHECK_INSTALL:-auto} note= version shim
  printf '\n==== install (%s)\n' "$how" >>"$LOG"
  if [[ $how != shim ]] && points_here; then
    record install passed $((SECONDS - t0)) - "resconf already imports from this checkout"
    return
  fi
  if [[ $how != shim ]]; then
    version=$("$PY" -c 'import setuptools, setuptools_scm; print(setuptools.__version__)' 2>>"$LOG")
    if [[ -n $version ]] && ((${version%%.*} >= 77)); then
      echo "+ $PY -m pip install --no-deps --no-build-isolation --no-index -e $REPO" >>"$LOG"
      timeout $((120 * SCALE)) "$PY" -m pip install --no-deps --no-build-isolation --no-index -e "$REPO" >>"$LOG" 2>&1
      if points_here; then
        record install passed $((SECONDS - t0)) - "pip install -e, offline (setuptools $version)"
        return
      fi
      note="pip install -e did not work (gpu-check.log)"
    else
      note="setuptools>=77 with setuptools-scm (pyproject's build backend) is not there (${version:-no setuptools or no setuptools_scm})"
    fi
    if [[ $how == pip ]]; then
      record install failed $((SECONDS - t0)) - "$note"
      return
    fi
  fi
  shim=$(mktemp -d /tmp/resconf-path.XXXXXX) && mkdir "$shim/resconf" || return
  SHIM_DIR=$shim  # removed at exit
  for d in backends conformance reports; do ln -s "$REPO/$d" "$shim/resconf/$d"; done
  export PYTHONPATH=$shim${PYTHONPATH:+:$PYTHONPATH}
  if ! "$PY" -c 'import sys; from importlib.metadata import entry_points as e
sys.exit(not any(p.value.startswith("resconf.conformance.plugin") for p in e(group="pytest11")))' 2>/dev/null; then
    export PYTEST_PLUGINS=resconf.conformance.plugin
  fi
  if points_here; then
    record install passed $((SECONDS - t0)) - "${note:+$note; }the checkout on PYTHONPATH ($shim/resconf -> $REPO)"
  else
    record install failed $((SECONDS - t0)) - "${note:+$note; }resconf does not import even from $shim"
  fi
}

liger_missing() {  # why the liger backend cannot be imported here; empty when it can
  "$PY" -c 'import importlib.util as u
print("liger_kernel is not installed" if u.find_spec("liger_kernel") is None else
      "backends/kernels/liger_fused.py is not there" if u.find_spec("resconf.backends.kernels.liger_fused") is None else "")' \
    2>/dev/null || echo "resconf does not import"
}

SHIM_DIR=
trap '[[ -n $SHIM_DIR ]] && rm -rf "$SHIM_DIR"' EXIT
say "mode $MODE, device $DEVICE, python $PY, budget ${BUDGET} s, timeouts x$SCALE, output $OUT"

run_step env 60 "$PY" tools/gpu_report.py env --device "$DEVICE" -o "$WORK/env.json" $STRICT
install

# The project's own tests that exercise CUDA (they skip without a GPU): every test named *cuda* in a test file
# that mentions cuda. Not this script's own test, nor the documentation's command list.
mapfile -t CUDA_TESTS < <(grep -l cuda tests/test_*.py | grep -v -e test_gpu_check.py -e test_doc_commands.py)
run_step pytest-cuda 120 "$PY" -m pytest -o addopts= -p no:cacheprovider -q -rs -k cuda --timeout $((100 * SCALE)) \
  --junitxml "$WORK/pytest-cuda.xml" "${CUDA_TESTS[@]}"

LIGER_MISSING=$(liger_missing)
for backend in triton_fused torch jax liger; do
  if [[ $backend == liger && -n $LIGER_MISSING ]]; then
    record check-liger skipped 0 - "$LIGER_MISSING"
    continue
  fi
  limit=120
  [[ $backend == jax ]] && limit=150  # a compile per case structure
  run_step "check-$backend" "$limit" "$PY" tools/gpu_report.py check --backend "$backend" --device "$DEVICE" \
    --output "$WORK/check-$backend.parquet" $STRICT -- --profile "$PROFILE" --timeout $((60 * SCALE)) \
    --junitxml "$WORK/check-$backend.xml" ${KEYWORD:+-k "$KEYWORD"}
done

run_step bench-roofline 45 "$PY" tools/gpu_bench.py time --device "$DEVICE" --roofline --shapes "$SHAPES" \
  --out "$WORK/bench-roofline.jsonl" "${PLAN[@]}" $STRICT
for backend in triton_fused torch jax liger torch_compile; do
  if [[ $backend == liger && -n $LIGER_MISSING ]]; then
    record bench-liger skipped 0 - "$LIGER_MISSING"
    continue
  fi
  limit=75 soft=50 extra=()
  [[ $backend == triton_fused ]] && extra=("${EXTRA_TRITON[@]}")
  [[ $backend == torch_compile ]] && limit=90 soft=45 extra=("${EXTRA_COMPILE[@]}")  # Inductor: a compile a case
  run_step "bench-$backend" "$limit" "$PY" tools/gpu_bench.py time --device "$DEVICE" --backend "$backend" \
    --shapes "$SHAPES" --out "$WORK/bench-$backend.jsonl" --time-limit $((soft * SCALE)) "${PLAN[@]}" "${extra[@]}" $STRICT
done

# The layers people run (the gpt2 and llama stacks, forward and forward+backward) and the matmul peak their
# % of compute is judged against, through the same asv classes (bench_presets.py, bench_matmul.py)
for backend in torch jax; do
  run_step "bench-presets-$backend" 60 "$PY" tools/gpu_bench.py time --device "$DEVICE" --backend "$backend" \
    --suite presets --shapes "$PRESET_SHAPES" --out "$WORK/bench-presets-$backend.jsonl" --time-limit $((40 * SCALE)) \
    "${PLAN[@]}" $STRICT
  run_step "bench-matmul-$backend" 30 "$PY" tools/gpu_bench.py time --device "$DEVICE" --backend "$backend" \
    --suite matmul --shapes "$MATMUL_SHAPES" --out "$WORK/bench-matmul-$backend.jsonl" "${PLAN[@]}" $STRICT
done

COMMIT=${RESCONF_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}
[[ -n $COMMIT && -z ${RESCONF_COMMIT:-} && -n $(git status --porcelain 2>/dev/null) ]] && COMMIT=$COMMIT-dirty
shopt -s nullglob
NO_BUDGET=1 run_step check-merge 30 "$PY" tools/gpu_report.py merge "$WORK"/check-*.parquet \
  -o "$OUT/conformance.parquet"
NO_BUDGET=1 run_step bench-export 30 "$PY" tools/gpu_bench.py export "$WORK"/bench-*.jsonl -o "$OUT/bench.parquet" \
  --env "$WORK/env.json" --commit "${COMMIT:-unknown}"

FAILED=$(awk -F'\t' '$2 != "passed" && $2 != "skipped" {print $1}' "$STEPS" | tr '\n' ' ')
if ! timeout $((60 * SCALE)) "$PY" tools/gpu_report.py summary --work "$WORK" --out "$OUT" --mode "$MODE" --device "$DEVICE" \
  --seconds "$SECONDS" --budget "$BUDGET" >>"$LOG" 2>&1; then
  FAILED="$FAILED summary"
  { echo "resconf GPU check: FAILED (${FAILED% }); the summary helper failed, see gpu-check.log"
    echo; echo "Steps (name, status, seconds, timeout, note)"; cat "$STEPS"; } >"$OUT/summary.txt"
fi
tar -czf "$OUT/work.tar.gz" -C "$OUT" work && rm -rf "$WORK"
echo
cat "$OUT/summary.txt"
[[ -z ${FAILED// /} ]]
