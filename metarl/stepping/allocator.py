"""glibc's allocator thresholds raised for the project's own processes.

A meta-iteration allocates and frees the same large tensors (activations, Hessian-vector
products: 1-30 MB each) many times. glibc serves every block above ``M_MMAP_THRESHOLD``
(128 KiB at start, adjusted up to 32 MiB as blocks are freed) with a fresh ``mmap`` and
returns freed memory above ``M_TRIM_THRESHOLD`` at the top of the heap to the kernel, so the
same memory is unmapped, mapped again and zero-filled page by page: on the 2-core CPU about
15% of a MAML-TRPO iteration went to the kernel doing that. :func:`tune_allocator` sets both
thresholds in-process with ``mallopt`` (the mmap threshold to glibc's maximum, 32 MiB on
64-bit; the trim threshold to 1 GiB), so the heap keeps and reuses such blocks; the
process's resident memory then stays near its peak instead of shrinking between iterations.

The ``metarl`` command and the env worker processes call it at start; Python code that
wants the same calls it once. ``METARL_MALLOC_TUNING=0`` in the environment turns it off
(measure with and without: ``scripts/bench_maml_curvature_speed.py``). Off glibc (macOS,
Windows, musl) it does nothing.

Example:
    >>> isinstance(tune_allocator(), bool)  # True where glibc took the settings
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["ENV_VAR", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_allocator"]

#: Set to ``0`` (or ``false``/``off``/``no``) to keep glibc's defaults.
ENV_VAR = "METARL_MALLOC_TUNING"
#: glibc refuses an mmap threshold above ``HEAP_MAX_SIZE / 2`` (32 MiB on 64-bit).
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>

_done: list[bool] = []


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); returns whether
    they are set (False off glibc or with ``METARL_MALLOC_TUNING=0``)."""
    if _done:
        return _done[0]
    ok = False
    if os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no"):
        ok = _mallopt()
    _done.append(ok)
    return ok


def _mallopt() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only (musl has no such symbol)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first (setting it fixes it: glibc
    # stops adjusting it dynamically).
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
