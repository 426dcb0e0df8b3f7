"""ImageCache: content keys (same bytes, two names: one key), transform ids, streaming, bounds, lazy global."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

import amulet_lab.cache as cache_module
import amulet_lab.files as files_module
from amulet_lab.cache import ImageCache, get_image_cache
from amulet_lab.errors import ValidationError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def jpeg(color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, "JPEG")
    return buf.getvalue()


def test_same_photo_under_two_names_hits_and_a_new_transform_misses(tmp_path):
    cache = ImageCache()
    data = jpeg()
    (tmp_path / "a.jpg").write_bytes(data)
    (tmp_path / "copy of a.jpg").write_bytes(data)
    key_a = cache.key_for(tmp_path / "a.jpg", "size224")
    key_b = cache.key_for(str(tmp_path / "copy of a.jpg"), "size224")
    assert key_a == key_b == cache.key_for(data, "size224")
    assert key_a.startswith(hashlib.sha256(data).hexdigest())
    cache.put(key_a, np.ones((3, 4), dtype=np.float32))
    assert cache.get_image(key_b) is not None
    assert cache.get_image(cache.key_for(data, "size128")) is None
    assert cache.key_for(jpeg((0, 0, 255)), "size224") != key_a
    s = cache.get_stats()
    assert (s["hits"], s["misses"], s["hit_rate"], s["size"], s["total_size_bytes"]) == (1, 1, 0.5, 1, 48)


def test_paths_are_streamed_in_chunks(tmp_path, monkeypatch):
    cache = ImageCache(chunk_size=1000)
    big = bytes(range(256)) * 40  # 10240 bytes
    path = tmp_path / "big.bin"
    path.write_bytes(big)
    reads = []

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def readinto(self, buffer):
            n = self.fh.readinto(buffer)
            reads.append(n)
            return n

    # key_for streams through amulet_lab.files.hash_stream: spy on the file it opens there.
    monkeypatch.setattr(files_module, "open", lambda *a, **k: Spy(open(*a, **k)), raising=False)
    assert cache.key_for(path) == hashlib.sha256(big).hexdigest()
    assert max(reads) <= 1000 and sum(reads) == len(big)  # whole file once, never more than a chunk at a time


def test_cache_image_returns_the_content_key():
    cache = ImageCache()
    data = jpeg()
    key = cache.cache_image(data, "user_image.jpg")
    assert key == cache.key_for(data) and cache.get_image(key) == data and key in cache
    with pytest.raises(ValidationError):
        cache.cache_image(b"", "empty.jpg")
    with pytest.raises(ValidationError):
        cache.key_for(12345)
    with pytest.raises(ValidationError) as err:
        cache.key_for("/no/such/file.jpg")
    assert err.value.code == "E_FILE_NOT_FOUND"


def test_bounds_and_ttl():
    clock = Clock()
    cache = ImageCache(3, 10.0, timer=clock)
    for i in range(5):
        cache.put(f"k{i}", b"x")
    assert len(cache) == 3 and cache.get_stats()["evictions"]["lru"] == 2
    clock.now += 10
    assert cache.get_image("k4") is None and len(cache) == 0


def test_shrink_and_get_or_compute():
    cache = ImageCache(max_items=10, ttl=60)
    for i in range(10):
        cache.put(f"k{i}", b"x")
    assert cache.shrink(0.3) == 3 and "k0" not in cache and "k3" in cache
    calls = []
    assert cache.get_or_compute("new", lambda: calls.append(1) or "v") == "v"
    assert cache.get_or_compute("new", lambda: calls.append(1) or "v") == "v"
    assert len(calls) == 1
    assert "ImageCache" in repr(cache) and "<table>" in cache._repr_html_()


def test_byte_bound():
    cache = ImageCache(max_items=100, ttl=60, max_bytes=100)
    cache.put("a", b"x" * 60)
    cache.put("b", b"x" * 60)  # 120 bytes > 100: the least recently used goes
    assert "a" not in cache and "b" in cache and cache.get_stats()["total_size_bytes"] == 60
    with pytest.raises(ValidationError) as err:
        cache.put("huge", b"x" * 101)
    assert err.value.code == "E_CACHE_VALUE_TOO_LARGE"


def test_module_instance_is_lazy_and_shared():
    cache_module._reset_image_cache()
    try:
        assert cache_module._image_cache is None  # nothing built at import
        assert cache_module.peek_image_cache() is None  # peeking never creates it
        assert cache_module._image_cache is None
        first = get_image_cache()
        assert cache_module.image_cache is first and get_image_cache() is first
        assert cache_module.peek_image_cache() is first
        assert first.get_stats()["max_size"] == 500
        with pytest.raises(AttributeError):
            cache_module.no_such_thing  # noqa: B018
    finally:
        cache_module._reset_image_cache()


def test_importing_builds_no_cache_and_reads_no_settings():
    import json
    import subprocess
    import sys

    code = """
import json
import amulet_lab.cache, amulet_lab.config, amulet_lab.perf
print(json.dumps({"image_cache": amulet_lab.cache._image_cache is None,
                  "settings": amulet_lab.config._cached is None}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"image_cache": True, "settings": True}
