"""Is `yolov5face qps` the bottleneck? It against `wrk` on one trivial nginx endpoint."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from yolov5face.serving.launcher import free_ports

logger = logging.getLogger(__name__)

_NGINX_CONF = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir};
  client_body_buffer_size 1m;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '[]'; }}
  }}
}}
"""


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def compare_with_wrk(
    image: Path, concurrency: int = 16, seconds: int = 8, rounds: int = 3
) -> dict | None:
    """Interleaved rounds of wrk and `yolov5face qps` POSTing `image`; None without the tools."""
    wrk, nginx = shutil.which("wrk"), shutil.which("nginx") or "/usr/sbin/nginx"
    if wrk is None or not os.path.exists(nginx):
        logger.warning("wrk or nginx not installed (Debian: apt-get install wrk nginx-light)")
        return None
    with tempfile.TemporaryDirectory(prefix="qps-vs-wrk-") as tmp:
        port = free_ports(1)[0]
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(dir=tmp, port=port))
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n'
            f'local f = io.open("{image.resolve()}", "rb")\n'
            'wrk.body = f:read("*all")\n'
            "f:close()\n"
        )
        server = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/predictions/fd1"
        rows = []
        try:
            _wait_port(port)
            for _ in range(rounds):
                out = subprocess.run(
                    [wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", str(script), url],
                    capture_output=True,
                    text=True,
                    timeout=seconds + 30,
                    check=True,
                ).stdout
                wrk_qps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                ours = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "yolov5face",
                        "qps",
                        "--url",
                        url,
                        "--images",
                        str(image),
                        "--concurrency",
                        str(concurrency),
                        "--duration",
                        str(seconds),
                        "--warmup",
                        "1",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=seconds + 60,
                    check=True,
                ).stdout
                qps = json.loads(ours.strip().splitlines()[-1])["levels"][0]["qps"]
                rows.append({"wrk": wrk_qps, "qps": qps, "ratio": qps / wrk_qps})
        finally:
            server.terminate()
            server.wait(10)
    median = statistics.median(r["ratio"] for r in rows)
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "image": image.name,
        "rounds": rows,
        "median_ratio": median,
    }


def to_markdown(result: dict | None) -> str:
    """The section text for docs/benchmarks.md."""
    if result is None:
        return "wrk or nginx is not installed on this machine: not measured in this run."
    lines = [
        f"Trivial nginx endpoint (`return 200 '[]'`), POST of `{result['image']}`, "
        f"concurrency {result['concurrency']}, {result['seconds']} s per run, runs interleaved.",
        "",
        "| round | wrk req/s | yolov5face qps req/s | ratio |",
        "|---|---|---|---|",
    ]
    for i, r in enumerate(result["rounds"], 1):
        lines.append(f"| {i} | {r['wrk']:.0f} | {r['qps']:.0f} | {r['ratio']:.2f} |")
    target = "met" if result["median_ratio"] >= 0.6 else "missed"
    lines += ["", f"Median ratio **{result['median_ratio']:.2f}** (target >= 0.60: {target})."]
    return "\n".join(lines)
