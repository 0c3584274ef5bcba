"""Provenance names the right code: resconf's own version and commit (whatever folder the check runs in, git
or not), the user's project commit apart from it, and the CI job that ran the check."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resconf.conformance import provenance

ROOT = Path(__file__).resolve().parents[1]


def git_head(folder: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 and (folder / ".git").exists() else ""


@pytest.mark.parametrize("env, url", [
    ({"GITHUB_ACTIONS": "true", "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "o/r",
      "GITHUB_RUN_ID": "42", "GITHUB_RUN_ATTEMPT": "2"}, "https://github.com/o/r/actions/runs/42/attempts/2"),
    ({"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "42"},
     "https://github.com/o/r/actions/runs/42"),
    ({"GITLAB_CI": "true", "CI_JOB_URL": "https://gitlab.com/o/r/-/jobs/7"}, "https://gitlab.com/o/r/-/jobs/7"),
    ({"BUILD_URL": "https://jenkins.example.org/job/x/3/"}, "https://jenkins.example.org/job/x/3/"),
    ({"CI": "true"}, ""),
    ({}, ""),
], ids=["github", "github-no-attempt", "gitlab", "jenkins", "unnamed-ci", "no-ci"])
def test_ci_job_is_the_jobs_url(env, url):
    assert provenance.ci_job(env) == url


def run_python(code: str, cwd: Path) -> str:
    """`code` run from `cwd` by this interpreter, with resconf as installed (not from the checkout on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not git_head(ROOT), reason="resconf runs from a copy without .git")
def test_suite_commit_is_resconfs_own_from_a_folder_without_git(tmp_path):
    found = run_python("from resconf.conformance import provenance as p; "
                       "print(p.suite_commit(), repr(p.code_commit(p.Path.cwd())))", tmp_path)
    commit, user = found.split(" ")
    assert commit.removesuffix("-dirty") == git_head(ROOT) and user == "''"


@pytest.mark.skipif(not git_head(ROOT), reason="resconf runs from a copy without .git")
def test_version_shows_the_commit(tmp_path):
    text = run_python("from resconf.conformance.cli import main; main(['--version'])", tmp_path)
    assert text.startswith("resconf ") and f"(commit {git_head(ROOT)}" in text


class FakeDistribution:
    def __init__(self, version: str, direct_url: str | None = None) -> None:
        self.version, self.direct_url = version, direct_url

    def read_text(self, name: str) -> str | None:
        return self.direct_url if name == "direct_url.json" else None


@pytest.mark.parametrize("version, direct_url, commit", [
    ("0.1.1.dev65+g017a79a.d20261207", None, "017a79a"),
    ("0.1.1.dev65+g017a79a", '{"url": "file:///x", "dir_info": {}}', "017a79a"),
    ("0.2.0", '{"url": "https://github.com/o/resconf", "vcs_info": {"vcs": "git", "commit_id": "abcdef0123"}}',
     "abcdef0123"),
    ("0.1.0", None, ""),  # installed from a copy without .git: fallback_version, no commit known
], ids=["scm-version", "local-folder", "pip-git-url", "no-git"])
def test_suite_commit_of_an_installed_copy(monkeypatch, tmp_path, version, direct_url, commit):
    monkeypatch.setattr(provenance, "SOURCE_ROOT", tmp_path)  # not a checkout: site-packages
    monkeypatch.setattr(provenance.metadata, "distribution", lambda name: FakeDistribution(version, direct_url))
    assert provenance.suite_commit() == commit
