#!/usr/bin/env bash
# The A/A check behind the nightly thresholds (docs/benchmarks.md, "Regression detection"): this working tree
# recorded under two commit hashes, rounds alternating A B A B with samples appended (as asv continuous
# interleaves), the slowed mutant (benchmarks/slowed.py) named beside numpy; then each benchmark's verdict.
# A benchmark, not a test: it prints verdicts and asserts nothing. Venv active, from the repository root:
#   bash benchmarks/aa_check.sh A_COMMIT B_COMMIT [ROUNDS [BENCH_REGEX]]   (two commits with no results yet)
set -euo pipefail
a=$1 b=$2 rounds=${3:-2}
bench=${4:-'^bench_fused\.AddRMSNormForward\.|^bench_roofline|^bench_matmul|^bench_presets\.PresetStackForward\.'}
export RESCONF_BENCH_BACKENDS=benchmarks.slowed:SlowedNumpy
for round in $(seq "$rounds"); do
  for commit in "$a" "$b"; do
    echo "round $round, $commit: load $(cut -d' ' -f1-3 /proc/loadavg)"
    asv run --python=same --append-samples --set-commit-hash "$commit" -b "$bench" >/dev/null
  done
done
work=$(mktemp -d)  # the two commits' results alone, so that they are the newest two points
cp .asv/results/benchmarks.json "$work/"
for machine in .asv/results/*/; do
  mkdir -p "$work/$(basename "$machine")"
  cp "$machine"machine.json "$machine${a:0:8}"-*.json "$machine${b:0:8}"-*.json "$work/$(basename "$machine")/" 2>/dev/null || true
done
resconf bench-export "$work" -o "$work/aa.parquet"
echo "A/A (the mutant against itself):"
python -m resconf.reports.nightly "$work/aa.parquet"
echo "The mutant at B against numpy at A:"
python -m resconf.reports.nightly "$work/aa.parquet" --mutant benchmarks.slowed:SlowedNumpy=numpy
