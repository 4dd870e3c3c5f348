"""Image decoding, normalisation, the resize rule and file discovery (dn2.runtime.images)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from dn2.runtime.errors import ImageError
from dn2.runtime.imageheader import exif_orientation, sniff
from dn2.runtime.images import (
    DRAFT_MARGIN,
    draft_scale,
    draft_side_for,
    find_images,
    prepare,
    read_image,
    to_bgr8,
)
from dn2.runtime.modelmeta import ResizeRule
from dn2.runtime.resize import center_box, center_crop_resize

from badfiles import card_bgr, card_rgb, mixed_folder, png_bomb

Image = pytest.importorskip("PIL.Image", reason="building test images needs Pillow")


def _pil_bytes(img, fmt, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


# -- headers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt,kw",
    [
        ("PNG", {}),
        ("JPEG", {}),
        ("GIF", {}),
        ("BMP", {}),
        ("WEBP", {}),
        ("WEBP", {"lossless": True}),
        ("TIFF", {}),
        ("PPM", {}),
    ],
)
def test_header_dims_match_the_decoded_image(fmt, kw):
    img = Image.fromarray(np.zeros((37, 91, 3), np.uint8))
    data = _pil_bytes(img, fmt, **kw)
    head = sniff(data)
    assert head is not None and (head.width, head.height) == (91, 37), (fmt, head)
    assert read_image(data).shape == (37, 91, 3)


def test_webp_extended_header_and_exif_are_read():
    rgba = Image.fromarray(np.zeros((20, 30, 4), np.uint8), "RGBA")  # alpha -> VP8X chunk
    ex = Image.Exif()
    ex[0x0112] = 8
    head = sniff(_pil_bytes(rgba, "WEBP", exif=ex))
    assert (head.format, head.width, head.height, head.orientation) == ("WebP", 30, 20, 8)


def test_exif_parser_tolerates_garbage():
    assert exif_orientation(b"") == 1
    assert exif_orientation(b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff") == 1  # cut-off IFD
    assert sniff(b"\xff\xd8\xff\xe1\x00\x02") is not None  # truncated header: no exception


# -- EXIF orientation ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exif_transpose(fmt, orientation):
    from PIL import ImageOps

    ex = Image.Exif()
    ex[0x0112] = orientation
    kw = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    data = _pil_bytes(Image.fromarray(card_rgb()), fmt, exif=ex, **kw)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB")))
    got = read_image(data)
    assert got.shape == expected[:, :, ::-1].shape
    # lossless formats must be exact; JPEG: both sides decode with libjpeg, allow its rounding
    tol = 1.5 if fmt == "JPEG" else 0.0
    assert np.abs(got.astype(np.int16) - expected[:, :, ::-1]).mean() <= tol


# -- normalisation ---------------------------------------------------------------------------
def test_to_bgr8_converts_every_layout():
    g = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert (to_bgr8(g) == g[:, :, None]).all() and to_bgr8(g).shape == (8, 8, 3)
    assert (to_bgr8(g[:, :, None]) == g[:, :, None]).all()
    g16 = g.astype(np.uint16) * 1000
    assert (to_bgr8(g16)[:, :, 0] == np.round(g16 / 257.0)).all()
    f = np.linspace(-0.5, 1.5, 64, dtype=np.float32).reshape(8, 8)
    assert (to_bgr8(f)[:, :, 0] == np.round(np.clip(f, 0, 1) * 255)).all()
    la = np.dstack([g, np.full_like(g, 255)])  # gray + alpha, opaque
    assert (to_bgr8(la)[:, :, 2] == g).all()
    out = to_bgr8(card_bgr()[:, ::-1])  # a non-contiguous view comes back contiguous
    assert out.flags["C_CONTIGUOUS"] and (out == card_bgr()[:, ::-1]).all()


@pytest.mark.parametrize(
    "arr,says",
    [
        (np.zeros((8, 8), np.int32), "found int32"),
        (np.zeros((8, 8, 5), np.uint8), "found shape (8, 8, 5)"),
        (np.zeros(8, np.uint8), "found shape (8,)"),
        ([[1, 2]], "found list"),
    ],
)
def test_to_bgr8_refuses_what_it_cannot_read(arr, says):
    with pytest.raises(ImageError, match="expected") as e:
        to_bgr8(arr, "probe")
    assert says in str(e.value) and str(e.value).startswith("probe: ")


# -- read_image limits -----------------------------------------------------------------------
def test_max_pixels_is_checked_on_the_header_and_configurable(tmp_path):
    p = tmp_path / "card.png"
    p.write_bytes(cv2.imencode(".png", card_bgr())[1].tobytes())
    assert read_image(p).shape == (48, 64, 3)
    with pytest.raises(
        ImageError, match="at most 0.003 megapixels, found a PNG header declaring 64x48"
    ):
        read_image(p, max_pixels=3000)
    # A 20000x20000 header with a garbage body: a decoder would allocate 1.2 GB, then fail on
    # the data. The message shows the refusal came from the header, before any decoding.
    with pytest.raises(ImageError, match="20000x20000 .*refused before decoding"):
        read_image(png_bomb(20000, 20000))
    # the same header inside the limit reaches the decoder, which then finds the garbage
    with pytest.raises(ImageError, match="decodable PNG"):
        read_image(png_bomb(64, 64))


def test_formats_without_a_parsed_header_are_checked_after_decoding():
    if not cv2.haveImageWriter(".jp2"):
        pytest.skip("this OpenCV build writes no JPEG 2000")
    data = cv2.imencode(".jp2", card_bgr())[1].tobytes()
    assert sniff(data) is None and read_image(data).shape == (48, 64, 3)
    with pytest.raises(ImageError, match="found a decoded image of 64x48 .*refused as a"):
        read_image(data, max_pixels=3000)


def test_min_side_is_configurable():
    data = cv2.imencode(".png", np.zeros((4, 50, 3), np.uint8))[1].tobytes()
    with pytest.raises(ImageError, match="at least 8 px on the shorter side, found .*50x4"):
        read_image(data)
    assert read_image(data, min_side=4).shape == (4, 50, 3)


def test_bytes_input_is_named_in_errors():
    with pytest.raises(ImageError, match=r"^<bytes>: expected an image file .*found text"):
        read_image(b"hello, not an image")
    with pytest.raises(
        ImageError,
        match=r"^upload.jpg: expected encoded image bytes, found an "
        r"empty buffer",
    ):
        read_image(b"", name="upload.jpg")


def test_jpeg_with_trailing_bytes_after_eoi_is_accepted():
    data = cv2.imencode(".jpg", card_bgr())[1].tobytes() + b"\x00" * 100  # camera padding
    assert read_image(data).shape == (48, 64, 3)


# -- reduced-scale JPEG decode (opt-in) -----------------------------------------------------
def _photo_jpeg(w: int, h: int, **pil_kw) -> bytes:
    """A real photo (scikit-image's coffee.png, 600x400) resized to w x h, as a JPEG."""
    skimage = pytest.importorskip("skimage", reason="the photo comes from scikit-image")
    import os

    src = cv2.imread(os.path.join(os.path.dirname(skimage.__file__), "data", "coffee.png"))
    img = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA if w < 600 else cv2.INTER_CUBIC)
    return _pil_bytes(Image.fromarray(img[:, :, ::-1].copy()), "JPEG", quality=90, **pil_kw)


def test_draft_scale_keeps_the_shorter_side_above_the_margin():
    rule = ResizeRule.for_input_size(224)  # resize_to 256
    side = draft_side_for(rule)
    assert side == 320 == int(np.ceil(256 * DRAFT_MARGIN))
    assert draft_scale(1280, 720, side) == 2  # 360 >= 320
    assert draft_scale(1920, 1080, side) == 2  # 540 >= 320, 270 < 320
    assert draft_scale(3840, 2160, side) == 4
    assert draft_scale(640, 480, side) == 1  # 240 < 320: full size
    assert draft_scale(20000, 2600, side) == 8  # portrait or landscape: the shorter side counts


@pytest.mark.parametrize("w,h,scale", [(1280, 720, 2), (2560, 1440, 4), (400, 300, 1)])
def test_draft_decode_reduces_large_jpegs_and_stays_close(w, h, scale):
    data = _photo_jpeg(w, h)
    rule = ResizeRule.for_input_size(224)
    full, draft = read_image(data), read_image(data, draft_side=draft_side_for(rule))
    assert full.shape == (h, w, 3)
    assert draft.shape == (-(-h // scale), -(-w // scale), 3), draft.shape
    a, b = prepare(full, rule).astype(np.float32), prepare(draft, rule).astype(np.float32)
    if scale == 1:
        assert np.array_equal(a, b)
    else:  # a DCT-domain downscale then the triangle filter vs the triangle filter alone:
        # close on a real photo (measured 0.46-0.48 grey levels mean) but not the same pixels
        assert 0.05 < np.abs(a - b).mean() < 2.0, np.abs(a - b).mean()


def test_draft_decode_applies_exif_orientation_and_ignores_other_formats():
    ex = Image.Exif()
    ex[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _photo_jpeg(1280, 720, exif=ex)
    full, draft = read_image(data), read_image(data, draft_side=320)
    assert full.shape == (1280, 720, 3) and draft.shape == (640, 360, 3)
    # rotated like the full decode: the same picture at half size (a wrong rotation or a
    # double one would be tens of grey levels off)
    half = cv2.resize(full, (360, 640), interpolation=cv2.INTER_AREA)
    assert np.abs(half.astype(np.int16) - draft).mean() < 3.0
    png = cv2.imencode(".png", np.full((720, 1280, 3), 90, np.uint8))[1].tobytes()
    assert read_image(png, draft_side=320).shape == (720, 1280, 3)


# -- prepare: the resize rule ----------------------------------------------------------------
def _torchvision_crop(bgr: np.ndarray, rule: ResizeRule) -> np.ndarray:
    T = pytest.importorskip("torchvision.transforms", reason="reference needs torchvision")
    t = T.Compose(
        [
            T.Resize(rule.resize_to, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(rule.crop),
        ]
    )
    return np.asarray(t(Image.fromarray(bgr[:, :, ::-1].copy())))[:, :, ::-1]


@pytest.mark.parametrize(
    "h,w",
    [
        (8, 8),
        (9, 300),
        (250, 250),
        (255, 257),
        (256, 256),
        (333, 500),
        (512, 512),
        (720, 1280),
        (1001, 999),
        (300, 4000),
    ],
)
def test_prepare_matches_torchvision_resize_and_center_crop(h, w):
    rng = np.random.default_rng(h * 10007 + w)
    # smooth random content with texture at every scale (noise alone would hide offsets)
    img = cv2.resize(
        rng.integers(0, 256, (max(h // 4, 2), max(w // 4, 2), 3), dtype=np.uint8),
        (w, h),
        interpolation=cv2.INTER_CUBIC,
    )
    img = cv2.add(img, rng.integers(0, 24, (h, w, 3), dtype=np.uint8))
    rule = ResizeRule.for_input_size(224)
    ours, ref = prepare(img, rule), _torchvision_crop(img, rule)
    assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8 and ours.flags["C_CONTIGUOUS"]
    diff = np.abs(ours.astype(np.int16) - ref)
    # PIL rounds 22-bit fixed-point weights; float32 weights here land one grey level off
    # where a sum sits within ~1e-6 of a rounding tie (measured: <= 0.2% of pixels, max 1).
    assert diff.max() <= 1 and (diff > 0).mean() < 0.005, (diff.max(), (diff > 0).mean())


def test_center_box_geometry():
    # 1280x720 -> 455x256 (int(256 * 1280 / 720)), crop left = round(231 / 2) = 116 (half-even)
    b = center_box(720, 1280, 256, 224)
    assert (b.new_w, b.new_h) == (455, 256)
    assert b.x0 == pytest.approx(116 * 1280 / 455) and b.y0 == pytest.approx(16 * 720 / 256)
    assert b.x1 - b.x0 == pytest.approx(224 * 1280 / 455)
    b = center_box(1000, 600, 256, 224)  # portrait
    assert (b.new_w, b.new_h) == (256, 426) and b.y0 == pytest.approx(101 * 1000 / 426)


def test_prepare_accepts_gray_and_views_and_refuses_tiny():
    rule = ResizeRule.for_input_size(32)
    g = (np.arange(60 * 80) % 251).astype(np.uint8).reshape(60, 80)
    out = prepare(g, rule)
    assert out.shape == (32, 32, 3) and (out[:, :, 0] == out[:, :, 2]).all()
    big = np.dstack([g, g, g])
    assert (
        prepare(big[:, ::-1], rule)
        == center_crop_resize(np.ascontiguousarray(big[:, ::-1]), rule.resize_to, rule.crop)
    ).all()
    with pytest.raises(ImageError, match="frame 7: expected at least 8 px .*found 100x3"):
        prepare(np.zeros((3, 100, 3), np.uint8), rule, name="frame 7")


# -- find_images -----------------------------------------------------------------------------
def test_find_images_walks_folders_and_reports_non_images(tmp_path):
    images, others = mixed_folder(tmp_path / "set")
    files, problems = find_images([str(tmp_path / "set")])
    assert files == images
    reported = {p: m for p, m in problems}
    assert sorted(reported) == others  # .DS_Store (hidden) is neither listed nor reported
    assert all("expected an image file" in m and "skipped" in m for m in reported.values())
    assert ".csv" in reported[str(tmp_path / "set" / "sub" / "labels.csv")]


def test_find_images_globs_files_and_missing_paths(tmp_path):
    images, _ = mixed_folder(tmp_path / "set")
    odd = tmp_path / "frame.raw"
    odd.write_bytes(b"x")
    files, problems = find_images(
        [
            str(tmp_path / "set" / "**" / "*.jpg"),
            str(odd),
            str(tmp_path / "nope"),
            str(tmp_path / "*.none"),
            str(tmp_path / "set" / "a.png"),
        ]
    )
    assert files == sorted(
        [str(tmp_path / "set" / "sub" / "b.jpg"), str(odd), str(tmp_path / "set" / "a.png")]
    )  # explicit files are kept
    msgs = dict(problems)
    assert "found no such path" in msgs[str(tmp_path / "nope")]
    assert "found none" in msgs[str(tmp_path / "*.none")]
    assert len(problems) == 2
