"""Thai text that renders as letters, not boxes: a CSS font stack for HTML and a matplotlib font fallback.

HTML: ``thai_html(text)`` wraps Thai names in ``<span lang="th">`` with ``THAI_CSS_FONT_STACK``, a list of
Thai-capable fonts shipped with Windows (Leelawadee UI, Tahoma), macOS (Thonburi, Sukhumvit Set) and Linux
(Noto Sans Thai, the TLWG fonts Garuda, Loma, ...). The browser takes the first one it has; where it has none
of them (nor any other Thai font it falls back to) the names still show as boxes: that is the browser's
machine, not ours, and the English name beside the Thai one stays readable.

matplotlib: ``thai_fonts()`` lists the installed fonts (as matplotlib's font manager knows them) that hold Thai
letters, and ``font_family_with_thai()`` appends them to the default families, so matplotlib (3.6+, per glyph)
falls back to them for Thai. Where none is installed, ``figure_text`` replaces Thai text in a figure by the
given fallback (the English name) rather than drawing boxes, and ``thai_font_note()`` says how to get one
(``apt-get install fonts-noto-core`` or ``fonts-thai-tlwg``, then delete matplotlib's font cache).

Bundled font: Noto Sans Thai (SIL OFL 1.1) from the pip package ``fontpkg-noto-sans-thai``, a requirement, so
no machine depends on its own fonts. ``bundled_thai_font()`` is its file; ``thai_fonts()`` registers it with
matplotlib first; ``thai_font_face(text)`` is a ``<style>`` with an ``@font-face`` of it, subset (fontTools,
which matplotlib installs) to the characters of ``text`` and inlined as a data URL of a few KB, that the notebook
app puts once at its top: the browser then draws the Thai names with it whatever fonts its machine has.
"""

from __future__ import annotations

import functools
import html
import logging
from typing import Any

__all__ = [
    "THAI_CSS_FONT_STACK",
    "KNOWN_THAI_FONTS",
    "has_thai",
    "thai_html",
    "thai_fonts",
    "font_family_with_thai",
    "figure_text",
    "thai_font_note",
    "bundled_thai_font",
    "thai_font_face",
    "BUNDLED_THAI_FAMILY",
]

log = logging.getLogger("amulet_lab.fonts")

#: The CSS family name of the bundled font's subset (``thai_font_face``): first in the stack.
BUNDLED_THAI_FAMILY = "amulet-lab Noto Sans Thai"
#: Font families known to hold Thai letters, in the order they are preferred.
KNOWN_THAI_FONTS: tuple[str, ...] = (
    BUNDLED_THAI_FAMILY, "Noto Sans Thai", "Noto Sans Thai UI", "Noto Serif Thai", "Noto Sans Thai Looped",
    "Leelawadee UI", "Leelawadee", "Tahoma", "Thonburi", "Sukhumvit Set", "Sarabun", "TH Sarabun New",
    "Garuda", "Loma", "Kinnari", "Norasi", "Umpush", "Waree", "Laksaman", "Sawasdee", "Tlwg Typo",
    "Arial Unicode MS",
)
#: CSS ``font-family`` value for Thai text: the known Thai fonts, then the generic family.
THAI_CSS_FONT_STACK: str = ", ".join(f"'{name}'" for name in KNOWN_THAI_FONTS) + ", sans-serif"

_THAI_BLOCK = range(0x0E00, 0x0E80)
_THAI_PROBE = (0x0E01, 0x0E2A, 0x0E40)  # ก ส เ: a font with these holds the Thai letters


def has_thai(text: str) -> bool:
    """Whether ``text`` contains a character of the Thai block (U+0E00-U+0E7F)."""
    return any(ord(ch) in _THAI_BLOCK for ch in str(text))


def thai_html(text: str, *, tag: str = "span", style: str = "") -> str:
    """``text`` HTML-escaped in ``<span lang="th">`` (or ``tag``) with the Thai font stack."""
    return (f"<{tag} lang='th' style=\"font-family:{THAI_CSS_FONT_STACK};{style}\">"
            f"{html.escape(str(text))}</{tag}>")


def _covers_thai(path: str) -> bool:
    """Whether the font file at ``path`` maps the probe Thai letters to glyphs."""
    from matplotlib.ft2font import FT2Font

    try:
        charmap = FT2Font(path).get_charmap()
    except (OSError, RuntimeError, ValueError):
        return False
    glyphs = [charmap.get(code) for code in _THAI_PROBE]
    # A "last resort" font (matplotlib ships one) maps a whole block to one box glyph: distinct glyphs or nothing.
    return None not in glyphs and len(set(glyphs)) == len(glyphs)


@functools.lru_cache(maxsize=1)
def thai_fonts() -> tuple[str, ...]:
    """Installed font families (matplotlib's font manager) that hold Thai letters; empty when there are none.

    Fonts named like a Thai font are checked first; the others are checked only when none of those is found.
    The answer is cached for the process (``thai_fonts.cache_clear()`` after installing a font).
    """
    from matplotlib import font_manager

    bundled = bundled_thai_font()
    if bundled is not None and not any(e.fname == str(bundled) for e in font_manager.fontManager.ttflist):
        font_manager.fontManager.addfont(str(bundled))
    entries = list(font_manager.fontManager.ttflist)
    rank = {name.lower(): i for i, name in enumerate(KNOWN_THAI_FONTS)}

    def likely(entry: Any) -> bool:
        name = entry.name.lower()
        return name in rank or "thai" in name or "tlwg" in name

    found: dict[str, int] = {}
    for group in ([e for e in entries if likely(e)], [e for e in entries if not likely(e)]):
        for entry in group:
            if entry.name not in found and _covers_thai(entry.fname):
                found[entry.name] = rank.get(entry.name.lower(), len(rank))
        if found:
            break
    return tuple(sorted(found, key=lambda n: (found[n], n)))


def font_family_with_thai(base: list[str] | None = None) -> list[str]:
    """``base`` (default: matplotlib's ``font.family``, generic names resolved) followed by the Thai fonts."""
    import matplotlib

    if base is None:
        base = []
        for family in matplotlib.rcParams["font.family"]:
            key = f"font.{family}"
            base.extend(matplotlib.rcParams[key][:1] if key in matplotlib.rcParams else [family])
    return list(base) + [name for name in thai_fonts() if name not in base]


def figure_text(text: str, fallback: str) -> str:
    """``text`` for a matplotlib figure: itself when it has no Thai or a Thai font is installed, else ``fallback``."""
    if not has_thai(text) or thai_fonts():
        return str(text)
    _warn_once()
    return str(fallback)


@functools.lru_cache(maxsize=1)
def _warn_once() -> None:
    log.info(thai_font_note())


def thai_font_note() -> str:
    """One sentence: which Thai font figures use, or what happens without one and how to install one."""
    fonts = thai_fonts()
    if fonts:
        return f"Thai text in figures uses {fonts[0]}."
    return ("No Thai-capable font is installed for matplotlib: figures show the English names instead of the Thai "
            "ones (which would draw as boxes). Install one (e.g. apt-get install fonts-noto-core or fonts-thai-tlwg), "
            "then delete matplotlib's font cache (~/.cache/matplotlib) and restart the kernel.")


@functools.lru_cache(maxsize=1)
def bundled_thai_font() -> Any:
    """The bundled Noto Sans Thai file (a ``Path``), or None where the package ``fontpkg-noto-sans-thai`` is absent."""
    try:
        import fontpkg_noto_sans_thai as package
    except ImportError:
        log.info("fontpkg-noto-sans-thai is not installed: Thai text relies on the machine's own fonts")
        return None
    files = sorted((package.ROOT / "files").glob("*.ttf"))
    return files[0] if files else None


@functools.lru_cache(maxsize=8)
def thai_font_face(text: str) -> str:
    """A ``<style>`` with an ``@font-face`` of the bundled font subset to the characters of ``text`` (empty when the
    font is not installed or ``text`` has no Thai): put once in a page, it draws those Thai letters anywhere."""
    import base64
    import io

    path = bundled_thai_font()
    if path is None or not has_thai(text):
        return ""
    from fontTools import subset

    options = subset.Options()
    options.layout_features = ["*"]  # Thai marks stack through GPOS/GSUB: keep every feature
    options.flavor = None
    font = subset.load_font(str(path), options)
    if "fvar" in font:  # one regular instance: a fifth of the variable font's size (bold is synthesised)
        from fontTools.varLib import instancer

        instancer.instantiateVariableFont(font, {"wght": 400, "wdth": 100}, inplace=True)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text="".join(sorted(set(str(text)))))
    subsetter.subset(font)
    buffer = io.BytesIO()
    font.save(buffer)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f"<style>@font-face{{font-family:'{BUNDLED_THAI_FAMILY}';"
            f"src:url(data:font/ttf;base64,{data}) format('truetype');}}</style>")
