"""Batch classification (``amulet_lab.batch``, ``amulet-lab classify``) on a real 2-worker LocalCluster on loopback.

Each run starts its own LocalCluster on 127.0.0.1 (dashboard off) and stops it; every test checks that no
worker process outlives it. The synthetic checkpoint keeps the runs quick.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from amulet_lab.batch import COLUMNS, SCENE_COLUMNS, classify, classify_files, collect_images, file_sha256, read_rows
from amulet_lab.config import PROJECT_ROOT
from amulet_lab.errors import ValidationError
from amulet_lab.model.bundled import SYNTHETIC_CHECKPOINT

SAMPLES = PROJECT_ROOT / "data" / "samples"
CKPT = str(SYNTHETIC_CHECKPOINT)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(_cmdline(p))}


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    before = _children()
    yield
    left = _children() - before
    for pid in left:  # a failed test must not leave workers behind; the assertion still fails it
        psutil.Process(pid).kill()
    assert not left, f"processes left running: {left}"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Ten sample photos in nested folders, one of them HEIC and one with an upper-case suffix, plus a bad file,
    a zero-byte file, a hidden file and a text file (not an image: not collected)."""
    from PIL import Image

    from amulet_lab.security import register_heif

    root = tmp_path_factory.mktemp("photos")
    sources = sorted(SAMPLES.rglob("*.jpg"))[:10]
    for i, src in enumerate(sources):
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, sub / (src.stem + (".JPG" if i == 3 else ".jpg")))
    register_heif()
    Image.open(sources[0]).save(root / "b" / "heic_copy.heic", format="HEIF")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 4)
    (root / "a" / "empty.png").write_bytes(b"")
    shutil.copy(sources[1], root / "a" / ".hidden.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_collect_images_recurses_takes_heic_and_globs_and_skips_the_rest(photos):
    found = collect_images([photos])
    names = sorted(p.name for p in found)
    assert len(found) == 13 and "heic_copy.heic" in names and "broken.jpg" in names and "empty.png" in names
    assert ".hidden.jpg" not in names and "notes.txt" not in names
    assert any(n.endswith(".JPG") for n in names)
    assert all(p.is_absolute() for p in found)
    assert collect_images([str(photos / "b" / "**" / "*.jpg")]) == sorted(
        p for p in found if p.parent != photos / "a" and p.suffix == ".jpg")
    assert collect_images([photos, photos / "a"]) == found  # each photo once
    with pytest.raises(ValidationError) as err:
        collect_images([photos / "nowhere"])
    assert err.value.code == "E_PATH_MISSING"


def test_light_import_and_the_worker_environment():
    code = "import sys, amulet_lab.batch; print(sorted(m for m in ('dask', 'distributed', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from amulet_lab.batch import task_size_for, worker_environ

    assert "MALLOC_TRIM_THRESHOLD_" not in worker_environ() and worker_environ()["OMP_NUM_THREADS"] == "1"
    assert task_size_for(10, 2) == 20 and task_size_for(500, 2) == 63 and task_size_for(10**5, 2) == 100
    assert task_size_for(500, 2, 7) == 7


def _worker_view() -> dict:
    import os

    import dask

    return {"env": {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")},
            "profile": dask.config.get("distributed.worker.profile.enabled"),
            "tick": dask.config.get("distributed.admin.tick.interval")}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_local_cluster_workers_start_with_our_environment_and_config():
    import dask
    import distributed  # noqa: F401 - loads Dask's distributed defaults into dask.config

    from amulet_lab.batch import cluster_config, dask_client

    assert "MALLOC_TRIM_THRESHOLD_" in dask.config.get("distributed.nanny.pre-spawn-environ")  # Dask's default has it
    assert cluster_config()["distributed.worker.profile.enabled"] is False
    with dask_client(1) as (client, times):
        (view,) = client.run(_worker_view).values()
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
    assert view == {"env": {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}, "profile": False, "tick": "500ms"}
    assert times["start_s"] > 0 and times["stop_s"] > 0


@pytest.fixture(scope="module")
def first_run(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "results.csv"
    result = classify([photos], out, checkpoint=CKPT, workers=2, progress=False, task_size=5, chunk_size=5)
    return out, result


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_every_photo_is_a_row_and_a_bad_file_is_a_row_with_its_code(first_run, photos):
    out, result = first_run
    rows = _rows(out)
    assert tuple(read_rows(out)[0]) == COLUMNS
    assert result.images == result.classified == len(rows) == 13 and result.workers == 2 and result.tasks == 3
    assert result.errors == 2 and result.skipped == 0
    assert result.cluster_start_s > 0 and result.cluster_stop_s > 0 and result.scheduler.startswith("tcp://127.0.0.1:")
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["broken.jpg"]["error"].startswith("E_") and by_name["broken.jpg"]["label"] == ""
    assert by_name["empty.png"]["error"].split(":")[0] == "E_IMAGE_EMPTY"
    good = [r for r in rows if not r["error"]]
    assert len(good) == 11 and by_name["heic_copy.heic"]["label"]
    for r in good:
        assert r["sha256"] == file_sha256(r["path"]) and len(r["sha256"]) == 64
        assert r["is_unknown"] in ("true", "false") and 0 <= float(r["confidence"]) <= 1
        assert r["band"] in ("reliable", "verify", "retake", "unknown")
        assert (r["band"] == "unknown") == (r["is_unknown"] == "true")
        top = json.loads(r["top_k"])
        assert len(top) == 3 and top[0][0] == r["label"] and all(isinstance(p, float) for _, p in top)
    assert len({r["model"] for r in rows}) == 1


@pytest.mark.slow
def test_the_cluster_gives_the_predictions_of_one_process(first_run):
    out, _ = first_run
    rows = _rows(out)
    items = [(r["path"], r["sha256"]) for r in rows]
    local = {r["path"]: r for r in classify_files(items, CKPT, rows[0]["model"])}
    for r in rows:
        assert {k: r[k] for k in COLUMNS} == {k: str(local[r["path"]][k]) for k in COLUMNS}, r["path"]


@pytest.mark.slow
def test_the_report_reads_the_output_back_typed_with_its_summaries(first_run, tmp_path):
    from amulet_lab.batch import BatchReport, results_frame

    out, result = first_run
    report = BatchReport(out, result)
    f = report.frame
    assert len(f) == 13 and f["confidence"].dtype == float and f["is_unknown"].dtype == bool
    assert all(isinstance(t, list) for t in f["top_k"]) and set(f["name"]) >= {"broken.jpg", "heic_copy.heic"}
    good = f[f["ok"]]
    assert ((good["uncertainty"] - (1 - good["confidence"]).where(~good["is_unknown"], 1.0)).abs() < 1e-9).all()
    assert (good["margin"] >= 0).all() and f[~f["ok"]]["confidence"].isna().all()
    counts = report.counts()
    assert counts["count"].sum() == 13 and abs(counts["share"].sum() - 1) < 1e-9
    assert counts.set_index("answer").loc["(error)", "count"] == 2
    assert list(counts["count"]) == sorted(counts["count"], reverse=True)
    assert sorted(report.errors()["name"]) == ["broken.jpg", "empty.png"]
    assert report.unknowns().shape[0] == int((f["ok"] & f["is_unknown"]).sum())
    top = report.most_uncertain(4)
    assert len(top) == min(4, int((f["ok"] & ~f["is_unknown"]).sum()))
    assert list(top["uncertainty"]) == sorted(top["uncertainty"], reverse=True)
    assert "rows: 13, photos: 13, one row per photo: True" in report.facts() and "errors: 2," in report.facts()
    assert "BatchReport(" in repr(report) and "rows=13" in repr(report)
    with pytest.raises(ValidationError) as err:
        report.most_uncertain(0)
    assert err.value.code
    with pytest.raises(ValidationError) as err:
        results_frame(tmp_path / "none.csv")
    assert err.value.code == "E_PATH_MISSING"
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValidationError) as err:
        results_frame(tmp_path / "other.csv")
    assert err.value.code == "E_OUTPUT_COLUMNS"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_resume_skips_done_files_redoes_changed_ones_and_an_interrupted_run_keeps_its_chunks(first_run, photos,
                                                                                             tmp_path, monkeypatch):
    out, _ = first_run
    # A rerun over the same photos: nothing to do, no cluster started.
    again = classify([photos], out, checkpoint=CKPT, progress=False)
    assert again.skipped == 13 and again.classified == 0 and again.workers == 0 and len(_rows(out)) == 13
    # An interrupted run: the progress bar raises after the second task; the chunks written before it stay.
    import tqdm.auto

    class Interrupting(tqdm.auto.tqdm):
        def update(self, n=1):
            super().update(n)
            if self.n >= 4:
                raise KeyboardInterrupt

    monkeypatch.setattr(tqdm.auto, "tqdm", Interrupting)
    part = tmp_path / "part.csv"
    with pytest.raises(KeyboardInterrupt):
        classify([photos], part, checkpoint=CKPT, workers=2, progress=True, task_size=2, chunk_size=2)
    monkeypatch.undo()
    kept = _rows(part)
    assert 2 <= len(kept) <= 6 and len(kept) % 2 == 0  # whole chunks only, the one in flight lost
    rest = classify([photos], part, checkpoint=CKPT, workers=2, progress=False, task_size=5)
    assert rest.skipped == len(kept) and rest.classified == 13 - len(kept)
    assert sorted(r["path"] for r in _rows(part)) == sorted(r["path"] for r in _rows(out))
    # A changed photo is classified again and its old row replaced.
    changed = tmp_path / "changed"
    shutil.copytree(photos / "a", changed)
    target = next(p for p in sorted(changed.glob("*.jpg")) if p.name not in ("broken.jpg", ".hidden.jpg"))
    copy_out = tmp_path / "changed.csv"
    classify([changed], copy_out, checkpoint=CKPT, workers=2, progress=False)
    shutil.copy(sorted(SAMPLES.rglob("*.jpg"))[-1], target)
    redo = classify([changed], copy_out, checkpoint=CKPT, workers=2, progress=False)
    assert redo.classified == 1 and redo.skipped == redo.images - 1
    rows = [r for r in _rows(copy_out) if r["path"] == str(target)]
    assert len(rows) == 1 and rows[0]["sha256"] == file_sha256(target)
    with pytest.raises(ValidationError) as err:  # a --scene run into a plain output
        classify([changed], copy_out, checkpoint=CKPT, scene=True, progress=False)
    assert err.value.code == "E_OUTPUT_COLUMNS"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_scene_rows_one_per_piece_with_piece_and_box(tmp_path):
    from amulet_lab.data import make_composite, synthetic_sources

    sources = synthetic_sources(1, seed=1)
    folder = tmp_path / "scenes"
    folder.mkdir()
    expected = {}
    for i, n in enumerate((2, 3, 0)):
        scene = make_composite(sources, seed=5, index=i, n_pieces=n, sides=(800, 1000), fmt="JPEG")
        (folder / f"scene{i}.jpg").write_bytes(scene.data)
        expected[f"scene{i}.jpg"] = n
    out = tmp_path / "scenes.csv"
    result = classify([folder], out, checkpoint=CKPT, workers=2, scene=True, progress=False)
    assert tuple(read_rows(out)[0]) == SCENE_COLUMNS and result.images == 3 and result.errors == 0
    rows = _rows(out)
    per = {name: [r for r in rows if Path(r["path"]).name == name] for name in expected}
    assert [r["piece"] for r in per["scene2.jpg"]] == [""]  # no piece: one row, so a rerun knows it was done
    for name in ("scene0.jpg", "scene1.jpg"):
        assert len(per[name]) >= 1 and [r["piece"] for r in per[name]] == [str(i) for i in range(len(per[name]))]
        for r in per[name]:
            box = json.loads(r["box"])
            assert len(box) == 4 and box[0] < box[2] and box[1] < box[3] and r["label"]
    assert classify([folder], out, checkpoint=CKPT, scene=True, progress=False).skipped == 3
    from amulet_lab.batch import results_frame

    frame = results_frame(out)
    assert frame["piece"].isna().sum() == 1 and all(len(b) == 4 for b in frame["box"] if b)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_classify_command(photos, tmp_path, capsys):
    from amulet_lab.cli import main

    out = tmp_path / "cli.csv"
    code = main(["classify", str(photos / "b"), str(photos / "a" / "*.jpg"), "--out", str(out), "--workers", "2",
                 "--checkpoint", CKPT, "--quiet"])
    text = capsys.readouterr().out
    assert code == 0 and "classified (1 errors)" in text and "cluster tcp://127.0.0.1:" in text and "stopped in" in text
    rows = _rows(out)
    assert len(rows) == len(collect_images([photos / "b", str(photos / "a" / "*.jpg")])) == 11
    code = main(["classify", str(photos / "b"), "--out", str(out), "--checkpoint", CKPT, "--json", "--quiet"])
    assert code == 0 and json.loads(capsys.readouterr().out)["skipped"] == 6
    assert main(["classify", str(tmp_path / "nowhere"), "--out", str(out), "--checkpoint", CKPT]) == 1
    assert "E_PATH_MISSING" in capsys.readouterr().err


def test_bench_micro_options_reach_only_the_benchmarks_that_take_them(tmp_path):
    from amulet_lab.bench.micro import run_micro
    from amulet_lab.bench.micro.batch import run

    with pytest.raises(ValidationError) as err:
        run_micro(["errors"], quick=True, options={"checkpoint": CKPT})
    assert err.value.code and "checkpoint" in str(err.value)
    with pytest.raises(ValidationError) as err:
        run(quick=True, checkpoint=str(tmp_path / "none.pt"))
    assert err.value.code == "E_PATH_MISSING"
    with pytest.raises(ValidationError):
        run(quick=True, n=0)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_batch_benchmark_runs_the_three_engines_and_they_agree():
    from amulet_lab.bench.micro import run_micro

    (result,) = run_micro(["batch"], quick=True, options={"n": 24, "checkpoint": CKPT})
    f = result.figures
    assert result.ratios["identical"] == 1.0 and f["photos"] == 24 and f["tasks"] == 2 and f["rounds"] == 1
    for engine in ("single_1thread", "single_2threads", "pool", "cluster"):
        assert f[f"{engine}_images_per_s"] > 0
    assert f["pool_cpu_ms_per_image"] > 0 and f["cluster_cpu_ms_per_image"] > 0
    assert f["pool_echo_task_ms"] > 0 and f["cluster_echo_task_ms"] > 0
    assert f["cluster_start_s"] > 0 and f["cluster_stop_s"] > 0 and f["cluster_model_load_s"] > 0
    assert set(result.targets) == {"cluster_vs_single_1thread", "cluster_vs_single_2threads", "identical"}
