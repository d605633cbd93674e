"""yolov5face/settings.py: one table, one rule per type, the only reader of YOLOV5FACE_*."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from yolov5face import settings
from yolov5face.settings import PYTHON, SETTINGS, SettingsError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "yolov5face"
WORKER_SITE_FILE = PACKAGE / "serving" / "worker_site" / "sitecustomize.py"
ACCESSORS = {"flag": "flag", "integer": "integer", "text": "text", "path": "path"}

WORDS = {"1": True, "0": False, "true": True, "false": False}
WORDS |= {"yes": True, "no": False, "on": True, "off": False}
SPELLINGS = {**WORDS, **{w.upper(): v for w, v in WORDS.items()}, "True": True, " Off ": False}
BAD_FLAGS = ("maybe", "2", "enable", "-1", "tru")

FLAGS = [s.name for s in SETTINGS if s.kind == "flag" and PYTHON in s.readers]
INTEGERS = [s.name for s in SETTINGS if s.kind == "integer" and PYTHON in s.readers]


@pytest.mark.parametrize("name", FLAGS)
def test_every_flag_follows_the_one_rule(name, monkeypatch):
    for word, expected in SPELLINGS.items():
        monkeypatch.setenv(name, word)
        assert settings.flag(name) is expected, (name, word)
    for word in BAD_FLAGS:
        monkeypatch.setenv(name, word)
        with pytest.raises(SettingsError) as err:
            settings.flag(name)
        message = str(err.value)
        assert name in message and repr(word) in message
        assert "1/true/yes/on" in message and "0/false/no/off" in message
        assert message.endswith("(any case), or leave it empty for the default")


@pytest.mark.parametrize("name", FLAGS + INTEGERS)
def test_unset_or_empty_gives_the_table_default(name, monkeypatch):
    accessor = getattr(settings, "flag" if name in FLAGS else "integer")
    default = settings.setting(name).default
    for value in (None, "", "  "):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
        assert accessor(name) == default
    if name in FLAGS:  # a caller's default (the model config) stands in for the table's
        assert settings.flag(name, not default) is (not default)
        monkeypatch.setenv(name, "0" if default else "1")
        assert settings.flag(name, default) is (not default)  # the variable still wins
    else:
        assert settings.integer(name, 7) == 7  # a caller's default stands in for the table's


def test_flag_defaults():
    assert settings.flag("YOLOV5FACE_BAND") is True
    assert settings.flag("YOLOV5FACE_FAST_DECODE") is False


@pytest.mark.parametrize("name", INTEGERS)
def test_integers_parse_or_name_the_variable(name, monkeypatch):
    monkeypatch.setenv(name, " 3 ")
    assert settings.integer(name) == 3
    assert settings.integer(name, 7) == 3
    for bad in ("two", "1.5", "0x10"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(SettingsError, match=f"{name}='{re.escape(bad)}' is not an integer"):
            settings.integer(name)
    minimum = settings.setting(name).minimum
    assert minimum is not None
    monkeypatch.setenv(name, str(minimum))
    assert settings.integer(name) == minimum  # the minimum itself is allowed
    monkeypatch.setenv(name, str(minimum - 1))
    with pytest.raises(SettingsError, match=f"{name}=.*at least {minimum}"):
        settings.integer(name)


def test_text_choices_and_paths(monkeypatch):
    from yolov5face.backends import BACKENDS, choose_backend

    assert settings.setting("YOLOV5FACE_BACKEND").choices == BACKENDS
    monkeypatch.setenv("YOLOV5FACE_BACKEND", "tflite")
    choices = re.escape(", ".join(BACKENDS))
    with pytest.raises(
        SettingsError, match=f"YOLOV5FACE_BACKEND='tflite': choose one of {choices}$"
    ):
        choose_backend(None)
    monkeypatch.setenv("YOLOV5FACE_BACKEND", "")
    assert settings.text("YOLOV5FACE_BACKEND") == "auto"
    assert settings.text("YOLOV5FACE_BACKEND", "onnxruntime") == "onnxruntime"
    monkeypatch.delenv("YOLOV5FACE_MANAGEMENT_TOKEN", raising=False)
    assert settings.text("YOLOV5FACE_MANAGEMENT_TOKEN") is None
    monkeypatch.setenv("YOLOV5FACE_MANAGEMENT_TOKEN", "s3cret")
    assert settings.text("YOLOV5FACE_MANAGEMENT_TOKEN") == "s3cret"
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.setenv("YOLOV5FACE_CACHE", "")
    assert settings.path("YOLOV5FACE_CACHE") == Path("/home/someone/.cache/yolov5face")
    monkeypatch.setenv("YOLOV5FACE_CACHE", "~/elsewhere")
    assert settings.path("YOLOV5FACE_CACHE") == Path("/home/someone/elsewhere")
    monkeypatch.delenv("YOLOV5FACE_WEIGHTS", raising=False)
    assert settings.path("YOLOV5FACE_WEIGHTS") is None
    assert settings.path("YOLOV5FACE_WEIGHTS", "~/w.pt") == Path("/home/someone/w.pt")


def test_table_types_name_the_minimum_only_for_integers_that_have_one():
    shown = settings._shown_type
    assert shown(settings.Setting("X", "integer", 2, "h", minimum=1)) == "integer ≥ 1"
    assert shown(settings.Setting("X", "integer", 2, "h")) == "integer"
    assert shown(settings.Setting("X", "text", None, "h", choices=("a", "b"))) == "`a`, `b`"


def test_accessors_refuse_names_python_does_not_read():
    with pytest.raises(KeyError, match="not in"):
        settings.flag("YOLOV5FACE_NO_SUCH_THING")
    with pytest.raises(KeyError, match="entrypoint only"):
        settings.text("YOLOV5FACE_REQUIRE_GPU")
    with pytest.raises(TypeError, match="is a flag setting"):
        settings.integer("YOLOV5FACE_BAND")


def test_the_environment_is_read_at_each_call(monkeypatch):
    monkeypatch.setenv("YOLOV5FACE_SPLIT_BATCHES", "off")
    assert settings.flag("YOLOV5FACE_SPLIT_BATCHES") is False
    monkeypatch.setenv("YOLOV5FACE_SPLIT_BATCHES", "on")
    assert settings.flag("YOLOV5FACE_SPLIT_BATCHES") is True


# --- the worker site's copy of the flag rule ---------------------------------------------


def _worker_site():
    """The workers' sitecustomize.py, loaded under another name (so it defers nothing)."""
    spec = importlib.util.spec_from_file_location("worker_site_probe", WORKER_SITE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_worker_site_applies_the_same_flag_rule(monkeypatch):
    site = _worker_site()
    assert (site.TRUE, site.FALSE) == (settings.TRUE, settings.FALSE)
    assert site.LAZY_TORCH_DEFAULT is settings.setting("YOLOV5FACE_LAZY_TORCH").default
    for word in [*SPELLINGS, *BAD_FLAGS, "", "  "]:
        monkeypatch.setenv("YOLOV5FACE_LAZY_TORCH", word)
        try:
            expected = settings.flag("YOLOV5FACE_LAZY_TORCH")
        except SettingsError:
            expected = None
        assert site.lazy_torch(word) is expected, word
    monkeypatch.delenv("YOLOV5FACE_LAZY_TORCH")
    assert site.lazy_torch(None) is settings.flag("YOLOV5FACE_LAZY_TORCH")


# --- where the values are used --------------------------------------------------------------


@pytest.mark.parametrize("word", ["off", "OFF", "no", "false", "0"])
def test_band_off_turns_banding_off(onnx_model, monkeypatch, word):
    from yolov5face.pipeline.detector import Detector

    monkeypatch.setenv("YOLOV5FACE_BAND", word)
    assert Detector(onnx_model, backend="onnxruntime", threads=1).backend.band is None
    # An explicit argument still wins over the variable.
    assert Detector(onnx_model, backend="onnxruntime", threads=1, band=True).backend.band


def test_band_on_and_bad_values(onnx_model, monkeypatch):
    from yolov5face.backends.onnxruntime import OnnxRuntimeBackend

    monkeypatch.setenv("YOLOV5FACE_BAND", "On")
    assert OnnxRuntimeBackend(onnx_model).band is not None
    monkeypatch.setenv("YOLOV5FACE_BAND", "sometimes")
    with pytest.raises(SettingsError, match="YOLOV5FACE_BAND"):
        OnnxRuntimeBackend(onnx_model)


def test_handler_flags_the_variable_wins_over_the_model_config(monkeypatch):
    from yolov5face.serving.handler import _flag

    name = "YOLOV5FACE_SPLIT_BATCHES"
    monkeypatch.delenv(name, raising=False)
    assert _flag({}, "split_batches", name) is True  # the table's default
    assert _flag({"split_batches": False}, "split_batches", name) is False
    assert _flag({"split_batches": "off"}, "split_batches", name) is False
    monkeypatch.setenv(name, "on")  # "on" used to read as false here
    assert _flag({"split_batches": False}, "split_batches", name) is True
    monkeypatch.setenv(name, "nope")
    with pytest.raises(SettingsError, match=name):
        _flag({"split_batches": True}, "split_batches", name)
    monkeypatch.delenv(name)
    with pytest.raises(SettingsError, match="handler: split_batches"):
        _flag({"split_batches": "perhaps"}, "split_batches", name)


def test_archive_overrides_are_integers_named_on_error(monkeypatch):
    from yolov5face.serving.archive import model_config

    for name in ("YOLOV5FACE_WORKERS", "YOLOV5FACE_BATCH_SIZE", "YOLOV5FACE_MAX_BATCH_DELAY"):
        monkeypatch.setenv(name, "")
    base = model_config()
    monkeypatch.setenv("YOLOV5FACE_WORKERS", "3")
    config = model_config()
    assert (config["minWorkers"], config["maxWorkers"]) == (3, 3)
    assert config["batchSize"] == base["batchSize"]
    monkeypatch.setenv("YOLOV5FACE_MAX_BATCH_DELAY", "soon")
    with pytest.raises(SettingsError, match="YOLOV5FACE_MAX_BATCH_DELAY='soon'"):
        model_config()


def test_serve_passes_the_parsed_lazy_torch_flag_to_workers(tmp_path, monkeypatch):
    from yolov5face.serving.launcher import torchserve_env

    for word, passed in (("off", "0"), ("Yes", "1"), ("", "1")):
        monkeypatch.setenv("YOLOV5FACE_LAZY_TORCH", word)
        assert torchserve_env(tmp_path)["YOLOV5FACE_LAZY_TORCH"] == passed
    monkeypatch.setenv("YOLOV5FACE_LAZY_TORCH", "lazy")
    with pytest.raises(SettingsError, match="YOLOV5FACE_LAZY_TORCH"):
        torchserve_env(tmp_path)


def test_management_token_comes_from_the_variable(tmp_path, monkeypatch):
    from yolov5face.serving.launcher import management_token

    (tmp_path / "key_file.json").write_text('{"management": {"key": "from-file"}}')
    monkeypatch.setenv("YOLOV5FACE_MANAGEMENT_TOKEN", "")
    assert management_token(tmp_path) == "from-file"
    monkeypatch.setenv("YOLOV5FACE_MANAGEMENT_TOKEN", "from-env")
    assert management_token(tmp_path) == "from-env"


# --- nothing else reads YOLOV5FACE_* ---------------------------------------------------------


def _is_environ(node: ast.AST) -> bool:
    names = ("environ", "environb")
    return (isinstance(node, ast.Attribute) and node.attr in names) or (
        isinstance(node, ast.Name) and node.id in names
    )


def _is_getenv(node: ast.AST) -> bool:
    names = ("getenv", "getenvb")
    return (isinstance(node, ast.Attribute) and node.attr in names) or (
        isinstance(node, ast.Name) and node.id in names
    )


def _reads_by_call(func: ast.AST) -> bool:
    """os.getenv(...), os.environ.get(...) and the other environ methods taking a name."""
    methods = ("get", "pop", "setdefault", "__getitem__", "__contains__")
    return _is_getenv(func) or (
        isinstance(func, ast.Attribute) and func.attr in methods and _is_environ(func.value)
    )


def _literal_prefix(node: ast.AST | None) -> str | None:
    """The text a key starts with when the source says (None: it cannot be told)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        first = node.values[0] if node.values else None
        return first.value if isinstance(first, ast.Constant) else ""
    return None


def _key_of_call(node: ast.Call) -> ast.AST | None:
    if node.args:
        return node.args[0]
    return next((k.value for k in node.keywords if k.arg == "key"), None)


def environment_reads(source: str) -> list[tuple[int, str]]:
    """(line, what) of each read of a YOLOV5FACE_* variable, or of a name that cannot be told."""
    reads = []
    for node in ast.walk(ast.parse(source)):
        key: ast.AST | None
        if isinstance(node, ast.Call) and _reads_by_call(node.func):
            key = _key_of_call(node)
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            if not isinstance(node.ctx, ast.Load):
                continue  # setting a variable for a child process is fine
            key = node.slice
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            key = node.left  # "YOLOV5FACE_X" in os.environ
        else:
            continue
        prefix = _literal_prefix(key)
        if prefix is None or prefix.startswith("YOLOV5FACE_") or "YOLOV5FACE_".startswith(prefix):
            reads.append((node.lineno, ast.unparse(node)))
    return reads


def _package_sources() -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "settings.py" or p.parent != PACKAGE
        if "worker_site" not in p.parts
    ]


def test_the_walker_catches_every_form_of_read():
    source = (
        "import os\nfrom os import environ, getenv\n"
        'a = os.environ.get("YOLOV5FACE_X")\n'
        'b = os.environ["YOLOV5FACE_X"]\n'
        'c = os.getenv("YOLOV5FACE_X", "1")\n'
        'd = environ.get("YOLOV5FACE_X")\n'
        'e = getenv(key="YOLOV5FACE_X")\n'
        'f = "YOLOV5FACE_X" in os.environ\n'
        'g = os.environ.get(f"YOLOV5FACE_{name}")\n'
        "h = os.environ.get(name)\n"
        'i = os.environ.setdefault("YOLOV5FACE_X", "1")\n'
        "# not reads of YOLOV5FACE_*:\n"
        'os.environ["YOLOV5FACE_X"] = "1"\n'
        'j = {**os.environ, "YOLOV5FACE_X": "1"}\n'
        'k = os.environ.get("HOME"), os.environ.get(f"TS_{key}")\n'
    )
    assert [line for line, _ in environment_reads(source)] == list(range(3, 12))


def test_only_settings_reads_yolov5face_variables():
    sources = _package_sources()
    assert PACKAGE / "serving" / "handler.py" in sources
    found = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in sources
        for line, what in environment_reads(path.read_text())
    ]
    assert found == [], "read these through yolov5face/settings.py:\n" + "\n".join(found)


def _accessor_calls(source: str) -> list[tuple[str, str]]:
    calls = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "settings"
            and node.func.attr in ACCESSORS
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            calls.append((node.func.attr, node.args[0].value))
    return calls


def test_the_table_lists_every_variable_read_and_only_those():
    calls = {c for p in _package_sources() for c in _accessor_calls(p.read_text())}
    for accessor, name in calls:
        entry = settings.setting(name)
        assert PYTHON in entry.readers and ACCESSORS[accessor] == entry.kind, (accessor, name)
    # Every name the package spells out (accessor calls, archive.py's override table, the
    # environment given to child processes) is a Python setting, and every one is used.
    named = {
        node.value
        for p in _package_sources()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if re.fullmatch(r"YOLOV5FACE_[A-Z_]+", node.value)
    }
    assert named == {s.name for s in SETTINGS if PYTHON in s.readers}
    shell = {p: p.read_text() for p in (ROOT / "docker").glob("*") if p.is_file()}
    for path, body in shell.items():
        for name in set(re.findall(r"YOLOV5FACE_[A-Z_]+", body)):
            assert name in settings.BY_NAME, f"{path.name} uses {name}, not in the table"


def test_readme_table_is_the_rendered_table():
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- settings table: .*? -->\n(.*?)<!-- end of settings table -->", readme, re.S
    )
    assert match, "README.md has no settings table markers"
    assert match.group(1) == settings.markdown_table()
