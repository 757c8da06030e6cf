"""Image reading and depth export (diffdepth.io.images / .export / .colormaps)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from diffdepth.errors import InputError
from diffdepth.geometry import DEFAULT_FOV_DEG
from diffdepth.io import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, colorize, depth_range, intrinsics_for,
                          is_image_path, is_video_path,
                          parse_formats, read_image, read_image_with_meta, read_ply, read_png16,
                          save_color, save_npy, save_outputs, save_ply, save_png16, side_by_side,
                          to_float_rgb)
from diffdepth.io import export as export_mod
from diffdepth.io.colormaps import SPECTRAL_11, TURBO_256, turbo
from diffdepth.types import (AFFINE_DEPTH, AFFINE_DISPARITY, METRIC_DEPTH, RELATIVE_DEPTH,
                             DepthMap)

SPECTRAL_RED = (158, 1, 66)  # ColorBrewer Spectral-11 first class, #9e0142
SPECTRAL_PURPLE = (94, 79, 162)  # last class, #5e4fa2
SPECTRAL_MID = (255, 255, 191)  # middle class, #ffffbf


def _rgb_pattern(h=8, w=10):
    """Deterministic uint8 [h,w,3] image with distinct values."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 20 + 5, y * 25 + 3, (x + y) * 9 + 1], -1).astype(np.uint8)


def _listdir(p):
    return sorted(os.listdir(p))


# ----------------------------------------------------------------------------- reading

@pytest.mark.parametrize("ext,fmt", [(".png", "PNG"), (".bmp", "BMP"), (".tif", "TIFF"), (".webp", "WEBP")])
def test_lossless_formats_exact(tmp_path, ext, fmt):
    arr = _rgb_pattern()
    path = tmp_path / f"img{ext}"
    kw = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(arr).save(path, format=fmt, **kw)
    out, meta = read_image_with_meta(path)
    assert out.dtype == np.float32 and out.shape == (8, 10, 3)
    np.testing.assert_allclose(out, arr / 255.0, atol=1e-7)
    assert (meta.width, meta.height, meta.bit_depth, meta.format) == (10, 8, 8, fmt)


def test_jpeg_approximate(tmp_path):
    arr = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    np.testing.assert_allclose(out.mean((0, 1)), np.array([200, 100, 50]) / 255.0, atol=0.02)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_gray(tmp_path, ext):
    vals = np.array([[0, 65535, 1000], [30000, 12345, 7]], dtype=np.uint16)
    im = Image.fromarray(vals)
    assert im.mode == "I;16"
    im.save(tmp_path / f"g16{ext}")
    out, meta = read_image_with_meta(tmp_path / f"g16{ext}")
    assert out.shape == (2, 3, 3) and meta.bit_depth == 16
    for c in range(3):  # replicated, full 16-bit precision (not /255 of the high byte)
        np.testing.assert_allclose(out[..., c], vals / 65535.0, rtol=0, atol=1e-7)


def test_grayscale_8bit_replicated(tmp_path):
    vals = np.array([[0, 128, 255]], dtype=np.uint8)
    Image.fromarray(vals, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    np.testing.assert_allclose(out, np.repeat((vals / 255.0)[..., None], 3, 2), atol=1e-7)


def test_float_and_bilevel_modes(tmp_path):
    Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32)).save(tmp_path / "f.tif")  # mode F
    out, meta = read_image_with_meta(tmp_path / "f.tif")
    np.testing.assert_allclose(out[0, :, 1], [0.0, 0.25, 1.0])
    assert meta.mode == "F" and meta.bit_depth == 32
    nan = Image.fromarray(np.array([[0.0, np.nan]], np.float32))
    nan.save(tmp_path / "nan.tif")
    with pytest.raises(InputError, match="nan.tif.*NaN"):
        read_image(tmp_path / "nan.tif")
    bw = Image.new("1", (3, 1))
    bw.putpixel((1, 0), 1)
    bw.save(tmp_path / "b.png")
    np.testing.assert_allclose(read_image(tmp_path / "b.png")[0, :, 0], [0, 1, 0])


def test_palette_and_palette_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png")[0], [[1, 0, 0], [0, 0, 1]])
    # palette index 1 fully transparent -> composited on white
    im.save(tmp_path / "pt.png", transparency=1)
    out, meta = read_image_with_meta(tmp_path / "pt.png")
    np.testing.assert_allclose(out[0], [[1, 0, 0], [1, 1, 1]])
    assert meta.has_alpha


def test_rgba_composited_on_white(tmp_path):
    arr = np.array([[[255, 0, 0, 128], [0, 0, 0, 0], [0, 64, 255, 255]]], dtype=np.uint8)
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    a = 128 / 255.0
    expected = np.array([[[1.0, 1 - a, 1 - a], [1, 1, 1], [0, 64 / 255.0, 1.0]]])
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_la_composited_on_white(tmp_path):
    arr = np.array([[[0, 51], [100, 255]]], dtype=np.uint8)  # gray 0 at alpha 0.2; gray 100 opaque
    Image.fromarray(arr, mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    np.testing.assert_allclose(out[0, 0], [0.8] * 3, atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [100 / 255.0] * 3, atol=1e-6)


def test_cmyk_tiff_exact_and_jpeg(tmp_path):
    im = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # no cyan, full magenta + yellow = red
    im.putpixel((1, 1), (0, 0, 0, 255))  # full black
    im.save(tmp_path / "c.tif")
    out = read_image(tmp_path / "c.tif")
    np.testing.assert_allclose(out[0, 0], [1, 0, 0])
    np.testing.assert_allclose(out[1, 1], [0, 0, 0])
    big = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    big.save(tmp_path / "c.jpg", quality=95)
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out.mean((0, 1)), [1, 0, 0], atol=0.05)


def test_exif_orientation_6_rotates(tmp_path):
    # stored 24 wide x 16 high, red 4x4 block in the stored top-left corner
    arr = np.full((16, 24, 3), 255, np.uint8)
    arr[:4, :4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "r.jpg", quality=100, exif=exif)
    out, meta = read_image_with_meta(tmp_path / "r.jpg")
    assert out.shape == (24, 16, 3)  # transposed: now 16 wide x 24 high
    assert (meta.width, meta.height, meta.orientation) == (16, 24, 6)
    # a clockwise turn moves the stored top-left corner to the displayed top-right corner
    np.testing.assert_allclose(out[1, 14], [1, 0, 0], atol=0.08)
    np.testing.assert_allclose(out[1, 1], [1, 1, 1], atol=0.08)
    np.testing.assert_allclose(out[22, 14], [1, 1, 1], atol=0.08)


def test_exif_focal_length(tmp_path):
    im = Image.new("RGB", (30, 20), (10, 20, 30))
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    sub[0x920A] = TiffImagePlugin.IFDRational(4, 1)  # FocalLength 4 mm
    sub[0xA20E] = TiffImagePlugin.IFDRational(1000, 1)  # 1000 px per cm = 100 px/mm
    sub[0xA210] = 3  # unit: cm
    im.save(tmp_path / "f.jpg", exif=exif)
    meta = read_image_with_meta(tmp_path / "f.jpg")[1]
    assert meta.focal_px == pytest.approx(400.0)
    exif35 = Image.Exif()
    exif35.get_ifd(0x8769)[0xA405] = 26  # 26 mm equivalent, defined over the 43.27 mm diagonal
    im.save(tmp_path / "f35.jpg", exif=exif35)
    meta = read_image_with_meta(tmp_path / "f35.jpg")[1]
    assert meta.focal_px == pytest.approx(26 * math.hypot(30, 20) / math.hypot(36, 24))
    im.save(tmp_path / "none.jpg")
    assert read_image_with_meta(tmp_path / "none.jpg")[1].focal_px is None


def _corrupt_cases(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(_rgb_pattern(32, 32)).save(good, quality=90)
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    png = tmp_path / "good.png"
    Image.fromarray(_rgb_pattern(32, 32)).save(png)
    pdata = png.read_bytes()
    (tmp_path / "truncated.png").write_bytes(pdata[: len(pdata) // 2])
    (tmp_path / "corrupt.png").write_bytes(pdata[:33] + os.urandom(200))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("this is not an image\n")
    return {"truncated.jpg": "truncated", "truncated.png": "truncated", "corrupt.png": "corrupt",
            "empty.jpg": "empty", "notes.png": "not an image", "missing.png": "no such file"}


def test_bad_files_raise_input_error_naming_file(tmp_path):
    for name, words in _corrupt_cases(tmp_path).items():
        with pytest.raises(InputError) as ei:
            read_image(tmp_path / name)
        msg = str(ei.value)
        assert name in msg and words in msg, msg
        assert "\n" not in msg
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)


def test_extension_lists():
    assert {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"} <= set(IMAGE_EXTENSIONS)
    assert set(VIDEO_EXTENSIONS) == {".mp4", ".webm", ".mov", ".mkv", ".avi"}
    assert is_image_path("a/B.JPG") and not is_image_path("clip.mp4") and not is_image_path("notes.txt")
    assert is_video_path("clip.MOV") and not is_video_path("x.png")


# ----------------------------------------------------------------------------- in memory

def test_to_float_rgb_dtypes_and_shapes():
    u8 = _rgb_pattern(3, 4)
    np.testing.assert_allclose(to_float_rgb(u8), u8 / 255.0, atol=1e-7)
    u16 = (u8.astype(np.uint16) * 257)
    np.testing.assert_allclose(to_float_rgb(u16), u8 / 255.0, atol=1e-7)
    gray = np.array([[0.0, 0.25], [0.5, 1.0]])
    out = to_float_rgb(gray)
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 2], gray)
    rgba = np.array([[[0.0, 0.0, 1.0, 0.25]]], dtype=np.float32)
    np.testing.assert_allclose(to_float_rgb(rgba), [[[0.75, 0.75, 1.0]]], atol=1e-6)
    pil = Image.fromarray(u8)
    np.testing.assert_allclose(to_float_rgb(pil), u8 / 255.0, atol=1e-7)
    # tiny overshoot (e.g. from bicubic resizing) is clipped, not rejected
    assert to_float_rgb(np.full((2, 2, 3), 1.005)).max() == 1.0


@pytest.mark.parametrize("bad,words", [
    (np.zeros((3, 16, 16), np.float32), "channels-first"),
    (np.zeros((4, 4, 5), np.float32), "shape"),
    (np.zeros((2, 2, 2, 3), np.float32), "shape"),
    (np.zeros((4, 4, 3), np.int32), "dtype"),
    (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    (np.full((4, 4, 3), 255.0, np.float32), "divide by 255"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    ("not an array", "unsupported image type"),
])
def test_to_float_rgb_errors(bad, words):
    with pytest.raises(InputError, match=words):
        to_float_rgb(bad)


# ----------------------------------------------------------------------------- 16-bit PNG

def test_png16_metric_roundtrip_mm(tmp_path):
    d = np.array([[1.234, 0.5, np.nan], [70.0, -1.0, 0.0004], [3.0, 2.0005, 10.0]], dtype=np.float32)
    path = save_png16(tmp_path / "m.png", d, METRIC_DEPTH)
    with Image.open(path) as im:
        raw = np.asarray(im)
        text = im.info["diffdepth:encoding"]
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, [[1234, 500, 0], [65535, 0, 1], [3000, 2000, 10000]])
    assert "millimetres" in text and "0 = invalid" in text
    back, text2 = read_png16(path)
    assert text2 == text
    np.testing.assert_allclose(back, [[1.234, 0.5, np.nan], [65.535, np.nan, 0.001], [3.0, 2.0, 10.0]],
                               atol=1e-6)


def test_png16_relative_minmax_exact_ends(tmp_path):
    d = np.array([[2.0, 4.0, 3.0], [np.inf, 2.5, 3.5]], dtype=np.float32)
    path = save_png16(tmp_path / "r.png", d, AFFINE_DISPARITY)
    with Image.open(path) as im:
        raw = np.asarray(im)
    assert raw[0, 0] == 0 and raw[0, 1] == 65535  # min -> 0, max -> 65535
    assert raw[0, 2] == 32768  # 0.5 * 65535 = 32767.5, rounded half to even
    assert raw[1, 0] == 0  # non-finite
    assert raw[1, 1] == round(0.25 * 65535)
    back, text = read_png16(path)
    assert text.startswith("affine_invariant_disparity") and "min=2.0" in text and "max=4.0" in text
    finite = np.isfinite(d)
    np.testing.assert_allclose(back[finite], d[finite], atol=2.0 / 65535)


def test_read_png16_plain_file_and_errors(tmp_path):
    Image.fromarray(np.array([[5, 700]], dtype=np.uint16)).save(tmp_path / "kitti.png")
    vals, text = read_png16(tmp_path / "kitti.png")
    assert text is None and vals.tolist() == [[5.0, 700.0]]
    with pytest.raises(InputError, match="nothere.png"):
        read_png16(tmp_path / "nothere.png")


def test_dataset_rgb_reader_is_read_image_without_exif_rotation(tmp_path):
    """data.files.read_rgb decodes through io.images (alpha on white, the same values) but keeps the
    stored pixel order: dataset ground truth is aligned with the stored pixels, not the EXIF view."""
    from diffdepth.data.files import read_rgb
    arr = _rgb_pattern()  # [8,10,3]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.png", exif=exif)
    assert read_image(tmp_path / "r.png").shape == (10, 8, 3)  # the user-facing reader rotates
    np.testing.assert_array_equal(read_rgb(tmp_path / "r.png"), (arr.astype(np.float32) / 255.0).transpose(2, 0, 1))
    rgba = np.dstack([arr, np.full(arr.shape[:2], 51, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), read_image(tmp_path / "a.png").transpose(2, 0, 1))
    np.testing.assert_allclose(read_rgb(tmp_path / "a.png")[:, 0, 0], arr[0, 0] / 255 * 0.2 + 0.8, atol=1e-6)  # on white


def test_two_png16_contracts_have_two_names(tmp_path):
    """data.files.read_uint16_png returns the raw counts; io.export.read_png16 decodes a prediction PNG."""
    from diffdepth.data.files import read_uint16_png
    path = save_png16(tmp_path / "m.png", np.array([[1.5, 0.0]], np.float32), METRIC_DEPTH)
    raw = read_uint16_png(path)
    assert raw.dtype == np.uint16 and raw.tolist() == [[1500, 0]]
    metres, _ = read_png16(path)
    assert metres[0, 0] == pytest.approx(1.5) and np.isnan(metres[0, 1])


# ----------------------------------------------------------------------------- colour

def test_spectral_endpoints_and_near_warm_direction():
    depth = np.array([[1.0, 2.0]], dtype=np.float32)
    c = colorize(depth, AFFINE_DEPTH)
    assert tuple(c[0, 0]) == SPECTRAL_RED  # small depth = near = warm
    assert tuple(c[0, 1]) == SPECTRAL_PURPLE
    c = colorize(depth, AFFINE_DISPARITY)
    assert tuple(c[0, 1]) == SPECTRAL_RED  # large disparity = near = warm
    assert tuple(c[0, 0]) == SPECTRAL_PURPLE
    c = colorize(depth, METRIC_DEPTH, near_warm=False)
    assert tuple(c[0, 0]) == SPECTRAL_PURPLE and tuple(c[0, 1]) == SPECTRAL_RED
    assert np.array_equal(SPECTRAL_11[0] * 255, SPECTRAL_RED)
    mid = colorize(np.array([[1.0, 1.5, 2.0]]), AFFINE_DEPTH, robust=False)
    assert tuple(mid[0, 1]) == SPECTRAL_MID
    # halfway between the first two classes: linear interpolation
    q = colorize(np.array([[0.0, 0.05, 1.0]]), AFFINE_DEPTH, robust=False)
    np.testing.assert_allclose(q[0, 1], (np.array([158, 1, 66]) + [213, 62, 79]) / 2, atol=0.51)


def test_turbo_is_the_published_table():
    from matplotlib import colormaps  # an independent copy of Google's table (test extra)

    ref = colormaps["turbo"](np.arange(256))[:, :3]
    np.testing.assert_array_equal(TURBO_256, ref)
    np.testing.assert_array_equal(turbo(np.linspace(0, 1, 256)), ref)  # entry i at t = i/255
    np.testing.assert_allclose(turbo((np.arange(255) + 0.5) / 255), (ref[:-1] + ref[1:]) / 2, rtol=0, atol=1e-12)
    assert tuple(TURBO_256[0]) == (0.18995, 0.07176, 0.23217) and tuple(TURBO_256[-1]) == (0.4796, 0.01583, 0.01055)
    np.testing.assert_array_equal(turbo(np.array([-1.0, 2.0])), ref[[0, -1]])  # clipped to [0, 1]


def test_turbo_direction_in_colorize():
    blue, green, red = turbo(np.array([0.15, 0.5, 0.9]))
    assert blue.argmax() == 2 and green.argmax() == 1 and red.argmax() == 0
    c = colorize(np.array([[1.0, 5.0]]), METRIC_DEPTH, cmap="turbo")
    np.testing.assert_array_equal(c[0, 0], np.round(turbo(np.array(1.0)) * 255))  # near = warm end
    np.testing.assert_array_equal(c[0, 1], np.round(turbo(np.array(0.0)) * 255))
    c = colorize(np.array([[1.0, 5.0]]), AFFINE_DISPARITY, cmap="TURBO")
    np.testing.assert_array_equal(c[0, 1], np.round(turbo(np.array(1.0)) * 255))


def test_colorize_invalid_black_and_robust_range():
    d = np.array([[1.0, np.nan, 0.0, 3.0]])
    c = colorize(d, METRIC_DEPTH)
    assert tuple(c[0, 1]) == (0, 0, 0) and tuple(c[0, 2]) == (0, 0, 0)  # NaN and 0 m invalid
    assert c[0, 0].any() and c[0, 3].any()
    assert depth_range(np.arange(101.0)[None], AFFINE_DEPTH) == pytest.approx((2.0, 98.0))
    assert depth_range(np.arange(101.0)[None], AFFINE_DEPTH, robust=False) == (0.0, 100.0)
    assert not colorize(np.full((2, 2), np.nan), AFFINE_DEPTH).any()
    with pytest.raises(InputError, match="colour map"):
        colorize(d, METRIC_DEPTH, cmap="rainbowz")


def test_side_by_side_and_save_color(tmp_path):
    rgb = _rgb_pattern(6, 5)
    depth = np.linspace(1, 2, 30).reshape(6, 5)
    sbs = side_by_side(rgb, depth, METRIC_DEPTH)
    assert sbs.shape == (6, 10, 3) and sbs.dtype == np.uint8
    np.testing.assert_array_equal(sbs[:, :5], rgb)
    np.testing.assert_array_equal(sbs[:, 5:], colorize(depth, METRIC_DEPTH))
    p = save_color(tmp_path / "c.png", depth, METRIC_DEPTH)
    np.testing.assert_array_equal(np.asarray(Image.open(p)), colorize(depth, METRIC_DEPTH))


# ----------------------------------------------------------------------------- PLY

def test_ply_roundtrip_hand_computed(tmp_path):
    depth = np.array([[2.0, 0.0, 1.0], [4.0, np.nan, 3.0]], dtype=np.float32)
    K = np.array([[2.0, 0, 1.5], [0, 4.0, 1.0], [0, 0, 1]])
    rgb = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10
    save_ply(tmp_path / "p.ply", depth, rgb, K, comments=["intrinsics: focal 2 px (--focal)"])
    ply = read_ply(tmp_path / "p.ply")
    # valid pixels in row-major order: (x=0,y=0,z=2) (2,0,1) (0,1,4) (2,1,3)
    # X = (x - cx) / fx * z, Y = (y - cy) / fy * z
    expected = np.array([[(0 - 1.5) / 2 * 2, (0 - 1) / 4 * 2, 2],
                         [(2 - 1.5) / 2 * 1, (0 - 1) / 4 * 1, 1],
                         [(0 - 1.5) / 2 * 4, 0, 4],
                         [(2 - 1.5) / 2 * 3, 0, 3]])
    np.testing.assert_allclose(ply.points, expected, atol=1e-6)
    np.testing.assert_array_equal(ply.colors, rgb[[0, 0, 1, 1], [0, 2, 0, 2]])
    assert "intrinsics: focal 2 px (--focal)" in ply.comments
    head = (tmp_path / "p.ply").read_bytes()[:200]
    assert b"format binary_little_endian 1.0" in head and b"element vertex 4" in head


def test_ply_disparity_converted_and_labelled(tmp_path):
    disp = np.array([[0.5, -1.0], [0.25, 0.0]], dtype=np.float32)
    K = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]])
    save_ply(tmp_path / "d.ply", disp, None, K, kind=AFFINE_DISPARITY)
    ply = read_ply(tmp_path / "d.ply")
    np.testing.assert_allclose(ply.points[:, 2], [2.0, 4.0])  # 1/0.5, 1/0.25; others dropped
    assert ply.colors is None
    assert any("arbitrary" in c for c in ply.comments)


def test_intrinsics_rule():
    K, src = intrinsics_for(100, 50, focal=80, fov=90, exif_focal_px=300)
    assert K[0, 0] == 80 and "--focal" in src
    K, src = intrinsics_for(100, 50, fov=90, exif_focal_px=300)
    assert K[0, 0] == pytest.approx(50.0) and "--fov" in src  # 50 / tan(45 deg)
    K, src = intrinsics_for(100, 50, exif_focal_px=300)
    assert K[0, 0] == 300 and "exif" in src
    K, src = intrinsics_for(100, 50)
    assert K[0, 0] == pytest.approx(50 / math.tan(math.radians(DEFAULT_FOV_DEG / 2)))
    assert "default" in src and f"{DEFAULT_FOV_DEG:g} deg" in src
    assert (K[0, 2], K[1, 2]) == (50.0, 25.0)
    with pytest.raises(InputError):
        intrinsics_for(100, 50, focal=-3)
    with pytest.raises(InputError):
        intrinsics_for(100, 50, fov=200)


# ----------------------------------------------------------------------------- atomicity

def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_mod.np, "save", boom)
    with pytest.raises(RuntimeError):
        save_npy(tmp_path / "d.npy", np.ones((2, 2)))
    assert _listdir(tmp_path) == []
    monkeypatch.undo()
    # an existing file survives a failed overwrite untouched
    save_png16(tmp_path / "d.png", np.ones((2, 2)), METRIC_DEPTH)
    before = (tmp_path / "d.png").read_bytes()
    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(RuntimeError):
        save_png16(tmp_path / "d.png", np.full((2, 2), 5.0), METRIC_DEPTH)
    assert _listdir(tmp_path) == ["d.png"] and (tmp_path / "d.png").read_bytes() == before


# ----------------------------------------------------------------------------- save_outputs

def _prediction(kind=METRIC_DEPTH, with_extras=True):
    depth = np.linspace(1, 3, 48, dtype=np.float32).reshape(6, 8)
    unc = np.full((6, 8), 0.1, np.float32) if with_extras else None
    extras = {"segmentation": np.arange(48).reshape(6, 8) % 5} if with_extras else {}
    return DepthMap(depth=depth, kind=kind, uncertainty=unc, extras=extras)


def test_save_outputs_all_formats_skip_and_overwrite(tmp_path):
    pred = _prediction()
    rgb = _rgb_pattern(6, 8)
    base = tmp_path / "sub" / "photo.v1"
    res = save_outputs(base, pred, rgb, "npy,png16,color,side,ply,uncertainty,seg", fov=90)
    names = sorted(p.name for p in res.written)
    assert names == sorted(["photo.v1.npy", "photo.v1_depth16.png", "photo.v1_color.png", "photo.v1_side.png",
                            "photo.v1.ply", "photo.v1_uncertainty.npy", "photo.v1_seg.png"])
    assert res.skipped == [] and res.unavailable == []
    assert _listdir(tmp_path / "sub") == sorted(names)  # no temporary files left
    np.testing.assert_array_equal(np.load(base.parent / "photo.v1.npy"), pred.depth)
    assert np.asarray(Image.open(base.parent / "photo.v1_side.png")).shape == (6, 16, 3)
    ply = read_ply(base.parent / "photo.v1.ply")
    assert len(ply.points) == 48 and "intrinsics: fov 90 deg (--fov)" in ply.comments
    assert "units: metres" in ply.comments
    seg = np.asarray(Image.open(base.parent / "photo.v1_seg.png"))
    assert tuple(seg[0, 0]) == (0, 0, 0) and len({tuple(v) for v in seg.reshape(-1, 3)}) == 5

    # second run: everything kept, nothing rewritten
    npy = base.parent / "photo.v1.npy"
    np.save(npy, np.zeros((1,), np.float32))
    res2 = save_outputs(base, pred, rgb, {"npy", "ply"})
    assert res2.written == [] and sorted(p.name for p in res2.skipped) == ["photo.v1.npy", "photo.v1.ply"]
    assert np.load(npy).shape == (1,)
    res3 = save_outputs(base, pred, rgb, ["npy"], overwrite=True)
    assert res3.written == [npy] and np.load(npy).shape == (6, 8)


def test_save_outputs_unavailable_and_unknown_format(tmp_path):
    pred = _prediction(kind=AFFINE_DISPARITY, with_extras=False)
    res = save_outputs(tmp_path / "x", pred, _rgb_pattern(6, 8), {"npy", "uncertainty", "seg"})
    assert [p.name for p in res.written] == ["x.npy"] and sorted(res.unavailable) == ["seg", "uncertainty"]
    with pytest.raises(InputError) as ei:
        save_outputs(tmp_path / "x", pred, None, "npy,jpeg")
    msg = str(ei.value)
    assert "jpeg" in msg and all(n in msg for n in ["npy", "png16", "color", "side", "ply", "uncertainty", "seg"])
    assert parse_formats(" NPY, ply ") == {"npy", "ply"}
    with pytest.raises(InputError, match="side"):
        save_outputs(tmp_path / "y", pred, None, "side")


def test_kind_decides_validity_and_point_cloud_depth():
    # true depths (metric, relative) are invalid where <= 0 (black); affine maps keep any value
    d = np.array([[-1.0, 0.0, 1.0, 2.0]])
    for kind, n_black in [(RELATIVE_DEPTH, 2), (METRIC_DEPTH, 2), (AFFINE_DEPTH, 0), (AFFINE_DISPARITY, 0)]:
        c = colorize(d, kind, robust=False)
        assert [not v.any() for v in c[0]] == [True] * n_black + [False] * (4 - n_black), kind
    # relative depth is back-projected as it is; disparity as 1/x on positive values
    rel, notes = export_mod.ply_depth(np.array([[2.0, 0.5, -1.0]]), RELATIVE_DEPTH)
    np.testing.assert_array_equal(rel, [[2.0, 0.5, -1.0]])
    assert notes == ["depth kind: relative_depth", "scale arbitrary (not metric)"]
    disp, _ = export_mod.ply_depth(np.array([[2.0, 0.5, -1.0]]), AFFINE_DISPARITY)
    np.testing.assert_array_equal(disp, [[0.5, 2.0, 0.0]])


def test_images_and_videos_refuse_missing_folder_and_empty_files_with_one_message(tmp_path):
    from diffdepth.io.images import read_image
    from diffdepth.io.video import iter_video_frames as read_video_frames

    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "dir.mp4").mkdir()
    for what, read, ext in (("image", read_image, "png"), ("video", read_video_frames, "mp4")):
        for stem, why in (("missing", "no such file"), ("dir", "it is a folder, not a file"),
                          ("empty", "file is empty (0 bytes)")):
            path = tmp_path / f"{stem}.{'jpg' if stem == 'empty' and what == 'image' else ext}"
            with pytest.raises(InputError) as err:
                read(path) if what == "image" else list(read(path))
            assert str(err.value) == f"cannot read {what} {path}: {why}"
