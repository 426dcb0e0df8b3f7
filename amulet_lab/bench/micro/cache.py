"""Cache speed: ``TTLCache`` against ``cachetools.TTLCache`` behind a lock; ``ImageCache`` hit against re-decoding.

Baselines, timed in the same run:
- ``cachetools.TTLCache`` with the same byte bound and sizer, guarded by a ``threading.Lock`` (what every
  threaded caller of cachetools must add). Hit: ``get`` of a present key. Set: keys cycle over twice the
  capacity, so most sets also evict. Target: at most 1.5x its time per operation.
- Decoding and preprocessing a 224x224 JPEG again (PIL decode, RGB, resize to 128, float32, normalised)
  against an ``ImageCache`` hit that includes hashing the JPEG bytes for the key. Target: >= 20x faster.
"""

from __future__ import annotations

import io
import itertools
import threading

from amulet_lab.bench.micro import MicroResult, Target, time_per_call
from amulet_lab.cache import ImageCache, TTLCache, sizeof

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _jpeg_224() -> bytes:
    """A 224x224 JPEG with some texture (a flat image would decode unrealistically fast)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:224, 0:224]
    pixels = np.stack([(x + y) % 256, (x * 2) % 256, (y * 3) % 256], axis=-1).astype(np.float32)
    pixels += rng.normal(0, 20, pixels.shape)
    buf = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _preprocess(data: bytes):  # -> np.ndarray
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB").resize((128, 128), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.float32) / 255.0
    return (array - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)


def run(quick: bool = False) -> MicroResult:
    """Time cache hits and sets against cachetools, and an image-cache hit against decode + preprocess."""
    import cachetools

    number = 2_000 if quick else 100_000
    repeat = 3 if quick else 7
    value = b"v" * 1024
    capacity = 1000 * 1024
    ours = TTLCache(capacity, None, 3600.0)
    theirs = cachetools.TTLCache(capacity, 3600.0, getsizeof=sizeof)
    lock = threading.Lock()
    for k in range(1000):
        ours.set(k, value)
        with lock:
            theirs[k] = value

    def ours_hit() -> None:
        ours.get(500)

    def theirs_hit() -> None:
        with lock:
            theirs.get(500)

    ours_keys = itertools.cycle(range(2000))
    their_keys = itertools.cycle(range(2000))

    def ours_set() -> None:
        ours.set(next(ours_keys), value)

    def theirs_set() -> None:
        with lock:
            theirs[next(their_keys)] = value

    times = {
        "ttlcache_hit_s": time_per_call(ours_hit, number=number, repeat=repeat),
        "cachetools_locked_hit_s": time_per_call(theirs_hit, number=number, repeat=repeat),
        "ttlcache_set_s": time_per_call(ours_set, number=number, repeat=repeat),
        "cachetools_locked_set_s": time_per_call(theirs_set, number=number, repeat=repeat),
    }


    data = _jpeg_224()
    images = ImageCache(max_items=100, ttl=3600.0)
    transform = "rgb128-imagenet"
    images.put(images.key_for(data, transform), _preprocess(data))
    key = images.key_for(data, transform)

    def image_hit() -> None:
        images.get_image(images.key_for(data, transform))

    def image_get_only() -> None:
        images.get_image(key)

    image_number = 200 if quick else 5_000
    times["image_cache_hit_s"] = time_per_call(image_hit, number=image_number, repeat=repeat)
    times["image_cache_get_known_key_s"] = time_per_call(image_get_only, number=image_number, repeat=repeat)
    times["decode_preprocess_s"] = time_per_call(lambda: _preprocess(data), number=max(20, image_number // 50),
                                                 repeat=repeat)
    ratios = {
        "hit_vs_cachetools": times["ttlcache_hit_s"] / times["cachetools_locked_hit_s"],
        "set_vs_cachetools": times["ttlcache_set_s"] / times["cachetools_locked_set_s"],
        "image_hit_speedup": times["decode_preprocess_s"] / times["image_cache_hit_s"],
    }
    return MicroResult(
        name="cache",
        figures={**times, "jpeg_bytes": float(len(data))},
        ratios=ratios,
        targets={
            "hit_vs_cachetools": Target("<=", 1.5),
            "set_vs_cachetools": Target("<=", 1.5),
            "image_hit_speedup": Target(">=", 20.0),
        },
        notes="seconds per op; image hit includes BLAKE2b of the JPEG bytes for the key",
    )
