"""Fault injection for metarl's reliability tests (and for testing your own envs and agents).

Crafted checkpoints — malicious pickles whose loading would create a marker file, truncated
and bit-flipped copies — that the loaders of :mod:`metarl.runs` must refuse. The faulty envs
(raise, kill their process, never return) the sampler must surface as errors live here too,
because subprocess workers import them by name.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> files = malicious_checkpoints(d, marker=d / "pwned")
    >>> sorted(files)[:2]
    ['enveloped-inner', 'legacy-torch']
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
from pathlib import Path
from typing import Any

import torch

from metarl import runs

__all__ = [
    "MarkerPayload",
    "bit_flips",
    "malicious_checkpoints",
    "truncations",
]


class MarkerPayload:
    """An object whose unpickling creates ``marker`` (``open(marker, "w")``): the side effect
    that proves code ran. A safe loader never creates the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def malicious_checkpoints(
    directory: Path, marker: Path, agent: str = "maml-trpo", task_family: str | None = None
) -> dict[str, Path]:
    """Write one crafted checkpoint per way of smuggling code in; name → path.

    * ``plain-pickle``: a bare ``pickle.dump`` (not a torch file at all);
    * ``torch-zip``: ``torch.save`` of a checkpoint-shaped dict holding the payload;
    * ``legacy-torch``: the same in torch's pre-1.6 (non-zip) format;
    * ``enveloped-inner``: a well-formed metarl envelope, SHA-256 right, whose inner payload
      holds the object — what an attacker who read this code would write (``agent`` and
      ``task_family`` go into its envelope, so the loader gets as far as the payload).
    """
    directory.mkdir(parents=True, exist_ok=True)
    evil = MarkerPayload(marker)
    shaped = {"iteration": 1, "agent": agent, "state": {"w": evil}, "rng": {}}
    out: dict[str, Path] = {}

    path = directory / "plain-pickle.pt"
    path.write_bytes(pickle.dumps(shaped))
    out["plain-pickle"] = path

    path = directory / "torch-zip.pt"
    torch.save(shaped, path)
    out["torch-zip"] = path

    path = directory / "legacy-torch.pt"
    torch.save(shaped, path, _use_new_zipfile_serialization=False)
    out["legacy-torch"] = path

    buf = io.BytesIO()
    torch.save(shaped, buf)
    inner = buf.getvalue()
    envelope = {
        "kind": runs._KIND,
        "format": runs.CHECKPOINT_FORMAT,
        "metarl_version": "0.1.0",
        "agent": agent,
        "task_family": task_family,
        "sha256": hashlib.sha256(inner).hexdigest(),
        "payload": torch.frombuffer(bytearray(inner), dtype=torch.uint8),
    }
    path = directory / "enveloped-inner.pt"
    torch.save(envelope, path)
    out["enveloped-inner"] = path
    return out


def truncations(data: bytes, count: int) -> list[bytes]:
    """``count`` prefixes of ``data`` (lengths spread over 0 .. len-1, ends included)."""
    n = len(data)
    lengths = sorted({0, 1, n - 1, *(round(i * (n - 1) / max(count - 1, 1)) for i in range(count))})
    return [data[:k] for k in lengths[:count]]


def bit_flips(data: bytes, count: int, seed: int = 0) -> list[tuple[int, bytes]]:
    """``count`` copies of ``data`` with one random bit flipped each: (byte offset, copy)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        b = bytearray(data)
        pos = rng.randrange(len(b))
        b[pos] ^= 1 << rng.randrange(8)
        out.append((pos, bytes(b)))
    return out
