"""Golden parity: every CPU backend reproduces the reference serving outputs."""

import copy

import numpy as np
import pytest

from yolov5face.pipeline.decode import ImageError
from yolov5face.tools.compare import compare_faces, convention_problems, golden_problems

BACKENDS = ["torch", "onnxruntime"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_parity(backend, detectors, images, goldens, golden_names):
    detector = detectors[backend]
    blobs = [(images / name).read_bytes() for name in golden_names]
    results = detector.detect(blobs)  # one mixed-size batch
    for name, faces in zip(golden_names, results):
        assert golden_problems(goldens[name], faces) == [], name


def test_golden_check_covers_score_and_key_order(goldens):
    """The check every served-answer test uses: the pairing rule, descending conf, key order."""
    faces = goldens["test.jpg"]
    assert len(faces) > 2 and all(convention_problems(g) == [] for g in goldens.values())
    assert golden_problems(faces, copy.deepcopy(faces)) == []
    assert compare_faces(faces, faces[::-1]) == []  # the pairing rule alone ignores order...
    assert golden_problems(faces, faces[::-1])  # ...the golden check does not
    swapped = [{k: f[k] for k in ("conf", "xywh_ratio", "landmarks_ratio")} for f in faces]
    assert golden_problems(faces, swapped)
    assert golden_problems(faces, faces[1:])
    assert golden_problems(faces, {"faces": faces}) and golden_problems([], [[]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_equals_single(backend, detectors, images, golden_names):
    detector = detectors[backend]
    blobs = [(images / name).read_bytes() for name in golden_names]
    together = detector.detect(blobs)
    alone = [detector.detect([b])[0] for b in blobs]
    for a, b in zip(together, alone):
        assert compare_faces(a, b) == []


def test_bad_images_do_not_disturb_batch_mates(detector, images):
    good = (images / "zidane.jpg").read_bytes()
    batch = [
        b"",
        good,
        b"garbage!!",
        good[: len(good) // 2],
        (images / "bad_image.jpg").read_bytes(),
    ]
    results = detector.detect(batch)
    expected = detector.detect([good])[0]
    assert [isinstance(r, ImageError) for r in results] == [True, False, True, True, True]
    assert compare_faces(expected, results[1]) == []
    assert all(r.status == 400 and str(r) for r in results if isinstance(r, ImageError))


def test_timings_cover_every_stage(detector, images):
    timings: dict = {}
    detector.detect([(images / "zidane.jpg").read_bytes()], timings)
    assert set(timings) == {"decode", "preprocess", "infer", "postprocess"}
    assert all(v > 0 for v in timings.values())


def test_tiny_and_odd_images_get_answers(detector):
    import cv2

    for h, w in [(1, 1), (3, 7), (321, 319), (33, 2000)]:
        data = cv2.imencode(".png", np.full((h, w, 3), 90, np.uint8))[1].tobytes()
        (faces,) = detector.detect([data])
        assert faces == []


def test_fast_decode_is_opt_in_and_maps_to_original_pixels(onnx_model, images):
    from yolov5face.pipeline.decode import decode_with_size
    from yolov5face.pipeline.detector import Detector
    from yolov5face.pipeline.heads import to_pixels
    from yolov5face.pipeline.nms import box_iou

    fast = Detector(onnx_model, backend="onnxruntime", threads=1, fast_decode=True)
    exact = Detector(onnx_model, backend="onnxruntime", threads=1)
    assert exact.decode_min_side is None and fast.decode_min_side == 320
    data = (images / "mask.jpg").read_bytes()  # 1879x2059: decoded at 1/4
    (a,), (b,) = fast.detect_raw([data]), exact.detect_raw([data])
    assert a.geometry[:2].tolist() == b.geometry[:2].tolist() == [1879, 2059]
    boxes_a, _ = to_pixels(a.faces, a.geometry)
    boxes_b, _ = to_pixels(b.faces, b.geometry)
    iou = box_iou(boxes_b, boxes_a)
    assert (iou.max(axis=1) > 0.8).all()  # the same faces, in original pixels
    # test.jpg (2048x1150) really goes through the reduced-scale decode: the letterbox content
    # is sized from the decoded array, 512x288 at 1/4 -> 320x180 (full size -> 320x178).
    data = (images / "test.jpg").read_bytes()
    reduced, size = decode_with_size(data, min_side=fast.img_size)
    assert reduced.shape == (288, 512, 3) and size == (2048, 1150)
    (a,), (b,) = fast.detect_raw([data]), exact.detect_raw([data])
    assert a.geometry.tolist() == [2048, 1150, 320, 180, 0, 70]
    assert b.geometry.tolist() == [2048, 1150, 320, 178, 0, 71]
