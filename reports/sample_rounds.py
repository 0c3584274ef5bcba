"""Which recorded samples came from which process: the round boundaries `asv run --append-samples` drops.

A benchmark's samples from one process share that process's state (its placement on the cores, its
allocations), which can move its median by 1.5x between two processes of the same code (docs/benchmarks.md,
"The A/A runs"). So a sound comparison takes the process, not the sample, as the unit. asv appends each
run's samples to the list it keeps and forgets where one run's ended; call this after each `asv run` of a
commit (one round, one process per benchmark) and it records how many samples that run added:

    python -m resconf.reports.sample_rounds .asv/results COMMIT     # after each `asv run --append-samples`

The record is `<rounds dir>/<machine>/<result file name>`: benchmark -> per parameter combination (asv's
order) the sample count of each round. It lives beside asv's results folder, not in it (asv reads every
JSON file there as a result). `resconf bench-export` reads it into the `time_sample_rounds` column.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from resconf.conformance.outputs import write_text_atomic

Record = dict[str, list[list[int]]]  # benchmark -> per combination, the samples each round added


def rounds_dir(results_dir: Path) -> Path:
    """Where the round records of a results folder live: `rounds` beside it (.asv/rounds)."""
    return results_dir.parent / "rounds"


def record_path(results_dir: Path, machine: str, result_file: str) -> Path:
    return rounds_dir(results_dir) / machine / result_file


def file_name(results) -> str:
    """asv's name for the results file of `results` (an asv.results.Results): <commit[:8]>-<env>.json."""
    from asv.results import get_filename

    return Path(get_filename(results.params["machine"], results.commit_hash, results.env_name)).name


def load(results_dir: Path, machine: str, result_file: str) -> Record:
    path = record_path(results_dir, machine, result_file)
    return json.loads(path.read_text()) if path.is_file() else {}


def updated(old: Record, totals: dict[str, list[int]]) -> Record:
    """old with a round appended wherever a combination's sample count grew; a count that shrank means asv
    replaced the samples (a run without --append-samples), so that combination starts again with one round."""
    new: Record = {}
    for benchmark, counts in totals.items():
        before = old.get(benchmark, [])
        new[benchmark] = []
        for i, total in enumerate(counts):
            rounds = list(before[i]) if i < len(before) else []
            seen = sum(rounds)
            new[benchmark].append(rounds + [total - seen] if total > seen else rounds if total == seen else [total])
    return new


def record(results_dir: Path, commit: str) -> int:
    """Record the round each results file of `commit` just got; returns how many files it updated."""
    from asv.results import iter_results

    done = 0
    for results in iter_results(str(results_dir)):
        if not results.commit_hash.startswith(commit):
            continue
        totals = {}
        for benchmark in results.get_all_result_keys():
            drawn = results.get_result_samples(benchmark, results.get_result_params(benchmark)) or []
            totals[benchmark] = [len(s or ()) for s in drawn]
        machine, name = results.params["machine"], file_name(results)
        path = record_path(results_dir, machine, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(updated(load(results_dir, machine, name), totals), indent=1) + "\n")
        done += 1
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resconf.reports.sample_rounds",
                                     description="Record the round each result of COMMIT just got (after asv run).")
    parser.add_argument("results_dir", type=Path, help="asv's results_dir, e.g. .asv/results")
    parser.add_argument("commit", help="the commit hash (or its first characters) the round was recorded under")
    args = parser.parse_args(argv)
    if not (args.results_dir / "benchmarks.json").is_file():
        print(f"error: {args.results_dir} is not an asv results directory (no benchmarks.json)", file=sys.stderr)
        return 2
    if not record(args.results_dir, args.commit):
        print(f"error: no results of commit {args.commit!r} under {args.results_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
