"""Batched stepping in worker processes, with timeouts: an env that raises, dies or hangs
becomes an error in bounded time, never a hang.

:class:`SubprocessBatchedEnv` splits the ``B`` rows of a batch over ``num_workers`` processes;
each holds a batched env of its rows (the family's fastest NumPy backend by default) and
answers ``reset``/``step`` over a pipe. The parent waits for every answer with a deadline:

* a worker whose env raises sends back the exception and its traceback;
* a worker that dies (``os._exit``, a segfault, SIGKILL, the OOM killer) closes its pipe;
* a worker that does not answer within ``timeout`` seconds is presumed hung.

In each case every worker is killed and reaped, and :class:`EnvWorkerError` names the env,
the tasks of the failing worker's rows, the step, and the original traceback (or the exit
code / signal). Workers die with the parent (``PR_SET_PDEATHSIG`` on Linux) and ignore
SIGINT, so Ctrl-C or a SIGKILL of the trainer leaves no orphans. Results are row for row
those of the in-process backend (the same per-row seeds), so the choice of backend never
changes a run.

Use it for envs you do not trust to behave — a user's plugged-in env, a simulator that may
crash — through ``metarl.make_batched(env_id, n, backend="subprocess", num_workers=...,
timeout=...)``.

Example:
    >>> import metarl
    >>> batch = metarl.make_batched("metarl/Navigation2D-v0", 4, backend="subprocess",
    ...                             num_workers=2, timeout=30.0)
    >>> tasks = metarl.task_distribution("metarl/Navigation2D-v0").split("train")[:4]
    >>> obs, info = batch.reset(tasks, seeds=0)
    >>> obs.shape
    (4, 2)
    >>> batch.close()
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import multiprocessing as mp
import signal
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import numpy as np

from metarl.stepping.allocator import tune_allocator
from metarl.stepping.batched import BatchedTaskEnv, EnvError

__all__ = ["EnvWorkerError", "SubprocessBatchedEnv", "WorkerPool"]

#: Default seconds a worker may take to answer one reset or step.
DEFAULT_TIMEOUT = 60.0
#: Seconds a worker may take at least to start and build its envs (a MuJoCo model compiles,
#: a loaded machine forks slowly): the step timeout, if longer.
START_TIMEOUT = 60.0


class EnvWorkerError(EnvError):
    """An env in a worker process raised, died or did not answer in time.

    Attributes:
        env_id: the task family.
        tasks: the tasks of the failing worker's rows.
        worker_traceback: the original traceback (raised), or None (died / hung).
    """

    def __init__(
        self, message: str, env_id: str, tasks: list[Any], worker_traceback: str | None
    ) -> None:
        super().__init__(message, env_id, tasks)
        self.worker_traceback = worker_traceback


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker(conn: Connection, parent_conn: Connection, env_fn: Callable[[], Any]) -> None:
    parent_conn.close()
    _die_with_parent()
    tune_allocator()  # a spawned worker does not inherit the parent's settings
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and closes us
    env = None
    try:
        env = env_fn()
        conn.send(("ok", getattr(env, "start_info", None)))
        serve = getattr(env, "serve", None)  # envs other than a BatchedTaskEnv (an SB3 VecEnv)
        while True:
            try:
                cmd, data = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            try:
                if cmd == "close":
                    conn.send(("ok", None))
                    return
                if serve is not None:
                    conn.send(("ok", serve(cmd, data)))
                elif cmd == "reset":
                    tasks, seeds = data
                    obs, _ = env.reset(tasks, seeds=seeds)
                    conn.send(("ok", obs))
                elif cmd == "step":
                    obs, reward, term, trunc, info = env.step(data)
                    conn.send(("ok", (obs, reward, term, trunc, info.get("is_success"))))
                else:  # pragma: no cover - a bug in the parent
                    raise ValueError(f"unknown command {cmd!r}")
            except EnvError as e:  # names the rows' tasks already
                conn.send(("error", (str(e), traceback.format_exc(), e.tasks)))
            except Exception as e:
                conn.send(("error", (f"{type(e).__name__}: {e}", traceback.format_exc(), None)))
    except Exception as e:  # building the env failed
        with contextlib.suppress(Exception):
            conn.send(("error", (f"{type(e).__name__}: {e}", traceback.format_exc(), None)))
    finally:
        if env is not None:
            with contextlib.suppress(Exception):
                env.close()
        conn.close()


class WorkerPool:
    """Worker processes that each hold one env object and answer commands over a pipe, every
    answer awaited with a deadline; what :class:`SubprocessBatchedEnv` and
    :class:`metarl.stepping.sb3_vec_env.WorkerVecEnv` are built on.

    Any failure — an exception in the env (its traceback comes back), a dead process, no
    answer within ``timeout`` seconds — kills and reaps every worker and raises
    :class:`EnvWorkerError` naming the env, the failing worker's part (``label(i)``), its
    tasks (``tasks_of(i)``, unless the env's own :class:`EnvError` named them) and what was
    asked.

    Args:
        env_id: the env's name in messages.
        env_fns: one zero-argument, picklable callable per worker, run in the worker; the
            object it returns answers ``reset``/``step`` as a :class:`BatchedTaskEnv`, or any
            command through its ``serve(cmd, data)`` method; its ``start_info`` attribute (if
            any) is the answer to the start.
        timeout: seconds a worker may take to answer one command (to start: at least
            :data:`START_TIMEOUT`).
        label: ``label(i)`` names worker ``i``'s part ("rows 0..3").
        tasks_of: ``tasks_of(i)`` are worker ``i``'s current tasks.
        context: multiprocessing start method; default ``fork`` where available.
    """

    def __init__(
        self,
        env_id: str,
        env_fns: list[Callable[[], Any]],
        timeout: float,
        label: Callable[[int], str],
        tasks_of: Callable[[int], list[Any]],
        context: str | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.env_id, self.timeout = env_id, float(timeout)
        self.label, self.tasks_of = label, tasks_of
        if context is None:
            context = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx: Any = mp.get_context(context)
        self.conns: list[Connection] = []
        self.processes: list[Any] = []
        self.closed = False
        for i, fn in enumerate(env_fns):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker,
                args=(child, parent, fn),
                daemon=True,
                name=f"metarl-env-worker-{env_id}-{i}",
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.processes.append(proc)
        self.start_info = self.gather(
            "start", [True] * len(env_fns), max(self.timeout, START_TIMEOUT)
        )

    def send(self, i: int, msg: Any) -> None:
        if self.closed:
            raise RuntimeError(f"{self.env_id}: the env's workers were closed")
        try:
            self.conns[i].send(msg)
        except (BrokenPipeError, OSError):
            self.fail(i, msg[0], None, "its process is gone")

    def gather(self, what: str, expect: list[bool], timeout: float | None = None) -> list[Any]:
        """Each expected worker's answer within ``timeout`` (default: the pool's) seconds, or
        an EnvWorkerError (all workers killed)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        out: list[Any] = [None] * len(self.conns)
        for i, conn in enumerate(self.conns):
            if not expect[i]:
                continue
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                self.fail(i, what, None, f"did not answer within {timeout:g} s (hung?)")
            try:
                status, data = conn.recv()
            except (EOFError, OSError):
                self.fail(i, what, None, self._death(i))
            if status == "error":
                message, tb, tasks = data
                message = message.removeprefix(f"{self.env_id}: ").replace(
                    "the env's own traceback is chained to this error",
                    "the worker's traceback is below",
                )
                self.fail(i, what, tb, f"raised: {message}", tasks)
            out[i] = data
        return out

    def _death(self, i: int) -> str:
        proc = self.processes[i]
        proc.join(2.0)
        code = proc.exitcode
        if code is None:
            return "closed its pipe"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"died: killed by signal {signal.Signals(-code).name}"
            return f"died: killed by signal {-code}"
        return f"died: exited with code {code}"

    def fail(
        self, i: int, what: str, tb: str | None, why: str, tasks: list[Any] | None = None
    ) -> NoReturn:
        if tasks is None:  # the worker's (the failing one is among them)
            tasks = list(dict.fromkeys(self.tasks_of(i)))
            shown = ", ".join(repr(t) for t in tasks[:3]) + (" ..." if len(tasks) > 3 else "")
            why = f"(tasks: {shown or 'none yet'}) {why}"
        self.closed = True
        self.kill_all()
        msg = (
            f"{self.env_id}: the env worker for {self.label(i)} {why} during {what}; every "
            "worker was stopped."
        )
        if tb:
            msg += f"\nThe worker's traceback:\n{tb.rstrip()}"
        else:
            msg += " A crash (segfault, os._exit, out of memory) or a hang is in the env itself."
        raise EnvWorkerError(msg, self.env_id, tasks, tb)

    def close(self) -> None:
        """Stop every worker: a polite ``close``, then SIGKILL for any that lingers."""
        if self.closed:
            return
        self.closed = True
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(("close", None))
        deadline = time.monotonic() + 1.0
        for proc in self.processes:
            proc.join(max(0.0, deadline - time.monotonic()))
        self.kill_all()

    def kill_all(self) -> None:
        for proc in self.processes:
            if proc.is_alive():
                with contextlib.suppress(Exception):
                    proc.kill()
        for proc in self.processes:
            with contextlib.suppress(Exception):
                proc.join(5.0)
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.kill_all()


class SubprocessBatchedEnv(BatchedTaskEnv):
    """A batched env whose rows step in worker processes, each answer awaited with a timeout.

    Args:
        env_id: the task family (used in error messages).
        num_envs: rows ``B``.
        make_rows: ``make_rows(n) -> BatchedTaskEnv`` builds one worker's env of ``n`` rows;
            it runs in the worker.
        probe: a single env of the family (for the spaces, horizon and task distribution).
        horizon: steps per episode.
        num_workers: processes (at most ``B``); rows are split as evenly as possible.
        timeout: seconds a worker may take to answer one reset or step (to start: at least
            :data:`START_TIMEOUT`).
        context: multiprocessing start method; default ``fork`` where available (workers
            then see every family registered in the parent), else ``spawn``.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        make_rows: Callable[[int], BatchedTaskEnv],
        probe: Any,
        horizon: int,
        *,
        num_workers: int = 2,
        timeout: float = DEFAULT_TIMEOUT,
        context: str | None = None,
    ) -> None:
        if not (isinstance(num_workers, int) and num_workers >= 1):
            raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        super().__init__(num_envs, horizon)
        self.env_id = env_id
        self.timeout = float(timeout)
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        self.task_distribution = probe.unwrapped.task_distribution
        num_workers = min(num_workers, self.num_envs)
        bounds = np.linspace(0, self.num_envs, num_workers + 1).round().astype(int)
        self._slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        self._pool = WorkerPool(
            env_id,
            [_Rows(make_rows, sl.stop - sl.start) for sl in self._slices],
            timeout,
            label=lambda i: f"rows {self._slices[i].start}..{self._slices[i].stop - 1}",
            tasks_of=lambda i: list(self.tasks[self._slices[i]]) if self.tasks else [],
            context=context,
        )
        self.processes = self._pool.processes

    # -- BatchedTaskEnv ------------------------------------------------------------------------
    def _reset_rows(self, tasks: list[Any], seeds: list[int | None]) -> np.ndarray:
        for i, sl in enumerate(self._slices):
            self._pool.send(i, ("reset", (tasks[sl], seeds[sl])))
        return np.concatenate(self._pool.gather("reset", [True] * len(self._slices)))

    def _step_rows(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        busy = [bool(active[sl].any()) for sl in self._slices]
        for i, (sl, b) in enumerate(zip(self._slices, busy, strict=True)):
            if b:
                self._pool.send(i, ("step", actions[sl]))
        answers = self._pool.gather(f"step {self.t + 1}", busy)
        assert self._obs is not None
        obs, reward = self._obs.copy(), np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        success = np.zeros(self.num_envs, dtype=bool)
        reported = True  # every busy worker's env reports "is_success"
        for sl, b, ans in zip(self._slices, busy, answers, strict=True):
            if b:
                obs[sl], reward[sl], terminated[sl] = ans[0], ans[1], ans[2]
                if ans[4] is None:
                    reported = False
                else:
                    success[sl] = ans[4]
        return obs, reward, terminated, ({"is_success": success} if reported else {})

    def close(self) -> None:
        """Stop every worker: a polite ``close``, then SIGKILL for any that lingers."""
        self._pool.close()


class _Rows:
    """``make_rows(n)`` as a zero-argument callable (picklable when ``make_rows`` is)."""

    def __init__(self, make_rows: Callable[[int], BatchedTaskEnv], n: int) -> None:
        self.make_rows, self.n = make_rows, n

    def __call__(self) -> BatchedTaskEnv:
        return self.make_rows(self.n)
