"""Install the pinned torch into this interpreter's environment, the CPU build unless told so.

`make` runs it before installing the project: `python scripts/install_torch.py 2.13.0 --index URL`.

* `--index URL` (the Makefile's TORCH_INDEX; default the PyTorch CPU wheel index): torch and its
  dependencies come from there when it answers within `--timeout` seconds. Once it answers, a
  failed install is an error: there is no quiet second try elsewhere.
* When it does not answer (no network, a firewall), torch comes from pip's configured index and
  links instead, but only when they resolve to a build without CUDA packages (a CPU wheel on disk
  or on a mirror). PyPI's Linux torch is the CUDA build (GBs of nvidia-* wheels): that is refused
  with a message before anything is downloaded.
* `--index ''` or `--index none`: pip's configured index as it is, any build (a CUDA host).

Standard library only: it runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def reachable(index: str, timeout: float) -> bool:
    """True when `index` answers at all within `timeout` s (an HTTP error is an answer)."""
    url = index.rstrip("/") + "/torch/"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def cuda_packages(report: dict) -> list[str]:
    """The CUDA parts of a `pip install --report` resolution (nvidia-* packages, a +cu torch)."""
    found = []
    for item in report.get("install", []):
        name = item["metadata"]["name"].lower()
        version = item["metadata"]["version"]
        if name.startswith("nvidia-") or (name == "torch" and "+cu" in version):
            found.append(f"{name}=={version}")
    return found


def pip(*args: str) -> list[str]:
    """A pip command for this interpreter's environment."""
    return [sys.executable, "-m", "pip", *args]


def resolve(requirement: str) -> dict:
    """What pip's configured index and links would install for `requirement` (nothing installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report")
        done = subprocess.run([*cmd, str(report), requirement], capture_output=True, text=True)
        if done.returncode != 0:  # its warnings only matter when it fails
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"torch: pip could not resolve {requirement}")
        return json.loads(report.read_text())


def main(argv: list[str] | None = None) -> int:
    """Install torch==VERSION; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("version", help="torch version, e.g. 2.13.0")
    parser.add_argument("--index", default=CPU_INDEX, help="wheel index ('' or none: pip's own)")
    parser.add_argument("--timeout", type=float, default=10.0, help="reachability probe (s)")
    parser.add_argument("--dry-run", action="store_true", help="resolve only, install nothing")
    args = parser.parse_args(argv)
    requirement = f"torch=={args.version}"
    index = "" if args.index.strip().lower() in ("", "none") else args.index.strip()
    install = pip("install", "--quiet", *(["--dry-run"] if args.dry_run else []))
    if index and reachable(index, args.timeout):
        print(f"torch: {requirement} from {index}", flush=True)
        return subprocess.run([*install, "--index-url", index, requirement]).returncode
    if index:
        print(f"torch: {index} cannot be reached; trying pip's configured index", flush=True)
        cuda = cuda_packages(resolve(requirement))
        if cuda:
            print(
                f"torch: pip's configured index offers {requirement} only as a CUDA build "
                f"({', '.join(cuda[:3])}{', ...' if len(cuda) > 3 else ''}), not installed.\n"
                f"  Make {index} reachable, point TORCH_INDEX at a mirror of it, or set "
                "TORCH_INDEX=none to accept the CUDA build.",
                file=sys.stderr,
            )
            return 2
    print(f"torch: {requirement} from pip's configured index", flush=True)
    return subprocess.run([*install, requirement]).returncode


if __name__ == "__main__":
    sys.exit(main())
