"""Every command in README.md, docs/ and examples/ runs as written (or, where that is too costly, parses).

COMMANDS is the one table saying how each documented command is checked; tests/doc_commands.py reads the
commands out of the Markdown at test time. A documented command missing from the table fails, and so does
an entry no doc shows any more, so the table cannot go stale. Run entries run in a fresh folder (a "fixtures"
one holds tests/fixtures laid out where the docs' paths point; a "checked" one holds what the README's
`resconf check -k test_identity_block` wrote) with this venv's bin first on PATH.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import doc_commands as dc
from tests import doc_parsers as dp
from tests.doc_commands import NotRun, Parse, Run

FIXTURES = {  # repo path -> where the docs' commands look for it
    "tests/fixtures/results/run_a.parquet": ".resconf/results/run_a.parquet",
    "tests/fixtures/results/run_b.parquet": ".resconf/results/run_b.parquet",
    "tests/fixtures/results/bench.parquet": ".resconf/benchmarks.parquet",
    "tests/fixtures/asv_results": ".asv/results",
    "tests/fixtures/make_results_fixtures.py": "tests/fixtures/make_results_fixtures.py",
}
CHECK = "resconf check -k test_identity_block"  # README's; its folder (results, summaries) is the "checked" one
REPORT, EXPORT = (".resconf/report/index.html", ".resconf/report/report.md"), (".resconf/benchmarks.parquet",)
INSTALLS = "installs packages (network, minutes); the venv running this test already has them"
SERVER = "a web server: runs until stopped"
NAMED_ONLY = "prose naming an option, its arguments left out"

COMMANDS = {
    # README.md
    "python3.11 -m venv .venv": NotRun("creates a virtualenv; the quick start's later steps install into it"),
    ". .venv/bin/activate": NotRun("changes the calling shell only"),
    'pip install torch==2.13.0 -e ".[all]"': NotRun(INSTALLS),
    "resconf check": Parse(),  # every backend, every property: minutes
    "pytest": Parse(),  # the project's own tests, this file among them
    "pytest -m heavy -n 2": Parse(),
    "bash .ci/nightly": NotRun("the heavy tests and a nightly-profile check: an hour or more"),
    "resconf --version": Run(),
    "resconf check --backend torch --backend jax": Parse(),
    "resconf check --backend mypkg.adapter:MyBackend": Parse(),  # mypkg is the reader's own package
    "resconf check --profile nightly --junitxml junit.xml": Parse(),
    "resconf check --device cuda": Parse(),
    "resconf check --max-examples 50": Parse(),
    "resconf check --shrink": Parse(),
    "resconf check --cover all": Parse(),
    "resconf check -n 4": Parse(),
    "resconf check --shard 2/3 --output shard-2.parquet": Parse(),
    'pip install -e ".[real]"': NotRun(INSTALLS),
    "resconf check --backend hf_llama --backend flax_block": Parse(),
    "resconf check --backend liger": Parse(),
    # docs/scaling.md
    "resconf check -n": NotRun(NAMED_ONLY),
    # docs/spec.md, docs/adapter.md, docs/results.md: execution modes
    "resconf check --mode": NotRun(NAMED_ONLY),
    "resconf check --mode NAME": NotRun(NAMED_ONLY),
    "resconf check --mode compile --backend torch": Parse(),  # compiles every block structure: many minutes
    "resconf check --mode default_precision --backend jax": Parse(),
    "resconf check --backend torch --mode autocast -k 'test_identity_gradient and float32' --skip-xfails": Parse(),
    "resconf check --worker-timeout 7200": Parse(),
    "python tools/profile_check.py [--cold] --backend numpy --backend torch --backend jax --cover C":
        NotRun("placeholders: [--cold] optional, C a strength; minutes (the gate's timing table)"),
    "resconf calibrate --mode": NotRun("names the option in prose; `resconf calibrate --backend torch --mode autocast "
                                       "--mode fp32_residual --seeds 200` is its checked form"),
    "python tools/profile_check.py --cold --backend numpy --backend torch --backend jax":
        NotRun("a cold check of three backends (minutes); tests/test_phase_times.py runs the tool on a subset"),
    "resconf check --backend tests.mutants:SkipDetached": Parse(),
    "resconf check --junitxml junit.xml": Parse(),
    # docs/findings.md (the JAX crash: minutes, and it did not recur on a fresh cache)
    "resconf check --profile nightly --max-examples 30": Parse(),
    'resconf check --backend jax --profile nightly --max-examples 30 -k "test_stream_is_sum_of_writes or '
    'test_uncorrelated_growth"': Parse(),
    "resconf check --shard K/N": NotRun(NAMED_ONLY),
    "resconf check --store-durations": Parse(),  # the whole suite: minutes
    "resconf merge shard-1.parquet shard-2.parquet shard-3.parquet -o merged.parquet": Parse(),
    "resconf merge shard-*.parquet -o merged.parquet": Parse(),
    "pytest --pyargs resconf.conformance --resconf-backend numpy -n 2": Parse(),
    "resconf check --shard ${{ matrix.shard }}/3 --output shard-${{ matrix.shard }}.parquet --junitxml "
    "junit-${{ matrix.shard }}.xml": NotRun("a GitHub Actions template: ${{ }} is filled in by the runner"),
    "resconf report merged.parquet --out report": Parse(),
    "bash benchmarks/check_timing.sh": Parse(),  # bash -n: about 15 minutes
    "resconf calibrate --backend torch --seeds 100": Parse(),
    "resconf calibrate --backend torch --mode autocast --mode fp32_residual --seeds 200": Parse(),
    "resconf calibrate --backend torch --mode autocast --seeds 200 -k 'test_vjp_matches_oracle and not realistic'": Parse(),
    ("resconf calibrate --backend torch --mode compile --seeds 50 -k '(test_forward_matches_oracle or "
     "test_vjp_matches_oracle or test_identity_gradient or test_negative_control or test_gradient_decomposition or "
     "test_gradient_bounds) and float32'"): Parse(),
    # every installed default backend, the real modules too (~2 min cold): heavy, as the other "checked" entries
    CHECK: Run("checked", creates=(".resconf/results",), heavy=True),
    "pytest --pyargs resconf.conformance --resconf-backend torch": Parse(),
    "bash benchmarks/calibrate.sh 200": Parse(),  # bash -n: hours of calibration
    "resconf report": Run("fixtures", creates=REPORT),  # .resconf/results -> .resconf/report
    "asv machine --yes": Parse(),  # writes ~/.asv-machine.json
    "asv run --python=same --quick --set-commit-hash $(git rev-parse HEAD)": Parse(),  # minutes
    "resconf bench-export": Run("fixtures", creates=EXPORT),
    "resconf report .resconf/results --bench .resconf/benchmarks.parquet --out .resconf/report":
        Run("fixtures", creates=REPORT),
    # docs/adapter.md
    "class MyBackend(Backend):": Run(),
    "class MyTorchModuleBackend(Backend):": Run(),
    "Capabilities(": Run(prelude="from resconf.backends import Capabilities\n"),
    "resconf check --backend mypkg.adapter:MyBackend --device cuda --profile nightly": Parse(),
    "resconf check --backend mypkg.adapter:MyBackend -k test_identity_block": Parse(),
    "pip install -e .": NotRun(INSTALLS + " (run in the reader's own package)"),
    "resconf check --backend mybackend": Parse(),
    'pip install "resconf @ git+https://github.com/OWNER/resconf" -e .': NotRun(INSTALLS + "; OWNER is a placeholder"),
    "resconf check --backend mybackend --xfails resconf-xfails.toml --junitxml junit.xml "
    "--output .resconf/results.parquet": Parse(),
    "resconf check --backend ...": Parse(),
    "resconf report RESULTS --out DIR": Parse(),
    # docs/benchmarks.md
    "asv check --python=same": Parse(),
    "asv run --machine NAME-cpu": NotRun(NAMED_ONLY + "; NAME is a placeholder"),
    "asv machine --machine NAME-cpu --yes": NotRun("writes ~/.asv-machine.json; NAME is a placeholder"),
    "asv run --environment existing:same --quick --show-stderr --set-commit-hash $(git rev-parse HEAD)": Parse(),
    "asv run main~20..main": Parse(),
    "RESCONF_BENCH_GRID=full asv run NEW": Parse(),
    "asv publish": Parse(),
    "asv preview": Parse(),  # serves HTTP until stopped
    "python -m http.server -d .asv/html": NotRun(SERVER),
    "resconf report --bench .resconf/benchmarks.parquet --out DIR": Run("fixtures", creates=("DIR/index.html",)),
    'asv continuous --factor 1.3 --split -a rounds=4 -b "^bench_(fused|roofline)" HEAD~1 HEAD': Parse(),
    "resconf bench-export [RESULTS_DIR] [-o OUT.parquet]": NotRun("a usage synopsis: [brackets] mark options"),
    "python -m resconf.reports.bench_export": Run("fixtures", creates=EXPORT),
    "resconf report --bench": NotRun(NAMED_ONLY),
    "pip install torch==2.13.0 <wheel>[torch,jax,numba,triton]": NotRun("what asv runs when it builds a commit"),
    "asv compare --split": NotRun(NAMED_ONLY),
    "for round in 1 2 3 4; do": NotRun("a shell loop of four asv runs (minutes); benchmarks/aa_check.sh runs it"),
    'asv run --python=same --append-samples --set-commit-hash "$COMMIT"':
        NotRun("a round of the grid (a minute); $COMMIT is a placeholder"),
    'python -m resconf.reports.sample_rounds .asv/results "$COMMIT"':
        NotRun("$COMMIT is a placeholder; tests/test_bench_export.py records two rounds and exports them"),
    "done": NotRun("ends the shell loop above"),
    "python -m resconf.reports.sample_rounds": NotRun(NAMED_ONLY),
    "asv run --python=same --quick --set-commit-hash ...": Parse(),
    "SELECT * FROM '.resconf/*.parquet'": Run("fixtures"),
    "python tools/kernel_ratios.py":
        NotRun("about a minute of timing three backends (tests/test_kernel_ratios.py: the plumbing)"),
    "python tools/kernel_ratios.py [--shape 8192x4096] [--dtype float32]":
        NotRun("a usage synopsis: [brackets] mark options; minutes of timing (tests/test_kernel_ratios.py: the plumbing)"),
    "python -m benchmarks.device_timing info": NotRun("run from the repository root on a GPU machine; "
                                                     "tests/test_device_timing.py checks it with a fake nvidia-smi"),
    "python -m benchmarks.device_timing asv-machine NAME": NotRun("writes ~/.asv-machine.json; NAME is a placeholder"),
    "asv machine --machine NAME --yes": NotRun("writes ~/.asv-machine.json; NAME is a placeholder"),
    "asv continuous --factor": NotRun(NAMED_ONLY),
    # docs/findings.md
    "resconf check --backend torch -k 'test_nan_in_a_weight_surfaces and attention and w_in' --skip-xfails":
        Run(status=1, heavy=True),  # ~7 s; exits 1: the deviation shows once its xfail is skipped
    "q = torch.randn(1, 1, 4, 8, dtype=torch.float64); k = torch.randn_like(q); v = torch.randn_like(q)": Run(),
    "resconf check --backend torch -k 'test_long_sequence_vjp and layernorm' --skip-xfails":
        Run(status=1, heavy=True),  # ~25 s; as above
    "N, C = 8192, 16": Run(),
    "resconf check --backend torch -k 'test_vjp_matches_oracle and bfloat16' --skip-xfails": Parse(),  # ~1 min
    # docs/findings.md, the real modules (each a minute or more of compiles and module builds)
    "resconf check --backend hf_gpt2 -k test_nan_and_inf_locality --skip-xfails": Parse(),
    "resconf check --backend hf_llama -k test_empty_input --skip-xfails": Parse(),
    "pytest tests/test_real_torch_modules.py -k float64": Parse(),
    "resconf check --backend flax_block -k 'test_forward_offset_mean and float32' --skip-xfails": Parse(),
    "pytest tests/test_flax_equinox.py": Parse(),
    "resconf check --backend equinox_block -k test_empty_input --skip-xfails": Parse(),
    "resconf check --backend liger -k test_fused_add_norm --skip-xfails": Parse(),
    "resconf check --backend liger_none -k test_fused_add_norm": Parse(),
    # docs/findings.md, the real modules in execution modes (compile: minutes of Inductor compiles)
    "resconf check --backend torch_nn --mode autocast -n 1": Parse(),
    "resconf check --backend torch_nn --mode compile -n 1 -k '(test_identity_block or test_forward_matches_oracle or "
    "test_vjp_matches_oracle) and (float32 or bfloat16)'": Parse(),
    "resconf check --backend flax_block --mode mixed -k test_stream_is_sum_of_writes --skip-xfails": Parse(),
    "torch.manual_seed(0)": Run(),  # the fast path's tanh GELU: prints the 9.5e-05 difference
    "@triton.jit": NotRun("raises on purpose (the interpreter's gaps); tests/test_liger.py reproduces both unpatched"),
    # docs/report.md
    "resconf report --run 20261204T134254-838da9": Parse(),  # an example run id
    "resconf report --all-runs": Run("fixtures", creates=REPORT),
    "python -m http.server": NotRun(SERVER),
    "python tests/fixtures/make_results_fixtures.py DIR": Run("fixtures", creates=("DIR/run_a.parquet",)),
    "resconf report --bench .resconf/benchmarks.parquet": Parse(),  # as the DIR one above
    'cat .resconf/report/report.md >> "$GITHUB_STEP_SUMMARY"': NotRun("appends to a CI job summary"),
    "pip install 'resconf[report]'": NotRun(INSTALLS),
    "resconf check ...": NotRun(NAMED_ONLY),
    "asv continuous --factor 1.3": NotRun(NAMED_ONLY),
    "asv run --quick": NotRun(NAMED_ONLY),
    "asv continuous --split -a rounds=4": NotRun(NAMED_ONLY + "; the report writes each row's whole command"),
    "resconf report: skipped PATH: reason": NotRun("a line the report prints, not a command"),
    "pytest tests/test_report.py": Parse(),  # those tests run in the suite anyway
    "python tests/fixtures/make_results_fixtures.py":
        Run("fixtures", creates=("tests/fixtures/results/run_a.parquet", "tests/fixtures/results/bench.parquet")),
    "apt-get install chromium": NotRun("a system package (root, network)"),
    # docs/results.md
    "pip install git+URL@REF": NotRun(NAMED_ONLY),
    'runs = pd.read_parquet(".resconf/results")': Run("checked", heavy=True),
    "SELECT * FROM read_parquet('.resconf/results/**/*.parquet')": Run("checked", heavy=True),
    'for path in Path(".resconf/results").rglob("*.parquet"):': Run("checked", heavy=True),
    # docs/spec.md
    "resconf calibrate --backend B --seeds N": NotRun("placeholders: B a backend, N a number"),
    "bash benchmarks/calibrate.sh SEEDS": Parse(),
    # examples/user_torch_block/README.md
    "pip install -e examples/user_torch_block": NotRun(INSTALLS),
    "resconf check --backend user_torch_block": Parse(),
    "resconf check --backend user_torch_block.adapter:UserBlockBackend": Parse(),
}

DOCUMENTED = dc.documented()
WHERE = {c.text: c for c in DOCUMENTED}
REPO = dc.REPO


def test_every_documented_command_is_classified():
    missing = [f"{c.where}: {c.text}" for c in DOCUMENTED if c.text not in COMMANDS]
    assert not missing, ("documented commands with no entry in COMMANDS (tests/test_doc_commands.py); add each "
                         "as Run(...) if it is cheap, Parse() if its arguments can be checked, else NotRun('why'):\n"
                         + "\n".join(missing))


def test_every_entry_is_documented():
    stale = [text for text in COMMANDS if text not in WHERE]
    assert not stale, ("COMMANDS entries that no doc shows any more (edited or removed?); update or delete them "
                       "in tests/test_doc_commands.py:\n" + "\n".join(stale))


def _entries(kind: type) -> list:
    return [pytest.param(text, marks=[pytest.mark.heavy] if getattr(entry, "heavy", False) else [], id=text[:70])
            for text, entry in COMMANDS.items() if isinstance(entry, kind)]


@pytest.fixture(scope="module")
def parse_errors() -> dict[str, str | None]:
    return dp.parse_errors([text for text, entry in COMMANDS.items() if isinstance(entry, Parse) and text in WHERE])


@pytest.mark.parametrize("text", _entries(Parse))
def test_arguments_parse(text, parse_errors):
    if text not in WHERE:
        pytest.skip("not documented any more (test_every_entry_is_documented says so)")
    error = parse_errors[text]
    assert error is None, f"{WHERE[text].where}: `{text}` does not parse as written:\n{error}"


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("checked")
    # It checks every installed default backend (the real modules too): a hang guard, not a speed limit.
    return folder, _run(["bash", "-c", CHECK], folder, timeout=900)


@pytest.mark.parametrize("text", _entries(Run))
def test_runs_as_written(text, tmp_path, request):
    if text not in WHERE:
        pytest.skip("not documented any more (test_every_entry_is_documented says so)")
    entry, command = COMMANDS[text], WHERE[text]
    if text == CHECK:  # the "checked" fixture runs it, once for every test that needs its folder
        folder, proc = request.getfixturevalue("checked")
        shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    else:
        _prepare(entry.workspace, tmp_path, request)
        proc = _execute(command, entry.prelude, tmp_path)
    assert proc.returncode == entry.status, (
        f"{command.where}: `{text}` exited {proc.returncode}, expected {entry.status} (run in a folder holding "
        f"{entry.workspace!r}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    absent = [path for path in entry.creates if not (tmp_path / path).exists()]
    assert not absent, f"{command.where}: `{text}` did not write {absent}:\n{proc.stdout[-3000:]}"


def _prepare(workspace: str, folder: Path, request: pytest.FixtureRequest) -> None:
    if workspace == "fixtures":
        for source, target in FIXTURES.items():
            (folder / target).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (REPO / source).is_dir() else shutil.copy)(REPO / source, folder / target)
    elif workspace == "checked":
        checked, proc = request.getfixturevalue("checked")
        if proc.returncode:
            pytest.fail(f"`{CHECK}`, which makes the folder, failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        shutil.copytree(checked, folder, dirs_exist_ok=True)


def _execute(command: dc.Command, prelude: str, cwd: Path) -> subprocess.CompletedProcess:
    if command.lang == "python":
        (cwd / "snippet.py").write_text(prelude + command.python)
        return _run([sys.executable, "snippet.py"], cwd)
    if command.lang == "sql":  # a query that finds no rows read nothing: count that as a failure
        return _run([sys.executable, "-c", "import duckdb, sys; n = len(duckdb.sql(sys.argv[1]).fetchall()); "
                     "print(n, 'rows'); sys.exit(0 if n else 'no rows')", command.text], cwd)
    return _shell(command.text, cwd)


def _shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return _run(["bash", "-c", command], cwd)


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
