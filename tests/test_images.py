"""amulet_lab.images: decode every input type, draft decoding, EXIF, preprocessing, the spec."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from amulet_lab.errors import AmuletError, ProcessingError, SecurityError, ValidationError
from amulet_lab.images import PreprocessSpec, decode, preprocess, resize_square, to_array


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    return Image.fromarray(np.stack([x, x[::-1, ::-1], np.full_like(x, 60)], -1))


def test_decode_every_input_type_gives_the_same_rgb_pixels(tmp_path):
    img = _gradient(40, 30)
    data = _jpeg(img)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    from_bytes = np.asarray(decode(data))
    assert from_bytes.shape == (30, 40, 3)
    assert np.array_equal(np.asarray(decode(path)), from_bytes)
    assert np.array_equal(np.asarray(decode(str(path))), from_bytes)
    assert np.array_equal(np.asarray(decode(bytearray(data))), from_bytes)
    assert np.array_equal(np.asarray(decode(Image.open(io.BytesIO(data)))), from_bytes)
    assert np.array_equal(np.asarray(decode(from_bytes)), from_bytes)


def test_arrays_gray_float_and_rgba_become_uint8_rgb():
    gray = np.full((5, 6), 200, dtype=np.uint8)
    assert np.asarray(decode(gray)).shape == (5, 6, 3)
    floats = np.full((4, 4, 3), 0.5, dtype=np.float32)
    assert to_array(floats)[0, 0, 0] == 128
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    assert to_array(rgba).shape == (4, 4, 3)
    with pytest.raises(ValidationError) as err:
        to_array(np.zeros((4, 4, 5)))
    assert err.value.code == "E_IMAGE_ARRAY"
    with pytest.raises(ValidationError):
        to_array(np.full((2, 2, 3), np.nan))


def test_palette_and_transparent_png_become_rgb():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    out = decode(buf.getvalue())
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black
    pal = Image.new("P", (8, 8), 3)
    assert decode(pal).mode == "RGB"


def test_draft_decodes_a_large_jpeg_at_reduced_scale_but_not_below_target():
    data = _jpeg(_gradient(1600, 1200))
    small = decode(data, target_size=128)
    assert 128 <= min(small.size) and max(small.size) <= 400  # 1/8 scale: 200x150
    assert decode(data).size == (1600, 1200)


def test_exif_rotation_is_applied():
    img = _gradient(60, 20)  # landscape pixels, EXIF says rotate 90 -> portrait upright
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode(_jpeg(img, exif=exif.tobytes()))
    assert out.size == (20, 60)
    out_draft = decode(_jpeg(img, exif=exif.tobytes()), target_size=8)
    assert out_draft.size[1] > out_draft.size[0]


@pytest.mark.parametrize(
    "bad, code",
    [(b"", "E_IMAGE_EMPTY"), (b"hello, not an image", "E_IMAGE_SIGNATURE"), (12345, "E_IMAGE_TYPE")],
)
def test_bad_inputs_raise_coded_validation_errors(bad, code):
    with pytest.raises(ValidationError) as err:
        decode(bad)
    assert err.value.code == code


def test_missing_file_and_truncated_jpeg(tmp_path):
    with pytest.raises(ValidationError) as err:
        decode(tmp_path / "nope.jpg")
    assert err.value.code == "E_IMAGE_NOT_FOUND"
    data = _jpeg(_gradient(300, 200))
    with pytest.raises(ValidationError) as err2:
        decode(data[: len(data) // 2])
    assert err2.value.code == "E_IMAGE_TRUNCATED"  # the one decoder's code


def test_preprocess_shape_dtype_and_normalisation():
    spec = PreprocessSpec(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    white = Image.new("RGB", (50, 70), (255, 255, 255))
    black = np.zeros((10, 10, 3), dtype=np.uint8)
    x = preprocess([white, black], spec)
    assert x.shape == (2, 3, 32, 32) and str(x.dtype) == "torch.float32" and x.is_contiguous()
    assert float(x[0].min()) == pytest.approx(2.0) and float(x[1].max()) == pytest.approx(-2.0)
    assert preprocess(white, spec).shape == (1, 3, 32, 32)
    with pytest.raises(ValidationError):
        preprocess([], spec)


def test_resize_square_keeps_whole_frame():
    img = Image.new("RGB", (100, 50), (10, 20, 30))
    assert resize_square(img, 16).size == (16, 16)
    assert resize_square(img.resize((16, 16)), 16).size == (16, 16)


def test_spec_transform_id_is_stable_and_distinguishes_specs():
    a, b = PreprocessSpec(96), PreprocessSpec(96)
    assert a.transform_id == b.transform_id and a.transform_id.startswith("sq96-")
    assert PreprocessSpec(112).transform_id != a.transform_id
    assert PreprocessSpec(96, std=(0.2, 0.2, 0.2)).transform_id != a.transform_id
    assert PreprocessSpec.from_dict(a.to_dict()) == a
    for bad in (dict(size=4), dict(size=64, std=(0, 1, 1)), dict(size=64, mean=(1, 2))):
        with pytest.raises(ValidationError):
            PreprocessSpec(**bad)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_16_bit_grey_png_is_scaled_the_same_as_validate_image():
    from amulet_lab.security import validate_image

    grey = np.full((16, 24), 32896, dtype=np.uint16)  # 32896 / 65535 * 255 = 128: mid grey, not white
    data = _png(Image.fromarray(grey))
    ours = np.asarray(decode(data))
    theirs = np.asarray(validate_image(data).image)
    assert ours.shape == (16, 24, 3) and abs(float(ours.mean()) - 127.5) < 1.5
    assert np.array_equal(ours, theirs)


def test_16_bit_arrays_are_scaled_not_clipped():
    arr = to_array(np.full((4, 4), 65535, dtype=np.uint16))
    assert arr.dtype == np.uint8 and (arr == 255).all()
    assert abs(float(to_array(np.full((4, 4), 32896, dtype=np.uint16)).mean()) - 128) <= 1
    assert (to_array(np.full((4, 4, 3), 200, dtype=np.int64)) == 200).all()  # an 8-bit range stays as it is


def test_header_claiming_huge_size_is_refused_before_decoding():
    from amulet_lab.security import ImageLimits

    import struct
    import zlib

    data = bytearray(_png(Image.new("L", (4, 4))))
    # IHDR data sits at bytes 16..29 (after signature, length, type); patch width/height and its CRC.
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    with pytest.raises(AmuletError) as err:
        decode(bytes(data))
    assert err.value.code in {"E_IMAGE_DIMENSIONS", "E_IMAGE_BOMB"}
    with pytest.raises(SecurityError) as err:
        decode(bytes(data), limits=ImageLimits(max_image_side=30000))
    assert err.value.code == "E_IMAGE_BOMB"


@pytest.mark.parametrize("fmt", ["EPS", "BMP", "GIF", "TIFF"])
def test_formats_outside_the_allow_list_are_refused(fmt, tmp_path):
    if fmt == "EPS":  # Pillow would hand this to Ghostscript if decode let it pick any plugin
        data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    else:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, fmt)
        data = buf.getvalue()
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(ValidationError) as err:
            decode(source)
        assert err.value.code == "E_IMAGE_SIGNATURE"  # refused by content, before Pillow picks a plugin


def test_a_callers_image_is_never_drafted_or_changed():
    data = _jpeg(_gradient(800, 600))
    img = Image.open(io.BytesIO(data))
    out = decode(img, target_size=64)
    assert out.size == (800, 600)  # full size: draft() is only used on images decode opened itself
    assert img.size == (800, 600) and img.mode == "RGB"
    assert decode(data, target_size=64).size[0] < 800  # its own open is drafted
