#!/usr/bin/env bash
# The A/A check behind the nightly thresholds (docs/benchmarks.md, "Regression detection"): this working tree
# recorded under two commit hashes, rounds alternating A B A B with samples appended (as asv continuous
# interleaves) and each round's boundary recorded (reports/sample_rounds.py: the process is the unit), the
# slowed mutant (benchmarks/slowed.py) named beside numpy; then each benchmark's verdict.
# A benchmark, not a test: it prints verdicts and asserts nothing. Venv active, from the repository root:
#   bash benchmarks/aa_check.sh A_COMMIT B_COMMIT [ROUNDS=4 [BENCH_REGEX]]   (two commits with no results yet)
set -euo pipefail
# Full hashes: asv names result files by the first 8 hex digits, which a short hash may not have.
a=$(git rev-parse --verify "$1^{commit}")
b=$(git rev-parse --verify "$2^{commit}")
rounds=${3:-4}
bench=${4:-'^bench_fused\.AddRMSNormForward\.|^bench_roofline|^bench_matmul|^bench_presets\.PresetStackForward\.'}
export RESCONF_BENCH_BACKENDS=benchmarks.slowed:SlowedNumpy
for round in $(seq "$rounds"); do
  for commit in "$a" "$b"; do
    echo "round $round, $commit: load $(cut -d' ' -f1-3 /proc/loadavg)"
    asv run --python=same --append-samples --set-commit-hash "$commit" -b "$bench" >/dev/null
    python -m resconf.reports.sample_rounds .asv/results "$commit"
  done
done
work=$(mktemp -d)  # the two commits' results alone, so that they are the newest two points
mkdir -p "$work/results"
cp .asv/results/benchmarks.json "$work/results/"
for machine in .asv/results/*/; do
  name=$(basename "$machine")
  mkdir -p "$work/results/$name" "$work/rounds/$name"
  cp "$machine"machine.json "$machine${a:0:8}"-*.json "$machine${b:0:8}"-*.json "$work/results/$name/" 2>/dev/null || true
  cp ".asv/rounds/$name/${a:0:8}"-*.json ".asv/rounds/$name/${b:0:8}"-*.json "$work/rounds/$name/" 2>/dev/null || true
done
resconf bench-export "$work/results" -o "$work/aa.parquet"
echo "A/A (the mutant against itself):"
python -m resconf.reports.nightly "$work/aa.parquet"
echo "The mutant at B against numpy at A:"
python -m resconf.reports.nightly "$work/aa.parquet" --mutant benchmarks.slowed:SlowedNumpy=numpy
