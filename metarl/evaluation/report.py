"""Benchmark reports: the machine a figure was measured on, and one writer for JSON + Markdown.

Every script under ``scripts/`` that measures something writes ``benchmarks/NAME.json`` (the
numbers and their provenance) and ``benchmarks/NAME.md`` (the table a reader sees, headed by
the command that produced it and the machine it ran on). This module gives them one way to
say both, so a figure always names its machine (cores, CPU model, GPU or none, threads) and its
command, and the JSON keeps what a later reader needs to trust it (versions, the git revision,
the load average before and after the run).

Example:
    >>> m = machine(threads=1)
    >>> m["cores"] >= 1 and m["threads"] == 1
    True
    >>> "CPU" in describe_machine(m)
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Provenance",
    "command_line",
    "describe_machine",
    "load_average",
    "machine",
    "write_report",
]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, timeout=10, capture_output=True,
                             text=True, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _git_revision(cwd: Path) -> str | None:
    return _git(cwd, "rev-parse", "--short", "HEAD") or None


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages now (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _load_text(load: Sequence[float] | None) -> str:
    return "not recorded" if load is None else " ".join(f"{x:.2f}" for x in load)


def machine(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """What a figure was measured on: cores, CPU model, GPU (or None), torch threads, versions,
    the git revision of the code and whether tracked files differed from it (``git_dirty``;
    None outside a git checkout)."""
    here = Path(__file__).resolve().parent
    status = _git(here, "status", "--porcelain", "--untracked-files=no")
    gpu = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "gpu": gpu,
        "device": str(device),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_revision": _git_revision(here),
        "git_dirty": None if status is None else bool(status),
    }


def describe_machine(m: dict[str, Any]) -> str:
    """One line for a report's header, e.g. ``2-core CPU (Intel Xeon ...), no GPU, 1 torch
    thread, torch 2.13.0``."""
    gpu = f"GPU {m['gpu']}" if m.get("gpu") else "no GPU"
    threads = m.get("threads")
    thread_text = f", {threads} torch thread{'s' if threads != 1 else ''}" if threads else ""
    return f"{m['cores']}-core CPU ({m['cpu']}), {gpu}{thread_text}, torch {m['torch']}"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, as a reader would type it from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    with contextlib.suppress(ValueError):  # a script outside the working directory
        script = script.resolve().relative_to(Path.cwd())
    return " ".join(["python", str(script), *argv[1:]])


class Provenance:
    """Started before a measurement, finished after: the machine, the command and the load
    average on both sides (kept in the JSON; the Markdown names the machine and command)."""

    def __init__(
        self, device: str = "cpu", threads: int | None = None,
        argv: Sequence[str] | None = None, script: str | None = None,
    ) -> None:  # fmt: skip
        """``argv``: the script's arguments when ``main(argv)`` was called from Python (None:
        ``sys.argv``'s); ``script``: its file (``__file__``; None: ``sys.argv[0]``)."""
        self.machine = machine(device, threads)
        args = sys.argv[1:] if argv is None else list(argv)
        self.command = command_line([script or sys.argv[0], *args])
        self.load_before = load_average()
        self.load_after: list[float] | None = None

    def finish(self) -> dict[str, Any]:
        """The provenance record, with the load average after the measurement."""
        self.load_after = load_average()
        return {
            "command": self.command,
            "machine": self.machine,
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
        }

    def describe_load(self) -> str:
        """``load average 1.20 0.80 0.50 before, 2.10 1.00 0.60 after`` (1, 5 and 15 min;
        after: as :meth:`finish` read it, or now)."""
        after = self.load_after if self.load_after is not None else load_average()
        return f"load average {_load_text(self.load_before)} before, {_load_text(after)} after"

    def header(self) -> str:
        """The Markdown line under a report's title: the command and the machine."""
        return f"`{self.command}` — {describe_machine(self.machine)}."


def write_report(
    name: str,
    data: dict[str, Any],
    markdown: str | Sequence[str],
    out_dir: str | Path = "benchmarks",
    provenance: Provenance | None = None,
) -> tuple[Path, Path]:
    """Write ``out_dir/name.json`` (``data`` plus ``provenance`` under ``"provenance"``) and
    ``out_dir/name.md``; return both paths."""
    if not name or Path(name).name != name:
        raise ValueError(f"report name must be a plain file stem, got {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(data)
    if provenance is not None:
        payload["provenance"] = provenance.finish()
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    text = markdown if isinstance(markdown, str) else "\n".join(markdown)
    md_path.write_text(text.rstrip() + "\n")
    return json_path, md_path
