"""The one training loop: every agent and few-shot learner trains through :func:`train_loop`.

An agent supplies a :class:`Trainer` — its algorithm's iteration and the state a checkpoint
keeps — and the loop owns everything around it, once for all agents:

1. check the task family exists;
2. seed every global generator from the config's seed, then build the trainer;
3. create the run directory (``overwrite``: clearing an earlier run in it, under the run's
   lock), or resume it: the checkpoint's state and generator states go back into the trainer,
   so the resumed run continues exactly as an uninterrupted one;
4. per iteration: the trainer's step; a NaN/inf or an env failure stops the run with an error
   naming the iteration and the last good checkpoint, before anything of that iteration is
   logged or saved; then the metrics row, the progress line and, every ``checkpoint_every``
   iterations and at the end, the checkpoint; a trainer that validates
   (:meth:`Trainer.validate`) also has the state of its best validation score kept as
   ``best.pt``;
5. close the trainer's envs and the run, whatever happened.

Example (a trainer that learns nothing, to show the contract)::

    class Counter(Trainer):
        def __init__(self) -> None:
            self.total = 0
        def iteration(self, it: int) -> dict[str, float]:
            self.total += it
            return {"total": float(self.total)}
        def state(self) -> dict[str, Any]:
            return {"total": self.total}
        def load_state(self, state: Mapping[str, Any]) -> None:
            self.total = int(state["total"])

    train_loop(cfg, "runs/counter", "counter", lambda cfg, device, resume: Counter())
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.batched import EnvError
from metarl.config import Config
from metarl.numerics import NonFiniteError, at_iteration, check_finite
from metarl.registry import family_ids, task_distribution
from metarl.runs import Run, resolve_device
from metarl.seeding import seed_everything

__all__ = ["Generators", "Trainer", "train_loop"]

#: Generators a trainer draws from, by name; saved in every checkpoint and restored on resume.
Generators = Mapping[str, np.random.Generator | torch.Generator]


class Trainer(ABC):
    """One agent's training, as the loop drives it: an iteration and the state to keep.

    A trainer is built by the agent's ``make(cfg, device, resume)`` after the loop has seeded
    the global generators; with ``resume`` the loop then calls :meth:`load_state` with the
    run's last checkpoint (and has restored :meth:`generators` in place)."""

    #: The name of the outer update, in the error about non-finite parameters after it.
    outer_step: str = "update"

    @abstractmethod
    def iteration(self, it: int) -> dict[str, float]:
        """Run iteration ``it`` (0-based), updating the trainer in place; its metrics row.
        A NaN/inf raises :class:`metarl.numerics.NonFiniteError` (see
        :func:`metarl.numerics.check_finite`); the loop adds the iteration."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (tensors, numbers, strings; no objects)."""

    @abstractmethod
    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` from a checkpoint, in place."""

    def generators(self) -> Generators:
        """The trainer's own generators, saved and restored with every checkpoint (Python's,
        NumPy's and torch's global ones are always)."""
        return {}

    def validate(self, it: int) -> dict[str, float] | None:
        """Validation metrics after iteration ``it``, or None (no validation then). Their
        ``val_score`` (higher is better) decides the best checkpoint, kept as ``best.pt``
        beside the latest; the metrics go into the iteration's row."""
        return None

    def parameters(self) -> Any:
        """What must be finite after every iteration (checked before anything is logged)."""
        return None

    def begin(self, run: Run, start: int) -> None:  # noqa: B027 - an optional hook
        """Called once the run is created or resumed, before iteration ``start``."""

    def header(self, start: int, total: int) -> str:
        """The first progress line."""
        return f"iterations {start}..{total}"

    def progress(self, stats: Mapping[str, float]) -> str:
        """The few numbers the progress bar and the progress lines show of an iteration."""
        return ""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release envs and workers."""


def train_loop(
    cfg: Config,
    run_dir: str | Path,
    agent: str,
    make: Callable[[Any, torch.device, bool], Trainer],
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    log_every: int = 1,
    check_env: bool = True,
) -> Run:
    """Train (or ``resume``) ``agent`` in ``run_dir``; see the module doc for the steps.

    Args:
        make: ``(cfg, device, resume) -> Trainer``.
        log: where progress lines go (e.g. ``print``); None: none. On a terminal a progress
            bar shows the trainer's :meth:`Trainer.progress` instead of lines.
        log_every: write a metrics row every this many iterations (and at the last).
        check_env: check that ``cfg.env_id`` names a registered task family first.
    """
    c: Any = cfg
    device = resolve_device(c.device)  # a bad --device fails before anything is written
    if getattr(c, "num_threads", 0):
        torch.set_num_threads(c.num_threads)
    run_dir = Path(run_dir)
    if check_env and c.env_id not in family_ids():
        task_distribution(c.env_id)  # raises the registry's clear error
    seed_everything(c.seed)
    trainer = make(cfg, device, resume)
    run: Run | None = None
    try:
        start = 0
        if resume:
            run = Run.resume(run_dir, agent, cfg)
            ckpt = run.load_checkpoint(dict(trainer.generators()))
            trainer.load_state(ckpt["state"])
            start = int(ckpt["iteration"])
        else:
            run = Run.create(run_dir, agent, cfg, overwrite=overwrite)
        trainer.begin(run, start)
        _loop(trainer, run, c, agent, start, log, log_every)
    finally:
        trainer.close()
        if run is not None:
            run.close()
    return run


def _loop(
    trainer: Trainer,
    run: Run,
    c: Any,
    agent: str,
    start: int,
    log: Callable[[str], None] | None,
    log_every: int,
) -> None:
    total = c.num_iterations
    bar = _bar(start, total, agent)
    if log:
        say = bar.write if bar is not None else log
        on = f" on {c.env_id}" if hasattr(c, "env_id") else ""
        say(f"{agent}{on}: {trainer.header(start, total)}, run dir {run.path}")
    best: float | None = None
    for it in range(start, total):
        kept = str(run.checkpoint_path) if run.checkpoint_path.exists() else ""
        try:
            stats = trainer.iteration(it)
            check_finite(f"parameters after the {trainer.outer_step}", trainer.parameters())
            validation = trainer.validate(it)
        except NonFiniteError as e:  # stop before logging or checkpointing this iteration
            raise NonFiniteError(at_iteration(e, it, kept), e.quantity, it) from e
        except EnvError as e:  # an env raised, died or hung: name the iteration too
            raise e.at_iteration(it, kept) from e
        done = it + 1
        if validation is not None:
            stats = {**stats, **validation}
        if done % log_every == 0 or done == total or validation is not None:
            run.log(it, stats)
        if validation is not None:
            if best is None:
                best = run.best_score()  # a resumed run's best so far
            if best is None or validation["val_score"] > best:
                best = validation["val_score"]
                run.save_best(done, trainer.state(), validation)
        if bar is not None:
            bar.set_postfix_str(trainer.progress(stats), refresh=False)
            bar.update()
        elif log and (it % 10 == 0 or done == total):
            shown = trainer.progress(stats)
            log(f"iteration {it}: {shown}" if shown else f"iteration {it}")
        if done % c.checkpoint_every == 0 or done == total:
            run.save_checkpoint(done, trainer.state(), dict(trainer.generators()))
    if bar is not None:
        bar.close()


def _bar(start: int, total: int, desc: str) -> Any:
    """A tqdm bar on a terminal (None otherwise: logs, CI and tests get lines)."""
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)
