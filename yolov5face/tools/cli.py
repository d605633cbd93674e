"""The `yolov5face` command line: JSON on stdout, logs and progress on stderr."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from yolov5face import settings
from yolov5face.backends import BACKENDS

logger = logging.getLogger("yolov5face")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_DETECT_EXAMPLES = """examples:
  yolov5face detect photo.jpg                      # faces of one image as JSON
  yolov5face detect imgs/*.jpg --draw out/         # also write annotated copies
  yolov5face detect a.jpg --backend torch --conf 0.5
  yolov5face detect --url http://127.0.0.1:8080 a.jpg   # ask a running server instead
  yolov5face detect group.jpg --max-faces 5 --crops crops/   # 112x112 aligned face crops

exit codes: 0 all images processed, 1 some input was not a readable image, 2 usage error"""

_EVAL_EXAMPLES = """examples:
  yolov5face eval widerface --images ../shared/widerface/images \\
      --gt ../shared/widerface/gt.json --img-size 640
The last stdout line is {"easy": AP, "medium": AP, "hard": AP} (percent)."""

_EXPORT_EXAMPLES = """examples:
  yolov5face export onnx --weights weights/yolov5n-0.5.pt --out model.onnx
  yolov5face export engine --weights model-store/fd1.onnx --batch-size 8 --out engines/"""


DEFAULT_CONF = 0.3  # the serving convention's score threshold


def _add_model_args(p: argparse.ArgumentParser, conf: float) -> None:
    p.add_argument(
        "--weights",
        help="checkpoint (.pt/.safetensors) or exported .onnx "
        "(default: $YOLOV5FACE_WEIGHTS, else weights/yolov5n-0.5.pt)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="inference backend (default: $YOLOV5FACE_BACKEND or auto)",
    )
    p.add_argument("--img-size", type=int, default=320, help="network input size (default 320)")
    p.add_argument("--conf", type=float, default=conf, help=f"score threshold (default {conf})")
    p.add_argument("--iou", type=float, default=0.5, help="NMS IoU threshold (default 0.5)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the backend")
    p.add_argument(
        "--fast-decode",
        action="store_true",
        help="decode large JPEGs at 1/2..1/8 scale (faster; outputs change slightly)",
    )


def _detector(args: argparse.Namespace):
    from yolov5face.pipeline.detector import Detector

    return Detector(
        weights=args.weights,
        backend=args.backend,
        img_size=args.img_size,
        conf=args.conf,
        iou=args.iou,
        threads=args.threads,
        fast_decode=args.fast_decode,
    )


def _cmd_detect(args: argparse.Namespace) -> int:
    from yolov5face.pipeline.decode import ImageError

    blobs: list[bytes | ImageError] = []
    for name in args.images:
        try:
            blobs.append(Path(name).read_bytes())
        except OSError as exc:
            blobs.append(ImageError(f"cannot read file: {exc.strerror or exc}"))
    readable = [b for b in blobs if isinstance(b, bytes)]
    params = _request_options(args)
    if args.url:
        from yolov5face.tools.client import Client

        if args.conf != DEFAULT_CONF:  # the server's threshold is its own; a request can raise it
            params["conf"] = args.conf
        try:
            with Client(args.url) as client:
                answers = iter(client.detect_many(readable, params, decode=False))
        except OSError as exc:  # requests' errors are OSErrors: nothing answers at the URL
            logger.error("cannot reach the server at %s: %s", args.url, exc)
            return EXIT_FAILED
    else:
        from yolov5face.pipeline.options import parse_options

        detector = _detector(args)
        options = parse_options(params, threshold=detector.conf)
        answers = iter(detector.detect_raw(readable, keep_images=bool(options.crops)))
    result, failed = {}, False
    for name, blob in zip(args.images, blobs):
        answer = blob if isinstance(blob, ImageError) else next(answers)
        if isinstance(answer, Exception):
            result[name] = {"error": str(answer)}
            failed = True
            continue
        faces = answer if args.url else answer.to_json(options)
        if args.crops:
            _write_crops(name, faces, Path(args.crops), args.crop_format)
        result[name] = faces
        if args.draw and not args.url:
            _draw(name, blob, answer, Path(args.draw))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return EXIT_FAILED if failed else EXIT_OK


def _request_options(args: argparse.Namespace) -> dict[str, object]:
    """The per-request options the detect flags ask for (yolov5face/pipeline/options.py)."""
    params: dict[str, object] = {}
    if args.max_faces is not None:
        params["max_faces"] = args.max_faces
    if args.min_size is not None:
        params["min_size"] = args.min_size
    if args.crops:
        params.update(crops=args.crop_size, crop_format=args.crop_format)
    return params


def _write_crops(name: str, faces: list[dict], out_dir: Path, fmt: str) -> None:
    """Write each face's crop to DIR/<image stem>_<face index>.<ext>; the JSON names the file."""
    import base64

    out_dir.mkdir(parents=True, exist_ok=True)
    ext = "png" if fmt == "png" else "jpg"
    for k, face in enumerate(faces):
        target = out_dir / f"{Path(name).stem}_{k}.{ext}"
        target.write_bytes(base64.b64decode(face.pop("crop")))
        face["crop_file"] = str(target)
    logger.info("wrote %d crops of %s to %s", len(faces), name, out_dir)


def _draw(name: str, blob: bytes, detection, out_dir: Path) -> None:
    import cv2

    from yolov5face.pipeline.decode import decode_image
    from yolov5face.tools.draw import draw_detection

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / Path(name).name
    cv2.imwrite(str(target), draw_detection(decode_image(blob), detection))
    logger.info("wrote %s", target)


def _cmd_eval(args: argparse.Namespace) -> int:
    from yolov5face.tools.evaluate import run_widerface

    scores = run_widerface(_detector(args), Path(args.images), Path(args.gt))
    print(json.dumps({k: round(v * 100, 2) for k, v in scores.items()}))
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from yolov5face.paths import default_weights

    weights = args.weights or default_weights()
    if args.format == "onnx":
        from yolov5face.backends.band import band_path
        from yolov5face.convert.onnx import export_onnx

        info = export_onnx(weights, args.out, img_size=args.img_size, opset=args.opset)
        print(
            json.dumps(
                {
                    "out": str(args.out),
                    "sha256": info.sha256,
                    "img_size": info.img_size,
                    "opset": args.opset,
                    "band": str(band_path(args.out)) if band_path(args.out).exists() else None,
                }
            )
        )
        return EXIT_OK
    from yolov5face.convert.tensorrt import build_engine_cli

    try:
        print(json.dumps(build_engine_cli(args, weights)))
    except RuntimeError as exc:  # no TensorRT or GPU here, or the build itself failed
        logger.error("%s", exc)
        return EXIT_FAILED
    return EXIT_OK


def _weights_arg(args: argparse.Namespace) -> Path:
    from yolov5face.paths import default_weights

    return Path(args.weights) if args.weights else default_weights()


def _cmd_archive(args: argparse.Namespace) -> int:
    from yolov5face.serving.archive import build_archive

    path = build_archive(_weights_arg(args), args.model_store, args.img_size, force=args.force)
    print(json.dumps({"archive": str(path)}))
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from yolov5face.serving.launcher import ServeError, serve

    try:
        return serve(
            _weights_arg(args),
            Path(args.model_store),
            Path(args.config),
            ready_timeout=args.ready_timeout,
        )
    except ServeError as exc:
        logger.error("%s", exc)
        return EXIT_FAILED


def _cmd_ready(args: argparse.Namespace) -> int:
    from yolov5face.serving import readiness
    from yolov5face.serving.launcher import inference_url, management_url

    mgmt = args.management_url or management_url()
    http = args.inference_url or inference_url()
    run_dir = Path(args.run_dir)
    if args.live:
        verdict = readiness.check_live(mgmt, http, args.timeout, run_dir)
    else:
        verdict = readiness.check_ready(mgmt, http, args.model, args.timeout, run_dir)
    if not args.quiet:
        out = {"model": args.model, "ready": verdict.ok, "management_url": mgmt}
        out |= {"inference_url": http, "check": "live" if args.live else "ready"}
        print(json.dumps(out | ({"reason": verdict.reason} if verdict.reason else {})))
    return EXIT_OK if verdict.ok else EXIT_FAILED


_SERVE_EXAMPLES = """examples:
  yolov5face serve                                  # weights from $YOLOV5FACE_WEIGHTS
  TS_INFERENCE_ADDRESS=http://127.0.0.1:9080 yolov5face serve --model-store /tmp/ms
  yolov5face ready && echo up                       # exit 0 only when fd1 answers
  yolov5face ready --live                           # the frontend answers /ping (liveness)"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="yolov5face",
        description="yolov5-face detection: library, server tools, benchmarks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `yolovface COMMAND --help` for each command's options and examples".replace(
            "yolovface", "yolov5face"
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "detect",
        help="detect faces in image files, print JSON",
        epilog=_DETECT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _add_model_args(p, conf=DEFAULT_CONF)
    p.add_argument("--draw", metavar="DIR", help="write annotated copies of the images to DIR")
    p.add_argument("--url", help="send the images to a running server instead of running locally")
    p.add_argument("--max-faces", type=int, help="keep the N highest-scoring faces")
    p.add_argument("--min-size", type=float, help="drop faces whose shorter side is below N px")
    p.add_argument(
        "--crops",
        metavar="DIR",
        help="write each face aligned to the ArcFace template to DIR/<image>_<face>.jpg",
    )
    p.add_argument("--crop-size", type=int, default=112, help="crop side in px (default 112)")
    p.add_argument("--crop-format", choices=("jpeg", "png"), default="jpeg")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser(
        "eval",
        help="accuracy evaluation",
        epilog=_EVAL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    esub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    w = esub.add_parser(
        "widerface",
        help="WIDER FACE easy/medium/hard AP",
        epilog=_EVAL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w.add_argument("--images", required=True, help="folder with <event>/<file>.jpg")
    w.add_argument("--gt", required=True, help="gt.json (see ../shared/widerface/README.md)")
    _add_model_args(w, conf=0.02)
    w.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "export",
        help="convert a checkpoint (ONNX, TensorRT engine)",
        epilog=_EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    xsub = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    x = xsub.add_parser("onnx", help="ONNX with a dynamic batch axis")
    x.add_argument("--weights")
    x.add_argument("--out", required=True)
    x.add_argument("--img-size", type=int, default=320)
    x.add_argument("--opset", type=int, default=17)
    x.set_defaults(func=_cmd_export)
    x = xsub.add_parser(
        "engine",
        help="TensorRT engine into the engine cache (GPU only)",
        epilog=_EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    x.add_argument("--weights")
    x.add_argument(
        "--method",
        choices=("onnx", "torch2trt"),
        default="onnx",
        help="onnx: TensorRT's ONNX parser, uint8 input (default; what serving uses); "
        "torch2trt: converted from the checkpoint, float input",
    )
    x.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True)
    x.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="largest batch (the server's batch size): profile 1..N, tuned for N (default 8)",
    )
    x.add_argument("--img-size", type=int, default=320)
    x.add_argument(
        "--out",
        help="engine cache directory (default: the server's, $YOLOV5FACE_ENGINE_CACHE)",
    )
    x.set_defaults(func=_cmd_export)

    store_default = str(settings.path("YOLOV5FACE_MODEL_STORE"))
    p = sub.add_parser(
        "archive",
        help="build model-store/fd1.mar (only when inputs changed)",
        epilog=_SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights")
    p.add_argument("--model-store", default=store_default)
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.set_defaults(func=_cmd_archive)

    from yolov5face.serving.launcher import CONFIG

    p = sub.add_parser(
        "serve",
        help="build the archive if needed and run TorchServe (foreground)",
        epilog=_SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights")
    p.add_argument("--model-store", default=store_default)
    p.add_argument("--config", default=str(CONFIG), help="TorchServe config.properties")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "ready",
        help="exit 0 when fd1 answers a real inference (health checks)",
        description="Readiness: a READY worker of the model in the management API and a real "
        "inference on a built-in 32x32 image within --timeout. --live: the frontend answers "
        "/ping. With token authorization on, the keys are read from RUN_DIR/key_file.json on "
        "every call and an expired key is renewed through TorchServe's token API.",
        epilog=_SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--management-url", help="default: from config.properties / TS_MANAGEMENT_ADDRESS"
    )
    p.add_argument("--inference-url", help="default: from config.properties / TS_INFERENCE_ADDRESS")
    p.add_argument("--model", default="fd1")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds the inference may take (default 5)"
    )
    p.add_argument("--live", action="store_true", help="liveness only: GET /ping answers 200")
    p.add_argument(
        "--run-dir", default=".serve", help="the server's run dir, where key_file.json is"
    )
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_cmd_ready)

    try:
        from yolov5face.tools import qps

        qps.add_parser(sub)
    except ImportError as exc:  # the serve extra (aiohttp) is not installed
        logger.debug("subcommand qps unavailable: %s", exc)
    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands other packages register (the lab's `bench`) under `yolov5face.commands`."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="yolov5face.commands"):
        try:
            entry.load()(sub)
        except ImportError as exc:  # that command's optional extras are not installed
            logger.debug("subcommand %s unavailable: %s", entry.name, exc)


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # SIGTERM unwinds like Ctrl-C, so commands that started servers stop them on the way out.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed early (e.g. piped into head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
