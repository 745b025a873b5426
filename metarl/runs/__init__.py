"""Run directories: resolved config, CSV/TensorBoard logs, atomic checkpoints, exact resume.

A run directory holds

* ``config.json`` — the agent's name, the resolved config and the metarl version;
* ``metrics.csv`` — one row per logged iteration (``tensorboard/`` too when the
  ``tensorboard`` package is installed, unless the config says ``tensorboard: false``);
* ``checkpoint.pt`` — the latest good checkpoint;
* ``.lock`` — locked by the one process writing the run (:class:`metarl.runs.rundir.RunLock`).

Every write goes through :mod:`metarl.runs.rundir` (never through a link; a directory from
elsewhere may be crafted), and checkpoint loads are bounded (:func:`max_checkpoint_bytes`).

Checkpoints hold plain data only (tensors, numbers, strings, lists, dicts) and are read with
``torch.load(weights_only=True)``, so a crafted pickle is refused instead of executed. They
are written to a temporary file in the same directory, flushed to disk and renamed over the
old one (``os.replace`` is atomic), so an interrupted save leaves the last checkpoint intact;
a checkpoint holding NaN or inf is refused before anything is written.

The file is a ``torch.save`` envelope ``{"kind", "format", "metarl_version", "agent",
"task_family", "sha256", "payload"}`` whose ``payload`` is the serialised checkpoint as a
``uint8`` tensor: loading checks the format version, the agent and task family it was written
for and the SHA-256 of the payload (a flipped bit inside a tensor is otherwise invisible to
``torch.load``) before it unpickles the payload, again with ``weights_only=True``.
:func:`save_checkpoint_file` and :func:`load_checkpoint_file` do this for any agent that keeps
its own checkpoint path (RL²); :class:`Run` uses them for its ``checkpoint.pt``.

The random states of Python, NumPy, torch and any generator the run passes in are saved with
it, so a resumed run on the CPU continues bit for bit like an uninterrupted one.

Example:
    >>> import tempfile
    >>> from metarl.runs.config import RunConfig
    >>> d = tempfile.mkdtemp()
    >>> run = Run.create(d + "/run", "my-agent", RunConfig(num_iterations=2))
    >>> run.log(0, {"return": -1.0})
    >>> path = run.save_checkpoint(1, {"params": {"w": torch.zeros(2)}})
    >>> run.close()  # releases the directory's lock
    >>> run2 = Run.resume(d + "/run", "my-agent", RunConfig(num_iterations=4))
    >>> run2.load_checkpoint()["iteration"]
    1
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import random
import shutil
import signal
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from metarl.runs import rundir
from metarl.runs.config import Config
from metarl.numerics import NEW_RUN_ADVICE
from metarl.runs.rundir import RunLock, RunLockedError, UnsafeRunDirError
from metarl.stepping.torch_batched import resolve_device

if TYPE_CHECKING:
    from metarl.learning.policies import Policy

__all__ = [
    "CheckpointError",
    "Run",
    "RunLockedError",
    "RunMismatchError",
    "UnsafeRunDirError",
    "capture_rng_state",
    "load_checkpoint_file",
    "load_run_policy",
    "progress",
    "resolve_device",
    "restore_rng_state",
    "save_checkpoint_file",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_FILE = "checkpoint.pt"
#: The checkpoint of the best validation score so far (runs trained with validation).
BEST_FILE = "best.pt"
#: One JSON line per resumed session that changed a ``may_change_on_resume`` setting.
RESUMES_FILE = "resumes.jsonl"

#: Where a checkpoint's tensors go on load: as ``torch.load``'s ``map_location`` (a device, or
#: ``(storage, location) -> storage``).
MapLocation = str | torch.device | Callable[[Any, str], Any]

#: Bumped whenever the checkpoint layout changes; a file of another format is refused.
CHECKPOINT_FORMAT = 1
_KIND = "metarl-checkpoint"
#: Test hook (reliability tests only): ``N`` makes the process SIGKILL itself halfway through
#: writing its N-th checkpoint file, after the first half of the bytes reached the disk.
_KILL_IN_WRITE_ENV = "METARL_TEST_KILL_IN_CHECKPOINT_WRITE"
_writes = 0
#: The largest checkpoint file metarl reads (checked before reading; real ones are kB to a few
#: MB), and the most its tensors may expand to once loaded. ``METARL_MAX_CHECKPOINT_MB`` raises
#: both for a genuinely larger model.
MAX_CHECKPOINT_MB = 256
#: A checkpoint's pickled structure (tensors are stored beside it): small for every agent.
_MAX_PICKLE_BYTES = 64 << 20
#: config.json, metrics.csv and resumes.jsonl are read whole; far above any real one.
_MAX_RECORD_BYTES = 16 << 20
_MAX_METRICS_BYTES = 1 << 30

T = TypeVar("T")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written (non-finite values, not plain data) or read."""


class RunMismatchError(ValueError):
    """A run directory was made by another agent, env or configuration."""


# -- random states -------------------------------------------------------------------------
def capture_rng_state(
    generators: Mapping[str, np.random.Generator | torch.Generator] | None = None,
) -> dict[str, Any]:
    """The states of Python's, NumPy's global and torch's generators (and CUDA's when it is
    initialised), plus those of ``generators`` (env noise streams, task samplers...), as
    plain data."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 (saving global state)
    state: dict[str, Any] = {
        "python": _plain(random.getstate()),
        "numpy": _plain(np_state),
        "torch": torch.get_rng_state(),
        "generators": {},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in (generators or {}).items():
        if isinstance(gen, np.random.Generator):
            state["generators"][name] = {"numpy": _plain(gen.bit_generator.state)}
        elif isinstance(gen, torch.Generator):
            state["generators"][name] = {"torch": gen.get_state(), "device": str(gen.device)}
        else:
            raise TypeError(f"generator {name!r} is a {type(gen).__name__}, not a numpy/torch one")
    return state


def restore_rng_state(
    state: Mapping[str, Any],
    generators: Mapping[str, np.random.Generator | torch.Generator] | None = None,
) -> None:
    """Put back what :func:`capture_rng_state` saved (into ``generators`` by name)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(_unplain(state["numpy"]))  # noqa: NPY002 (restoring global state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise CheckpointError(f"the checkpoint has no state for generator {name!r}")
        if isinstance(gen, np.random.Generator):
            gen.bit_generator.state = _unplain(saved[name]["numpy"])
        else:
            gen.set_state(saved[name]["torch"])


def _plain(obj: Any) -> Any:
    """NumPy arrays → tensors, tuples → lists, recursively (what weights_only loads)."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(obj.copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _unplain(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: _unplain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unplain(v) for v in obj]
    return obj


def _non_finite(obj: Any, path: str = "") -> list[str]:
    """Paths of tensors/arrays/floats in ``obj`` that hold NaN or inf."""
    bad: list[str] = []
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all()):
            bad.append(path or "<root>")
    elif isinstance(obj, np.ndarray):
        if np.issubdtype(obj.dtype, np.inexact) and not np.isfinite(obj).all():
            bad.append(path or "<root>")
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            bad.append(path or "<root>")
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            bad += _non_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            bad += _non_finite(v, f"{path}[{i}]")
    return bad


# -- progress ------------------------------------------------------------------------------
def progress(
    iterable: Iterable[T], total: int | None = None, desc: str = "", initial: int = 0
) -> Iterator[T]:
    """A tqdm progress bar on a terminal; the bare iterable when stderr is not a TTY (logs,
    CI, tests) or tqdm is missing. Update the postfix with ``bar.set_postfix`` when the
    returned object has it."""
    if not sys.stderr.isatty():
        return iter(iterable)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iter(iterable)
    return iter(tqdm(iterable, total=total, desc=desc, initial=initial, dynamic_ncols=True))


# -- the run directory ---------------------------------------------------------------------
class Run:
    """A run directory; build it with :meth:`create` or :meth:`resume`.

    Attributes:
        path: the directory.
        agent: the agent's registry name.
        config: the resolved config of this (possibly resumed) session.
    """

    def __init__(self, path: Path, agent: str, config: Config) -> None:
        self.path = path
        self.agent = agent
        self.config = config
        self._columns: list[str] | None = None
        self._tb: Any = None
        self._resuming = False  # set by resume(): load_checkpoint records what changed
        self._lock: RunLock | None = None  # held by create() and resume(): the one writer
        wants = getattr(config, "tensorboard", False)  # True, False or None: when installed
        if wants is not False and (wants or _tensorboard_installed()):
            rundir.check_written_names(path, ["tensorboard"])
            self._tb = _tensorboard_writer(path / "tensorboard")

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, agent: str, config: Config, overwrite: bool = False) -> Run:
        """A fresh run directory, locked for this process; refuses one that already holds a
        run unless ``overwrite`` (then its contents are deleted first, under the lock, so a
        live run in it is never deleted from under its writer)."""
        path = Path(path)
        _make_run_dir(path)

        def fill() -> Run:
            if overwrite:
                _clear_run_dir(path)
            if os.path.lexists(path / CONFIG_FILE) or os.path.lexists(path / CHECKPOINT_FILE):
                raise FileExistsError(
                    f"{path} already holds a run; continue it with --resume, replace it with "
                    "--overwrite, or choose another run directory"
                )
            rundir.check_written_names(path)
            record = {
                "agent": agent,
                "config_class": type(config).__name__,
                "config": config.to_dict(),
                "metarl_version": _version(),
            }
            env_id = getattr(config, "env_id", None)
            if isinstance(env_id, str):  # the --import its family needs (shown, never imported)
                from metarl.stepping.registry import run_record

                record.update(run_record(env_id))
            _atomic_write_bytes(path / CONFIG_FILE, json.dumps(record, indent=2).encode())
            return cls(path, agent, config)

        return cls._locked(path, fill)

    @classmethod
    def resume(
        cls, path: str | Path, agent: str | None = None, config: Config | None = None
    ) -> Run:
        """Reopen ``path`` to continue it.

        Args:
            agent: if given, must be the agent that made the run.
            config: this session's config; every field must equal the run's except those
                marked ``may_change_on_resume`` (iterations, device...). None: the run's own
                config (needs ``agent`` to know its class; see :meth:`read_config`).
        """
        path = Path(path)
        record = cls.read_record(path)
        return cls._locked(path, lambda: cls._resume_locked(path, record, agent, config))

    @classmethod
    def _locked(cls, path: Path, open_run: Callable[[], Run]) -> Run:
        """``open_run()`` under the run directory's lock, which the returned run then holds
        (released again if opening fails)."""
        lock = RunLock(path)
        try:
            run = open_run()
        except BaseException:
            lock.release()
            raise
        run._lock = lock
        return run

    @classmethod
    def _resume_locked(
        cls, path: Path, record: dict[str, Any], agent: str | None, config: Config | None
    ) -> Run:
        if agent is not None and record["agent"] != agent:
            raise RunMismatchError(
                f"{path} was made by agent {record['agent']!r}, not {agent!r}; resume it with "
                f"--agent {record['agent']} or start a new run directory"
            )
        if config is None:
            raise ValueError("resume needs the config class: pass config=")
        saved = type(config).from_dict(record["config"])
        diff = saved.differences(config)
        if diff:
            lines = "; ".join(f"{k}: run has {a!r}, asked for {b!r}" for k, (a, b) in diff.items())
            raise RunMismatchError(
                f"{path} was made with another configuration ({lines}); resume with the run's "
                "settings (omit these options) or start a new run directory"
            )
        if not (path / CHECKPOINT_FILE).exists():
            raise FileNotFoundError(
                f"{path} has no checkpoint yet (the run stopped before its first one); start "
                "it again with --overwrite"
            )
        # A save interrupted by a crash leaves its temporary file behind; the checkpoint
        # itself is the previous one, intact. Clear the debris.
        for tmp in path.glob(f".{CHECKPOINT_FILE}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
        run = cls(path, record["agent"], config)
        run._resuming = True
        return run

    @staticmethod
    def read_record(path: str | Path) -> dict[str, Any]:
        """The run's ``config.json`` (agent, config class, config, version)."""
        path = Path(path)
        file = path / CONFIG_FILE
        # Every name metarl may write is checked here, before any work: evaluate and resume
        # both read the record first.
        rundir.check_written_names(path)
        if not file.exists():
            raise FileNotFoundError(
                f"{path} is not a run directory (no {CONFIG_FILE}); pass the directory "
                "`metarl train` printed"
            )
        try:
            record = json.loads(rundir.read_bytes(file, _MAX_RECORD_BYTES))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(
                f"{file} is corrupted ({e}); it is rewritten only when a run is created, so "
                "restore it from a copy or start a new run directory"
            ) from e
        if not isinstance(record, dict) or "agent" not in record or "config" not in record:
            raise ValueError(f"{file} is not a metarl run config")
        return record

    @staticmethod
    def read_resumes(path: str | Path) -> list[dict[str, Any]]:
        """The settings changed when the run was resumed, oldest first: the lines of its
        ``resumes.jsonl`` (``{"iteration", "utc", "changed": {field: [old, new]}}``); empty
        when it never changed one. config.json keeps the first session's settings."""
        file = Path(path) / RESUMES_FILE
        if not file.exists():
            return []
        out = []
        text = rundir.read_bytes(file, _MAX_RECORD_BYTES).decode(errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{file}, line {n}, is not JSON ({e}); the file is only appended to by "
                    "`metarl train --resume`, so restore it from a copy or delete that line"
                ) from e
            if not isinstance(entry, dict) or not isinstance(entry.get("changed"), dict):
                raise ValueError(f"{file}, line {n}, is not a resume record: {line!r}")
            out.append(entry)
        return out

    # -- logging ---------------------------------------------------------------------------
    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        """Append one row to metrics.csv (and TensorBoard scalars)."""
        row = {"iteration": iteration, **{k: _scalar(v) for k, v in metrics.items()}}
        file = self.path / METRICS_FILE
        if self._columns is None and os.path.lexists(file):
            text = rundir.read_bytes(file, _MAX_METRICS_BYTES).decode()
            header = next(csv.reader(io.StringIO(text)), None)
            self._columns = list(header) if header else None
        if self._columns is None:
            self._columns = list(row)
            rundir.write_atomic(file, _csv_text(self._columns, []))
        new = [k for k in row if k not in self._columns]
        if new:  # a metric appeared: rewrite the file with the wider header
            rows = self.metrics()
            self._columns += new
            rundir.write_atomic(file, _csv_text(self._columns, rows))
        rundir.append(file, _csv_text(self._columns, [row], header=False))
        if self._tb is not None:
            for k, v in row.items():
                if k != "iteration" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, iteration)
            self._tb.flush()

    def metrics(self) -> list[dict[str, str]]:
        """The rows of metrics.csv (strings, as read)."""
        file = self.path / METRICS_FILE
        if not os.path.lexists(file):
            return []
        text = rundir.read_bytes(file, _MAX_METRICS_BYTES).decode()
        return list(csv.DictReader(io.StringIO(text, newline="")))

    def _truncate_metrics(self, after: int) -> None:
        """Drop rows logged after ``after`` (work lost with an interruption, redone now)."""
        rows = self.metrics()
        if not rows:
            return
        keep = [r for r in rows if int(r["iteration"]) <= after]
        if len(keep) == len(rows):
            return
        rundir.write_atomic(self.path / METRICS_FILE, _csv_text(list(rows[0]), keep))

    # -- checkpoints -----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    def save_checkpoint(
        self,
        iteration: int,
        state: Mapping[str, Any],
        generators: Mapping[str, np.random.Generator | torch.Generator] | None = None,
    ) -> Path:
        """Atomically write ``state`` (plain data) with the RNG states as the latest
        checkpoint, after ``iteration`` iterations are done.

        Raises:
            CheckpointError: ``state`` holds NaN/inf or something that is not plain data
                (the previous checkpoint is kept).
        """
        bad = _non_finite(state)
        if bad:
            raise CheckpointError(
                f"refusing to checkpoint iteration {iteration}: non-finite values in "
                f"{', '.join(bad[:5])}; the last good checkpoint ({self.checkpoint_path}) is "
                "kept — lower the learning rate or check the loss" + NEW_RUN_ADVICE
            )
        payload = {
            "iteration": int(iteration),
            "agent": self.agent,
            # What this checkpoint was made under: a config.json edited later is caught on
            # resume (load_checkpoint), instead of silently continuing under other settings.
            "config": self.config.to_dict(),
            "state": _plain(dict(state)),
            "rng": capture_rng_state(generators),
        }
        return save_checkpoint_file(
            self.checkpoint_path, payload, agent=self.agent, task_family=self.task_family
        )

    def save_best(
        self, iteration: int, state: Mapping[str, Any], scores: Mapping[str, float]
    ) -> Path:
        """Atomically write ``state`` as ``best.pt``: the model after ``iteration`` iterations,
        whose validation ``scores`` (with ``val_score``, higher is better) are the best so
        far."""
        payload = {
            "iteration": int(iteration),
            "agent": self.agent,
            "config": self.config.to_dict(),
            "state": _plain(dict(state)),
            "validation": {k: float(v) for k, v in scores.items()},
        }
        return save_checkpoint_file(
            self.path / BEST_FILE, payload, agent=self.agent, task_family=self.task_family
        )

    def load_best(self) -> dict[str, Any]:
        """Read ``best.pt`` (see :meth:`save_best`): ``{"iteration", "state", "validation"}``."""
        path = self.path / BEST_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: only a run trained with validation (--val-every N) "
                "keeps a best checkpoint; evaluate the latest one (--checkpoint latest)"
            )
        payload = load_checkpoint_file(path, agent=self.agent, task_family=self.task_family)
        for key in ("iteration", "state", "validation"):
            if key not in payload:
                raise CheckpointError(f"{path} has no {key!r}; it is not a best checkpoint")
        self._check_config(payload)
        payload["state"] = _unplain(payload["state"])
        return payload

    def best_score(self) -> float | None:
        """The validation score of ``best.pt``; None when there is none yet."""
        if not (self.path / BEST_FILE).exists():
            return None
        return float(self.load_best()["validation"]["val_score"])

    @property
    def task_family(self) -> str | None:
        """What the run learns from: the config's ``env_id`` (or ``dataset``), if it has one."""
        for name in ("env_id", "dataset"):
            value = getattr(self.config, name, None)
            if isinstance(value, str):
                return value
        return None

    def load_checkpoint(
        self, generators: Mapping[str, np.random.Generator | torch.Generator] | None = None
    ) -> dict[str, Any]:
        """Read the latest checkpoint, restore the RNG states (into ``generators`` too), drop
        metrics logged after it, and return ``{"iteration", "state", ...}``.

        Raises:
            CheckpointError: the file is corrupted, truncated, of another format, or not
                plain data (a pickle that would run code).
            RunMismatchError: it was written by another agent or for another task family.
        """
        payload = load_checkpoint_file(
            self.checkpoint_path, agent=self.agent, task_family=self.task_family
        )
        for key in ("iteration", "state", "rng"):
            if key not in payload:
                raise CheckpointError(f"{self.checkpoint_path} has no {key!r}; it is not a run "
                                      "checkpoint")  # fmt: skip
        self._check_config(payload)
        if self._resuming:
            self._record_resume(payload)
        restore_rng_state(payload["rng"], generators)
        payload["state"] = _unplain(payload["state"])
        if self._resuming:  # only the writer: a reader (evaluate) leaves a live run's log alone
            self._truncate_metrics(int(payload["iteration"]) - 1)
        return payload

    def _check_config(self, payload: Mapping[str, Any]) -> None:
        """Refuse to continue under settings other than those the checkpoint was made with
        (fields marked ``may_change_on_resume`` aside): this session's config comes from
        config.json, so a difference means config.json was edited after the checkpoint."""
        made_with = payload.get("config")
        if not isinstance(made_with, Mapping):
            return  # written before checkpoints recorded their config
        options = dataclasses.fields(self.config)
        changed = self._changes_since(made_with, free=False)
        if not changed:
            return
        lines = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in changed.items())
        free = sorted(f.name for f in options if f.metadata.get("may_change_on_resume"))
        raise RunMismatchError(
            f"{self.path}: the configuration differs from the one its checkpoint (iteration "
            f"{payload.get('iteration')}) was made with ({lines}) — was {CONFIG_FILE} edited "
            "by hand? A run continues only under its own settings: put these values back in "
            f"{self.path / CONFIG_FILE} and resume, or start a new run directory with the new "
            f"settings. Only these may change on resume (as options of `metarl train "
            f"--resume`): {', '.join(free) or 'none'}"
        )

    def _changes_since(
        self, made_with: Mapping[str, Any], free: bool
    ) -> dict[str, tuple[Any, Any]]:
        """``{field: (checkpoint's value, this session's)}`` for the fields that differ, among
        those marked ``may_change_on_resume`` (``free``) or the others."""
        now = self.config.to_dict()
        made_with = type(self.config).upgrade(made_with)  # an older version's names/defaults
        return {
            f.name: (made_with[f.name], now.get(f.name))
            for f in dataclasses.fields(self.config)
            if bool(f.metadata.get("may_change_on_resume")) == free
            and f.name in made_with
            and made_with[f.name] != now.get(f.name)
        }

    def _record_resume(self, payload: Mapping[str, Any]) -> None:
        """Append to resumes.jsonl the settings this session changed against the checkpoint's
        (config.json keeps the run's first settings), e.g. a run continued with exact
        curvature or on another device; nothing when none changed."""
        made_with = payload.get("config")
        if not isinstance(made_with, Mapping):
            return
        changed = self._changes_since(made_with, free=True)
        if not changed:
            return
        line = {
            "iteration": int(payload["iteration"]),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "changed": {k: list(v) for k, v in changed.items()},
        }
        rundir.append(self.path / RESUMES_FILE, (json.dumps(line) + "\n").encode())

    def close(self) -> None:
        """Close the TensorBoard writer and release the run directory's lock."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def save_checkpoint_file(
    path: str | Path,
    payload: Mapping[str, Any],
    *,
    agent: str,
    task_family: str | None = None,
    check_finite: Iterable[str] | None = None,
) -> Path:
    """Atomically write ``payload`` (plain data: tensors, numbers, strings, None, lists,
    tuples, dicts) as a checkpoint of ``agent`` on ``task_family``.

    Args:
        check_finite: the top-level keys that must hold no NaN/inf (None: all of them).

    Raises:
        CheckpointError: non-finite values or objects that are not plain data; nothing is
            written and the previous file stays as it was.
    """
    path = Path(path)
    checked = payload if check_finite is None else {k: payload[k] for k in check_finite}
    bad = _non_finite(checked)
    if bad:
        raise CheckpointError(
            f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}; the last "
            "good checkpoint is kept — lower the learning rate or check the loss" + NEW_RUN_ADVICE
        )
    not_plain = _not_plain(payload)
    if not_plain:
        raise CheckpointError(
            f"refusing to write {path}: {not_plain} is not plain data (tensors, numbers, "
            "strings, None, lists, tuples, dicts), so it could not be loaded safely; convert "
            "it (e.g. a state_dict, or .tolist())"
        )
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    inner = buf.getvalue()
    envelope = {
        "kind": _KIND,
        "format": CHECKPOINT_FORMAT,
        "metarl_version": _version(),
        "agent": agent,
        "task_family": task_family,
        "sha256": hashlib.sha256(inner).hexdigest(),
        "payload": torch.frombuffer(bytearray(inner), dtype=torch.uint8),
    }
    out = io.BytesIO()
    torch.save(envelope, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, out.getvalue(), checkpoint=True)
    return path


def load_checkpoint_file(
    path: str | Path,
    *,
    agent: str | None = None,
    task_family: str | None = None,
    map_location: MapLocation = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint_file`, refusing anything unsafe.

    Both the envelope and the payload are read with ``torch.load(weights_only=True)``: a
    pickle that would construct arbitrary objects or call functions is refused, never run.

    Args:
        agent, task_family: if given, the checkpoint must have been written for them.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: empty, truncated or corrupted (SHA-256 mismatch), of another
            checkpoint format, not a metarl checkpoint, or not plain data.
        RunMismatchError: written by another agent or for another task family.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not path.is_file():
        raise CheckpointError(
            f"{path} is not a file (a directory or a device); point to a checkpoint file"
        )
    limit = max_checkpoint_bytes()
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{path} is empty (its write never finished); use an earlier copy or start over"
        )
    if size > limit:
        raise CheckpointError(_too_large(path, f"{size} bytes", limit))
    with open(path, "rb") as f:  # path is a regular file: no FIFO can block this read
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise CheckpointError(_too_large(path, "growing", limit))
    _check_archive(path, raw, limit)
    envelope = _safe_load(path, raw, "cpu")
    del raw
    if not isinstance(envelope, dict) or envelope.get("kind") != _KIND:
        if isinstance(envelope, dict) and "iteration" in envelope and "state" in envelope:
            raise CheckpointError(
                f"{path} was written by an earlier metarl, before checkpoint format "
                f"{CHECKPOINT_FORMAT}; this version cannot read it — resume it with the "
                "version that wrote it, or start a new run"
            )
        raise CheckpointError(f"{path} is not a metarl checkpoint (no metarl envelope)")
    fmt, version = envelope.get("format"), envelope.get("metarl_version", "?")
    if fmt != CHECKPOINT_FORMAT:
        newer = isinstance(fmt, int) and fmt > CHECKPOINT_FORMAT
        raise CheckpointError(
            f"{path} has checkpoint format {fmt!r} (written by metarl {version}); this metarl "
            f"({_version()}) reads format {CHECKPOINT_FORMAT} only — "
            + ("upgrade metarl" if newer else "use the metarl version that wrote it")
        )
    if agent is not None and envelope.get("agent") != agent:
        raise RunMismatchError(
            f"{path} is a checkpoint of agent {envelope.get('agent')!r}, not {agent!r}; load "
            "it with that agent, or point to this agent's own checkpoint"
        )
    if task_family is not None and envelope.get("task_family") not in (None, task_family):
        raise RunMismatchError(
            f"{path} was written for {envelope.get('task_family')!r}, not {task_family!r}; "
            "use a checkpoint of the same task family (or train a new run)"
        )
    data = envelope.get("payload")
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 1:
        raise CheckpointError(f"{path} is not a metarl checkpoint (its payload is missing)")
    if data.numel() > data.untyped_storage().nbytes() or not data.is_contiguous():
        # A view (stride 0...) over a small storage would expand on copying.
        raise CheckpointError(_too_large(path, f"a payload of {data.numel()} bytes", limit))
    inner = data.numpy().tobytes()
    expected = envelope.get("sha256")
    del envelope, data
    if hashlib.sha256(inner).hexdigest() != expected:
        raise CheckpointError(
            f"{path} is corrupted: its payload does not match the SHA-256 recorded when it was "
            "written (a damaged disk or copy); use an earlier copy or start a new run"
        )
    _check_archive(path, inner, limit)
    payload = _safe_load(path, inner, map_location)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not a metarl checkpoint (its payload is not a dict)")
    expanded = _tensor_bytes(payload)
    if expanded > limit:
        raise CheckpointError(_too_large(path, f"tensors of {expanded} bytes", limit))
    return payload


def max_checkpoint_bytes() -> int:
    """The size cap of a checkpoint file and of its loaded tensors, in bytes
    (:data:`MAX_CHECKPOINT_MB`, or ``METARL_MAX_CHECKPOINT_MB``)."""
    raw = os.environ.get("METARL_MAX_CHECKPOINT_MB")
    try:
        mb = float(raw) if raw else MAX_CHECKPOINT_MB
    except ValueError:
        mb = MAX_CHECKPOINT_MB
    return int(mb * (1 << 20))


def _too_large(path: Path, what: str, limit: int) -> str:
    return (
        f"{path} is too large for a metarl checkpoint ({what}; the cap is {limit >> 20} MB); "
        "it is not one this metarl wrote — if it is a genuine larger model, raise the cap with "
        "METARL_MAX_CHECKPOINT_MB"
    )


def _check_archive(path: Path, data: bytes, limit: int) -> None:
    """Refuse, before unpickling, what torch.save never writes: a bare pickle, a compressed
    or oversized archive entry (what a decompression bomb needs)."""
    if not data.startswith(b"PK"):
        if data.startswith(b"\x80"):  # a pickle: another program's file, or crafted
            raise CheckpointError(
                f"refusing to load {path}: it is a bare pickle, not a metarl checkpoint (made "
                "by another program or crafted); nothing was loaded or run"
            )
        raise CheckpointError(
            f"{path} is corrupted (it is not a checkpoint archive; it starts with "
            f"{data[:8].hex(' ')}); use an earlier copy or start a new run"
        )
    try:
        entries = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        raise CheckpointError(
            f"{path} is truncated or corrupted ({type(e).__name__}: {str(e)[:200]}); use an "
            "earlier copy or start a new run"
        ) from e
    total = 0
    for entry in entries:
        total += entry.file_size
        if entry.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path} is corrupted or not a metarl checkpoint (its entry {entry.filename!r} "
                "is compressed, which torch.save never does); use an earlier copy"
            )
        if entry.filename.endswith(".pkl") and entry.file_size > _MAX_PICKLE_BYTES:
            raise CheckpointError(_too_large(path, f"a {entry.file_size}-byte pickle", limit))
    if total > limit:
        raise CheckpointError(_too_large(path, f"entries of {total} bytes", limit))


def _tensor_bytes(obj: Any) -> int:
    """What the tensors in ``obj`` take once copied (views counted at their full size)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _safe_load(path: Path, data: bytes, map_location: MapLocation) -> Any:
    """``torch.load(weights_only=True)`` of ``data`` with every failure a CheckpointError."""
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "weights only" in text.lower() or "weights_only" in text.lower():
            raise CheckpointError(
                f"refusing to load {path}: it is not a plain-data metarl checkpoint (it holds "
                "objects that loading would have to construct or call; nothing was run). A "
                "metarl checkpoint never needs that: this file was made by another program or "
                f"crafted. Details: {_unpickler_reason(text)}"
            ) from e
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise CheckpointError(f"{path} is corrupted (unreadable pickle: {first})") from e
    except Exception as e:  # truncated zip, bad offsets, bad UTF-8...: all mean corrupted
        raise CheckpointError(
            f"{path} is truncated or corrupted ({type(e).__name__}: {str(e)[:200]}); use an "
            "earlier copy or start a new run"
        ) from e


def _unpickler_reason(message: str) -> str:
    """What torch's weights-only unpickler objected to, without its advice to turn it off."""
    _, found, rest = message.partition("WeightsUnpickler error:")
    if not found:
        return "objects other than tensors and plain data"
    for stop in ("Please use", "Check the documentation"):
        rest = rest.split(stop)[0]
    return " ".join(rest.split()) or "objects other than tensors and plain data"


def _not_plain(obj: Any, path: str = "") -> str | None:
    """The path of the first value in ``obj`` that weights_only loading would refuse."""
    if obj is None or isinstance(obj, bool | int | float | str | bytes | torch.Tensor):
        return None
    if isinstance(obj, torch.dtype | torch.device | torch.Size):
        return None
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str | int):
                return f"{path}[{k!r}] (a {type(k).__name__} key)"
            bad = _not_plain(v, f"{path}.{k}" if path else str(k))
            if bad:
                return bad
        return None
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            bad = _not_plain(v, f"{path}[{i}]")
            if bad:
                return bad
        return None
    return f"{path or '<root>'} (a {type(obj).__name__})"


def _atomic_write_bytes(path: Path, data: bytes, checkpoint: bool = False) -> None:
    """Write ``data`` as ``path`` through :func:`metarl.runs.rundir.write_atomic` (a fresh
    temporary file, fsynced, renamed over ``path``; never through a link)."""

    def kill_halfway(f: Any, data: bytes) -> None:
        global _writes
        _writes += 1
        if _writes == int(os.environ[_KILL_IN_WRITE_ENV]):
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        f.write(data)

    hook = kill_halfway if checkpoint and os.environ.get(_KILL_IN_WRITE_ENV) else None
    rundir.write_atomic(path, data, writer=hook)


def _csv_text(columns: list[str], rows: Iterable[Mapping[str, Any]], header: bool = True) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, columns)
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def _make_run_dir(path: Path) -> None:
    """``mkdir -p path`` with one clear line when a file is in the way."""
    if os.path.lexists(path) and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a directory; choose another run directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError) as e:
        raise NotADirectoryError(
            f"cannot make run directory {path}: a file is in the way ({e.filename}); choose "
            "another run directory"
        ) from e


def _clear_run_dir(path: Path) -> None:
    """Delete what ``path`` holds, except the lock this process holds (links themselves,
    never what they point to)."""
    for entry in os.scandir(path):
        if entry.name == rundir.LOCK_FILE:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


#: The missing-TensorBoard line is written once per process, not once per run.
_warned_no_tensorboard = False


def _tensorboard_installed() -> bool:
    """Whether TensorBoard logs can be written (a config's ``tensorboard: None``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def _tensorboard_writer(path: Path) -> Any:
    global _warned_no_tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: CSV only, and one line that says so
        if not _warned_no_tensorboard:
            _warned_no_tensorboard = True
            print(
                "metarl: warning: the config asks for TensorBoard logs (tensorboard: true) but "
                "the tensorboard package is not installed, so only metrics.csv is written: pip "
                "install tensorboard (or 'metarl[tensorboard]'), or leave --tensorboard out "
                "(the default writes them only when the package is installed)",
                file=sys.stderr,
                flush=True,
            )
        return None
    return SummaryWriter(str(path))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metarl")
    except PackageNotFoundError:  # a source tree that was not installed
        return "0+unknown"


def load_run_policy(
    run_dir: Any,
    agent: str,
    config_cls: Any,
    device: str = "cpu",
    spaces_env: Any = None,
    loaded: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Policy, dict[str, torch.Tensor], Any]:
    """The policy of a run directory written by ``agent`` (its last checkpoint's ``params``
    through the safe envelope, checked against the agent and task family), its params on
    ``device`` and the run's config (a ``config_cls``).

    The config must have ``env_id``, ``env_kwargs()``, ``hidden_sizes``, ``nonlinearity`` and
    ``init_std``. ``spaces_env(cfg)`` gives the env whose spaces the policy maps (default: the
    family's env). ``loaded``: if given, receives ``{"iterations": N}``, the iteration of the
    checkpoint read (what an evaluation records: a run still training moves on meanwhile).
    ``extra``: if given, receives the checkpoint's other state entries, saved beside the
    policy's parameters (e.g. MAML-TRPO's learned inner rates under ``"inner_lr"``), on
    ``device``.
    """
    from metarl.learning.functional import load_params
    from metarl.learning.policies import make_policy
    from metarl.stepping.registry import make

    record = Run.read_record(run_dir)
    if record["agent"] != agent:
        raise ValueError(f"{run_dir} is a {record['agent']} run, not {agent}")
    cfg = config_cls.from_dict(record["config"])
    payload = load_checkpoint_file(
        Path(run_dir) / "checkpoint.pt", agent=agent, task_family=cfg.env_id
    )
    if loaded is not None:
        loaded["iterations"] = int(payload["iteration"])
    dev = resolve_device(device)
    env = spaces_env(cfg) if spaces_env is not None else make(cfg.env_id, **cfg.env_kwargs())
    policy = make_policy(
        env.observation_space,
        env.action_space,
        cfg.hidden_sizes,
        cfg.nonlinearity,
        cfg.init_std,
        normalize_actions=bool(getattr(cfg, "normalize_actions", False)),
    ).to(dev)
    env.close()
    params = {k: v.to(dev) for k, v in payload["state"]["params"].items()}
    load_params(policy, params)
    if extra is not None:
        for name, value in payload["state"].items():
            if name != "params" and isinstance(value, dict):
                extra[name] = {k: v.to(dev) if isinstance(v, torch.Tensor) else v
                               for k, v in value.items()}  # fmt: skip
    return policy, params, cfg
