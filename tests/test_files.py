"""Atomic writes: whole or nothing, normal file modes, concurrent appends all land."""

from __future__ import annotations

import multiprocessing
import os
import stat

import pytest

from amulet_lab.errors import ValidationError
from amulet_lab.files import (
    atomic_append_lines,
    atomic_write_bytes,
    atomic_write_text,
    atomic_writer,
    existing_file,
    hash_stream,
)


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "ckpt.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_writer(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.txt"]


def test_written_files_get_a_normal_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def _append_many(path: str, worker: int) -> None:
    for i in range(20):
        atomic_append_lines(path, [f"{worker}-{i}-a", f"{worker}-{i}-b"])


def test_concurrent_appends_from_processes_all_land_in_order(tmp_path):
    path = tmp_path / "runs.jsonl"
    procs = [multiprocessing.get_context("spawn").Process(target=_append_many, args=(str(path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 * 20 * 2
    for i in range(0, len(lines), 2):  # a run's lines stay together
        assert lines[i].endswith("-a") and lines[i + 1] == lines[i][:-1] + "b"


def test_hash_stream_agrees_for_bytes_paths_and_files(tmp_path):
    data = os.urandom(200_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        assert hash_stream(data) == hash_stream(path, chunk_size=4096) == hash_stream(handle)
    assert len(hash_stream(data)) == 32 and len(hash_stream(data, algo="sha256")) == 64
    with pytest.raises(ValidationError) as info:
        existing_file(tmp_path / "missing")
    assert info.value.code == "E_FILE_NOT_FOUND"


def test_writes_never_touch_the_process_umask(tmp_path, monkeypatch):
    """Reading the umask means setting it process-wide, which races with other threads creating files."""
    old = os.umask(0o027)
    try:
        def no_umask(_mask):
            raise AssertionError("os.umask called while writing")

        monkeypatch.setattr(os, "umask", no_umask)
        path = atomic_write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 less the umask, as open() gives
        path.chmod(0o600)
        atomic_write_text(path, "y")  # replacing keeps the old file's mode
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "y"
    finally:
        monkeypatch.undo()
        os.umask(old)


@pytest.mark.parametrize(
    "call",
    [
        lambda p: atomic_append_lines(p, "one line"),  # a bare str would land one character per line
        lambda p: atomic_append_lines(p, [1, 2]),
        lambda p: atomic_write_text(p, 5),
        lambda p: atomic_write_bytes(p, "text"),
        lambda p: atomic_writer(p, "r").__enter__(),
        lambda p: atomic_write_text(42, "x"),
        lambda p: hash_stream(b"x", digest_size=100),
        lambda p: hash_stream(p, chunk_size="4k"),
    ],
)
def test_bad_arguments_raise_validation_errors_and_write_nothing(tmp_path, call):
    target = tmp_path / "out.txt"
    target.write_text("keep\n")
    with pytest.raises(ValidationError):
        call(target)
    assert target.read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
