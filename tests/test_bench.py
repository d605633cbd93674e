"""`yolov5face bench`: quick runs (no timing asserts), the baseline's fairness, the report."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from yolov5face.lab.load_levels import median_levels
from yolov5face.lab.memory_bench import bench_memory
from yolov5face.lab.pipeline_bench import bench_pipeline
from yolov5face.lab.report import ReportSettings, environment, write_report
from yolov5face.lab.server_bench import _server_summary, server_tables
from yolov5face.tools.cli import main
from yolov5face.tools.compare import compare_faces

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory, onnx_model: Path, weights: Path):
    """A private YOLOV5FACE_CACHE holding the session's export under its cached name."""
    from yolov5face.convert.onnx import cached_onnx

    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLOV5FACE_CACHE", str(cache))
        cached_onnx(weights, 320, cache / "onnx")  # exported once for this module
        yield cache


@pytest.fixture(scope="module")
def model_result(onnx_cache, weights: Path) -> dict:
    """`bench model` through the CLI: the JSON summary is the last stdout line."""
    out = io.StringIO()
    argv = ["bench", "model", "--weights", str(weights), "--batch", "1,2", "--threads", "1"]
    argv += ["--seconds", "0.05", "--rounds", "1"]
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pipeline_result(onnx_cache, weights: Path) -> dict:
    return bench_pipeline(
        weights,
        images=["zidane.jpg"],
        batches=(1, 2),
        seconds=0.05,
        rounds=1,
        warmup=1,
        postprocess_seconds=0.02,
    )


@pytest.fixture(scope="module")
def memory_result(onnx_model: Path) -> dict:
    return bench_memory(onnx_model, images=5, files=["zidane.jpg", "test.jpg"])


def test_model_rows_have_positive_throughput_for_both_backends(model_result):
    rows = model_result["rows"]
    assert {r["backend"] for r in rows} == {"torch", "onnxruntime"}
    assert {(r["batch"], r["threads"]) for r in rows} == {(1, 1), (2, 1)}
    assert all(r["images_per_s"] > 0 and r["ms_per_batch"] > 0 and r["runs"] >= 1 for r in rows)
    assert set(model_result["ratios_onnxruntime_over_torch"]) == {"b1 t1", "b2 t1"}
    assert model_result["headline"]["name"] == "onnxruntime b2 t1 / torch b2 t1"


@pytest.mark.parametrize("name", ["zidane.jpg", "test.jpg"])
def test_reference_pipeline_gives_the_detectors_faces(detector, weights, images, name):
    from yolov5face.lab.reference_pipeline import ReferencePipeline

    blob = (images / name).read_bytes()
    ours = detector.detect([blob])[0]
    reference = ReferencePipeline(weights).detect_one(blob)
    assert len(ours) == {"zidane.jpg": 2, "test.jpg": 67}[name]
    assert compare_faces(ours, reference) == []
    assert [list(f) for f in reference] == [["xywh_ratio", "conf", "landmarks_ratio"]] * len(ours)


def test_reference_handler_answers_like_torchserve_expects(weights, images):
    spec = importlib.util.spec_from_file_location(
        "reference_handler", ROOT / "yolov5face" / "lab" / "reference_handler.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Context:
        system_properties = {"model_dir": str(weights.parent)}
        manifest = {"model": {"serializedFile": weights.name}}

        def __init__(self) -> None:
            self.statuses: dict[int, int] = {}

        def set_response_content_type(self, idx: int, value: str) -> None:
            assert value == "application/json"

        def set_response_status(self, code: int, message: str, idx: int) -> None:
            self.statuses[idx] = code

    context = Context()
    rows = [{"body": bytearray((images / "zidane.jpg").read_bytes())}, {"body": b"not an image"}]
    out = module.handle(rows, context)
    assert len(json.loads(out[0])) == 2
    assert "error" in json.loads(out[1]) and context.statuses == {1: 400}


def test_pipeline_rows_stages_and_postprocess(pipeline_result):
    rows = pipeline_result["rows"]
    assert [(r["pipeline"], r["batch"]) for r in rows] == [
        ("ours", 1),
        ("ours", 2),
        ("baseline", 1),
    ]
    for row in rows:
        assert row["images_per_s"] > 0
        assert all(row["stages_ms"][s] > 0 for s in ("decode", "infer", "postprocess", "json"))
    assert len(pipeline_result["comparisons"]) == 2
    post = pipeline_result["postprocess"]["zidane.jpg"]
    assert post["faces_ours"] == post["faces_baseline"] == 2


def test_memory_child_serves_without_torch(memory_result):
    assert memory_result["torch_imported"] is False
    assert memory_result["exit_code"] == 0
    assert memory_result["images"] == 5 and memory_result["faces"] == 2 + 67 + 2 + 67 + 2
    assert 0 < memory_result["rss_loaded_mb"] <= memory_result["peak_rss_mb"]


def _level(concurrency: int, qps: float, p99: float) -> dict:
    return {
        "concurrency": concurrency,
        "qps": qps,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "ok": 10,
        "requests": 10,
        "errors": {},
        "elapsed_s": 1.0,
    }


def _memory(workers: int, worker_rss: float, torch: bool) -> dict:
    worker = {"rss_mb": worker_rss, "uss_mb": worker_rss - 100, "torch": torch}
    return {
        "frontend_mb": 250.0,
        "frontend_uss_mb": 240.0,
        "workers": [worker] * workers,
        "workers_rss_mb_total": workers * worker_rss,
        "total_rss_mb": 250.0 + workers * worker_rss,
    }


def _served(workers: int, levels: list[dict], worker_rss: float, torch: bool) -> dict:
    return {
        "model": "m",
        "workers": workers,
        "startup_s": 5.0,
        "levels": levels,
        "requests_served": 40,
        "memory": _memory(workers, worker_rss, torch),
    }


@pytest.fixture
def server_result() -> dict:
    """A server result with made-up numbers: checks the arithmetic, not TorchServe."""
    result = {
        "image": "zidane.jpg",
        "levels": [1, 4],
        "duration_s": 1.0,
        "requests_target": 40,
        "bare_torch": {"rss_mb": 220.0, "uss_mb": 200.0},
        "ceiling": {"processes": 2, "threads": 1, "images_per_s": 100.0},
        "ours": _served(2, [_level(1, 40.0, 30.0), _level(4, 90.0, 60.0)], 120.0, False),
        "reference": _served(4, [_level(1, 20.0, 60.0), _level(4, 30.0, 150.0)], 300.0, True),
        "ours_eager_torch": {"requests_served": 20, "memory": _memory(2, 300.0, True)},
    }
    _server_summary(result)
    return result


def test_median_levels_merges_rounds_per_concurrency():
    first = [_level(1, 40.0, 30.0), _level(4, 90.0, 60.0)]
    second = [_level(1, 44.0, 20.0), _level(4, 70.0, 80.0)]
    third = [_level(1, 42.0, 25.0), _level(4, 80.0, 90.0)]
    for lv, cpu in zip(first + second + third, (9.0, 8.0, 7.0, 10.0, 8.0, 6.0)):
        lv["server_cpu_ms_per_request"] = {"worker": cpu, "frontend": 1.0}
    second[1]["errors"] = {"503": 2}
    merged = median_levels([first, second, third])
    assert [lv["concurrency"] for lv in merged] == [1, 4]
    one, four = merged
    assert (one["qps"], one["p99_ms"], one["qps_by_round"]) == (42.0, 25.0, [40.0, 44.0, 42.0])
    assert (four["qps"], four["p99_ms"], four["p50_ms"]) == (80.0, 80.0, 40.0)
    assert (four["ok"], four["requests"], four["errors"], four["rounds"]) == (30, 30, {"503": 2}, 3)
    assert one["server_cpu_ms_per_request"] == {"frontend": 1.0, "worker": 8.0}  # 9, 7, 8
    assert four["server_cpu_ms_per_request"] == {"frontend": 1.0, "worker": 8.0}  # 8, 10, 6


def test_server_summary_reads_the_headline_off_each_round(server_result):
    result = dict(server_result)
    ours_rounds = [[_level(1, 40.0, 30.0), _level(4, 90.0, 60.0)], [_level(1, 40.0, 30.0)]]
    ref_rounds = [[_level(1, 20.0, 60.0), _level(4, 30.0, 150.0)], [_level(1, 16.0, 35.0)]]
    result["ours"] = {**result["ours"], "rounds": ours_rounds}
    result["reference"] = {**result["reference"], "rounds": ref_rounds}
    _server_summary(result)
    # round 2: the reference peaks at 16 QPS with p99 35 ms; ours stays within 35 ms at 40 QPS
    assert result["vs_reference_by_round"] == [3.0, 2.5]


def test_server_summary_compares_at_the_same_p99(server_result):
    assert server_result["ours_over_ceiling"] == 0.9 and server_result["ceiling_met"]
    assert server_result["vs_reference"] == {
        "p99_budget_ms": 150.0,
        "ours_qps": 90.0,
        "reference_qps": 30.0,
        "ratio": 3.0,
    }
    assert server_result["at_p99"][0]["ratio"] == 4.5  # within 60 ms: ours 90 QPS, reference 20
    # ours 250 + 2 x 120 MB against the reference's 250 + 4 x 300 MB
    assert server_result["memory_vs_reference"] == round(490 / 1450, 3)
    assert server_result["memory_vs_reference_met"] is True
    assert server_result["memory_limits_met"] == {"worker": True, "frontend": True}
    assert server_result["torch_share_of_worker_mb"] == 180.0
    tables = "\n".join(server_tables(server_result))
    assert "ours, torch not deferred worker 2" in tables and "34%" in tables


def test_report_has_every_section_and_plot(
    tmp_path, model_result, pipeline_result, memory_result, server_result
):
    results = {
        "environment": environment(),
        "model": model_result,
        "pipeline": pipeline_result,
        "memory": memory_result,
        "server": server_result,
        "elapsed_s": 12.0,
    }
    out = tmp_path / "docs" / "benchmarks.md"
    write_report(results, out, ReportSettings.quick(), quick=True)
    text = out.read_text()
    for heading in ("## Targets", "## 1. Model", "## 2. Pipeline", "## 3. Memory", "## 4. Server"):
        assert heading in text
    assert "## GPU" in text and "untested" in text
    for png in ("bench_model", "bench_pipeline", "bench_server", "bench_memory"):
        assert (tmp_path / "docs" / "img" / f"{png}.png").stat().st_size > 1000
        assert f"img/{png}.png" in text


def test_decode_study_decoders(images):
    """The study compares ours with plain OpenCV (same pixels) and scaled decoders (smaller)."""
    from yolov5face.lab.decode_study import decoders

    data = (images / "zidane.jpg").read_bytes()
    out = {name: decode(data) for name, decode in decoders(320).items()}
    assert {"ours", "opencv", "opencv-scaled", "simplejpeg-scaled"} <= set(out)
    assert np.array_equal(out["ours"], out["opencv"])
    for name in ("opencv-scaled", "simplejpeg-scaled"):
        assert 320 <= max(out[name].shape[:2]) < 1280, name


def _processes_under(path: Path) -> list[str]:
    """Processes whose command line or environment (TMPDIR, LOG_LOCATION) names `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline or f"={path}/" in environ:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def _metrics_url_under(path: Path) -> str | None:
    """TS_METRICS_ADDRESS of the TorchServe frontend running with its files under `path`."""
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        env = dict(item.split("=", 1) for item in environ if "=" in item)
        if env.get("TMPDIR", "").startswith(str(path)) and "TS_METRICS_ADDRESS" in env:
            return env["TS_METRICS_ADDRESS"]
    return None


def _wait_for_answers(path: Path, deadline: float) -> None:
    """Bounded poll until the TorchServe under `path` has answered an image (its counter)."""
    while time.monotonic() < deadline:
        url = _metrics_url_under(path)
        try:
            text = requests.get(f"{url}/metrics", timeout=5).text if url else ""
        except requests.RequestException:
            text = ""  # the frontend is still starting
        if any(
            line.startswith("Fd1Images{") and float(line.rsplit(" ", 1)[1]) > 0
            for line in text.splitlines()
        ):
            return
        time.sleep(0.5)  # the next poll
    raise TimeoutError("the bench's TorchServe never answered an image")


@pytest.mark.server
@pytest.mark.slow
def test_sigterm_during_bench_server_stops_its_torchserve(tmp_path, weights, onnx_cache):
    """`kill` of a running `bench server` must not leave a frontend or workers behind."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "YOLOV5FACE_CACHE": str(onnx_cache)}
    argv = [sys.executable, "-m", "yolov5face", "bench", "server", "--weights", str(weights)]
    argv += ["--no-reference", "--ceiling-seconds", "0", "--concurrency", "1"]
    argv += ["--duration", "600", "--eager-torch-requests", "0", "--server-warmup", "0"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if any("model_service_worker" in p for p in _processes_under(tmp_path)):
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        workers = [p for p in _processes_under(tmp_path) if "model_service_worker" in p]
        assert workers, "the bench never started its TorchServe workers"
        _wait_for_answers(tmp_path, deadline)  # the load level is running too
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _processes_under(tmp_path) == []
    assert not list(tmp_path.glob("yolov5face-bench-*")), "the bench's temp dir was left behind"


def test_batching_variants_parse():
    from yolov5face.lab.batching_bench import Variant

    assert Variant.parse("b4+split") == Variant(4, True) and Variant.parse("b2").name == "b2"
    assert Variant.parse("b2+split+plain") == Variant(2, True, plain=True)
    assert Variant(2, True, plain=True).name == "b2+split+plain"
    assert Variant(8, True).env(1) == {
        "YOLOV5FACE_BATCH_SIZE": "8",
        "YOLOV5FACE_MAX_BATCH_DELAY": "1",
        "YOLOV5FACE_SPLIT_BATCHES": "1",
        "YOLOV5FACE_BAND": "1",
    }
    assert Variant(2, False, plain=True).env(1)["YOLOV5FACE_BAND"] == "0"
    for bad in ("4", "b0", "b2+spilt", "batch4", "b2+plain+split"):
        with pytest.raises(ValueError):
            Variant.parse(bad)


@pytest.mark.server
@pytest.mark.slow
def test_bench_batching_runs_every_variant_side_by_side(tmp_path, weights, onnx_cache):
    """Two real servers (batch 2 without and with splitting) answer every level of the sweep."""
    out = io.StringIO()
    argv = ["bench", "batching", "--weights", str(weights), "--variants", "b2,b2+split"]
    argv += ["--concurrency", "2", "--duration", "1", "--rounds", "1", "--server-warmup", "2"]
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert list(result["variants"]) == ["b2", "b2+split"]
    for data in result["variants"].values():
        (level,) = data["levels"]
        assert level["concurrency"] == 2 and level["ok"] > 0 and not level["errors"]
        assert sum(level["server_cpu_ms_per_request"].values()) > 0


def _bench_json(*argv: str) -> dict:
    """`yolov5face bench ...` through the CLI: the JSON summary is the last stdout line."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["bench", *argv]) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


def test_options_section_measures_the_default_path_against_the_old_one():
    """bench crops / report section 7: every variant measured on both images, crop cost per face."""
    from yolov5face.lab.crops_bench import VARIANTS, options_section

    result = _bench_json("crops", "--rounds", "2")
    for row in result["images"].values():
        assert set(row["cpu_ms"]) == set(VARIANTS)
        assert row["faces"]["max_faces=5"] <= 5 and row["crop_ms_per_face"] is not None
    assert result["images"]["test.jpg"]["faces"]["crops=112"] == 67
    text = "\n".join(options_section(result))
    assert "## 7. Per-request options" in text and "pre-options path" in text


def test_input_layout_study_times_every_variant(onnx_cache):
    result = _bench_json("input-layout", "--rounds", "1", "--batch", "2")
    assert (result["batch"], result["rounds"]) == (2, 1)
    assert len(result["median_ms"]) == 3 and all(v > 0 for v in result["median_ms"].values())
    assert result["ratio_to_float_plain"]["float32 input (plain)"] == 1.0


def test_reliability_report_lists_every_drill_and_the_soak_memory():
    from yolov5face.lab.reliability import DRILLS, Tally, report

    tally = Tally()
    for kind in ("200", "200", "500", "ClientConnectorError"):
        tally.add(0.0, kind)
    assert tally.failures() == 2 and tally.failures(before=0.0) == 0
    row = {**tally.summary(), "failures": 2}
    results = {name: dict(row) for name in DRILLS}
    results["soak"]["rss_samples"] = [
        {"t_min": 0.0, "frontend_mb": 220.0, "workers_mb": 230.0},
        {"t_min": 1.0, "frontend_mb": 260.0, "workers_mb": 250.0},
    ]
    text = report(results, "yolov5face bench reliability")
    assert text.count("| 4 | 200: 2, 500: 1, ClientConnectorError: 1 | 2 |") == len(DRILLS)
    assert "| 1.0 | 260.0 | 250.0 |" in text and "    yolov5face bench reliability" in text


def test_fp16_study_measures_torch_half_against_onnxruntime_fp32(onnx_cache):
    """bench fp16 on the CPU: torch's half kernels on the six photos keep the golden rule."""
    result = _bench_json("fp16", "--limit", "6", "--no-ap")
    assert result["fp16"]["precision"] == "fp16" and result["fp32"]["precision"] == "fp32"
    assert (result["images"], result["pairs"], result["missing"], result["extra"]) == (6, 77, 0, 0)
    assert result["breaches"] == [] and result["images_off_golden_rule"] == {}
    assert 0 < result["max_shift"]["conf"] <= 0.005  # fp16 moves scores, within the contract
    assert "ap" not in result
    from yolov5face.lab.fp16_study import fp16_section

    text = "\n".join(fp16_section(result))
    assert "## 8. fp16 against fp32" in text and "77 faces paired" in text
    assert f"| conf | {result['max_shift']['conf']} | 0.005 |" in text
    assert "Breaches: none: the contract holds." in text


def test_fp16_breaches_name_each_image_and_ap_subset():
    from yolov5face.lab.fp16_study import AP_TOLERANCE, breaches

    report = {
        "images_off_golden_rule": {"a.jpg": ["face 0: conf 0.9000 vs 0.8900"]},
        "ap_shift": {"easy": -AP_TOLERANCE, "medium": 0.0, "hard": -0.0051},
    }
    assert breaches(report) == [
        "a.jpg: face 0: conf 0.9000 vs 0.8900",
        "WIDER hard AP moved by -0.0051 (> 0.005)",
    ]
    assert breaches({"images_off_golden_rule": {}}) == []


def test_fp16_study_scores_wider_at_the_evaluation_threshold(detector):
    """AP is scored at conf 0.02 (README's 92.09 / 82.29 / 56.12), on the same backend, and the
    caller's detector keeps its serving threshold."""
    from yolov5face.lab.fp16_study import WIDER_CONF, _scoring

    scoring = _scoring(detector)
    assert (scoring.conf, detector.conf) == (WIDER_CONF, 0.3) == (0.02, 0.3)
    assert scoring.backend is detector.backend
