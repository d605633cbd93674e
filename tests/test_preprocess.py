"""Decoding and letterboxing follow the serving convention; bad inputs are refused clearly."""

import io
import struct

import cv2
import numpy as np
import pytest

from yolov5face.pipeline.decode import ImageError, decode_image, decode_with_size, image_size
from yolov5face.pipeline.letterbox import letterbox_batch, resized_shape


@pytest.mark.parametrize(
    ("h0", "w0", "expected"),
    [
        (616, 616, (318, 320)),  # square: width branch, float rounding gives 318
        (366, 488, (238, 320)),  # 488x366 -> 320x238
        (720, 1280, (180, 320)),
        (1150, 2048, (178, 320)),
        (2059, 1879, (320, 292)),  # portrait: height is the long side
        (200, 100, (200, 100)),  # never upscaled
        (320, 320, (320, 320)),
        (1, 5000, (1, 320)),  # degenerate strip keeps at least one row
    ],
)
def test_resized_shape(h0, w0, expected):
    assert resized_shape(h0, w0, 320) == expected


def test_letterbox_geometry_and_padding():
    rng = np.random.default_rng(0)
    odd = rng.integers(0, 255, (57, 101, 3), np.uint8)  # odd sides, smaller than the input
    big = rng.integers(0, 255, (720, 1280, 3), np.uint8)
    batch, geo = letterbox_batch([odd, big], 320)
    assert batch.shape == (2, 3, 320, 320) and batch.dtype == np.float32
    assert geo[0].tolist() == [101, 57, 101, 57, 109, 131]
    assert geo[1].tolist() == [1280, 720, 320, 180, 0, 70]
    # content placed at (padh, padw), RGB order, /255; the rest is 128/255
    np.testing.assert_allclose(batch[0, :, 131, 109], odd[0, 0, ::-1] / 255.0, rtol=1e-6)
    assert np.allclose(batch[0, :, :131, :], 128 / 255.0)
    assert np.allclose(batch[0, :, 131 + 57 :, :], 128 / 255.0)  # extra row at the bottom
    assert np.allclose(batch[0, :, :, 109 + 101 :], 128 / 255.0)  # extra column on the right
    assert np.allclose(batch[1, :, :70, :], 128 / 255.0)


@pytest.mark.parametrize("shape", [(57, 101), (720, 1280), (2059, 1879), (320, 320), (1, 5000)])
def test_letterbox_matches_the_plain_canvas_recipe_bit_for_bit(shape):
    """The plane-by-plane fast path equals canvas -> RGB -> CHW -> /255 exactly."""
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), np.uint8)
    batch, geo = letterbox_batch([image, image], 320)
    w1, h1, padw, padh = (int(v) for v in geo[0, 2:])
    resized = image if (h1, w1) == shape else cv2.resize(image, (w1, h1))
    canvas = np.full((320, 320, 3), 128, np.uint8)
    canvas[padh : padh + h1, padw : padw + w1] = resized
    expected = canvas[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    assert np.array_equal(batch[0], expected) and np.array_equal(batch[1], expected)


def test_letterbox_refuses_images_that_are_not_bgr():
    with pytest.raises(ValueError, match="BGR"):
        letterbox_batch([np.zeros((40, 60), np.uint8)], 320)


def _jpeg(image, **params) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def test_good_formats_decode(images):
    colour = decode_image((images / "zidane.jpg").read_bytes())
    assert colour.shape == (720, 1280, 3)
    gray = _jpeg(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY))
    assert decode_image(gray).shape == (720, 1280, 3)
    png = cv2.imencode(".png", colour[:100, :80])[1].tobytes()
    assert image_size(png) == ("png", 80, 100)
    assert decode_image(png).shape == (100, 80, 3)
    assert decode_image(_jpeg(np.zeros((1, 1, 3), np.uint8))).shape == (1, 1, 3)
    progressive = (images / "test.jpg").read_bytes()
    assert image_size(progressive) == ("jpeg", 2048, 1150)


def test_cmyk_jpeg_decodes_to_bgr():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(buf, "JPEG")  # red in CMYK
    image = decode_image(buf.getvalue())
    assert image.shape == (48, 64, 3)
    b, g, r = image[24, 32].tolist()
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"not a jpeg", "not an image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated"),
    ],
)
def test_garbage_is_refused(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_bad_image_file(images):
    with pytest.raises(ImageError, match="not an image"):
        decode_image((images / "bad_image.jpg").read_bytes())


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9])
def test_truncated_jpeg_is_refused(images, fraction):
    data = (images / "zidane.jpg").read_bytes()
    with pytest.raises(ImageError, match="truncated"):
        decode_image(data[: int(len(data) * fraction)])


def test_truncated_png_is_refused(images):
    rng = np.random.default_rng(1)
    png = cv2.imencode(".png", rng.integers(0, 255, (200, 200, 3), np.uint8))[1].tobytes()
    with pytest.raises(ImageError):
        decode_image(png[: len(png) // 2])


def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF dimensions of a baseline JPEG (pixels untouched)."""
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]


def test_huge_image_refused_before_decoding(images):
    small = _jpeg(np.zeros((16, 16, 3), np.uint8))
    huge = _patch_jpeg_size(small, 10_000, 8_000)  # claims 80 MP; decoding would be garbage
    with pytest.raises(ImageError, match="too large: 10000x8000"):
        decode_image(huge)
    with pytest.raises(ImageError, match="limit 100"):
        decode_image(small, max_pixels=100)
    assert decode_image(small, max_pixels=256).shape == (16, 16, 3)


def _jpeg_variants(images) -> dict[str, bytes]:
    """Encodings the libjpeg-turbo fast path must decode exactly like OpenCV."""
    bus = cv2.imread(str(images / "bus.jpg"))
    out = {}
    for name, sampling in (
        ("444", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
        ("422", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422),
        ("420", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420),
        ("411", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411),
    ):
        for progressive in (0, 1):
            for size in ((333, 251), (17, 9)):
                params = [
                    cv2.IMWRITE_JPEG_QUALITY, 80,
                    cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling,
                    cv2.IMWRITE_JPEG_PROGRESSIVE, progressive,
                    cv2.IMWRITE_JPEG_RST_INTERVAL, 3 * progressive,
                ]  # fmt: skip
                key = f"{name}-p{progressive}-{size[0]}x{size[1]}"
                out[key] = cv2.imencode(".jpg", cv2.resize(bus, size), params)[1].tobytes()
    out["gray"] = _jpeg(cv2.cvtColor(bus, cv2.COLOR_BGR2GRAY))
    return out


def test_jpeg_decoding_is_pixel_identical_to_opencv(images):
    """Whichever decoder runs, the pixels are exactly cv2.imdecode's (the convention's step 1)."""
    blobs = {p.name: p.read_bytes() for p in sorted(images.glob("*.jpg")) if p.stat().st_size > 100}
    blobs.update(_jpeg_variants(images))
    for name, data in blobs.items():
        expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert np.array_equal(decode_image(data), expected), name


def test_jpeg_fast_path_is_libjpeg_turbo(images, monkeypatch):
    """The upright full-size JPEG goes through simplejpeg (a real dependency, not optional)."""
    from yolov5face.pipeline import decode as imagedecode

    data = (images / "zidane.jpg").read_bytes()
    assert imagedecode._simplejpeg() is not None
    direct = imagedecode._decode_turbo(data)
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    def opencv_must_not_run(*args, **kwargs):
        raise AssertionError("an upright JPEG fell back to cv2.imdecode")

    monkeypatch.setattr(cv2, "imdecode", opencv_must_not_run)
    assert direct is not None and np.array_equal(decode_image(data), expected)


def _with_exif_orientation(jpeg: bytes, orientation: int, big_endian: bool = False) -> bytes:
    """Insert an APP1 Exif segment whose IFD0 holds one Orientation entry."""
    order = ">" if big_endian else "<"
    tiff = (b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, 8)
    tiff += struct.pack(order + "H", 1) + struct.pack(order + "HHIH2x", 0x0112, 3, 1, orientation)
    tiff += struct.pack(order + "I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_follows_opencv(images, orientation, big_endian):
    """OpenCV rotates by the EXIF orientation; such files bypass the fast decoder."""
    from yolov5face.pipeline.decode import _read_header

    rng = np.random.default_rng(2)
    data = _with_exif_orientation(
        _jpeg(rng.integers(0, 255, (48, 80, 3), np.uint8)), orientation, big_endian
    )
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert expected.shape[:2] == ((80, 48) if orientation in (6, 8) else (48, 80))
    assert _read_header(data)[3] is (orientation == 1)
    assert np.array_equal(decode_image(data), expected)


def test_corrupt_scan_data_decodes_like_opencv(images):
    """Data errors make libjpeg-turbo warn; the bytes then go to OpenCV, which decides."""
    data = bytearray((images / "zidane.jpg").read_bytes())
    data[120_000:120_040] = bytes(range(40))
    expected = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decode_image(bytes(data)), expected)


@pytest.mark.parametrize(("name", "factor"), [("test.jpg", 4), ("zidane.jpg", 4), ("bus.jpg", 2)])
def test_min_side_decodes_jpegs_at_reduced_scale(images, name, factor):
    """Fast mode: OpenCV's DCT-scaled decode at the largest factor keeping the long side >= 320."""
    data = (images / name).read_bytes()
    full, full_size = decode_with_size(data)
    image, size = decode_with_size(data, min_side=320)
    assert size == full_size == (full.shape[1], full.shape[0])
    h, w = full.shape[:2]
    assert image.shape == (-(-h // factor), -(-w // factor), 3)
    flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}[factor]
    assert np.array_equal(image, cv2.imdecode(np.frombuffer(data, np.uint8), flag))
    png = cv2.imencode(".png", full)[1].tobytes()
    assert decode_with_size(png, min_side=320)[0].shape == full.shape  # JPEG only
