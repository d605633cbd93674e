"""Header parsing and decoding of request bodies: sizes, EXIF orientation, refusals, fast mode."""

import re
import struct

import cv2
import numpy as np
import pytest

from yolov5face.pipeline.decode import (
    ImageError,
    _read_header,
    decode_image,
    decode_with_size,
    image_size,
    reduction_factor,
)

H, W = 301, 417  # odd, distinct, both > 255
UNRECOGNISED = re.escape("not an image: unrecognised format (JPEG, PNG, BMP and WebP are accepted)")


def _pixels(h: int = H, w: int = W, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(h * w).integers(0, 256, (h, w, channels), np.uint8)


def _encode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok
    return buf.tobytes()


def _jpeg(h: int = 48, w: int = 80, progressive: bool = False) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    return _encode(".jpg", _pixels(h, w), params)


def _opencv(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _after_soi(jpeg: bytes, *parts: bytes) -> bytes:
    return jpeg[:2] + b"".join(parts) + jpeg[2:]


def _sof_payload(width: int = W, height: int = H) -> bytes:
    return struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"


def _sos(payload: bytes = b"\x01\x01\x00\x00\x3f\x00") -> bytes:
    return _segment(0xDA, payload)


def _header(*segments: bytes, scan: bytes = b"\x12\x34\x56", eoi: bool = True) -> bytes:
    """A hand-made JPEG byte stream (enough for the header walker, not for a decoder)."""
    return b"\xff\xd8" + b"".join(segments) + scan + (b"\xff\xd9" if eoi else b"")


# --- PNG, BMP and WebP headers ---------------------------------------------------------------


def _formats() -> dict[str, tuple[str, bytes, bytes]]:
    """name -> (format, chunk tag expected at bytes 12:16 or b"", encoded bytes)."""
    rgb, rgba = _pixels(), _pixels(channels=4)
    return {
        "png": ("png", b"IHDR", _encode(".png", rgb)),
        "bmp": ("bmp", b"", _encode(".bmp", rgb)),
        "webp-lossy": ("webp", b"VP8 ", _encode(".webp", rgb, [cv2.IMWRITE_WEBP_QUALITY, 80])),
        "webp-lossless": ("webp", b"VP8L", _encode(".webp", rgb, [cv2.IMWRITE_WEBP_QUALITY, 101])),
        "webp-extended": ("webp", b"VP8X", _encode(".webp", rgba, [cv2.IMWRITE_WEBP_QUALITY, 80])),
    }


FORMATS = _formats()
MINIMUM = {"png": 24, "bmp": 26, "webp": 30}


@pytest.mark.parametrize("name", list(FORMATS))
def test_image_size_matches_the_decoded_shape(name):
    fmt, chunk, data = FORMATS[name]
    if chunk:
        assert data[12:16] == chunk  # the variant really is the one named
    assert image_size(data) == (fmt, W, H)
    assert _read_header(data) == (fmt, W, H, False)  # only JPEGs take the libjpeg-turbo path
    image, size = decode_with_size(data)
    assert image.shape == (H, W, 3) and size == (W, H)


def test_top_down_bmp_has_a_positive_height():
    data = FORMATS["bmp"][2]
    assert struct.unpack("<ii", data[18:26]) == (W, H)  # OpenCV writes bottom-up rows
    top_down = data[:22] + struct.pack("<i", -H) + data[26:]
    assert image_size(top_down) == ("bmp", W, H)
    assert np.array_equal(decode_image(top_down), decode_image(data)[::-1])


@pytest.mark.parametrize("name", list(FORMATS))
def test_header_is_read_from_its_minimum_length_and_no_less(name):
    fmt, _, data = FORMATS[name]
    need = MINIMUM[fmt]
    assert image_size(data[:need]) == (fmt, W, H)
    with pytest.raises(ImageError, match=f"^{UNRECOGNISED}$"):
        image_size(data[: need - 1])


@pytest.mark.parametrize(
    "data",
    [
        b"GIF89a" + bytes(64),
        b"just some text, long enough to hold any of the headers we know",
        b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40),  # RIFF, but audio
        b"RIFF\x24\x00\x00\x00WEBPVP8Z" + bytes(40),  # WebP with an unknown first chunk
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIDAT" + bytes(40),  # PNG not starting with IHDR
        b"\x00\x00\x00\x0dIHDR" * 4,  # IHDR where a PNG has it, but no signature
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00",  # IHDR cut short
    ],
    ids=["gif", "text", "wave", "webp-unknown", "png-no-ihdr", "ihdr-only", "png-short"],
)
def test_unrecognised_bytes_are_refused_with_the_formats_we_accept(data):
    with pytest.raises(ImageError, match=f"^{UNRECOGNISED}$"):
        decode_image(data)


def test_png_width_beyond_31_bits_is_too_large_not_negative():
    data = bytearray(FORMATS["png"][2])
    data[16:24] = struct.pack(">II", 0xFFFFFFFF, 1)
    assert image_size(bytes(data)) == ("png", 0xFFFFFFFF, 1)
    with pytest.raises(ImageError, match=r"^image too large: 4294967295x1 = 4294967295 pixels"):
        decode_image(bytes(data))


# --- sizes and limits -------------------------------------------------------------------------


def _with_sof_size(jpeg: bytes, width: int, height: int) -> bytes:
    i = jpeg.index(b"\xff\xc0")
    return jpeg[: i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9 :]


@pytest.mark.parametrize(("width", "height"), [(0, 16), (16, 0), (0, 0)])
def test_zero_sized_header_is_refused(width, height):
    data = _with_sof_size(_jpeg(16, 16), width, height)
    with pytest.raises(ImageError, match=rf"^invalid jpeg header: size {width}x{height}$"):
        decode_image(data)


def test_bmp_with_zero_width_is_refused():
    data = FORMATS["bmp"][2]
    with pytest.raises(ImageError, match=rf"^invalid bmp header: size 0x{H}$"):
        decode_image(data[:18] + struct.pack("<i", 0) + data[22:])


def test_jpeg_sides_above_32767_are_read_unsigned():
    data = _with_sof_size(_jpeg(16, 16), 65000, 40000)
    assert image_size(data) == ("jpeg", 65000, 40000)
    message = r"^image too large: 65000x40000 = 2600000000 pixels \(limit 40000000\)$"
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_max_pixels_is_inclusive():
    data = _jpeg(16, 16)
    assert decode_image(data, max_pixels=256).shape == (16, 16, 3)
    with pytest.raises(ImageError, match=r"^image too large: 16x16 = 256 pixels \(limit 255\)$"):
        decode_image(data, max_pixels=255)


def test_a_side_past_opencvs_bound_is_refused_not_raised():
    """A BMP header of 1114112 x 1 (1.1 MP, under max_pixels): OpenCV asserts on a side over
    2**20 and raised cv2.error out of the decoder, failing the whole batch (found by fuzzing)."""
    header = b"BM" + bytes(12) + struct.pack("<IiiHH", 40, 1_114_112, 1, 1, 24) + bytes(24)
    with pytest.raises(ImageError, match=r"^image too large: 1114112x1 \(at most 1048576 "):
        decode_image(header)
    widest = cv2.imencode(".bmp", np.zeros((1, 1 << 20, 3), np.uint8))[1].tobytes()
    assert decode_image(widest).shape == (1, 1 << 20, 3)  # the bound itself is accepted


def test_os2_bitmap_sides_are_16_bit():
    """An OS/2 1.x BMP (12-byte core header) was read as a Windows one: 131075x1572865."""
    row = bytes([10, 20, 30] * 3) + bytes(3)  # 3 pixels, padded to 4 bytes
    data = (
        b"BM"
        + struct.pack("<IHHI", 26 + 2 * len(row), 0, 0, 26)
        + struct.pack("<IHHHH", 12, 3, 2, 1, 24)
        + row * 2
    )
    assert image_size(data) == ("bmp", 3, 2)
    assert np.array_equal(decode_image(data), _opencv(data))
    assert decode_image(data)[0, 0].tolist() == [10, 20, 30]
    assert image_size(data[:22]) == ("bmp", 3, 2)  # the core header's minimum length
    with pytest.raises(ImageError, match="unrecognised format"):
        image_size(data[:21])
    wide = data[:18] + struct.pack("<HH", 40_000, 2) + data[22:]
    assert image_size(wide) == ("bmp", 40_000, 2)  # unsigned: not -25536


def test_opencv_refusing_a_header_by_assertion_is_a_400(monkeypatch):
    """With our own side bound out of the way, OpenCV's assertion on a 1114112-wide BMP is
    caught as an undecodable image, not raised as cv2.error."""
    from yolov5face.pipeline import decode

    monkeypatch.setattr(decode, "MAX_SIDE", 1 << 22)
    header = b"BM" + bytes(12) + struct.pack("<IiiHH", 40, 1_114_112, 1, 1, 24) + bytes(24)
    with pytest.raises(ImageError, match=r"^cannot decode bmp image: corrupt or truncated data$"):
        decode_image(header)


def test_empty_body_is_refused():
    for empty in (b"", bytearray(), memoryview(b"")):
        with pytest.raises(ImageError, match="^empty body: expected image bytes$"):
            decode_image(empty)


def test_undecodable_body_names_its_format():
    data = FORMATS["png"][2]
    with pytest.raises(ImageError, match=r"^cannot decode png image: corrupt or truncated data$"):
        decode_image(data[: len(data) // 2])


def test_truncated_progressive_jpeg_is_refused_like_opencv():
    """Lenient libjpeg-turbo would fill in the missing scans; OpenCV refuses, and so must we."""
    import simplejpeg

    jpeg = _jpeg(120, 160, progressive=True)
    second_scan = jpeg.index(b"\xff\xda", jpeg.index(b"\xff\xda") + 2)
    data = jpeg[: second_scan + 2] + b"\xff\xd9"  # cut inside the second scan's header
    assert _read_header(data)[3] and _opencv(data) is None
    lenient = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=False)
    assert lenient.shape == (120, 160, 3)
    with pytest.raises(ImageError, match="^cannot decode jpeg image: corrupt or truncated data$"):
        decode_image(data)


def test_memoryview_and_bytearray_bodies_decode():
    data = _jpeg()
    expected = _opencv(data)
    assert np.array_equal(decode_image(bytearray(data)), expected)
    assert np.array_equal(decode_image(memoryview(data)), expected)


# --- the JPEG marker walk ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [b"\xff", b"\xff\xff\xff", b"\xff\x01", b"\xff\xd0", b"\xff\xd7", b"\xff\xff\xd3\xff\x01"],
    ids=["fill", "fills", "tem", "rst0", "rst7", "mixed"],
)
def test_fill_bytes_and_standalone_markers_are_stepped_over(extra):
    jpeg = _jpeg()
    data = _after_soi(jpeg, extra)
    assert image_size(data) == ("jpeg", 80, 48)
    assert np.array_equal(decode_image(data), _opencv(jpeg))


def test_a_long_run_of_fill_bytes_is_stepped_over_at_once():
    jpeg = _jpeg()
    for run in (b"\xff" * 100_000 + b"\xfe\x00\x02", b"\xff" * 3):  # before a COM, before SOF
        data = _after_soi(jpeg, run)
        assert image_size(data) == ("jpeg", 80, 48)
        assert np.array_equal(decode_image(data), _opencv(jpeg))
    with pytest.raises(ImageError, match="header ends before the image data"):
        image_size(b"\xff\xd8" + b"\xff" * 100_000)


def test_markers_before_the_scan_are_bounded():
    """A header may carry up to 1024 markers (real ones: tens); 20 MiB of tiny segments or RST
    markers used to be walked one by one, seconds of a worker's CPU."""
    jpeg = _jpeg()
    own, i = 0, 2  # the JPEG's own markers up to and including its SOS (it has no fill bytes)
    while True:
        own += 1
        if jpeg[i + 1] == 0xDA:
            break
        i += 2 + struct.unpack(">H", jpeg[i + 2 : i + 4])[0]
    assert 5 <= own <= 20  # APP0, DQT, SOF0, DHT..., SOS
    data = _after_soi(jpeg, b"\xff\xd0" * (1024 - own))  # exactly at the bound
    assert np.array_equal(decode_image(data), _opencv(jpeg))
    with pytest.raises(ImageError, match="more than 1024 markers before the image data"):
        image_size(_after_soi(jpeg, b"\xff\xd0" * (1024 - own + 1)))
    for extra in (b"\xff\xd0", _segment(0xFE, b"")):
        with pytest.raises(ImageError, match="more than 1024 markers before the image data"):
            image_size(_after_soi(jpeg, extra * 1024))


def _scans(jpeg: bytes) -> list[bytes]:
    """Each scan of a JPEG: from its SOS marker to the next scan, the EOI or a table."""
    starts = [m.start() for m in re.finditer(rb"\xff\xda", jpeg)]
    return [jpeg[a:b] for a, b in zip(starts, [*starts[1:], len(jpeg) - 2])]


def test_scans_are_bounded():
    """32 scans at most: each is a pass over the whole image, and a body could repeat a 14-byte
    refinement scan a million times (1000 of them: 8.5 s of CPU on a 4 MP image)."""
    jpeg = _jpeg(64, 64, progressive=True)
    last = _scans(jpeg)[-1]
    assert len(_scans(jpeg)) == 10  # libjpeg's default progression
    at_bound = jpeg[:-2] + last * 22 + b"\xff\xd9"
    assert decode_image(at_bound).shape == (64, 64, 3)
    with pytest.raises(ImageError, match=r"^JPEG with 33 scans; at most 32 are accepted$"):
        image_size(jpeg[:-2] + last * 23 + b"\xff\xd9")
    # FF DA inside a segment before the first scan (a thumbnail, any APP payload) is no scan
    padded = _after_soi(jpeg, _segment(0xE2, b"\xff\xda" * 40))
    assert np.array_equal(decode_image(padded), decode_image(jpeg))


def test_a_marker_outside_the_standalone_set_carries_a_length():
    """SOI (0xD8), just past RST7, is walked as a segment like any other marker."""
    data = _header(_segment(0xD8, b""), _segment(0xC0, _sof_payload()), _sos())
    assert image_size(data) == ("jpeg", W, H)


@pytest.mark.parametrize("payload", [b"", bytes(40_000)], ids=["empty", "over-32k"])
def test_segment_lengths_from_2_to_over_32k_are_walked(payload):
    jpeg = _jpeg()
    data = _after_soi(jpeg, _segment(0xFE, payload))
    assert image_size(data) == ("jpeg", 80, 48)
    assert np.array_equal(decode_image(data), _opencv(jpeg))


@pytest.mark.parametrize(
    "marker", [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF]
)
def test_every_frame_header_type_gives_the_size(marker):
    assert image_size(_header(_segment(marker, _sof_payload()), _sos())) == ("jpeg", W, H)


@pytest.mark.parametrize("marker", [0xC4, 0xC8, 0xCC, 0xE0])
def test_segments_that_are_not_frame_headers_give_no_size(marker):
    data = _header(_segment(marker, _sof_payload()), _sos())
    with pytest.raises(ImageError, match="^corrupt JPEG: no frame header before the scan$"):
        image_size(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated JPEG: header ends before the image data"),
        (b"\xff\xd8\xff\xe0\x00\x04ab\x00\xda\x00\x02", "corrupt JPEG: bad marker"),
        (_header(_segment(0xC0, _sof_payload()), b"\x12"), "corrupt JPEG: bad marker"),
        (b"\xff\xd8\xff\xe0\x00\x00" + bytes(8), "corrupt JPEG: bad segment length"),
        (b"\xff\xd8\xff\xe0\x00\x01" + bytes(8), "corrupt JPEG: bad segment length"),
        (_header(_sos()), "corrupt JPEG: no frame header before the scan"),
        (_header(_segment(0xC0, _sof_payload()), _sos(), eoi=False), "truncated JPEG: no end"),
    ],
    ids=["short", "bad-marker", "junk-after-segment", "length-0", "length-1", "no-sof", "no-eoi"],
)
def test_malformed_jpeg_headers_are_refused(data, message):
    with pytest.raises(ImageError, match=f"^{re.escape(message)}"):
        decode_image(data)


def test_every_cut_through_the_header_is_refused_as_truncated():
    jpeg = _jpeg()
    scan = jpeg.index(b"\xff\xda")
    scan_data = scan + 2 + struct.unpack(">H", jpeg[scan + 2 : scan + 4])[0]
    for cut in range(3, scan + 4):
        with pytest.raises(ImageError, match="^truncated JPEG: header ends before the image data$"):
            image_size(jpeg[:cut])
    for cut in range(scan + 4, scan_data + 3):  # the scan header is read; no EOI follows
        with pytest.raises(ImageError, match="^truncated JPEG: no end-of-image marker$"):
            image_size(jpeg[:cut])


def test_end_of_image_is_looked_for_only_after_the_scan_header():
    # an FF D9 inside a comment, or inside the scan header itself, is not the end of the file
    jpeg = _jpeg()
    cut = _after_soi(jpeg, _segment(0xFE, b"\xff\xd9"))[:-100]
    with pytest.raises(ImageError, match="^truncated JPEG: no end-of-image marker$"):
        decode_image(cut)
    odd_scan = _header(_segment(0xC0, _sof_payload()), _sos(b"\x01\x01\x00\xff\xd9"), eoi=False)
    with pytest.raises(ImageError, match="^truncated JPEG: no end-of-image marker$"):
        image_size(odd_scan)
    # the end marker may follow the scan header at once
    empty_scan = _header(_segment(0xC0, _sof_payload()), _sos(), scan=b"")
    assert image_size(empty_scan) == ("jpeg", W, H)


# --- EXIF orientation -------------------------------------------------------------------------


def _entry(order: str, tag: int, kind: int, count: int, value: int) -> bytes:
    return struct.pack(order + "HHIH2x", tag, kind, count, value)


def _exif(
    entries: list[bytes], order: str = "<", ifd: int = 8, count: int | None = None, tail=b""
) -> bytes:
    """An APP1 Exif segment: TIFF header, IFD0 at `ifd` holding `entries`, then `tail`."""
    tiff = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, ifd)
    tiff += struct.pack(order + "H", len(entries) if count is None else count)
    return _segment(0xE1, b"Exif\x00\x00" + tiff + b"".join(entries) + tail)


def _orientation(order: str, value: int, kind: int = 3, count: int = 1) -> bytes:
    return _entry(order, 0x0112, kind, count, value)


def _make(order: str) -> bytes:
    return _entry(order, 0x010F, 2, 2, 0x41)  # Make = "A"


def _upright(*segments: bytes, h: int = 48, w: int = 80) -> bool:
    """Whether the fast path may take it; the pixels always match OpenCV's own EXIF handling."""
    data = _after_soi(_jpeg(h, w), *segments)
    assert np.array_equal(decode_image(data), _opencv(data))
    return _read_header(data)[3]


@pytest.mark.parametrize("order", ["<", ">"])
def test_orientation_is_found_after_other_entries(order):
    assert _upright(_exif([_make(order), _orientation(order, 1)], order, tail=bytes(4)))
    assert not _upright(_exif([_make(order), _orientation(order, 6)], order, tail=bytes(4)))
    assert _upright(_exif([_make(order)], order, tail=bytes(4)))  # no orientation at all


@pytest.mark.parametrize("order", ["<", ">"])
def test_orientation_entry_may_end_the_segment(order):
    assert _upright(_exif([_orientation(order, 1)], order))


@pytest.mark.parametrize(
    ("kind", "count"), [(4, 1), (3, 2), (4, 2)], ids=["long", "two-shorts", "two-longs"]
)
def test_orientation_that_is_not_one_short_is_distrusted(kind, count):
    assert not _upright(_exif([_orientation("<", 1, kind, count)]))


def test_malformed_exif_is_not_upright():
    entry = _orientation("<", 1)
    # IFD0 past the payload, even though a signed reading would land on an orientation of 1
    tail_ifd = _exif([], ifd=2**32 - 18, count=1, tail=entry + bytes(4))
    assert not _upright(tail_ifd)
    assert not _upright(_exif([_make("<")], count=0xFFFF))  # more entries than bytes
    assert not _upright(_exif([_make("<")], count=2))  # second entry runs into the next segment
    assert not _upright(_exif([entry[:-1]]))  # orientation entry cut by the segment end
    bad_order = _segment(0xE1, b"Exif\x00\x00XX" + bytes(12))
    assert not _upright(bad_order)


def test_only_app1_exif_segments_are_read():
    xmp = _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>")
    assert _upright(xmp)
    exif_in_app2 = _exif([_orientation("<", 6)])
    exif_in_app2 = b"\xff\xe2" + exif_in_app2[2:]
    assert _upright(exif_in_app2)


def test_two_exif_segments_are_not_upright():
    one = _exif([_orientation("<", 1)])
    assert _upright(one)
    assert not _upright(one, one)


# --- fast mode (min_side) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "factor"),
    [
        (2560, 100, 8),
        (2559, 100, 4),
        (100, 2560, 8),
        (1280, 1, 4),
        (1279, 1, 2),
        (640, 1, 2),
        (1, 639, 1),
        (100, 100, 1),
    ],
)
def test_reduction_factor_keeps_the_long_side(width, height, factor):
    assert reduction_factor(width, height, 320) == factor


@pytest.mark.parametrize(
    ("min_side", "shape"), [(100, (75, 100, 3)), (200, (150, 200, 3)), (1000, (600, 800, 3))]
)
def test_min_side_decodes_smaller_and_reports_the_full_size(min_side, shape):
    data = _jpeg(600, 800)
    image, size = decode_with_size(data, min_side=min_side)
    assert image.shape == shape and size == (800, 600)
    assert decode_image(data, min_side=min_side).shape == shape


def test_reduced_decode_of_a_nearly_square_image_keeps_its_size():
    image, size = decode_with_size(_jpeg(639, 640), min_side=320)
    assert image.shape == (320, 320, 3) and size == (640, 639)


def test_reduced_decode_reports_the_rotated_size():
    data = _after_soi(_jpeg(720, 1280), _exif([_orientation("<", 6)]))
    full, full_size = decode_with_size(data)
    image, size = decode_with_size(data, min_side=320)
    assert full.shape == (1280, 720, 3) and full_size == (720, 1280)
    assert image.shape == (320, 180, 3) and size == (720, 1280)
