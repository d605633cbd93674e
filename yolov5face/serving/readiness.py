"""Is the server up? A real inference on a tiny image, with TorchServe's current token keys.

The management API lists a worker stopped by SIGSTOP as READY, so readiness here also sends a
32x32 image through `/predictions/<model>` (as a KServe v1 + v2 body) with a short timeout.
With token authorization on, TorchServe 0.12 keeps its keys in `key_file.json` in its working
directory, rewrites that file when a key is renewed, and lets keys expire
(`token_expiration_min`, 60 minutes by default): every call re-reads the file, and an expired
or refused key is renewed through TorchServe's token API
(`GET /token?type=management|inference` with the API key, which does not expire).
Standard library only: `yolov5face ready` runs every few seconds in a health check.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from yolov5face import settings

logger = logging.getLogger(__name__)

KEY_FILE = "key_file.json"
RUN_DIR = Path(".serve")
DRAINING = "draining"  # `yolov5face serve` writes it in its run dir when a SIGTERM starts a drain

# A 32x32 mid-grey JPEG (quality 50), encoded once with cv2.imencode: no faces, ~20 ms of a
# worker's time, so the check is cheap enough to run every 10 s.
PROBE_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERX"
    "RTc4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2Nj"
    "Y2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAAgACADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAA"
    "ECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2Jy"
    "ggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5"
    "iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEB"
    "AQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFE"
    "KRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6"
    "goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09f"
    "b3+Pn6/9oADAMBAAIRAxEAPwAooooAKKKKACiiigAooooA/9k="
)

# The probe as one JSON body every request shape fd1 may be serving reads: KServe v1
# "instances" (no envelope, and service_envelope=kserve) and v2 "inputs" (kservev2). A raw JPEG
# would fail behind either envelope, which only takes JSON.
_PROBE_B64 = base64.b64encode(PROBE_JPEG).decode()
PROBE_BODY = json.dumps(
    {
        "instances": [{"data": _PROBE_B64}],
        "inputs": [{"name": "probe", "datatype": "BYTES", "shape": [1], "data": [_PROBE_B64]}],
    }
).encode()

# TorchServe 0.12 refuses a missing, wrong or expired key with this exception type (status 400;
# its frontend has no way to answer 401).
REFUSED = "InvalidKeyException"


@dataclass
class Answer:
    """One HTTP exchange: the status (0 when none came) and the body, or why none came."""

    status: int
    body: bytes = b""
    error: str = ""

    @property
    def refused(self) -> bool:
        """TorchServe refused the token (missing, wrong or expired)."""
        return self.status in (400, 401, 403) and REFUSED.encode() in self.body


@dataclass
class Verdict:
    """The outcome of a readiness or liveness check, with the reason when it failed."""

    ok: bool
    reason: str = ""


def read_keys(run_dir: Path = RUN_DIR) -> dict | None:
    """key_file.json as TorchServe wrote it last (None: tokens off, or the file is unreadable)."""
    try:
        keys = json.loads((run_dir / KEY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return keys if isinstance(keys, dict) else None


def _expiry(entry: dict) -> datetime | None:
    """The key's `expiration time` (TorchServe writes nanoseconds and a `Z`)."""
    text = str(entry.get("expiration time", "")).rstrip("Z")
    if not text:
        return None
    whole, _, fraction = text.partition(".")
    try:
        stamp = datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6]}")
    except ValueError:
        return None
    return stamp.replace(tzinfo=timezone.utc)


def _key(keys: dict | None, kind: str) -> tuple[str | None, bool]:
    """(key of `kind`, whether it has expired) from a parsed key file."""
    entry = keys.get(kind) if keys else None
    if not isinstance(entry, dict):
        return None, False
    expiry = _expiry(entry)
    return entry.get("key"), expiry is not None and expiry <= datetime.now(timezone.utc)


def call(
    url: str, key: str | None, method: str = "GET", data: bytes | None = None, timeout: float = 5.0
) -> Answer:
    """One request with `Authorization: Bearer <key>` when a key is given; never raises."""
    request = urllib.request.Request(url, data=data, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "image/jpeg")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return Answer(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read())
    except TimeoutError:
        return Answer(0, error=f"no answer in {timeout:g} s")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return Answer(0, error=f"no answer in {timeout:g} s")
        return Answer(0, error=f"unreachable: {reason}")


def renew_key(
    management_url: str, kind: str, run_dir: Path = RUN_DIR, timeout: float = 2.0
) -> str | None:
    """Ask TorchServe for a new `kind` key (it rewrites key_file.json); the new key or None."""
    api, _ = _key(read_keys(run_dir), "API")
    if not api:
        return None
    answer = call(f"{management_url}/token?type={kind}", api, timeout=timeout)
    if answer.status != 200:
        logger.warning("renewing the %s key failed: %s", kind, answer.error or answer.status)
        return None
    logger.info("renewed the %s key through %s/token", kind, management_url)
    key, _ = _key(read_keys(run_dir), kind)
    return key


def current_key(
    kind: str, run_dir: Path = RUN_DIR, management_url: str | None = None, timeout: float = 2.0
) -> str | None:
    """The `kind` key ("management" or "inference") to send now; None when tokens are off.

    The management key may come from YOLOV5FACE_MANAGEMENT_TOKEN. Otherwise key_file.json is
    read on every call, and an expired key is renewed first when `management_url` is given.
    """
    if kind == "management":
        token = settings.text("YOLOV5FACE_MANAGEMENT_TOKEN")
        if token:
            return token
    key, expired = _key(read_keys(run_dir), kind)
    if key and expired and management_url:
        key = renew_key(management_url, kind, run_dir, timeout) or key
    return key


def authorised_call(
    url: str,
    kind: str,
    management_url: str,
    run_dir: Path = RUN_DIR,
    method: str = "GET",
    data: bytes | None = None,
    timeout: float = 5.0,
) -> Answer:
    """`call` with the current `kind` key; a refused key is re-read or renewed, then retried."""
    key = current_key(kind, run_dir, management_url)
    answer = call(url, key, method, data, timeout)
    if not answer.refused or key is None:
        return answer
    fresh = current_key(kind, run_dir, management_url)  # another client may have renewed it
    if fresh == key:
        fresh = renew_key(management_url, kind, run_dir)
    if not fresh or fresh == key:
        return answer
    return call(url, fresh, method, data, timeout)


def worker_states(
    management_url: str, model: str = "fd1", timeout: float = 2.0, run_dir: Path = RUN_DIR
) -> list[dict] | None:
    """Workers of `model` from the management API (None when it gave no usable answer)."""
    answer = authorised_call(
        f"{management_url}/models/{model}", "management", management_url, run_dir, timeout=timeout
    )
    if answer.status != 200:
        return None
    try:
        body = json.loads(answer.body)
    except ValueError:
        return None
    entry = body[0] if isinstance(body, list) and body else body
    return entry.get("workers", []) if isinstance(entry, dict) else None


def _describe(answer: Answer) -> str:
    if answer.status == 0:
        return answer.error
    return f"HTTP {answer.status}: {answer.body[:200].decode(errors='replace').strip()}"


def check_ready(
    management_url: str,
    inference_url: str,
    model: str = "fd1",
    timeout: float = 5.0,
    run_dir: Path = RUN_DIR,
) -> Verdict:
    """Ready: a READY worker of `model`, and a real inference on PROBE_JPEG within `timeout` s."""
    if (run_dir / DRAINING).exists():
        return Verdict(False, "draining: the server is stopping")
    workers = worker_states(management_url, model, min(timeout, 2.0), run_dir)
    if workers is None:
        return Verdict(False, f"management API {management_url} gave no usable answer")
    if not any(w.get("status") == "READY" for w in workers):
        return Verdict(False, f"no READY worker of {model}")
    answer = authorised_call(
        f"{inference_url}/predictions/{model}",
        "inference",
        management_url,
        run_dir,
        method="PUT",
        data=PROBE_BODY,
        timeout=timeout,
    )
    if answer.status != 200:
        return Verdict(False, f"inference on the probe image failed: {_describe(answer)}")
    try:
        body = json.loads(answer.body)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not (
        isinstance(body.get("predictions"), list) or isinstance(body.get("outputs"), list)
    ):
        return Verdict(
            False, f"inference answered something else than KServe JSON: {answer.body[:200]!r}"
        )
    return Verdict(True)


def check_live(
    management_url: str, inference_url: str, timeout: float = 5.0, run_dir: Path = RUN_DIR
) -> Verdict:
    """Alive: the frontend answers `/ping` (with the current inference key when tokens are on)."""
    answer = authorised_call(
        f"{inference_url}/ping", "inference", management_url, run_dir, timeout=timeout
    )
    if answer.status != 200:
        return Verdict(False, f"/ping failed: {_describe(answer)}")
    return Verdict(True)
