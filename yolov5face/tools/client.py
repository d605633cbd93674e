"""Clients for a running fd1 server: sync HTTP, asyncio HTTP and gRPC (TorchServe's API)."""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

MODEL = "fd1"


class ServerError(RuntimeError):
    """The server answered with an error for one image; `status` is the HTTP status (or 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


def _parse(status: int, body: bytes) -> list[dict]:
    """Face list from a response, or raise ServerError with the server's message."""
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    if status in (0, 200) and isinstance(payload, list):  # 0: gRPC, no HTTP status
        return payload
    message = payload.get("error") or payload.get("message") if isinstance(payload, dict) else None
    raise ServerError(status, message or body[:200].decode(errors="replace"))


Params = Mapping[str, Any] | None  # per-request options: conf, max_faces, min_size, crops, ...


def _query(options: Params) -> dict[str, str]:
    return {k: str(v) for k, v in (options or {}).items()}


def _decoded(faces: list[dict]) -> list[dict]:
    """Faces with each base64 `crop` decoded to a BGR array (numpy, OpenCV)."""
    if not any("crop" in face for face in faces):
        return faces
    from yolov5face.pipeline.align import decode_crop

    return [{**f, "crop": decode_crop(f["crop"])} if "crop" in f else f for f in faces]


def _predictions_url(url: str, model: str) -> str:
    url = url.rstrip("/")
    return url if "/predictions/" in url else f"{url}/predictions/{model}"


def _invoke_url(predictions: str) -> str:
    """Where options go: TorchServe drops the query string of `/predictions/<model>` before
    the handler, and hands it over on `/models/<model>/invoke`."""
    root, _, model = predictions.partition("/predictions/")
    return f"{root}/models/{model.split('/')[0]}/invoke"


class Client:
    """Blocking HTTP client (keep-alive session); PUTs raw bytes like the reference client."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        model: str = MODEL,
        token: str | None = None,
        timeout: float = 30.0,
    ):
        import requests

        self.url = _predictions_url(url, model)
        self.session = requests.Session()
        self.timeout = timeout
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def detect(self, image: bytes, options: Params = None, decode: bool = True) -> list[dict]:
        """Faces of one image; raises ServerError on an error answer.

        `options` go in the query string (`{"crops": 112, "max_faces": 5}`) of
        `/models/<model>/invoke`; crops come back decoded to BGR arrays unless `decode` is false.
        """
        url = _invoke_url(self.url) if options else self.url
        resp = self.session.put(url, data=image, params=_query(options), timeout=self.timeout)
        faces = _parse(resp.status_code, resp.content)
        return _decoded(faces) if decode else faces

    def detect_many(
        self, images: Sequence[bytes], options: Params = None, decode: bool = True
    ) -> list[list[dict] | ServerError]:
        """Faces per image, or the ServerError for that image."""
        out: list[list[dict] | ServerError] = []
        for image in images:
            try:
                out.append(self.detect(image, options, decode))
            except ServerError as exc:
                out.append(exc)
        return out

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient:
    """asyncio HTTP client on one pooled aiohttp session."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        model: str = MODEL,
        token: str | None = None,
        timeout: float = 30.0,
        connections: int = 64,
    ):
        self.url = _predictions_url(url, model)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._connections = connections
        self._session = None

    async def __aenter__(self) -> AsyncClient:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers=self._headers,
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._session.close()

    async def detect(self, image: bytes, options: Params = None, decode: bool = True) -> list[dict]:
        """Faces of one image; raises ServerError on an error answer."""
        headers = {"Content-Type": "application/octet-stream"}
        url = _invoke_url(self.url) if options else self.url
        async with self._session.put(
            url, data=image, headers=headers, params=_query(options)
        ) as resp:
            faces = _parse(resp.status, await resp.read())
        return _decoded(faces) if decode else faces


def grpc_modules(cache: Path | None = None) -> tuple[ModuleType, ModuleType]:
    """(inference_pb2, inference_pb2_grpc), generated once from TorchServe's own proto."""
    from yolov5face.paths import cache_dir

    out = (cache or cache_dir()) / "grpc"
    if not (out / "inference_pb2_grpc.py").is_file():
        import ts

        jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(jar) as zf:
            (out / "inference.proto").write_bytes(zf.read("proto/inference.proto"))
        import grpc_tools

        includes = Path(grpc_tools.__file__).parent / "_proto"
        import google.rpc.status_pb2  # noqa: F401  (googleapis-common-protos provides the import)

        status_dir = Path(importlib.util.find_spec("google.rpc").submodule_search_locations[0])
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{out}",
            f"-I{includes}",
            f"-I{status_dir.parent.parent}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(out / "inference.proto"),
        ]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module("inference_pb2"), importlib.import_module("inference_pb2_grpc")


GRPC_MESSAGE_BYTES = 64 * 1024 * 1024  # above any answer or body the server takes


class GrpcClient:
    """TorchServe gRPC inference client: `Predictions` with the bytes under input key `data`."""

    def __init__(
        self,
        target: str = "127.0.0.1:7070",
        model: str = MODEL,
        token: str | None = None,
        timeout: float = 30.0,
    ):
        import grpc

        self._pb2, pb2_grpc = grpc_modules()
        # gRPC's 4 MB default receive limit is below the server's answer limit (6.5 MB) and
        # its send limit below max_request_size (20 MiB): a large answer would fail here.
        limits = [
            ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES),
            ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES),
        ]
        self.channel = grpc.insecure_channel(target, options=limits)
        self.stub = pb2_grpc.InferenceAPIsServiceStub(self.channel)
        self.model = model
        self.timeout = timeout
        self.metadata = [("authorization", f"Bearer {token}")] if token else None

    def ping(self) -> str:
        """The server's health string."""
        from google.protobuf import empty_pb2

        return self.stub.Ping(empty_pb2.Empty(), timeout=self.timeout).health

    def detect(self, image: bytes, options: Params = None, decode: bool = True) -> list[dict]:
        """Faces of one image (options as extra input keys); raises ServerError (status 0)."""
        import grpc

        inputs = {"data": image, **{k: v.encode() for k, v in _query(options).items()}}
        request = self._pb2.PredictionsRequest(model_name=self.model, input=inputs)
        try:
            resp = self.stub.Predictions(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise ServerError(0, f"{exc.code().name}: {exc.details()}") from None
        # Per-request 400s inside a batch are not carried over gRPC: read the body instead.
        faces = _parse(0, resp.prediction)
        return _decoded(faces) if decode else faces

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
