"""Machine info and the reference workload."""

from __future__ import annotations

import pytest

from amulet_lab.bench import machine
from amulet_lab.errors import ValidationError


def test_machine_info_fields():
    info = machine.machine_info()
    for key in ("machine_id", "hostname_hash", "cpu_model", "cores_logical", "cores_physical", "python", "torch",
                "torch_threads", "git_commit", "memory_total_mb", "platform"):
        assert key in info, key
    assert len(info["machine_id"]) == 12 and info["machine_id"] == machine.machine_id()
    assert info["cores_logical"] >= 1 and info["torch_threads"] >= 1
    assert machine.machine_info(torch_threads=3)["torch_threads"] == 3
    import socket

    assert socket.gethostname() not in str(info)  # only a hash of the host name is kept


def test_git_commit_falls_back_outside_a_checkout(tmp_path):
    assert machine.git_commit(tmp_path) == "unknown"
    assert machine.git_commit(tmp_path / "missing") == "unknown"


def test_reference_workload_uses_the_given_timer():
    import torch

    steps = iter([0.0, 0.008, 0.008, 0.024, 0.024, 0.032])  # rounds of 8 calls: 8 ms, 16 ms, 8 ms
    ref = machine.reference_workload(timer=lambda: next(steps), repeat=3)
    assert ref["name"] == machine.REFERENCE_NAME
    assert ref["ms"] == pytest.approx(1.0) and ref["median_ms"] == pytest.approx(1.0)
    assert ref["rounds_ms"] == [1.0, 2.0, 1.0] and ref["torch_threads"] == 1
    before = torch.get_num_threads()
    real = machine.reference_workload(size=64, number=2, repeat=2, threads=2)
    assert real["ms"] > 0 and real["name"] == "matmul-f32-64-t2-min"
    assert torch.get_num_threads() == before  # restored
    with pytest.raises(ValidationError):
        machine.reference_workload(size=0)


def test_git_commit_marks_uncommitted_changes_to_code_only(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "amulet_lab").mkdir()
    (tmp_path / "amulet_lab" / "f.py").write_text("a")
    (tmp_path / "README.md").write_text("r")
    git("add", ".")
    git("commit", "-qm", "one")
    clean = machine.git_commit(tmp_path)
    assert len(clean) == 40 and not clean.endswith("-dirty")
    # Outputs and files outside the code paths do not make a run dirty ...
    (tmp_path / "reports" / "history").mkdir(parents=True)
    (tmp_path / "reports" / "history" / "runs.jsonl").write_text("{}")
    (tmp_path / "README.md").write_text("changed")
    assert machine.git_commit(tmp_path) == clean
    # ... a new untracked notebook does, and so does a changed module.
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "new.ipynb").write_text("{}")
    assert machine.git_commit(tmp_path) == clean + "-dirty"
    (tmp_path / "notebooks" / "new.ipynb").unlink()
    assert machine.git_commit(tmp_path) == clean
    (tmp_path / "amulet_lab" / "f.py").write_text("b")
    assert machine.git_commit(tmp_path) == clean + "-dirty"


def test_machine_id_names_the_hardware_not_the_host(monkeypatch):
    a = machine.hardware_id("Xeon 1", 2, 8 * 2**30)
    assert machine.hardware_id("Xeon 1", 2, 8 * 2**30 - 2**20) == a  # memory rounded to GiB
    assert machine.hardware_id("Xeon 1", 4, 8 * 2**30) != a and machine.hardware_id("Xeon 2", 2, 8 * 2**30) != a
    import socket

    machine._static_info.cache_clear()
    before = machine.machine_id()
    monkeypatch.setattr(socket, "gethostname", lambda: "another-ci-runner")
    machine._static_info.cache_clear()
    try:
        assert machine.machine_id() == before
    finally:
        monkeypatch.undo()
        machine._static_info.cache_clear()
