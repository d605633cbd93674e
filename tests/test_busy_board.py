"""BusyBoard: workers see each other's batches through file locks, and dead workers never count."""

import os
import signal
import subprocess
import sys
import time

from yolov5face.serving.busy_board import BusyBoard, usable_cores

# A second worker process: holds its busy lock while stdin stays open after "hold".
_HOLDER = """
import sys
from yolov5face.serving.busy_board import BusyBoard
board = BusyBoard(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "hold":
        with board.busy():
            print("holding", flush=True)
            sys.stdin.readline()
        print("released", flush=True)
"""


def _holder(directory) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _say(proc: subprocess.Popen, word: str, expect: str) -> None:
    proc.stdin.write(word + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == expect


def test_another_workers_batch_is_seen_while_it_lasts(tmp_path):
    board = BusyBoard(tmp_path, rescan_s=0.0)
    other = _holder(tmp_path)
    try:
        assert board.others_busy() == 0
        _say(other, "hold", "holding")
        assert board.others_busy() == 1
        with board.busy():  # our own lock is not counted
            assert board.others_busy() == 1
        _say(other, "go", "released")
        assert board.others_busy() == 0
    finally:
        other.kill()
        other.wait()
        board.close()


def test_a_killed_worker_is_not_busy_and_its_file_is_removed(tmp_path):
    other = _holder(tmp_path)
    _say(other, "hold", "holding")
    board = BusyBoard(tmp_path, rescan_s=0.0)
    assert board.others_busy() == 1
    os.kill(other.pid, signal.SIGKILL)
    other.wait()
    deadline = time.monotonic() + 5
    while board.others_busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert board.others_busy() == 0
    assert (tmp_path / f"worker-{other.pid}.busy").exists()
    replacement = BusyBoard(tmp_path)  # a restarted worker cleans up after the dead one
    assert not (tmp_path / f"worker-{other.pid}.busy").exists()
    assert board.others_busy() == 0
    replacement.close()
    board.close()
    assert list(tmp_path.iterdir()) == []


def test_usable_cores_follows_the_affinity_mask():
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from yolov5face.serving.busy_board import usable_cores; print(usable_cores())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_usable_cores_honours_a_cgroup_quota(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert usable_cores(cpu_max) == min(2, len(os.sched_getaffinity(0)))
    cpu_max.write_text("50000 100000\n")
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == len(os.sched_getaffinity(0))
