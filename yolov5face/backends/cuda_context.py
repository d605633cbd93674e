"""One CUDA context for a backend, made current around each call, one call at a time.

`pycuda.autoinit` makes a new context current on the importing thread only: a call from any
other thread (a thread pool, the handler's workers) then fails with "invalid device context",
and a second context appears when TensorRT's runtime API later uses the device's primary one.
A backend instead retains the device's primary context (the one the CUDA runtime, and so
TensorRT, uses), and every call pushes it, runs under the backend's lock, and pops it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol


class DeviceContext(Protocol):
    """A context that can be made current on the calling thread and released again."""

    def push(self) -> None:
        """Make the context current on this thread."""
        ...

    def pop(self) -> None:
        """Release it from this thread."""
        ...


class SerialDevice:
    """Runs blocks with `context` current, one thread at a time (re-entrant on one thread)."""

    def __init__(self, context: DeviceContext):
        self._context = context
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Hold the lock and the context for the duration of the block."""
        with self._lock:
            self._context.push()
            try:
                yield
            finally:
                self._context.pop()


class PrimaryContext:
    """The primary context of CUDA device `index`, through pycuda."""

    def __init__(self, index: int = 0):
        import pycuda.driver as cuda

        cuda.init()
        self._cuda = cuda
        self._context = cuda.Device(index).retain_primary_context()

    def push(self) -> None:
        """Make it current on this thread."""
        self._context.push()

    def pop(self) -> None:
        """Pop it off this thread's context stack."""
        self._cuda.Context.pop()
