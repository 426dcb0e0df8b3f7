"""The ``%%amulet_profile`` cell magic, run in a headless IPython shell."""

from __future__ import annotations

import pytest

from amulet_lab.magics import ProfileReport


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
        "block = bytearray(b'\\x01') * (80 * 2**20)\n"
        "from amulet_lab.cache import get_image_cache\n"
        "hits = [get_image_cache().get_image(_key) is not None for _ in range(5)]\n"
        "time.sleep(0.05)\n"
        "answer = 6 * 7\n"
    )
    result = shell.run_cell(cell)
    assert result.success, result.error_in_exec
    report = shell.user_ns["_amulet_profile"]
    assert isinstance(report, ProfileReport) and report.label == "load step" and report.succeeded
    assert shell.user_ns["answer"] == 42 and all(shell.user_ns["hits"])  # the cell ran in the user namespace
    assert report.wall_s >= 0.05 and report.peak_rss_delta_mb > 60 and report.samples >= 2
    assert report.cache_hit_rate_after is not None and report.cache_hit_rate_change > 0
    html = report._repr_html_()
    assert "<table>" in html and "peak RSS delta" in html and "wall time" in html
    frame = report.to_frame()
    assert list(frame.index)[:2] == ["wall time", "peak RSS delta"]
    del shell.user_ns["block"]


def test_profile_of_a_failing_cell_still_reports_and_the_cell_fails(shell):
    result = shell.run_cell("%%amulet_profile\nraise ValueError('boom')\n")
    report = shell.user_ns["_amulet_profile"]
    assert report.succeeded is False and report.label == "" and "raised" in repr(report)
    assert not result.success and isinstance(result.error_in_exec, ValueError)  # Run All stops here
