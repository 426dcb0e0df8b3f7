"""The notebook app as a person sees it: ``run_ui_check`` drives ``01_classify`` in JupyterLab in headless Chromium.

``amulet-lab bench ui`` (``make ui-check``) starts a ``JupyterLabProcess`` over a temporary copy of the
notebooks and a ``ChromiumProcess`` (the machine's own browser), connects Playwright to it over DevTools
(nothing is downloaded), opens the notebook, presses Run > Run All Cells, and measures

* ``run_all_to_widget_s``: Run All until the app's tabs are drawn;
* ``run_all_to_usable_s``: Run All until every code cell ran and the kernel is idle (a button answers now);
* ``upload_to_result_s`` per photo: the file chosen in the Front upload's file dialog until the kernel has
  answered and the app names the photo;
* ``gallery_press_s``: the Gallery button pressed until the kernel is idle again.

It saves a screenshot of the page and of the app after Run All, after each upload, and of every tab the
app has (whatever tabs exist: Classify, Gallery, Train, Phone photo, ...; only the Gallery button is pressed),
with the layout faults a page can tell about itself (cut tab titles, broken images, horizontal scrollbars,
whether the browser has a font for Thai letters) and writes ``ui.json`` beside them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from amulet_lab.errors import AmuletError, ProcessingError, ValidationError
from amulet_lab.files import atomic_write_text, existing_file

__all__ = ["UIReport", "UIShot", "make_photos", "require_playwright", "run_ui_check", "slug"]

#: The notebook, the kernel and the session, read from JupyterLab's app (``expose_app_in_browser``).
_STATE_JS = """() => {
  const app = window.jupyterapp; const w = app && app.shell.currentWidget;
  const ctx = w && w.sessionContext; const k = ctx && ctx.session && ctx.session.kernel;
  if (!w || !w.content || !w.content.widgets) return {ready: false};
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  const errors = [];
  for (const c of cells) for (const o of c.model.outputs.toJSON())
    if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
  return {ready: !!k, kernel: k ? k.status : null, code_cells: cells.length,
          ran: cells.filter(c => c.model.executionCount !== null).length, errors,
          widget: !!document.querySelector('.jp-OutputArea-output .widget-tab'),
          idle_since: window.__amuletIdleAt || null, busy_seen: !!window.__amuletBusy,
          t0: window.__amuletT0 || 0, now: performance.now()};
}"""
#: Watch the kernel: remember that it went busy and when it last went idle after that.
_WATCH_JS = """() => {
  const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  window.__amuletBusy = false; window.__amuletIdleAt = null; window.__amuletT0 = performance.now();
  if (window.__amuletHooked !== k) {
    k.statusChanged.connect((_, s) => {
      if (s === 'busy') { window.__amuletBusy = true; window.__amuletIdleAt = null; }
      else if (s === 'idle' && window.__amuletBusy) window.__amuletIdleAt = performance.now();
    });
    window.__amuletHooked = k;
  }
  return window.__amuletT0;
}"""
#: Layout faults inside an element: text cut off (tab titles, button labels: clipped or with an ellipsis),
#: broken images, elements that scroll sideways (a horizontal scrollbar).
_FAULTS_JS = """(root) => {
  const what = e => (e.tagName.toLowerCase() + '.' + [...e.classList].slice(0, 3).join('.') + ' "' +
                     (e.innerText || e.alt || '').trim().replace(/\\s+/g, ' ').slice(0, 40) + '"');
  const seen = e => e.offsetParent !== null && e.getClientRects().length > 0;
  const out = {cut_text: [], broken_images: [], scrolls_sideways: []};
  for (const e of [root, ...root.querySelectorAll('*')]) {
    if (!seen(e)) continue;
    const cs = getComputedStyle(e);
    if (e.scrollWidth > e.clientWidth + 1 && cs.overflowX === 'hidden' && cs.textOverflow === 'ellipsis')
      out.cut_text.push(what(e) + ` (${e.scrollWidth} > ${e.clientWidth} px)`);
    if ((cs.overflowX === 'auto' || cs.overflowX === 'scroll') && e.scrollWidth > e.clientWidth + 1)
      out.scrolls_sideways.push(what(e) + ` (${e.scrollWidth} > ${e.clientWidth} px)`);
    if (e.tagName === 'IMG' && e.complete && e.naturalWidth === 0) out.broken_images.push(what(e));
  }
  return out;
}"""
#: Whether Thai letters draw as glyphs: they differ from the 'missing glyph' box of private-use characters.
_THAI_JS = """() => {
  const draw = text => { const c = document.createElement('canvas'); c.width = 120; c.height = 40;
    const g = c.getContext('2d'); g.font = '28px sans-serif'; g.fillText(text, 4, 30);
    return Array.from(g.getImageData(0, 0, 120, 40).data).join(','); };
  return draw('\\u0e01\\u0e02\\u0e04') !== draw('\\ue000\\ue001\\ue002');
}"""
_APP = ".jp-OutputArea-output:has(.widget-tab)"


def slug(text: str) -> str:
    """A file-name part for ``text`` (a tab title): lower case, letters, digits and underscores."""
    out = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")
    return out or "tab"


def require_playwright() -> Any:
    """The ``playwright.sync_api`` module, else an ``AmuletError`` (``E_NO_PLAYWRIGHT``) saying how to get it."""
    try:
        from playwright import sync_api
    except ModuleNotFoundError as exc:
        raise AmuletError("the UI check needs the pip package playwright (not in requirements.txt): "
                          "pip install -r requirements-ui.txt, or run make ui-check", code="E_NO_PLAYWRIGHT",
                          context={"missing": exc.name}) from None
    return sync_api


@dataclasses.dataclass(frozen=True)
class UIShot:
    """One screenshot: its file, what it shows, and the faults the page reported there."""

    name: str
    path: Path
    shows: str
    faults: dict[str, list[str]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (the path as text)."""
        return {"name": self.name, "path": str(self.path), "shows": self.shows, "faults": self.faults}


@dataclasses.dataclass
class UIReport:
    """What one UI check measured and saved."""

    notebook: str
    out_dir: Path
    timings: dict[str, Any]
    tabs: list[str]
    shots: list[UIShot]
    environment: dict[str, Any]

    def __repr__(self) -> str:
        return f"UIReport(notebook={self.notebook!r}, tabs={self.tabs}, shots={len(self.shots)})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {"notebook": self.notebook, "out_dir": str(self.out_dir), "timings": self.timings, "tabs": self.tabs,
                "shots": [s.to_dict() for s in self.shots], "environment": self.environment}

    def faults(self) -> list[str]:
        """Every fault seen, one line each (``shot: kind: what``)."""
        return [f"{s.name}: {kind}: {item}" for s in self.shots for kind, items in s.faults.items() for item in items]

    def to_text(self) -> str:
        """A short summary for the terminal."""
        t = self.timings
        lines = [f"UI check of {self.notebook} (tabs: {', '.join(self.tabs)})",
                 f"kernel ready after opening   {t['open_to_kernel_idle_s']:.2f} s",
                 f"Run All -> app drawn         {t['run_all_to_widget_s']:.2f} s",
                 f"Run All -> usable (idle)     {t['run_all_to_usable_s']:.2f} s"]
        lines += [f"upload -> result ({u['tab']}) {u['photo']} ({u['bytes'] / 1e6:.2f} MB): {u['seconds']:.2f} s"
                  for u in t["uploads"]]
        lines += [f"{k[:-len('_press_s')]} pressed -> idle: {v:.2f} s" for k, v in t.items() if k.endswith("_press_s")]
        env = self.environment
        lines.append(f"Thai letters in the browser's own fonts: {env['thai_font']} (the app brings its own: fonts.thai_font_face)")
        if "load_average_before" in env:
            lines.append(f"load average before/after: {env['load_average_before'][0]} / "
                         f"{env['load_average_after'][0]} on {env['cpus']} CPUs")
        faults = self.faults()
        lines.append("layout faults: " + ("none seen" if not faults else f"{len(faults)}"))
        lines += [f"  {f}" for f in faults]
        lines += [f"screenshot {s.path}" for s in self.shots]
        lines.append(f"timings: {self.out_dir / 'ui.json'}")
        return "\n".join(lines)


class _Driver:
    """The page and the waits of one check (internal to ``run_ui_check``)."""

    def __init__(self, page: Any, out_dir: Path, timeout_s: float, viewport: tuple[int, int]) -> None:
        self.page, self.out_dir, self.timeout_s, self.viewport = page, out_dir, timeout_s, viewport
        self.shots: list[UIShot] = []

    def state(self) -> dict[str, Any]:
        return dict(self.page.evaluate(_STATE_JS))

    def wait(self, what: str, done: Any, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll the notebook's state until ``done(state)``; a cell error or the deadline raises (with a screenshot)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            st = self.state()
            if st.get("errors"):
                self.fail(f"a notebook cell failed while waiting for {what}: {st['errors'][0]}", "E_NOTEBOOK_ERROR")
            if done(st):
                return st
            if time.monotonic() > deadline:
                self.fail(f"timed out after {timeout_s or self.timeout_s:.0f} s waiting for {what}: {st}", "E_UI_TIMEOUT")
            time.sleep(0.05)

    def quiet(self, st: dict[str, Any], ms: float = 400.0) -> bool:
        """The kernel is idle and has been for ``ms`` (or has not gone busy in the ``ms`` since the watch started)."""
        if st.get("kernel") != "idle":
            return False
        since = st.get("idle_since")
        if since is None:
            return not st.get("busy_seen") and st["now"] - st["t0"] >= ms
        return st["now"] - since >= ms

    def fail(self, message: str, code: str) -> None:
        self.page.screenshot(path=str(self.out_dir / "failure.png"))
        raise ProcessingError(message, stage="ui", code=code, context={"screenshot": str(self.out_dir / "failure.png")})

    def app(self) -> Any:
        return self.page.locator(_APP).first

    def settle(self) -> None:
        """Fonts loaded, images decoded, two frames drawn."""
        self.page.evaluate("""async () => { await document.fonts.ready;
          await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
          await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))); }""")

    def shoot(self, name: str, shows: str, *, page: bool = False) -> UIShot:
        """Screenshot the app whole (the viewport grown to fit it) or the page as a user sees it."""
        self.settle()
        path = self.out_dir / f"{name}.png"
        app = self.app()
        if page:
            self.page.screenshot(path=str(path))
        else:
            box = app.bounding_box() or {"height": self.viewport[1]}
            tall = int(min(max(self.viewport[1], box["height"] + 250), 8000))
            self.page.set_viewport_size({"width": self.viewport[0], "height": tall})
            try:
                app.scroll_into_view_if_needed()
                self.settle()
                app.screenshot(path=str(path))
            finally:
                self.page.set_viewport_size({"width": self.viewport[0], "height": self.viewport[1]})
        faults = {k: list(v) for k, v in app.evaluate(_FAULTS_JS).items()}
        shot = UIShot(name, path, shows, faults)
        self.shots.append(shot)
        return shot


def make_photos(folder: str | Path, samples: str | Path) -> dict[str, list[Path]]:
    """Photos the check uploads, new to the prediction cache (the notebook classified the samples already).

    Into ``folder``: a sample front re-encoded (224 px JPEG) and a 12-MP (4032x3024) HEIC phone photo of
    one piece for the Classify tab, and a 12-MP HEIC of three pieces for a Phone photo tab.
    """
    from PIL import Image

    from amulet_lab.data.composites import folder_sources, make_composite

    folder, samples = Path(folder), Path(samples)
    front = existing_file(samples / "waek_man" / "waek_man_front_0000.jpg", field="samples")
    small = folder / "ui_check_224px.jpg"
    with Image.open(front) as im:
        im.convert("RGB").save(small, "JPEG", quality=93)
    sources = folder_sources(samples)
    out = {"classify": [small], "phone": []}
    for name, pieces, key in (("ui_check_12mp_1_piece.heic", 1, "classify"), ("ui_check_12mp_3_pieces.heic", 3, "phone")):
        comp = make_composite(sources, 14, pieces, size=(4032, 3024), n_pieces=pieces, fmt="HEIF",
                              exif_orientation=1, scene_turn=0, quality=85)
        path = folder / name
        path.write_bytes(comp.data)
        out[key].append(path)
    return out


def _checked(photos: list[str | Path] | None, field: str) -> list[Path] | None:
    if photos is None:
        return None
    if not isinstance(photos, (list, tuple)):
        raise ValidationError(f"{field} must be a list of photo paths", field=field, value=repr(photos))
    return [existing_file(p, field=field).resolve() for p in photos]


def _upload(d: _Driver, photo: Path, *, named: bool) -> float:
    """Choose ``photo`` in the visible tab's first upload; seconds until the kernel answered (and, if ``named``,
    the app names the photo)."""
    button = d.app().locator(".widget-upload:visible").first
    with d.page.expect_file_chooser() as chooser:
        button.click()
    t0 = d.page.evaluate(_WATCH_JS)
    chooser.value.set_files(str(photo))
    st = d.wait(f"the answer for {photo.name}", lambda st: st["idle_since"] is not None and d.quiet(st)
                and (not named or photo.name in d.app().inner_text()))
    return round((st["idle_since"] - t0) / 1000.0, 3)


def _visit_tabs(d: _Driver, press: tuple[str, ...], phone: list[Path], timings: dict[str, Any]) -> list[str]:
    """Screenshot every tab after the first; press the buttons named in ``press``; upload ``phone`` on a tab
    whose title says Phone. Returns the tab titles."""
    labels = d.app().locator(".widget-tab").first.locator(":scope > .widget-tab-bar .lm-TabBar-tab")
    tabs = [labels.nth(i).inner_text().strip() for i in range(labels.count())]
    for i, title in enumerate(tabs[1:], start=1):
        d.page.evaluate(_WATCH_JS)
        labels.nth(i).click()
        d.wait(f"the {title} tab", d.quiet)
        d.shoot(f"03_tab_{i + 1}_{slug(title)}", f"the {title} tab")
        if title in press:
            button = d.app().locator("button.widget-button:visible", has_text=re.compile(rf"^\s*{re.escape(title)}\s*$"))
            t0 = d.page.evaluate(_WATCH_JS)
            button.first.click()
            st = d.wait(f"the {title} button", lambda st: st["idle_since"] is not None and d.quiet(st))
            timings[f"{slug(title)}_press_s"] = round((st["idle_since"] - t0) / 1000.0, 3)
            d.shoot(f"04_tab_{i + 1}_{slug(title)}_pressed", f"the {title} tab after pressing {title}")
        if "phone" in title.lower() and d.app().locator(".widget-upload:visible").count():
            for j, photo in enumerate(phone, start=1):
                seconds = _upload(d, photo, named=False)
                timings["uploads"].append({"tab": title, "photo": photo.name, "bytes": photo.stat().st_size,
                                           "seconds": seconds})
                d.shoot(f"04_tab_{i + 1}_{slug(title)}_upload_{j}_{slug(photo.stem)}",
                        f"the {title} tab after uploading {photo.name}")
    return tabs


def run_ui_check(chromium: str | Path, *, notebooks: str | Path | None = None, notebook: str = "01_classify.ipynb",
                 out_dir: str | Path | None = None, photos: list[str | Path] | None = None,
                 phone_photos: list[str | Path] | None = None, root: str | Path | None = None,
                 python: str = sys.executable, timeout_s: float = 240.0, viewport: tuple[int, int] = (1400, 1000),
                 press: tuple[str, ...] = ("Gallery",)) -> UIReport:
    """Run ``notebook`` in JupyterLab in headless ``chromium``; screenshots and ``ui.json`` into ``out_dir``.

    ``notebooks`` (default: the project's) is copied to a temporary folder first; the kernel imports the
    ``amulet_lab`` of ``root`` (default: this checkout). ``photos`` are uploaded in the Classify tab and
    ``phone_photos`` in a Phone photo tab, if there is one (None: ``make_photos``). ``press`` names the buttons
    pressed on the tab of the same title. Stops JupyterLab and Chromium by their pids, also on failure.
    """
    from amulet_lab.bench.chromium import ChromiumProcess
    from amulet_lab.bench.jupyter import JupyterLabProcess
    from amulet_lab.config import PROJECT_ROOT

    root = Path(root).resolve() if root else PROJECT_ROOT
    notebooks = Path(notebooks).resolve() if notebooks else root / "notebooks"
    existing_file(notebooks / notebook, field="notebook")
    if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or not timeout_s > 0:
        raise ValidationError("timeout_s must be a number > 0", field="timeout_s", value=timeout_s)
    given = {"classify": _checked(photos, "photos"), "phone": _checked(phone_photos, "phone_photos")}
    sync_api = require_playwright()
    out = Path(out_dir).resolve() if out_dir else root / "reports" / "ui"
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.png")) + list(out.glob("ui.json")):
        old.unlink()  # a run shows only what it saw: no screenshot of a tab that is gone stays behind
    load_before = [round(x, 2) for x in os.getloadavg()]  # other work on the machine slows every figure below
    with tempfile.TemporaryDirectory(prefix="amulet-ui-photos-") as tmp, \
            JupyterLabProcess(notebooks, root=root, python=python) as lab, \
            ChromiumProcess(chromium, window=viewport) as browser_proc, sync_api.sync_playwright() as pw:
        made = make_photos(tmp, root / "data" / "samples") if None in given.values() else {}
        uploads = {k: v if v is not None else made[k] for k, v in given.items()}
        browser = pw.chromium.connect_over_cdp(browser_proc.ws_url)
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, device_scale_factor=1)
        page = context.new_page()
        page.set_default_timeout(timeout_s * 1000)
        d = _Driver(page, out, timeout_s, viewport)
        t_open = time.monotonic()
        page.goto(lab.lab_url(notebook))
        d.wait("the kernel", lambda st: st.get("ready") and st.get("kernel") == "idle")
        timings: dict[str, Any] = {"open_to_kernel_idle_s": round(time.monotonic() - t_open, 3)}

        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        t_run = time.monotonic()
        d.wait("the app to be drawn", lambda st: st.get("widget"))
        timings["run_all_to_widget_s"] = round(time.monotonic() - t_run, 3)
        d.wait("every cell to run", lambda st: st["kernel"] == "idle" and st["ran"] == st["code_cells"])
        timings["run_all_to_usable_s"] = round(time.monotonic() - t_run, 3)
        d.app().scroll_into_view_if_needed()
        d.shoot("00_page_after_run_all", "the page after Run All, as a 1400x1000 window shows it", page=True)
        d.shoot("01_app_after_run_all", "the app after Run All (the example classified)")

        timings["uploads"] = []
        for i, photo in enumerate(uploads["classify"], start=1):
            seconds = _upload(d, photo, named=True)
            timings["uploads"].append({"tab": "Classify", "photo": photo.name, "bytes": photo.stat().st_size,
                                       "seconds": seconds})
            d.shoot(f"02_upload_{i}_{slug(photo.stem)}", f"the Classify tab after uploading {photo.name}")
        tabs = _visit_tabs(d, press, uploads["phone"], timings)
        environment = {"chromium": browser.version, "viewport": list(viewport), "thai_font": bool(page.evaluate(_THAI_JS)),
                       "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
                       "cpus": os.cpu_count(),
                       "root": str(root), "notebooks": str(notebooks)}
        context.close()
        browser.close()
    report = UIReport(notebook, out, timings, tabs, d.shots, environment)
    atomic_write_text(out / "ui.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return report
