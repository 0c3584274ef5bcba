#!/usr/bin/env bash
# Wall time of `resconf check` over numpy, torch and jax: the ci profile with a cold JAX compile cache and
# a warm one, with parallel workers (-n auto) and one backend at a time (-n 0), then a sample of the
# nightly profile (structure drawn per example) at two example counts, from which the full nightly run is
# extrapolated linearly. A benchmark, not a test: it prints figures and asserts nothing.
#   bash benchmarks/check_timing.sh [SMALL_EXAMPLES [LARGE_EXAMPLES]]    (defaults 10 and 30; venv active)
set -euo pipefail
small=${1:-10}
large=${2:-30}
work=$(mktemp -d)
trap '[ -e "$work/failed" ] && echo "kept $work: a run failed (its results and logs are there)" || rm -rf "$work"' EXIT
cd "$work"  # the nightly example database and every result land here, not in the checkout
backends=(--backend numpy --backend torch --backend jax)
export XDG_CACHE_HOME="$work/cache"  # JAX's persistent compile cache (conformance/worker.py) starts empty

seconds() {  # LABEL COMMAND...: run it quietly into LABEL.log; print its wall time in seconds
  local start end log="$1.log"
  shift
  start=$(date +%s%N)
  "$@" > "$log" 2>&1 || { touch failed; echo "  (exit status $? from: $*; its output: $work/$log)" >&2; }
  end=$(date +%s%N)
  echo $(( (end - start) / 1000000 )) | awk '{printf "%.1f", $1 / 1000}'
}

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "ci, cold JAX cache, -n auto:  $(seconds cold resconf check "${backends[@]}" --output cold.parquet) s"
echo "ci, warm JAX cache, -n auto:  $(seconds warm resconf check "${backends[@]}" --output warm.parquet) s"
echo "ci, warm JAX cache, -n 0:     $(seconds serial resconf check "${backends[@]}" -n 0 --output serial.parquet) s"
t_small=$(seconds nightly-small resconf check "${backends[@]}" --profile nightly --max-examples "$small" --output n1.parquet)
t_large=$(seconds nightly-large resconf check "${backends[@]}" --profile nightly --max-examples "$large" --output n2.parquet)
echo "nightly, $small examples:     $t_small s"
echo "nightly, $large examples:     $t_large s (the database from the run before replayed first)"
awk -v a="$t_small" -v b="$t_large" -v m="$small" -v n="$large" 'BEGIN {
  per = (b - a) / (n - m); fixed = a - per * m
  printf "nightly extrapolated: %.0f s fixed + %.2f s per example: 1000 examples ~ %.0f min; ", fixed, per, (fixed + 1000 * per) / 60
  printf "60 min fits ~%d examples (--max-examples)\n", (3600 - fixed) / per }'
