#!/usr/bin/env bash
# Nightly-sized calibration of the error budgets (conformance/budgets.py), not a timed test: every correct
# backend over fresh random seeds, at one and at two BLAS/OpenMP threads (another blocking, another
# summation order), expecting 0 false failures. Prints the wall time and the calibration tables; writes
# OUT/threads-N.parquet and OUT/threads-N.txt.
#   bash benchmarks/calibrate.sh [SEEDS=200] [OUT=.resconf/calibration]   (BACKENDS, SELECT override)
set -uo pipefail
seeds=${1:-200}
out=${2:-.resconf/calibration}
backends=${BACKENDS:-numpy torch jax}
# the properties whose allowance is a budget or a band; the bitwise ones (ID-1/2, XB-4) allow nothing
select=${SELECT:-"test_agreement or test_fused_add_norm or test_gradient or test_negative_control or test_identity_gradient or test_variance"}
mkdir -p "$out"
status=0
for threads in 1 2; do
  start=$(date +%s)
  args=(); for b in $backends; do args+=(--backend "$b"); done
  OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads \
    resconf calibrate "${args[@]}" --seeds "$seeds" -k "$select" --output "$out/threads-$threads.parquet" \
    > "$out/threads-$threads.txt" 2>&1 || status=1
  echo "threads=$threads seeds=$seeds: $(( $(date +%s) - start )) s wall"
  sed -n '/^Calibration/,$p' "$out/threads-$threads.txt"
done
exit $status
