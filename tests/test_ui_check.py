"""``amulet-lab bench ui`` (make ui-check) without a browser: finding Chromium, the commands, the processes.

The browser run itself needs a local Chromium and playwright, which CI has not; it is run by hand
(``make ui-check``). Here: the "no Chromium" message and exit code 2, the missing-playwright message, the
command lines (loopback only, a token, a fresh profile), a stand-in browser process started and stopped by
its pid, a real JupyterLab server over a copy of a notebooks folder, and the photos the check uploads.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from amulet_lab.bench.chromium import CHROMIUM_FLAGS, ChromiumProcess, chromium_command, find_chromium
from amulet_lab.bench.jupyter import JupyterLabProcess, lab_command, lab_environment
from amulet_lab.bench.ui import UIReport, UIShot, make_photos, require_playwright, run_ui_check, slug
from amulet_lab.cli import main
from amulet_lab.config import PROJECT_ROOT
from amulet_lab.errors import AmuletError, NetworkError, ValidationError


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").is_dir() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


# ------------------------------------------------------------------------------------ finding a Chromium
def test_no_chromium_is_said_plainly_with_exit_code_2(tmp_path, capsys):
    missing = tmp_path / "no-chromium"
    assert main(["bench", "ui", "--chromium", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "no Chromium" in err and "E_NO_CHROMIUM" in err and "apt-get install chromium" in err
    assert "AMULET_CHROMIUM" in err


def test_amulet_chromium_is_honoured(tmp_path, monkeypatch, capsys):
    from amulet_lab.config import _reset_settings_cache

    monkeypatch.setenv("AMULET_CHROMIUM", str(tmp_path / "elsewhere"))
    _reset_settings_cache()
    assert main(["bench", "ui", "--find-chromium"]) == 2
    assert f"AMULET_CHROMIUM={tmp_path / 'elsewhere'}" in capsys.readouterr().err
    fake = _script(tmp_path / "chromium", "exit 0")
    monkeypatch.setenv("AMULET_CHROMIUM", str(fake))
    _reset_settings_cache()
    try:
        assert main(["bench", "ui", "--find-chromium"]) == 0
        assert capsys.readouterr().out.strip() == str(fake)
    finally:
        monkeypatch.delenv("AMULET_CHROMIUM")
        _reset_settings_cache()


def test_find_chromium_wants_an_executable_file(tmp_path):
    plain = tmp_path / "chromium"
    plain.write_text("not a program")
    for candidate in (plain, tmp_path):  # not executable; a folder
        with pytest.raises(ValidationError) as info:
            find_chromium(str(candidate))
        assert info.value.code == "E_NO_CHROMIUM" and info.value.field == "AMULET_CHROMIUM"
    plain.chmod(0o755)
    assert find_chromium(str(plain)) == plain


def test_missing_playwright_is_said_plainly_with_exit_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "playwright", None)  # as if not installed (it is not in requirements.txt)
    with pytest.raises(AmuletError) as info:
        require_playwright()
    assert info.value.code == "E_NO_PLAYWRIGHT" and "requirements-ui.txt" in info.value.message
    fake = _script(tmp_path / "chromium", "exit 0")
    assert main(["bench", "ui", "--chromium", str(fake)]) == 2
    assert "E_NO_PLAYWRIGHT" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ command lines
def test_chromium_command_is_headless_loopback_with_its_own_profile(tmp_path):
    cmd = chromium_command("/usr/bin/chromium", tmp_path / "profile", window=(1400, 1000))
    assert cmd[0] == "/usr/bin/chromium" and cmd[-1] == "about:blank"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"):
        assert flag in cmd and flag in CHROMIUM_FLAGS
    assert f"--user-data-dir={tmp_path / 'profile'}" in cmd
    assert "--remote-debugging-address=127.0.0.1" in cmd and "--remote-debugging-port=0" in cmd
    assert "--window-size=1400,1000" in cmd
    with pytest.raises(ValidationError):
        chromium_command("/usr/bin/chromium", tmp_path, port=70000)
    with pytest.raises(ValidationError):
        chromium_command("/usr/bin/chromium", tmp_path, window=(100, 1000))


def test_lab_command_is_loopback_with_a_token_and_no_browser(tmp_path):
    cmd = lab_command("/py", 8899, "abc123", tmp_path)
    assert cmd[:3] == ["/py", "-m", "jupyterlab"] and "--no-browser" in cmd
    assert "--ServerApp.ip=127.0.0.1" in cmd and "--ServerApp.port=8899" in cmd and "--ServerApp.port_retries=0" in cmd
    assert "--IdentityProvider.token=abc123" in cmd and f"--ServerApp.root_dir={tmp_path}" in cmd
    assert "--ServerApp.terminals_enabled=False" in cmd and "--allow-root" not in cmd
    assert "--allow-root" in lab_command("/py", 8899, "abc123", tmp_path, as_root=True)
    for port, token in ((0, "abc"), (8899, ""), (8899, "a b"), (True, "abc")):
        with pytest.raises(ValidationError):
            lab_command("/py", port, token, tmp_path)


def test_lab_environment_keeps_jupyter_out_of_the_users_folders(tmp_path):
    env = lab_environment({"PYTHONPATH": "/x", "HOME": "/home/me"}, tmp_path, Path("/repo"))
    assert env["PYTHONPATH"] == os.pathsep.join(["/repo", "/x"]) and env["HOME"] == "/home/me"
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
                 "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR"):
        assert Path(env[name]).parent == tmp_path
    assert lab_environment({}, tmp_path, Path("/repo"))["PYTHONPATH"] == "/repo"


def test_slug():
    assert slug("Phone photo") == "phone_photo" and slug("Gallery (most uncertain)") == "gallery_most_uncertain"
    assert slug("ภาพ") == "tab"


# ------------------------------------------------------------------------------------------ processes
def test_a_browser_process_is_started_and_stopped_by_its_pid(tmp_path):
    fake = _script(tmp_path / "chromium",
                   'echo "[0101/000000:ERROR] noise" >&2\n'
                   'echo "DevTools listening on ws://127.0.0.1:41234/devtools/browser/abc-def" >&2\n'
                   "exec sleep 60")
    proc = ChromiumProcess(fake, startup_timeout=10)
    with proc:
        assert proc.ws_url == "ws://127.0.0.1:41234/devtools/browser/abc-def"
        pid, profile = proc.pid, proc.user_data_dir
        assert _alive(pid) and profile.is_dir() and "pid=" in repr(proc)
    assert proc.pid is None and not _alive(pid) and not profile.exists()


def test_a_browser_that_gives_no_devtools_address_is_an_error(tmp_path):
    fake = _script(tmp_path / "chromium", 'echo "cannot open display" >&2; exit 1')
    start = time.monotonic()
    with pytest.raises(NetworkError) as info:
        ChromiumProcess(fake, startup_timeout=20).start()
    assert "cannot open display" in info.value.message and time.monotonic() - start < 10


def test_run_ui_check_checks_its_arguments_before_starting_anything(tmp_path):
    with pytest.raises(ValidationError) as info:
        run_ui_check("/usr/bin/chromium", notebooks=tmp_path, out_dir=tmp_path / "out")
    assert info.value.code == "E_FILE_NOT_FOUND"
    with pytest.raises(ValidationError):
        run_ui_check("/usr/bin/chromium", timeout_s=0, out_dir=tmp_path / "out")
    with pytest.raises(ValidationError):
        run_ui_check("/usr/bin/chromium", photos="data/samples/x.jpg", out_dir=tmp_path / "out")
    with pytest.raises(ValidationError) as info:
        run_ui_check("/usr/bin/chromium", photos=[tmp_path / "missing.jpg"], out_dir=tmp_path / "out")
    assert info.value.code == "E_FILE_NOT_FOUND"
    assert not (tmp_path / "out").exists()


def test_report_text_names_timings_faults_and_files(tmp_path):
    shot = UIShot("03_tab_2_gallery", tmp_path / "03_tab_2_gallery.png", "the Gallery tab",
                  {"cut_text": ["div.lm-TabBar-tabLabel \"Gallery (most uncerta\""], "broken_images": []})
    report = UIReport("01_classify.ipynb", tmp_path, {
        "open_to_kernel_idle_s": 4.2, "run_all_to_widget_s": 1.7, "run_all_to_usable_s": 3.3, "gallery_press_s": 0.1,
        "uploads": [{"tab": "Classify", "photo": "a.jpg", "bytes": 12000, "seconds": 0.15}]},
        ["Classify", "Gallery"], [shot], {"thai_font": False})
    text = report.to_text()
    assert "Run All -> usable (idle)     3.30 s" in text and "a.jpg (0.01 MB): 0.15 s" in text
    assert "gallery pressed -> idle: 0.10 s" in text and "layout faults: 1" in text
    assert report.faults() == ['03_tab_2_gallery: cut_text: div.lm-TabBar-tabLabel "Gallery (most uncerta"']
    assert json.loads(json.dumps(report.to_dict()))["shots"][0]["path"].endswith("03_tab_2_gallery.png")
    assert repr(report) == "UIReport(notebook='01_classify.ipynb', tabs=['Classify', 'Gallery'], shots=1)"


@pytest.mark.slow
def test_jupyterlab_serves_a_copy_on_loopback_with_a_token_and_stops(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "a.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    before = (notebooks / "a.ipynb").read_bytes()
    lab = JupyterLabProcess(notebooks, root=PROJECT_ROOT, startup_timeout=90)
    with lab:
        pid, work = lab.pid, lab.work
        assert (lab.copy / "a.ipynb").read_bytes() == before and lab.copy != notebooks
        assert lab.lab_url("a.ipynb").startswith(f"http://127.0.0.1:{lab.port}/lab/tree/a.ipynb?token=")
        with pytest.raises(urllib.error.HTTPError) as info:  # no token: refused
            urllib.request.urlopen(f"{lab.base_url}/api/contents", timeout=5)
        assert info.value.code == 403
        req = urllib.request.Request(f"{lab.base_url}/api/contents", headers={"Authorization": f"token {lab.token}"})
        names = [item["name"] for item in json.load(urllib.request.urlopen(req, timeout=5))["content"]]
        assert names == ["a.ipynb"]
    assert not _alive(pid) and not work.exists() and (notebooks / "a.ipynb").read_bytes() == before


@pytest.mark.slow
def test_the_photos_are_new_a_224px_jpeg_and_12_mp_heics(tmp_path):
    from amulet_lab.security import validate_image

    made = make_photos(tmp_path, PROJECT_ROOT / "data" / "samples")
    small, heic = made["classify"]
    (phone,) = made["phone"]
    sample = PROJECT_ROOT / "data" / "samples" / "waek_man" / "waek_man_front_0000.jpg"
    assert small.read_bytes() != sample.read_bytes()  # not a prediction-cache hit of the gallery's sample
    assert validate_image(small).format == "JPEG" and validate_image(small).image.size == (224, 224)
    for path in (heic, phone):
        checked = validate_image(path)
        assert checked.format == "HEIF" and checked.image.size == (4032, 3024)
