"""validate_image refuses hostile or broken input with its own code at every step; file names are made safe."""

from __future__ import annotations

import hashlib
import io
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from amulet_lab.errors import SecurityError, ValidationError
from amulet_lab.config import load_settings
from amulet_lab.security import ImageLimits, ValidatedImage, generated_name, safe_filename, sniff_format, validate_image


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _photo(width: int = 60, height: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and a well-formed IHDR (correct CRC) claiming a size, with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def _refusal(data, limits, **kwargs):
    with pytest.raises((ValidationError, SecurityError)) as info:
        validate_image(data, limits=limits, **kwargs)
    return info.value


# ------------------------------------------------------------------------------------------ accepted inputs

def test_jpeg_bytes_path_and_file_object_agree(tmp_path, limits):
    data = _encode(_photo(), "JPEG", quality=90)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    results = [validate_image(data, limits=limits), validate_image(path, limits=limits),
               validate_image(str(path), limits=limits), validate_image(io.BytesIO(data), limits=limits)]
    for result in results:
        assert isinstance(result, ValidatedImage)
        assert (result.format, result.width, result.height, result.nbytes) == ("JPEG", 60, 40, len(data))
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert result.image.mode == "RGB" and result.image.size == (60, 40)
    assert np.array_equal(np.asarray(results[0].image), np.asarray(results[1].image))
    assert "JPEG 60x40" in repr(results[0])


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_png_and_webp_are_accepted(limits, fmt):
    result = validate_image(_encode(_photo(), fmt, **({"lossless": True} if fmt == "WEBP" else {})), limits=limits)
    assert result.format == fmt and result.image.size == (60, 40)
    assert np.array_equal(np.asarray(result.image), np.asarray(_photo()))


def test_heic_is_accepted(limits):
    pillow_heif = pytest.importorskip("pillow_heif")
    buffer = io.BytesIO()
    pillow_heif.from_pillow(_photo(64, 48)).save(buffer, quality=90)
    result = validate_image(buffer.getvalue(), filename="IMG_0001.HEIC", limits=limits)
    assert result.format == "HEIF" and (result.width, result.height) == (64, 48)
    assert result.image.mode == "RGB"


def test_the_name_is_not_trusted_content_decides(tmp_path, limits):
    path = tmp_path / "actually_a_png.jpg"
    path.write_bytes(_encode(_photo(), "PNG"))
    assert validate_image(path, limits=limits).format == "PNG"


def test_cmyk_jpeg_becomes_rgb(limits):
    red = Image.new("CMYK", (32, 32), (0, 255, 255, 0))
    result = validate_image(_encode(red, "JPEG", quality=95), limits=limits)
    r, g, b = result.image.getpixel((16, 16))
    assert result.image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_palette_png_with_transparency_is_composited_on_white(limits):
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    for x in range(5):
        for y in range(10):
            image.putpixel((x, y), 0)
    result = validate_image(_encode(image, "PNG", transparency=0), limits=limits)
    assert result.image.getpixel((1, 1)) == (255, 255, 255)  # transparent index: white, not black
    assert result.image.getpixel((8, 8)) == (255, 0, 0)


def test_rgba_and_la_are_composited_on_white(limits):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = validate_image(_encode(rgba, "PNG"), limits=limits).image
    assert out.getpixel((3, 3)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 255)
    la = Image.new("LA", (4, 4), (0, 128))
    grey = validate_image(_encode(la, "PNG"), limits=limits).image.getpixel((0, 0))
    assert grey[0] == grey[1] == grey[2] and 120 <= grey[0] <= 135


def test_sixteen_bit_png_is_scaled_not_clipped(limits):
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    data = _encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(validate_image(data, limits=limits).image)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_exif_rotated_jpeg_comes_out_upright(limits):
    # Stored sideways: 40 wide, 20 high, left half red; orientation 6 means "turn 90 degrees clockwise to view".
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    result = validate_image(_encode(stored, "JPEG", quality=95, exif=exif.tobytes()), limits=limits)
    assert (result.width, result.height) == (20, 40)
    top, bottom = result.image.getpixel((10, 5)), result.image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_multi_picture_jpeg_from_a_phone_is_accepted(limits):
    # Phones write MPO: a JPEG followed by more JPEGs. The trailer is images, not a foreign file.
    first, second = Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (64, 48), (10, 10, 200))
    data = _encode(first, "MPO", save_all=True, append_images=[second])
    result = validate_image(data, limits=limits)
    assert result.format == "JPEG" and result.image.getpixel((5, 5))[0] > 180


def test_trailing_bytes_without_another_file_are_tolerated(limits):
    data = _encode(_photo(), "JPEG") + b"\x00" * 16 + b"SEFHtrailer"
    assert validate_image(data, limits=limits).format == "JPEG"


# ------------------------------------------------------------------------------------------ refusals

def test_text_file_named_jpg(tmp_path, limits):
    path = tmp_path / "holiday.jpg"
    path.write_text("just some text, not an image\n")
    error = _refusal(path, limits)
    assert isinstance(error, ValidationError) and error.code == "E_IMAGE_SIGNATURE"
    assert error.context["value"] == "holiday.jpg"


@pytest.mark.parametrize("kind", ["bytes", "path", "file"])
def test_zero_bytes(tmp_path, limits, kind):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    data = {"bytes": b"", "path": path, "file": io.BytesIO(b"")}[kind]
    assert _refusal(data, limits).code == "E_IMAGE_EMPTY"


def test_jpeg_with_a_zip_appended_is_a_polyglot(limits):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("payload.txt", "hidden")
    error = _refusal(_encode(_photo(), "JPEG") + archive.getvalue(), limits)
    assert isinstance(error, SecurityError) and error.code == "E_IMAGE_POLYGLOT"
    assert error.severity == "high"


def test_png_with_html_appended_is_a_polyglot(limits):
    error = _refusal(_encode(_photo(), "PNG") + b"<html><body>hi</body></html>", limits)
    assert isinstance(error, SecurityError) and error.code == "E_IMAGE_POLYGLOT"


def test_jpeg_with_script_in_its_comment_is_a_polyglot(limits):
    data = _encode(_photo(), "JPEG", comment=b"*/=1;<SCRIPT>alert(1)</script>/*")
    assert Image.open(io.BytesIO(data)).info.get("comment")  # the comment really is inside the image
    assert _refusal(data, limits).code == "E_IMAGE_POLYGLOT"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(limits, fmt):
    data = _encode(_photo(200, 150), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    error = _refusal(data[: len(data) // 2], limits)
    assert isinstance(error, ValidationError) and error.code == "E_IMAGE_TRUNCATED"


def test_truncated_webp(limits):
    data = _encode(_photo(200, 150), "WEBP")
    assert _refusal(data[: len(data) // 2], limits).code == "E_IMAGE_TRUNCATED"


def test_png_header_claiming_20000_by_20000_is_a_bomb(limits):
    data = _png_header_only(20000, 20000)
    assert len(data) < 100
    error = _refusal(data, limits)
    assert isinstance(error, SecurityError) and error.code == "E_IMAGE_BOMB"


def test_pixel_limit_is_stricter_than_pillows(limits):
    # 8000 x 7000 = 56 M pixels: under Pillow's own error threshold, over ours (50 M); refused before decoding.
    error = _refusal(_png_header_only(8000, 7000), limits)
    assert error.code == "E_IMAGE_BOMB" and error.context["width"] == 8000
    small = replace(limits, max_image_pixels=1000)
    assert _refusal(_encode(_photo(40, 40), "PNG"), small).code == "E_IMAGE_BOMB"


def test_side_limit(limits):
    assert _refusal(_png_header_only(13000, 10), limits).code == "E_IMAGE_DIMENSIONS"
    narrow = replace(limits, max_image_side=50)
    assert _refusal(_encode(_photo(60, 40), "PNG"), narrow).code == "E_IMAGE_DIMENSIONS"


def test_byte_cap_on_a_path_is_checked_with_stat(tmp_path, limits):
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as handle:  # sparse: 50 GB claimed, nothing written; reading it would take minutes
        handle.truncate(50 * 1024**3)
    error = _refusal(huge, limits)
    assert error.code == "E_IMAGE_TOO_LARGE" and error.context["nbytes"] == 50 * 1024**3


def test_byte_cap_on_a_file_object_reads_at_most_cap_plus_one(limits):
    class Endless(io.RawIOBase):
        def __init__(self):
            self.asked: list[int] = []

        def read(self, size=-1):
            self.asked.append(size)
            return b"\xff" * (size if size >= 0 else 10**9)

    stream = Endless()
    small = replace(limits, max_upload_bytes=1000)
    assert _refusal(stream, small).code == "E_IMAGE_TOO_LARGE"
    assert stream.asked == [1001]
    data = _encode(_photo(), "JPEG")
    assert _refusal(data, replace(limits, max_upload_bytes=len(data) - 1)).code == "E_IMAGE_TOO_LARGE"
    assert validate_image(data, limits=replace(limits, max_upload_bytes=len(data))).nbytes == len(data)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_formats_outside_the_allow_list(limits, fmt):
    assert _refusal(_encode(_photo(), fmt), limits).code == "E_IMAGE_SIGNATURE"


def test_fake_webp_and_avif_brands_are_refused(limits):
    wave = b"RIFF" + struct.pack("<I", 100) + b"WAVEfmt " + b"\x00" * 92
    assert _refusal(wave, limits).code == "E_IMAGE_SIGNATURE"
    avif = struct.pack(">I", 24) + b"ftypavif" + b"\x00\x00\x00\x00" + b"mif1miaf"
    assert sniff_format(avif) is None
    heic = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    assert sniff_format(heic) == "HEIF"


def test_magic_bytes_then_garbage_do_not_decode(limits):
    error = _refusal(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, limits)
    assert error.code in ("E_IMAGE_DECODE", "E_IMAGE_TRUNCATED")
    broken_png = _png_header_only(10, 10)[:-12] + _png_chunk(b"IDAT", b"not zlib data") + _png_chunk(b"IEND", b"")
    assert _refusal(broken_png, limits).code == "E_IMAGE_DECODE"


def test_missing_path_directory_and_wrong_type(tmp_path, limits):
    assert _refusal(tmp_path / "absent.jpg", limits).code == "E_IMAGE_NOT_FOUND"
    assert _refusal(tmp_path, limits).code == "E_IMAGE_NOT_FOUND"
    assert _refusal(12345, limits).code == "E_IMAGE_INPUT"
    assert _refusal(io.StringIO("text"), limits).code == "E_IMAGE_INPUT"


def test_refusal_context_holds_a_safe_filename(limits):
    error = _refusal(b"hello", limits, filename="../../etc/\x00passwd.jpg")
    assert error.context["value"] == "passwd.jpg"
    assert error.to_dict()["code"] == "E_IMAGE_SIGNATURE"


def test_validate_image_reads_no_settings(monkeypatch):
    """The decoder takes its limits as a value: the environment changes nothing below the edges."""
    monkeypatch.setenv("AMULET_MAX_UPLOAD_BYTES", "10")
    assert validate_image(_encode(_photo(), "JPEG")).format == "JPEG"
    assert ImageLimits() == ImageLimits.from_settings(load_settings({}, dotenv=None))
    with pytest.raises(ValidationError) as info:
        validate_image(_encode(_photo(), "JPEG"), limits=ImageLimits(max_upload_bytes=10))
    assert info.value.code == "E_IMAGE_TOO_LARGE"


# ------------------------------------------------------------------------------------------ names

@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\Evil.JPG", "Evil.jpg"),
        ("a\x00b\x1f.jpg", "ab.jpg"),
        ("พระสีวลี หน้า.jpg", "พระสีวลี_หน้า.jpg"),
        (".htaccess", "htaccess"),
        ("..", "file"),
        ("", "file"),
        ("photo\u202egpj.exe", "photogpj.exe"),
        ("CON.txt", "_CON.txt"),
        ("my photo (1).HEIC", "my_photo_1.heic"),
        ("-rf .jpg", "rf.jpg"),
        ("archive.tar.gz", "archive.tar.gz"),
        ("x.<script>", "x._script"),
    ],
)
def test_safe_filename(name, expected):
    assert safe_filename(name) == expected


def test_safe_filename_limits_length_in_bytes_and_keeps_the_suffix():
    assert len(safe_filename("x" * 500 + ".jpeg").encode()) == 120
    assert safe_filename("x" * 500 + ".jpeg").endswith(".jpeg")
    thai = safe_filename("ก" * 200 + ".png")
    assert len(thai.encode()) <= 120 and thai.endswith(".png") and thai.startswith("ก")
    with pytest.raises(ValidationError):
        safe_filename(b"bytes.jpg")  # type: ignore[arg-type]


def test_generated_name():
    first, second = generated_name(".JPG"), generated_name("jpg")
    assert first != second and first.endswith(".jpg") and len(first) == 36
    assert len(generated_name()) == 32 and "." not in generated_name()
    for bad in ("../x", ".jp g", ".toolongsuffix", "a/b"):
        with pytest.raises(ValidationError):
            generated_name(bad)


def test_import_is_light():
    code = "import sys, amulet_lab.security; print(sorted(m for m in ('PIL', 'numpy', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_validation_micro_benchmark_quick_shape():
    from amulet_lab.bench.micro import MicroResult, run_micro

    (result,) = run_micro(["validation"], quick=True)
    assert isinstance(result, MicroResult) and result.name == "validation"
    assert set(result.ratios) == {"validate_vs_bare_decode", "bomb_refusal_vs_decode"} == set(result.targets)
    assert all(value > 0 for value in (*result.figures.values(), *result.ratios.values()))


def test_truncated_heic(limits):
    pillow_heif = pytest.importorskip("pillow_heif")
    buffer = io.BytesIO()
    pillow_heif.from_pillow(_photo(64, 48)).save(buffer, quality=90)
    data = buffer.getvalue()
    assert _refusal(data[: len(data) // 2], limits).code == "E_IMAGE_TRUNCATED"


# ------------------------------------------------------------------------------------------ markup scan scope

def test_markup_inside_compressed_pixel_data_is_not_a_polyglot(limits):
    # A stored (level 0) deflate stream of unfiltered rows holds the pixels verbatim in IDAT: this grey
    # image's pixels spell "<svg" and "<script".
    row = b"<svg onload=1><script>x" + b" " * 9
    ihdr = struct.pack(">IIBBBBB", len(row), 4, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + row for _ in range(4)), 0)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))
    assert b"<svg" in data and b"<script" in data  # the bytes are there, inside IDAT
    assert validate_image(data, limits=limits).width == 32
    # Outside the pixel data the same text is still refused: in a text chunk, or after IEND.
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "<svg onload=alert(1)>")
    assert _refusal(_encode(_photo(), "PNG", pnginfo=info), limits).code == "E_IMAGE_POLYGLOT"
    assert _refusal(data + b"<html>", limits).code == "E_IMAGE_POLYGLOT"


def test_markup_in_a_jpeg_trailer_or_a_webp_metadata_chunk_is_still_refused(limits):
    assert _refusal(_encode(_photo(), "JPEG") + b"<?php system($_GET[1]); ?>", limits).code == "E_IMAGE_POLYGLOT"
    webp = _encode(_photo(), "WEBP", xmp=b"<svg onload=alert(1)>")
    assert _refusal(webp, limits).code == "E_IMAGE_POLYGLOT"


def test_random_noise_photos_are_all_accepted(limits):
    """Compressed noise is where markers turn up by chance (about 1% of 4 MB photos were refused before)."""
    rng = np.random.default_rng(1)
    big = Image.fromarray(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8), "RGB")
    data = _encode(big, "JPEG", quality=95)
    roomy = replace(limits, max_upload_bytes=len(data) + 1)
    from amulet_lab.security import _check_polyglot

    assert validate_image(data, limits=roomy).width == 4000
    for i in range(300):
        small = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), "RGB")
        fmt = "PNG" if i % 3 == 0 else "JPEG"
        encoded = _encode(small, fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 95}))
        _check_polyglot(encoded, fmt, f"noise{i}")  # the scan alone: full decodes would only cost time
    assert validate_image(encoded, limits=limits).format == fmt


# ------------------------------------------------------------------------------------------ one RGB conversion

@pytest.mark.parametrize("kind", ["16-bit", "RGBA"])
def test_validate_image_and_process_large_image_give_the_same_pixels(limits, kind):
    from amulet_lab.memory import StreamingHandler

    if kind == "16-bit":
        image = Image.fromarray(np.array([[0, 256, 32768, 65535]] * 4, dtype=np.uint16))
    else:
        image = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
        image.putpixel((0, 0), (0, 0, 255, 255))
    data = _encode(image, "PNG")
    checked = np.asarray(validate_image(data, limits=limits).image)
    streamed = np.asarray(StreamingHandler(limits=limits).process_large_image(data))
    assert np.array_equal(checked, streamed)
    if kind == "16-bit":
        assert streamed[0, :, 0].tolist() == [0, 1, 128, 255]  # scaled, not saturated at 255
    else:
        assert streamed[3, 3].tolist() == [255, 255, 255]  # transparency on white, not black


def test_process_large_image_applies_the_same_side_limit(limits):
    from amulet_lab.memory import StreamingHandler

    data = _encode(_photo(60, 40), "PNG")
    tight = replace(limits, max_image_side=50)
    assert _refusal(data, tight).code == "E_IMAGE_DIMENSIONS"
    with pytest.raises(ValidationError) as info:
        StreamingHandler(limits=tight).process_large_image(data)
    assert info.value.code == "E_IMAGE_DIMENSIONS"


def test_a_large_file_is_mapped_not_read_onto_the_heap(tmp_path):
    """Over ``mmap_threshold`` a file's bytes are checked, hashed and decoded from a map: never held twice."""
    import tracemalloc

    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (2400, 2400, 3), dtype=np.uint8))
    path = tmp_path / "large.jpg"
    noise.save(path, "JPEG", quality=95)
    size = path.stat().st_size
    assert size > 4 * 2**20  # over the default threshold (4 MiB)
    limits = ImageLimits()

    def peak_heap(source):
        tracemalloc.start()
        try:
            result = validate_image(source, limits=limits, draft_size=128)
            return result, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    mapped, mapped_peak = peak_heap(path)
    read, read_peak = peak_heap(path.read_bytes())
    assert mapped.sha256 == read.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.array_equal(np.asarray(mapped.image), np.asarray(read.image))
    assert (mapped.width, mapped.height, mapped.nbytes) == (2400, 2400, size)
    assert mapped_peak < size / 10, mapped_peak  # the map, not a copy: a few small reads of the decoder
    below = replace(limits, mmap_threshold=size + 1)
    tracemalloc.start()
    try:
        validate_image(path, limits=below, draft_size=128)
        assert tracemalloc.get_traced_memory()[1] >= size  # under the threshold the file is read whole
    finally:
        tracemalloc.stop()
