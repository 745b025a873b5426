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
5. at the end of a meta-RL run (a config with an ``env_id``), the run's ``README.md`` model
   card (:mod:`metarl.runs.model_card`; a card that cannot be written is a warning, never a
   failed run);
6. close the trainer's envs and the run, whatever happened.

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
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.stepping.batched import EnvError
from metarl.runs.config import Config
from metarl.numerics import NonFiniteError, at_iteration, check_finite
from metarl.stepping.registry import family_ids, task_distribution
from metarl.runs import Run, resolve_device
from metarl.runs.seeding import seed_everything

__all__ = ["Generators", "Trainer", "iteration_range", "train_loop"]

#: Generators a trainer draws from, by name; saved in every checkpoint and restored on resume.
Generators = Mapping[str, np.random.Generator | torch.Generator]


def iteration_range(start: int, total: int, what: str = "iterations") -> str:
    """The iterations left, 0-based as the progress lines and ``metrics.csv`` count them:
    ``iterations 0..2 of 3`` for a run of 3 (``iterations 5..9 of 10`` resumed at 5).

    >>> iteration_range(0, 3), iteration_range(2, 3), iteration_range(3, 3)
    ('iterations 0..2 of 3', 'iteration 2 of 3', 'no iterations left of 3')
    """
    one = what[:-1] if what.endswith("s") else what
    if start >= total:
        return f"no {what} left of {total}"
    if start == total - 1:
        return f"{one} {start} of {total}"
    return f"{what} {start}..{total - 1} of {total}"


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
        """The first progress line: what runs (:func:`iteration_range` of ``start``, ``total``
        by default)."""
        return iteration_range(start, total)

    def progress(self, stats: Mapping[str, float]) -> str:
        """The few numbers the progress bar and the progress lines show of an iteration (the
        loop adds the iteration's seconds)."""
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
        log: where progress lines go (e.g. ``print``): the header, then every tenth
            iteration and the last, with :meth:`Trainer.progress` and the iteration's
            seconds; None: none. On a terminal a progress bar shows them too, the lines
            written above it.
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
        if isinstance(getattr(c, "env_id", None), str):  # a meta-RL run: its model card
            from metarl.runs.model_card import write_model_card

            write_model_card(run.path)
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
    # With a bar on the terminal every line goes through it (tqdm clears the bar's line,
    # writes the line, then redraws the bar below it), never onto the bar itself.
    say = _through(bar, log) if log else None
    best: float | None = None
    try:
        if say:
            on = f" on {c.env_id}" if hasattr(c, "env_id") else ""
            say(f"{agent}{on}: {trainer.header(start, total)}, run dir {run.path}")
        for it in range(start, total):
            kept = str(run.checkpoint_path) if run.checkpoint_path.exists() else ""
            began = time.perf_counter()
            try:
                stats = trainer.iteration(it)
                check_finite(f"parameters after the {trainer.outer_step}", trainer.parameters())
                validation = trainer.validate(it)
            except NonFiniteError as e:  # stop before logging or checkpointing this iteration
                raise NonFiniteError(at_iteration(e, it, kept), e.quantity, it) from e
            except EnvError as e:  # an env raised, died or hung: name the iteration too
                raise e.at_iteration(it, kept) from e
            seconds = time.perf_counter() - began
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
            shown = ", ".join(x for x in (trainer.progress(stats), f"{seconds:.2f} s") if x)
            if bar is not None:
                bar.set_postfix_str(shown, refresh=False)
                bar.update()
            if say and (it % 10 == 0 or done == total):
                say(f"iteration {it}: {shown}")
            if done % c.checkpoint_every == 0 or done == total:
                run.save_checkpoint(done, trainer.state(), dict(trainer.generators()))
    finally:
        if bar is not None:  # an error's line goes below the bar, not onto it
            bar.close()


def _through(bar: Any, log: Callable[[str], None]) -> Callable[[str], None]:
    """``log``, or with a progress bar ``log`` with the bar cleared and drawn again below."""
    if bar is None:
        return log

    def write(line: str) -> None:
        with bar.external_write_mode():
            log(line)

    return write


def _bar(start: int, total: int, desc: str) -> Any:
    """A tqdm bar on a terminal (None otherwise: logs, CI and tests get lines)."""
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)
