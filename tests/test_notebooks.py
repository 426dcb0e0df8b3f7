"""The notebooks run, with small parameters, under nbval (``--nbval-lax``).

How the reference outputs come about (the stored notebooks have none): each notebook is prepared
with papermill (``prepare_only=True``: parameters injected into a copy in tmp_path, history in
tmp_path), then executed once with papermill; that executed copy is the reference. nbval then
re-runs the reference in a fresh kernel and compares only the cells marked ``# NBVAL_CHECK_OUTPUT``
(which print stable facts) after the sanitisers in ``tests/nbval_sanitize.cfg``; every other cell
must merely run without error. On top of that self-consistency, this module asserts what those
facts say in the reference (the right scenarios ran, records were appended, ...), and it shows that
the nbval run can fail: a reference whose checked output was altered must be rejected.

Plots are checked in tests/test_plots.py (nbval skips images).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from amulet_lab.config import PROJECT_ROOT
from model_helpers import untrained_tiny_checkpoint

pytestmark = pytest.mark.slow

NOTEBOOKS = PROJECT_ROOT / "notebooks"
NAMES = ["00_train.ipynb", "01_classify.ipynb", "02_profile.ipynb", "03_benchmark.ipynb", "04_report.ipynb",
         "05_batch.ipynb"]
#: 00_train trains on a small seeded synthetic folder: 4 photos per class, 2 folds, the fast arch.
TRAIN_PER_CLASS = 4
SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")


def _batch_folder(root: Path) -> Path:
    """Six sample photos (one of each known class but one, and an unknown) and a broken file, in two folders."""
    import shutil

    samples = PROJECT_ROOT / "data" / "samples"
    picks = ["phra_sivali/phra_sivali_front_0000.jpg", "waek_man/waek_man_front_0000.jpg",
             "wat_nong_e_duk/wat_nong_e_duk_back_0001.jpg", "portrait_back/portrait_back_front_0001.jpg",
             "prok_bodhi_9_leaves/prok_bodhi_9_leaves_back_0000.jpg", "_unknown/coin_0001.jpg"]
    for i, pick in enumerate(picks):
        (root / f"box{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(samples / pick, root / f"box{i % 2}" / Path(pick).name)
    (root / "box1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 8)
    return root


def _small_parameters(history_dir: Path, checkpoint: Path, photos: Path, work: Path | None = None) -> dict[str, dict]:
    from amulet_lab.model.bundled import SYNTHETIC_CHECKPOINT

    ck = str(checkpoint)
    work = work or history_dir.parent
    return {
        "00_train.ipynb": {"data_dir": str(photos), "out": str(history_dir.parent / "trained.pt"), "arch": "features",
                           "cv": 2},
        "01_classify.ipynb": {"checkpoint": ck},
        "02_profile.ipynb": {"checkpoint": ck, "samples": 4, "batch_size": 2},
        "03_benchmark.ipynb": {"checkpoint": ck, "scenarios": ["single_stream", "offline"], "batch_sizes": [2],
                               "samples": 4, "min_duration_s": 0.0, "duration_s": 0.5, "history_dir": str(history_dir)},
        "04_report.ipynb": {"history_dir": str(history_dir)},
        # A real 2-worker LocalCluster on 127.0.0.1 with the small synthetic model.
        "05_batch.ipynb": {"paths": [str(work / "batch_photos")], "out": str(work / "batch_results.csv"),
                           "workers": 2, "scheduler": None, "checkpoint": str(SYNTHETIC_CHECKPOINT)},
    }


def _checked_text(path: Path) -> list[str]:
    """The stdout of the cells marked NBVAL_CHECK_OUTPUT, in order."""
    nb = nbformat.read(path, as_version=4)
    out = []
    for cell in nb.cells:
        if cell.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in cell.source:
            out.append("".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"))
    return out


def _nbval(paths: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    (cwd / "pytest.ini").write_text("[pytest]\naddopts =\n")  # not the project's config: these are not our tests
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with", str(SANITIZE),
         "-p", "no:cacheprovider", "-q", "-x", *map(str, paths)],
        cwd=cwd, capture_output=True, text=True, timeout=240,
    )


def test_notebooks_are_stored_clean():
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{name} has stored outputs"
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1, f"{name}: one parameters cell"
        assert any("# NBVAL_CHECK_OUTPUT" in c.source for c in code), f"{name}: no checked cell"
        thin = [c for c in code if len(c.source.splitlines()) > 6 and "parameters" not in c.metadata.get("tags", [])]
        assert not thin, f"{name}: code cells should be thin calls into amulet_lab: {thin[0].source[:80]!r}"


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    import papermill as pm

    from amulet_lab.bench.report import kernel_name

    work = tmp_path_factory.mktemp("notebooks")
    history = work / "history"
    committed = PROJECT_ROOT / "reports" / "history"
    before = {p.name: p.read_bytes() for p in committed.glob("*.jsonl")}
    refs = {}
    checkpoint = untrained_tiny_checkpoint(work / "tiny.pt")
    from amulet_lab.data import synthesize

    photos = synthesize(work / "photos", TRAIN_PER_CLASS, 11, size=96, progress=False)
    _batch_folder(work / "batch_photos")
    for name, params in _small_parameters(history, checkpoint, photos, work).items():
        prepared = work / f"prepared-{name}"
        pm.execute_notebook(str(NOTEBOOKS / name), str(prepared), parameters=params, prepare_only=True)
        refs[name] = work / name
        pm.execute_notebook(str(prepared), str(refs[name]), kernel_name=kernel_name(), cwd=str(work), progress_bar=False)
    after = {p.name: p.read_bytes() for p in committed.glob("*.jsonl")}
    assert after == before, "the notebook tests must never touch the committed reports/history"
    return work, refs, history


def test_reference_runs_state_the_expected_facts(references):
    work, refs, history = references
    (train,) = _checked_text(refs["00_train.ipynb"])
    assert "status: trained" in train and "trained: features, 2-fold cross-validation, then all photos" in train
    assert f"folder: {6 * TRAIN_PER_CLASS} photos of 6 classes (class folders)" in train
    assert "figures: confusion, reliability" in train and "(with its model card)" in train
    from amulet_lab.model import load_checkpoint
    from amulet_lab.model.card import model_card

    card = model_card(load_checkpoint(work / "trained.pt").metadata)  # the notebook's checkpoint, card and all
    assert f"model card: {card.headline()}" in train and card.n_images == 6 * TRAIN_PER_CLASS
    (classify, gallery) = _checked_text(refs["01_classify.ipynb"])
    assert "prediction: " in classify and "stages timed: lookup, decode, preprocess, infer" in classify
    assert any(w in classify for w in ("band: Reliable", "band: Check with an expert", "band: Retake the photo",
                                       "band: Not one of the six known types"))
    assert "most uncertain first: True" in gallery
    (profile,) = _checked_text(refs["02_profile.ipynb"])
    assert "photos profiled: 4" in profile and "memory stages: decode, preprocess, infer, postprocess" in profile
    (bench,) = _checked_text(refs["03_benchmark.ipynb"])
    assert "scenarios run: single_stream, offline[bs=2]" in bench and "history records appended: 2" in bench
    (report,) = _checked_text(refs["04_report.ipynb"])
    assert "scenarios in the latest run: offline, single_stream" in report and "corrupt lines skipped: 0" in report
    (batch,) = _checked_text(refs["05_batch.ipynb"])
    assert "rows: 7, photos: 7, one row per photo: True" in batch
    assert "classified: 6, errors: 1, " in batch and "models: 1" in batch and "(error) 1" in batch
    work = refs["05_batch.ipynb"].parent
    from amulet_lab.batch import read_rows

    columns, rows = read_rows(work / "batch_results.csv")
    assert len(rows) == 7 and columns[0] == "path"
    (broken,) = [r["error"] for r in rows if r["path"].endswith("broken.jpg")]
    assert broken.startswith("E_IMAGE_") and all(r["label"] for r in rows if not r["error"])
    lines = (history / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 2 and {json.loads(x)["scenario"] for x in lines} == {"single_stream", "offline"}


def test_notebooks_pass_nbval(references):
    work, refs, _ = references
    done = _nbval([refs[n] for n in NAMES], work)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # nbval makes one test item per code cell: every cell of every notebook must have run and passed.
    counts = _outcomes(done.stdout)
    cells = sum(1 for n in NAMES for c in nbformat.read(refs[n], as_version=4).cells
                if c.cell_type == "code" and c.source.strip() and "# NBVAL_SKIP" not in c.source)
    assert counts.get("failed", 0) == 0 and counts.get("error", 0) == 0 and counts.get("errors", 0) == 0, done.stdout[-4000:]
    assert counts.get("passed") == cells, (counts, cells, done.stdout[-2000:])


def _outcomes(stdout: str) -> dict[str, int]:
    """``{"passed": 41, "failed": 1, ...}`` from pytest's summary line ("41 passed, 1 failed in 9.8s")."""
    import re

    summary = [line for line in stdout.splitlines() if re.search(r"\d+ (passed|failed|errors?)", line)]
    assert summary, f"no pytest summary in the nbval output: {stdout[-2000:]}"
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)", summary[-1])}


def test_nbval_fails_when_a_checked_output_differs(references):
    work, refs, _ = references
    nb = nbformat.read(refs["04_report.ipynb"], as_version=4)
    cell = next(c for c in nb.cells if "# NBVAL_CHECK_OUTPUT" in c.source)
    cell.outputs[0]["text"] = cell.outputs[0]["text"].replace("corrupt lines skipped: 0", "corrupt lines skipped: 7")
    tampered = work / "tampered" / "04_report.ipynb"
    tampered.parent.mkdir()
    nbformat.write(nb, tampered)
    done = _nbval([tampered], tampered.parent)
    assert done.returncode != 0
    assert "Cell outputs differ" in done.stdout and "skipped: 7" in done.stdout


def _sanitise(text: str) -> str:
    """``text`` as nbval sees it: the rules of tests/nbval_sanitize.cfg, read and applied in order as nbval does."""
    import re

    from nbval.plugin import get_sanitize_patterns

    for regex, replace in get_sanitize_patterns(SANITIZE.read_text()):
        text = re.sub(regex, replace, text)
    return text


def test_sanitisers_mask_times_paths_and_ids_but_keep_the_checked_facts():
    import configparser

    sections = configparser.ConfigParser()
    sections.read(SANITIZE)
    from nbval.plugin import get_sanitize_patterns

    assert len(get_sanitize_patterns(SANITIZE.read_text())) == len(sections.sections()) == 7  # every rule is read
    volatile = ("run 20261201T214405Z-6315f1 at 2026-12-01T21:44:05+00:00 took 0.4 s (12.5 ms, 373.2 MB) "
                "in /tmp/pytest-of-root/pytest-43/history, commit 2632fb3a34d3ac4d4da2, object at 0x7f2a7a7647d0")
    assert _sanitise(volatile) == ("run RUN-ID at TIMESTAMP took DURATION (DURATION, SIZE) in PATH, commit HEX-ID, "
                                   "object at 0xADDRESS")
    # The stable facts the checked cells print pass through untouched, so a changed fact still fails nbval.
    facts = ("scenarios run: single_stream, offline[bs=2]\nhistory records appended: 2\ncorrupt lines skipped: 0\n"
             "photos profiled: 4\nmemory stages: decode, preprocess, infer, postprocess\nband: Check with an expert\n"
             "gallery photos: 27, most uncertain first: True, not classified: 0, cards shown: 27")
    assert _sanitise(facts) == facts


def _assigned_names(source: str) -> list[str]:
    import ast

    return [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name)]


def test_parameters_cells_are_what_papermill_sees_and_03_takes_every_knob():
    """Every name of a ``parameters`` cell is listed by papermill (``--help-notebook``; a ``=`` in a comment would hide
    it), 03 takes the knobs the issue names, and its defaults are the ones ``amulet-lab report`` passes."""
    import ast

    import papermill as pm

    from amulet_lab.bench.report import DEFAULT_PARAMETERS

    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert list(pm.inspect_notebook(str(NOTEBOOKS / name))) == _assigned_names(cell.source), name
    bench = pm.inspect_notebook(str(NOTEBOOKS / "03_benchmark.ipynb"))
    assert {"scenarios", "batch_sizes", "threads", "samples", "min_duration_s", "duration_s", "checkpoint", "data_dir",
            "history_dir", "seed", "latency_bound_ms", "target_qps", "cache", "image_sizes"} <= set(bench)
    assert {k: ast.literal_eval(bench[k]["default"]) for k in DEFAULT_PARAMETERS} == DEFAULT_PARAMETERS
