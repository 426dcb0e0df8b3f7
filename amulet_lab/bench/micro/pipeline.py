"""Micro-benchmark ``pipeline``: the classifier's image pipeline against naive code, in one run.

1. batched: ``AmuletClassifier.predict_batch`` (reduced-scale JPEG decode in a thread pool, batched
   forward under ``inference_mode``) against a naive loop (open, convert, resize, tensor, forward, one
   image at a time) over the same phone-sized JPEGs; ratio = naive time / batched time (target >= 3);
2. draft: ``images.decode(..., target_size)`` + resize of a 4000x3000 JPEG against a full decode and
   resize (target >= 4);
3. cache: a repeated image file's way to model input through the image cache against uncached
   (validate, decode, preprocess every time) (target >= 20); the same for bytes input (the content hash
   is paid every call) and whole ``predict`` figures (the forward pass runs either way) are given too.
The model is the bundled default checkpoint when present, else an untrained ``ensemble`` (same cost).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from amulet_lab.bench.micro import MicroResult, Target, time_per_call

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
    from amulet_lab.cache import ImageCache
    from amulet_lab.config import load_settings
    from amulet_lab.images import PreprocessSpec
    from amulet_lab.model import AmuletClassifier, build_model, default_checkpoint_path, load_checkpoint, make_checkpoint
    from amulet_lab.model.checkpoint import project_labels
    from amulet_lab.perf import PerformanceMonitor

    settings = load_settings({}, dotenv=None)
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
    cached = AmuletClassifier(ck, settings=settings, cache=ImageCache(settings=settings), monitor=PerformanceMonitor())
    plain = AmuletClassifier(ck, settings=settings, cache=False, monitor=PerformanceMonitor())
    return cached, plain


def run(quick: bool = False) -> MicroResult:
    """Run the three comparisons; ``quick`` uses fewer and smaller images (shape checks in tests)."""
    import numpy as np
    import torch
    from PIL import Image

    from amulet_lab.images import decode, resize_square

    previous_threads = torch.get_num_threads()
    # One torch thread for both sides: on a shared 2-core machine two OpenMP threads waiting on each other
    # make a small forward pass 10-100x slower at random, which would drown the ratios in noise.
    torch.set_num_threads(1)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(previous_threads)


def _run(quick: bool) -> MicroResult:
    import numpy as np
    import torch
    from PIL import Image

    from amulet_lab.images import decode, resize_square

    cached, plain = _classifier()
    size = plain.spec.size
    model = plain.model
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
        mean = torch.tensor(plain.spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(plain.spec.std).view(1, 3, 1, 1)

        def naive() -> None:
            for p in paths:
                img = Image.open(p).convert("RGB").resize((size, size))
                x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).unsqueeze(0).float() / 255.0
                with torch.no_grad():
                    model((x - mean) / std)

        def batched() -> None:
            plain.predict_batch(paths, batch_size=16)

        batched()  # warm the thread pool and the allocator
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

        # 3. a repeated phone photo through the cache
        photo = Path(tmp) / "repeat.jpg"
        photo.write_bytes(_photo(*((1200, 900) if quick else (3000, 2250)), seed=7))
        cached.predict(photo)  # first call fills the cache
        n = 3 if quick else 20
        t_hit = time_per_call(lambda: cached._prepare(photo), number=n, repeat=repeat)
        t_miss = time_per_call(lambda: plain._prepare(photo), number=max(1, n // 4), repeat=repeat)
        figures["input_cached_ms"] = t_hit * 1000
        figures["input_uncached_ms"] = t_miss * 1000
        raw = photo.read_bytes()  # uploads arrive as bytes: the content hash is paid on every call
        cached._prepare(raw)
        figures["input_cached_bytes_ms"] = time_per_call(lambda: cached._prepare(raw), number=n, repeat=repeat) * 1000
        figures["predict_cached_ms"] = time_per_call(lambda: cached.predict(photo), number=n, repeat=repeat) * 1000
        figures["predict_uncached_ms"] = time_per_call(lambda: plain.predict(photo), number=max(1, n // 4), repeat=repeat) * 1000
    ratios = {
        "batched_vs_naive": t_naive / t_batched,
        "draft_vs_full_decode": t_full / t_draft,
        "cached_vs_uncached_input": t_miss / t_hit,
        "cached_vs_uncached_input_bytes": t_miss / (figures["input_cached_bytes_ms"] / 1000),
        "cached_vs_uncached_predict": figures["predict_uncached_ms"] / figures["predict_cached_ms"],
    }
    targets = {
        "batched_vs_naive": Target(">=", 3.0),
        "draft_vs_full_decode": Target(">=", 4.0),
        "cached_vs_uncached_input": Target(">=", 20.0),
    }
    notes = (f"1 torch thread; model input {size} px, {n_images} JPEGs of {w}x{h}; cache ratio is the image's way to model input "
             "(the forward pass runs either way; the predict ratio includes it)")
    return MicroResult("pipeline", figures, ratios, targets, notes)
