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
import os
import pickle
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl import runs
from metarl.envs.navigation import GoalTask, Navigation2D

__all__ = [
    "FAULTS",
    "FAULTY_ID",
    "FaultyNavigation2D",
    "MarkerPayload",
    "bit_flips",
    "faulty_task",
    "malicious_checkpoints",
    "register_faulty_family",
    "truncations",
]

#: The id :func:`register_faulty_family` registers (not registered on ``import metarl``).
FAULTY_ID = "metarl-test/FaultyNavigation2D-v0"
#: What :class:`FaultyNavigation2D` can do wrong.
FAULTS = ("none", "raise", "exit", "kill", "hang", "nan_obs", "inf_reward", "raise_on_reset")


class FaultyNavigation2D(Navigation2D):
    """2D navigation that misbehaves at step ``at_step`` of tasks whose goal's x exceeds
    ``min_goal_x`` — so a failure belongs to particular tasks, as real ones do.

    Args:
        fault: one of :data:`FAULTS`: raise an exception, ``os._exit(3)``, SIGKILL its own
            process, sleep forever, return a NaN observation or an infinite reward, or raise
            in ``reset``. ``exit``/``kill``/``hang`` are meant for worker processes (the
            subprocess backend): in-process they end or block the caller.
        at_step: the (1-based) step of the episode at which it happens.
        min_goal_x: only tasks with ``goal[0] > min_goal_x`` misbehave.
        from_episode: only from this (1-based) episode of this env instance on — a run
            that goes well for a while, then fails.
    """

    def __init__(
        self,
        fault: str = "none",
        at_step: int = 3,
        min_goal_x: float = -1.0,
        from_episode: int = 1,
    ) -> None:
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(FAULTS)}, got {fault!r}")
        super().__init__()
        self.fault, self.at_step, self.min_goal_x = fault, at_step, min_goal_x
        self.from_episode = from_episode
        self._steps = 0
        self._episodes = 0

    def _faulty(self) -> bool:
        return (
            self._task is not None
            and self._task.goal[0] > self.min_goal_x
            and self._episodes >= self.from_episode
        )

    def _reset_episode(self) -> tuple[np.ndarray, dict[str, Any]]:
        self._steps = 0
        self._episodes += 1
        if self.fault == "raise_on_reset" and self._faulty():
            raise RuntimeError(f"simulated reset failure of {self.task}")
        return super()._reset_episode()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, term, trunc, info = super().step(action)
        self._steps += 1
        if self._steps != self.at_step or not self._faulty():
            return obs, reward, term, trunc, info
        if self.fault == "raise":
            raise RuntimeError(f"simulated simulator failure at step {self._steps}")
        if self.fault == "exit":
            os._exit(3)
        if self.fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.fault == "hang":
            while True:
                time.sleep(3600)
        if self.fault == "nan_obs":
            obs = np.full_like(obs, np.nan)
        if self.fault == "inf_reward":
            reward = float("inf")
        return obs, reward, term, trunc, info


def register_faulty_family(fault: str | None = None, **kwargs: Any) -> str:
    """Register the faulty family (generic batched backend only) and return its id;
    idempotent.

    With no arguments: :data:`FAULTY_ID`, to which ``make``/``make_batched`` pass
    ``fault=``, ``at_step=``, ``min_goal_x=``, ``from_episode=``. With them: an id of its own
    with those settings fixed (for agents that build their envs from an id alone).
    """
    from metarl.stepping.registry import _FAMILIES, register_family

    env_id = FAULTY_ID
    if fault is not None:
        settings = {"fault": fault, **kwargs}
        tag = "-".join(f"{v}" for v in settings.values()).replace(".", "p")
        env_id = f"metarl-test/FaultyNavigation2D-{tag}-v0"
        if env_id not in _FAMILIES:
            register_family(env_id, FaultyNavigation2D, max_episode_steps=20, kwargs=settings)
    elif env_id not in _FAMILIES:
        register_family(env_id, FaultyNavigation2D, max_episode_steps=20)
    return env_id


def faulty_task(x: float) -> GoalTask:
    """A task of the faulty family with goal ``(x, 0)``."""
    return GoalTask((float(x), 0.0))


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


# -- soak ------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm; else the peak)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import resource  # pragma: no cover - not Linux

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # pragma: no cover


# -- tally -----------------------------------------------------------------------------------
#: When set, :func:`tally` appends one JSON line per call to this file (scripts/
#: reliability_report.py sets it to count what the reliability tests tried).
TALLY_ENV = "METARL_RELIABILITY_TALLY"


def tally(what: str, n: int = 1, **data: Any) -> None:
    """Record that a reliability test tried ``n`` cases of ``what`` (no-op unless
    :data:`TALLY_ENV` is set)."""
    path = os.environ.get(TALLY_ENV)
    if path:
        import json

        with open(path, "a") as f:
            f.write(json.dumps({"what": what, "n": n, **data}) + "\n")
