"""glibc tuning for serving processes: freed multi-MB buffers are reused, not re-faulted."""

import subprocess
import sys

import pytest

CHILD = """
import resource, sys
import numpy as np
from yolov5face.serving.malloc_tuning import keep_freed_buffers

def one_batch():
    # What a worker holds during a batch of 4 (sizes in float64 items): four decoded
    # 1280x720 images (~2.8 MB each) and the float batch (~4.9 MB), all freed at the end.
    buffers = [np.ones(345_600) for _ in range(4)] + [np.ones(614_400)]
    del buffers

def faults_per_buffer():
    one_batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        one_batch()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20

untuned = faults_per_buffer()
ok = keep_freed_buffers()
print(untuned, faults_per_buffer(), ok)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_freed_batch_buffers_are_reused_without_page_faults():
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    untuned, tuned, ok = float(out[0]), float(out[1]), out[2]
    assert ok == "True"
    # glibc's defaults hand the freed heap top back to the kernel after each batch: the
    # next batch faults its ~16 MB in again (~4000 pages)
    assert untuned > 1000, untuned
    assert tuned < 50, tuned
