"""Thai text: the CSS font stack, and matplotlib's fallback with and without a Thai-capable font installed."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import pytest

from amulet_lab import fonts
from amulet_lab.bench import plots

THAI_ROWS = [("somdej", "สมเด็จ", 0.7), ("sivali", "สีวลี", 0.2)]


def _make_thai_font(path, family="Amulet Test Thai"):
    """A tiny TrueType font with a distinct (square) glyph for each Thai letter and for a few Latin ones."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    chars = [chr(c) for c in range(0x0E01, 0x0E5C)] + list("abcdefghijklmnopqrstuvwxyz0123456789%")
    names = [".notdef"] + [f"g{ord(c):04X}" for c in chars]
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(names)
    fb.setupCharacterMap({ord(c): f"g{ord(c):04X}" for c in chars})
    glyphs = {}
    for i, name in enumerate(names):
        pen = TTGlyphPen(None)
        size = 100 + i % 400  # each glyph different, as in a real font (not one box for a whole block)
        pen.moveTo((0, 0)), pen.lineTo((0, size)), pen.lineTo((size, size)), pen.lineTo((size, 0)), pen.closePath()
        glyphs[name] = pen.glyph()
    fb.setupGlyf(glyphs)
    fb.setupHorizontalMetrics({n: (600, 0) for n in names})
    fb.setupHorizontalHeader(ascent=800, descent=-200)
    fb.setupNameTable({"familyName": family, "styleName": "Regular"})
    fb.setupOS2()
    fb.setupPost()
    fb.save(str(path))
    return path


@pytest.fixture
def no_font_cache():
    fonts.thai_fonts.cache_clear()
    yield
    fonts.thai_fonts.cache_clear()


@pytest.fixture
def without_bundled(monkeypatch, no_font_cache):
    """As on a machine where the pip package with the bundled Thai font is missing (and matplotlib never saw it)."""
    from matplotlib import font_manager

    bundled = str(fonts.bundled_thai_font())
    monkeypatch.setattr(fonts, "bundled_thai_font", lambda: None)
    monkeypatch.setattr(font_manager.fontManager, "ttflist",
                        [e for e in font_manager.fontManager.ttflist if e.fname != bundled])


def test_css_stack_and_thai_html():
    assert fonts.has_thai("พระสีวลี") and not fonts.has_thai("Phra Sivali")
    for name in ("Noto Sans Thai", "Leelawadee UI", "Tahoma", "Thonburi", "Garuda", "Loma"):
        assert f"'{name}'" in fonts.THAI_CSS_FONT_STACK  # Linux, Windows and macOS each have one of these
    assert fonts.THAI_CSS_FONT_STACK.endswith("sans-serif")
    out = fonts.thai_html("พระ <x>", tag="div", style="font-size:1.3em")
    assert out.startswith("<div lang='th'") and "&lt;x&gt;" in out and "font-size:1.3em" in out


def test_without_any_thai_font_figures_say_so(without_bundled):
    """Here (no Thai font; ``fc-list :lang=th`` is empty), without the bundled one, figures label bars by key."""
    if shutil.which("fc-list"):
        listed = subprocess.run(["fc-list", ":lang=th"], capture_output=True, text=True).stdout.strip()
        if listed:
            pytest.skip(f"this machine has a Thai font: {listed.splitlines()[0]}")
    # matplotlib ships a "Last Resort" font that claims every code point with one box glyph: not a Thai font.
    assert fonts.thai_fonts() == ()
    assert fonts.figure_text("สมเด็จ", "somdej") == "somdej" and fonts.figure_text("Somdej", "x") == "Somdej"
    assert "No Thai-capable font" in fonts.thai_font_note() and "fonts-noto-core" in fonts.thai_font_note()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "Glyph ... missing from font(s)" warning would fail here
        fig = plots.topk_figure(THAI_ROWS)
        plots.figure_to_png(fig)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["somdej", "sivali"]


def test_an_installed_thai_font_is_the_fallback(tmp_path, monkeypatch, without_bundled):
    from matplotlib import font_manager

    path = _make_thai_font(tmp_path / "AmuletTestThai.ttf")
    monkeypatch.setattr(font_manager.fontManager, "ttflist", list(font_manager.fontManager.ttflist))
    font_manager.fontManager.addfont(str(path))
    assert fonts.thai_fonts() == ("Amulet Test Thai",)
    family = fonts.font_family_with_thai()
    assert family[0] == "DejaVu Sans" and family[-1] == "Amulet Test Thai"
    assert "Amulet Test Thai" in fonts.thai_font_note()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every Thai glyph is found through the fallback: no missing-glyph warning
        fig = plots.topk_figure(THAI_ROWS)
        plots.figure_to_png(fig)
    labels = fig.axes[0].get_yticklabels()
    assert [t.get_text() for t in labels] == ["สมเด็จ", "สีวลี"]
    assert list(labels[0].get_fontfamily()) == family


def test_the_bundled_font_draws_thai_in_figures_and_pages(no_font_cache):
    """Noto Sans Thai from the pip package: matplotlib falls back to it; the page gets a subset of a few KB."""
    import base64
    import io
    import re

    from fontTools.ttLib import TTFont

    assert fonts.bundled_thai_font() is not None and fonts.bundled_thai_font().is_file()
    assert "Noto Sans Thai" in fonts.thai_fonts()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "Glyph ... missing from font(s)" warning would fail here
        fig = plots.topk_figure(THAI_ROWS)
        plots.figure_to_png(fig)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["สมเด็จ", "สีวลี"]
    text = "พระสมเด็จ หลังรูปเหมือน"
    face = fonts.thai_font_face(text)
    assert face.startswith("<style>@font-face") and fonts.BUNDLED_THAI_FAMILY in face
    data = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)", face).group(1))
    assert len(data) < 30_000  # a subset, not the 219 KB variable font
    cmap = TTFont(io.BytesIO(data)).getBestCmap()
    assert all(ord(ch) in cmap for ch in text if fonts.has_thai(ch))
    assert fonts.thai_font_face("Phra Sivali") == ""
    assert fonts.THAI_CSS_FONT_STACK.startswith(f"'{fonts.BUNDLED_THAI_FAMILY}'")
