"""The ``%%amulet_profile`` cell magic, run in a headless IPython shell."""

from __future__ import annotations

import pytest

import amulet_lab.cache as cache_module
from amulet_lab.magics import ProfileReport, ProfiledCellError


@pytest.fixture(scope="module")
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    result = ip.run_cell("%load_ext amulet_lab")
    assert result.success, result.error_in_exec
    yield ip
    InteractiveShell.clear_instance()


def test_profile_reports_wall_time_peak_rss_and_cache_hit_rate(shell):
    from amulet_lab.cache import get_image_cache

    cache = get_image_cache()
    key = cache.cache_image(b"not really an image but bytes to cache", "x.jpg")
    shell.user_ns["_key"] = key
    cell = (
        "%%amulet_profile load step\n"
        "import time\n"
        "from memory_helpers import resident_block\n"
        "block = resident_block(80 * 2**20)\n"
        "from amulet_lab.cache import get_image_cache\n"
        "hits = [get_image_cache().get_image(_key) is not None for _ in range(5)]\n"
        "get_image_cache().get_image('no-such-key')\n"
        "time.sleep(0.3)  # hold the block long enough for the sampler on a busy machine\n"
        "answer = 6 * 7\n"
    )
    result = shell.run_cell(cell)
    assert result.success, result.error_in_exec
    report = shell.user_ns["_amulet_profile"]
    assert isinstance(report, ProfileReport) and report.label == "load step" and report.succeeded
    assert shell.user_ns["answer"] == 42 and all(shell.user_ns["hits"])  # the cell ran in the user namespace
    assert report.wall_s >= 0.05 and report.peak_rss_delta_mb > 60 and report.samples >= 2
    # The cell's own lookups, not the cache's lifetime rate (which includes earlier cells).
    assert (report.cache_hits, report.cache_misses) == (5, 1) and report.cache_hit_rate == pytest.approx(5 / 6)
    assert "83.3% (5 hits, 1 misses)" in dict(report.rows())["cache hit rate"]
    # and the change the cell made to the cache's lifetime hit rate
    before, after = report.cache_hit_rate_before, report.cache_hit_rate_after
    assert before is not None and after is not None and report.cache_hit_rate_change == pytest.approx(after - before)
    assert dict(report.rows())["cache hit rate change"] == \
        f"{before:.1%} -> {after:.1%} ({(after - before) * 100:+.1f} pts)"
    html = report._repr_html_()
    assert "<table>" in html and "peak RSS delta" in html and "wall time" in html
    frame = report.to_frame()
    assert list(frame.index)[:2] == ["wall time", "peak RSS delta"]
    del shell.user_ns["block"]


def test_profiling_never_creates_the_image_cache(shell, monkeypatch):
    import sys

    answers = sys.modules.get("amulet_lab.model.answers")
    if answers is not None:  # prediction caches of earlier tests' classifiers may still be alive
        monkeypatch.setattr(answers, "live_prediction_caches", lambda: [])
    cache_module._reset_image_cache()
    try:
        result = shell.run_cell("%%amulet_profile\nx = 1\n")
        assert result.success and cache_module.peek_image_cache() is None
        report = shell.user_ns["_amulet_profile"]
        assert report.cache_hits is None and report.cache_hit_rate is None
        assert dict(report.rows())["cache hit rate"].startswith("n/a")
        assert report.cache_hit_rate_change is None
        assert dict(report.rows())["cache hit rate change"].startswith("n/a")
        result = shell.run_cell("%%amulet_profile\nfrom amulet_lab.cache import get_image_cache\n"
                                "get_image_cache().get_image('no-such-key')\n")
        report = shell.user_ns["_amulet_profile"]
        assert result.success and report.cache_hit_rate_before is None and report.cache_misses == 1
        assert dict(report.rows())["cache hit rate change"].endswith("(cache created in the cell)")
    finally:
        cache_module._reset_image_cache()


def test_profile_of_a_failing_cell_still_reports_and_the_cell_fails(shell, capsys):
    result = shell.run_cell("%%amulet_profile\nraise ValueError('boom')\n")
    report = shell.user_ns["_amulet_profile"]
    assert report.succeeded is False and report.label == "" and "raised" in repr(report)
    assert not result.success  # Run All stops here
    error = result.error_in_exec
    assert isinstance(error, ProfiledCellError) and isinstance(error.__cause__, ValueError)
    out = capsys.readouterr().out
    assert out.count("Traceback (most recent call last)") == 1, out  # shown once, not again for the magic
    assert "the profiled cell raised ValueError: boom" in out


def test_profile_counts_the_prediction_cache_of_a_classifier(shell, tmp_path):
    from model_helpers import untrained_tiny_checkpoint

    from amulet_lab.data import SAMPLES_DIR

    path = untrained_tiny_checkpoint(tmp_path / "tiny.pt", size=32)
    photo = sorted(SAMPLES_DIR.rglob("*.jpg"))[0]
    shell.user_ns.update(_ckpt=path, _photo=photo)
    shell.run_cell("from amulet_lab.model import AmuletClassifier\n_clf = AmuletClassifier.from_checkpoint(_ckpt)\n")
    result = shell.run_cell("%%amulet_profile\n_first = _clf.predict(_photo)\n_second = _clf.predict(_photo)\n")
    report = shell.user_ns["_amulet_profile"]
    assert result.success and shell.user_ns["_second"].cache == "local"
    assert (report.cache_hits, report.cache_misses) == (1, 1) and report.cache_hit_rate == 0.5
