"""Peak memory and time of ``process_large_image`` against a full decode + resize of a 6000x4000 JPEG.

Each measurement runs in a fresh subprocess: the figure is the peak RSS (Linux ``VmHWM``; ``ru_maxrss``
elsewhere) minus the RSS just before the decode (after imports), so Pillow's C buffers count
(tracemalloc would not see them). ``ru_maxrss`` is not used on Linux: a child inherits its parent's.
Targets: at most 0.3x the full decode's peak growth, and faster.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from amulet_lab.bench.micro import MicroResult, Target

__all__ = ["run", "make_test_jpeg", "measure_decode", "QUICK_SIZE"]

#: Image size of ``--quick`` runs.
QUICK_SIZE = (2400, 1600)

_SCRIPT = r"""
import json, resource, sys, time
import psutil
from PIL import Image
from amulet_lab.memory import StreamingHandler

mode, path, max_side = sys.argv[1], sys.argv[2], int(sys.argv[3])
handler = StreamingHandler()
baseline = psutil.Process().memory_info().rss
start = time.perf_counter()
if mode == "ours":
    image = handler.process_large_image(path, max_side=max_side)
else:  # the naive way: decode everything, then resize
    image = Image.open(path)
    image.load()
    if image.mode != "RGB":
        image = image.convert("RGB")
    scale = max_side / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
elapsed = time.perf_counter() - start
try:  # VmHWM: peak RSS of this process image; ru_maxrss would include the parent's RSS at fork
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
except FileNotFoundError:  # not Linux: ru_maxrss (bytes on macOS)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline": baseline, "peak": peak, "elapsed": elapsed, "size": list(image.size),
                  "mode": image.mode}))
"""


def make_test_jpeg(path: str | Path, size: tuple[int, int] = (6000, 4000), *, quality: int = 90, seed: int = 0) -> Path:
    """Write a photo-like JPEG (smooth colour fields plus grain) of ``size`` to ``path``; returns the path."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (max(2, size[1] // 100), max(2, size[0] // 100), 3), dtype=np.uint8))
    image = small.resize(size, Image.Resampling.BICUBIC)
    # sensor-like grain (made at half size: effect_noise is slow) keeps the file photo-sized
    grain = Image.effect_noise((max(1, size[0] // 2), max(1, size[1] // 2)), 12).resize(size, Image.Resampling.NEAREST)
    grain = grain.convert("RGB")
    image = Image.blend(image, grain, 0.15)
    target = Path(path)
    image.save(target, "JPEG", quality=quality)
    return target


def measure_decode(path: str | Path, mode: str, max_side: int = 1024) -> dict[str, Any]:
    """Decode ``path`` in a fresh interpreter (``mode`` "ours" or "full"); peak RSS growth and time."""
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode, str(path), str(max_side)], capture_output=True,
                         text=True, check=True, timeout=120)
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    facts["peak_delta_mb"] = max(0, facts["peak"] - facts["baseline"]) / 2**20
    facts["peak_mb"] = facts["peak"] / 2**20
    return facts


def run(quick: bool = False) -> MicroResult:
    """Peak RSS growth and time of process_large_image vs full decode + resize, fresh subprocess each."""
    # quick: still larger than the default max_side (1024), so the draft() path is what is measured
    size = QUICK_SIZE if quick else (6000, 4000)
    repeat = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        path = make_test_jpeg(Path(tmp) / "large.jpg", size)
        jpeg_mb = path.stat().st_size / 2**20
        runs = {mode: [measure_decode(path, mode) for _ in range(repeat)] for mode in ("ours", "full")}
    figures: dict[str, float] = {"jpeg_mb": jpeg_mb, "width": size[0], "height": size[1]}
    for mode, results in runs.items():
        figures[f"{mode}_peak_delta_mb"] = max(r["peak_delta_mb"] for r in results)
        figures[f"{mode}_peak_rss_mb"] = max(r["peak_mb"] for r in results)
        figures[f"{mode}_time_s"] = statistics.median(r["elapsed"] for r in results)
    ratios = {
        "peak_memory_vs_full": figures["ours_peak_delta_mb"] / max(figures["full_peak_delta_mb"], 1e-9),
        "time_vs_full": figures["ours_time_s"] / figures["full_time_s"],
    }
    return MicroResult(
        name="memory",
        figures=figures,
        ratios=ratios,
        targets={"peak_memory_vs_full": Target("<=", 0.3), "time_vs_full": Target("<=", 1.0)},
        notes=f"{size[0]}x{size[1]} JPEG to max_side 1024; peak = VmHWM - RSS before decode, fresh process each; "
              f"time median of {repeat}",
    )
