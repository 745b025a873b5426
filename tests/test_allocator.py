"""glibc's allocator thresholds (:mod:`metarl.stepping.allocator`): set in-process by the
``metarl`` command and the env workers, off with ``METARL_MALLOC_TUNING=0``. The effect is
checked in a fresh interpreter that asks glibc (``mallinfo2``) whether a 16 MB block came
from ``mmap`` (glibc's default above 128 KiB) or from the heap (raised threshold); the
module is loaded from its file there, without importing metarl (fast)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from metarl.stepping import allocator

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)

PROBE = """
import ctypes, importlib.util
spec = importlib.util.spec_from_file_location("allocator", {path!r})
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
result = allocator.tune_allocator() if {tune} else None
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblkhd
block = libc.malloc(16 << 20)
mapped = libc.mallinfo2().hblkhd - before >= 16 << 20
libc.free(block)
print("RESULT", result, mapped)
"""


def _probe(tune: bool, env: dict[str, str] | None = None) -> tuple[str, bool]:
    code = PROBE.format(path=allocator.__file__, tune=tune)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, check=True, timeout=60)  # fmt: skip
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")][-1].split()
    return line[1], line[2] == "True"


@glibc
def test_tuning_keeps_large_blocks_on_the_heap() -> None:
    assert _probe(False) == ("None", True)  # glibc's default: mmapped
    assert _probe(True) == ("True", False)
    assert _probe(True, {"METARL_MALLOC_TUNING": "0"}) == ("False", True)


@pytest.mark.parametrize("setting", [None, "0", "off"])
def test_the_metarl_command_tunes_its_process(
    setting: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from metarl.cli import main

    calls: list[int] = []
    monkeypatch.setattr(allocator, "_done", [])
    monkeypatch.setattr(allocator, "_mallopt", lambda: calls.append(1) or True)
    if setting is None:
        monkeypatch.delenv(allocator.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(allocator.ENV_VAR, setting)
    assert main(["envs"]) == 0
    assert calls == ([1] if setting is None else [])
    assert allocator.tune_allocator() is (setting is None)  # once per process
    assert calls == ([1] if setting is None else [])
