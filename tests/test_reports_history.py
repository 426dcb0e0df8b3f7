"""The committed performance record (reports/history/) is append-only and every line is a full record."""

from __future__ import annotations

import json
import subprocess

import pytest

from amulet_lab.config import PROJECT_ROOT

HISTORY = PROJECT_ROOT / "reports" / "history"


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)


def _tracked_history_files() -> list[str]:
    done = _git("ls-files", "reports/history")
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    return [line for line in done.stdout.splitlines() if line.endswith(".jsonl")]


def test_each_committed_version_extends_the_one_before():
    for path in _tracked_history_files():
        commits = _git("log", "--format=%H", "--reverse", "--", path).stdout.split()
        previous = ""
        for commit in commits:
            shown = _git("show", f"{commit}:{path}")
            if shown.returncode != 0:  # the file was deleted in that commit
                pytest.fail(f"{path} was deleted in {commit[:10]}: the history is append-only")
            assert shown.stdout.startswith(previous), f"{path} was rewritten in {commit[:10]}, not appended to"
            previous = shown.stdout


def test_committed_records_name_the_machine_and_the_commit():
    files = _tracked_history_files()
    assert files, "reports/history/ holds no committed record: run `make report` and commit it"
    for path in files:
        for lineno, line in enumerate((PROJECT_ROOT / path).read_text().splitlines(), 1):
            record = json.loads(line)
            assert record["machine_id"] and record["machine"]["cpu_model"], f"{path}:{lineno}"
            assert record["commit"] and record["commit"] != "unknown", f"{path}:{lineno}"
            assert record["scenario"] and record["metrics"], f"{path}:{lineno}"
