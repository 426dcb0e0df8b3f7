"""Micro-benchmark ``pipeline``: the classifier's image pipeline against the code a user would write, in one run.

1. batched: ``AmuletClassifier.predict_batch`` (reduced-scale JPEG decode in a bounded pool, overlapped
   with batched forward passes) against the loop a user would write: a full decode, then one ``predict``
   per photo, over the same 2000x1500 JPEGs; ratio = loop time / batched time (target >= 3);
2. draft: ``images.decode(..., target_size)`` + resize of a 4000x3000 JPEG against a full decode and
   resize (target >= 4);
3. prediction cache: a repeated 2000x1500 JPEG given as bytes (the SHA-256 of its bytes is paid every
   call) against a new photo (target >= 30), and a repeated path (a ``stat``) against a new one
   (target >= 100). For comparison, what an input cache (the earlier design: decoded input kept, forward
   pass run again) would give: ``new / (infer + postprocess)``; that is why the classifier caches answers.
Both sides use one torch thread. The model is the bundled default checkpoint when present, else an
untrained model of its shape (same cost).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from amulet_lab.bench.micro import MicroResult, Target, one_torch_thread, time_per_call

__all__ = ["run"]


def _photo(width: int, height: int, seed: int) -> bytes:
    """A phone-like JPEG: smooth shading, an object, sensor noise (compresses like a photo, not like flat colour)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    yy, xx = np.ogrid[:height, :width]
    disc = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2) < (0.3 * min(width, height)) ** 2
    img[disc] = img[disc] // 2 + 90
    img += rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _classifier():
    from amulet_lab.images import PreprocessSpec
    from amulet_lab.model import (AmuletClassifier, PredictionCache, build_model, default_checkpoint_path,
                                  load_checkpoint, make_checkpoint)
    from amulet_lab.model.checkpoint import project_labels
    from amulet_lab.perf import PerformanceMonitor

    path = default_checkpoint_path()
    if path.is_file():
        ck = load_checkpoint(path)
    else:
        # The bundled model's shape (an untrained one: the cost is under test, not the answers).
        from amulet_lab.model.train import BUNDLED_CONFIG as cfg

        spec = PreprocessSpec(cfg["img_size"])
        kwargs = {"mean": list(spec.mean), "std": list(spec.std), "cnn_size": cfg["cnn_size"]}
        ck = make_checkpoint(build_model(cfg["arch"], 6, **kwargs), arch=cfg["arch"], arch_kwargs=kwargs,
                             labels=project_labels(), spec=spec)
    cached = AmuletClassifier(ck, cache=PredictionCache(), monitor=PerformanceMonitor())
    plain = AmuletClassifier(ck, cache=False, monitor=PerformanceMonitor())
    return cached, plain


def run(quick: bool = False) -> MicroResult:
    """Run the comparisons; ``quick`` uses fewer and smaller images (shape checks in tests)."""
    with one_torch_thread():  # for both sides
        return _run(quick)


def _run(quick: bool) -> MicroResult:
    from PIL import Image

    from amulet_lab.images import decode, resize_square

    cached, plain = _classifier()
    size = plain.spec.size
    n_images = 6 if quick else 32
    w, h = (800, 600) if quick else (2000, 1500)
    repeat = 1 if quick else 3
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="amulet-bench-") as tmp:
        paths = []
        for i in range(n_images):
            p = Path(tmp) / f"photo_{i}.jpg"
            p.write_bytes(_photo(w, h, i))
            paths.append(p)

        def naive() -> None:  # what a user writes: open each photo in full, then classify it
            for p in paths:
                with Image.open(p) as img:
                    plain.predict(img.convert("RGB"))

        def batched() -> None:
            plain.predict_batch(paths, batch_size=16)

        batched()  # warm the pool and the allocator
        t_naive = time_per_call(naive, number=1, repeat=repeat)
        t_batched = time_per_call(batched, number=1, repeat=repeat)
        figures["batched_images_per_s"] = n_images / t_batched
        figures["naive_images_per_s"] = n_images / t_naive

        # 2. draft decode of a 4000x3000 JPEG
        big = _photo(*((1600, 1200) if quick else (4000, 3000)), seed=99)

        def full() -> None:
            Image.open(io.BytesIO(big)).convert("RGB").resize((size, size))

        def draft() -> None:
            resize_square(decode(big, target_size=size), size)

        t_full = time_per_call(full, number=1, repeat=repeat + 2)
        t_draft = time_per_call(draft, number=1, repeat=repeat + 2)
        figures["full_decode_resize_ms"] = t_full * 1000
        figures["draft_decode_resize_ms"] = t_draft * 1000

        # 3. a repeated phone photo through the prediction cache, as bytes and as a path
        photo = paths[0]
        raw = photo.read_bytes()
        figures["photo_mb"] = len(raw) / 2**20
        n = 3 if quick else 30
        t_new = time_per_call(lambda: plain.predict(raw), number=max(1, n // 6), repeat=repeat)
        cached.predict(raw)  # first call fills the cache
        t_hit_bytes = time_per_call(lambda: cached.predict(raw), number=n, repeat=repeat)
        t_new_path = time_per_call(lambda: plain.predict(photo), number=max(1, n // 6), repeat=repeat)
        cached.predict(photo)
        t_hit_path = time_per_call(lambda: cached.predict(photo), number=n * 10, repeat=repeat)
        x = plain.preprocess([plain.decode(raw)])
        t_input_cached = time_per_call(lambda: plain.postprocess(plain.infer(x)[0]), number=n, repeat=repeat)
        figures.update(new_photo_bytes_ms=t_new * 1000, repeated_bytes_ms=t_hit_bytes * 1000,
                       new_photo_path_ms=t_new_path * 1000, repeated_path_ms=t_hit_path * 1000,
                       input_cache_would_cost_ms=t_input_cached * 1000)
    ratios = {
        "batched_vs_naive": t_naive / t_batched,
        "draft_vs_full_decode": t_full / t_draft,
        "repeated_vs_new_bytes": t_new / t_hit_bytes,
        "repeated_vs_new_path": t_new_path / t_hit_path,
        "input_cache_vs_new": t_new / t_input_cached,
    }
    targets = {
        "batched_vs_naive": Target(">=", 3.0),
        "draft_vs_full_decode": Target(">=", 4.0),
        "repeated_vs_new_bytes": Target(">=", 30.0),
        "repeated_vs_new_path": Target(">=", 100.0),
    }
    notes = (f"1 torch thread; model input {size} px, {n_images} JPEGs of {w}x{h}; naive = full decode + predict per "
             "photo; repeated = answered by the prediction cache (bytes: SHA-256 included); input_cache_vs_new = "
             "what caching decoded inputs instead would give")
    return MicroResult("pipeline", figures, ratios, targets, notes)
