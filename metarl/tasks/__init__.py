"""Tasks and task distributions.

A *task* is a frozen dataclass of the parameters that vary between the members of a task
family (a goal, a target velocity, a mass scale, a bandit's arm probabilities...). A
:class:`TaskDistribution` samples tasks from an injected :class:`numpy.random.Generator`,
refuses tasks outside its range, and owns fixed, versioned, disjoint train and held-out test
splits: the same (distribution, version, seed) always gives the same tasks, on any machine.

Example:
    >>> import numpy as np
    >>> from dataclasses import dataclass
    >>> from metarl.tasks import BoxTaskDistribution
    >>> @dataclass(frozen=True)
    ... class GravityTask:
    ...     gravity: float
    >>> dist = BoxTaskDistribution("Gravity", GravityTask, low={"gravity": 5.0},
    ...                            high={"gravity": 15.0})
    >>> task = dist.sample(np.random.default_rng(0))
    >>> 5.0 <= task.gravity <= 15.0
    True
    >>> split = dist.split("test")
    >>> len(split), split == dist.split("test")
    (40, True)
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np

__all__ = [
    "BoxTaskDistribution",
    "FiniteTaskDistribution",
    "SplitName",
    "TaskDistribution",
    "TaskError",
    "task_to_dict",
]

T = TypeVar("T")
SplitName = Literal["train", "test"]


class TaskError(ValueError):
    """A task is of the wrong type, outside its distribution's range, or missing."""


def task_to_dict(task: Any) -> dict[str, Any]:
    """A task as plain JSON-serialisable data (tuples become lists)."""
    if not dataclasses.is_dataclass(task) or isinstance(task, type):
        raise TaskError(f"a task must be a dataclass instance, got {type(task).__name__}")

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    return {f.name: plain(getattr(task, f.name)) for f in dataclasses.fields(task)}


def _stable_seed(*parts: object) -> list[int]:
    """Entropy for a SeedSequence that is the same on every machine and Python process.

    Python's ``hash`` of a string is salted per process, so names are hashed with SHA-256.
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


class TaskDistribution(Generic[T]):
    """A distribution over tasks of one dataclass type, with fixed train/test splits.

    Subclasses implement :meth:`_sample` (one task from a generator) and :meth:`_check`
    (raise :class:`TaskError` if a task is out of range). Everything else — type checks,
    splits, versioning — is here.

    Args:
        name: the family's name, part of the split seed (e.g. ``"Navigation2D"``).
        task_type: the frozen dataclass every task of this distribution is an instance of.
        version: bump it whenever sampling changes, so that old splits stay reproducible
            under the old version.
        num_train: size of the training split.
        num_test: size of the held-out test split.
        description: one line on what varies, shown by ``metarl envs``.
    """

    #: Splits are drawn with this seed unless one is given.
    DEFAULT_SPLIT_SEED: ClassVar[int] = 0

    def __init__(
        self,
        name: str,
        task_type: type[T],
        *,
        version: int = 0,
        num_train: int = 100,
        num_test: int = 40,
        description: str = "",
    ) -> None:
        if not (dataclasses.is_dataclass(task_type) and isinstance(task_type, type)):
            raise TypeError(
                f"task_type must be a dataclass type, got {task_type!r}; declare the task "
                "as `@dataclass(frozen=True) class MyTask: ...`"
            )
        params = getattr(task_type, "__dataclass_params__", None)
        if params is not None and not params.frozen:
            raise TypeError(
                f"{task_type.__name__} must be a frozen dataclass (@dataclass(frozen=True)) so "
                "tasks can be hashed, compared and used as dictionary keys"
            )
        if num_train < 1 or num_test < 1:
            raise ValueError(f"split sizes must be >= 1, got train={num_train}, test={num_test}")
        self.name = name
        self.task_type = task_type
        self.version = version
        self.num_train = num_train
        self.num_test = num_test
        self.description = description
        self._split_cache: dict[int, tuple[tuple[T, ...], tuple[T, ...]]] = {}

    # -- to implement -------------------------------------------------------------------
    def _sample(self, rng: np.random.Generator) -> T:
        raise NotImplementedError

    def _check(self, task: T) -> None:
        """Raise :class:`TaskError` if ``task`` is outside the distribution's range."""

    # -- public API -----------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> T:
        """One task drawn with ``rng``."""
        self._require_generator(rng)
        return self._sample(rng)

    def sample_tasks(self, rng: np.random.Generator, n: int) -> list[T]:
        """``n`` tasks drawn independently with ``rng``."""
        self._require_generator(rng)
        if n < 0:
            raise ValueError(f"cannot sample a negative number of tasks ({n})")
        return [self._sample(rng) for _ in range(n)]

    def validate(self, task: object) -> T:
        """Return ``task`` if it belongs to this distribution, else raise :class:`TaskError`."""
        if task is None:
            raise TaskError(f"no task given; pass a {self.task_type.__name__} instance")
        if not isinstance(task, self.task_type):
            raise TaskError(
                f"{self.name} expects a {self.task_type.__name__}, got "
                f"{type(task).__name__} ({task!r})"
            )
        self._check(task)
        try:
            hash(task)  # tasks key caches and per-task models
        except TypeError as e:
            raise TaskError(
                f"{self.name}: {type(task).__name__} must be hashable ({e}); give sequence "
                "fields as tuples, not lists or arrays"
            ) from e
        return task

    def split(self, which: SplitName, *, seed: int | None = None) -> tuple[T, ...]:
        """The fixed ``"train"`` or ``"test"`` split for ``seed`` (default 0).

        The split is a pure function of (name, version, seed): it is drawn from a generator
        seeded by a SHA-256 digest of those three, so it is identical on every machine. The
        two splits are disjoint (see :meth:`_draw_splits`).
        """
        if which not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {which!r}")
        seed = self.DEFAULT_SPLIT_SEED if seed is None else int(seed)
        if seed not in self._split_cache:
            self._split_cache[seed] = self._draw_splits(seed)
        train, test = self._split_cache[seed]
        return train if which == "train" else test

    @property
    def splits_disjoint(self) -> bool:
        """Whether train and test share no task (False only for tiny finite families)."""
        return True

    def _draw_splits(self, seed: int) -> tuple[tuple[T, ...], tuple[T, ...]]:
        rng = np.random.default_rng(_stable_seed("metarl-split", self.name, self.version, seed))
        test = self._draw_unique(rng, self.num_test, exclude=set())
        train = self._draw_unique(rng, self.num_train, exclude=set(test))
        return tuple(train), tuple(test)

    def _draw_unique(self, rng: np.random.Generator, n: int, exclude: set[Any]) -> list[T]:
        out: list[T] = []
        seen = set(exclude)
        attempts = 0
        while len(out) < n:
            task = self._sample(rng)
            attempts += 1
            if task not in seen:
                seen.add(task)
                out.append(task)
            elif attempts > 100 * (n + len(exclude)) + 1000:
                raise RuntimeError(
                    f"{self.name}: could not draw {n} distinct tasks; the distribution has too "
                    "few distinct tasks for the requested split sizes"
                )
        return out

    def describe(self) -> dict[str, Any]:
        """What ``metarl envs`` prints for this distribution."""
        return {
            "name": self.name,
            "task_type": self.task_type.__name__,
            "varies": self.description,
            "version": self.version,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "splits_disjoint": self.splits_disjoint,
        }

    @staticmethod
    def _require_generator(rng: object) -> None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"tasks are drawn from an injected numpy Generator, got {type(rng).__name__}; "
                "pass np.random.default_rng(seed)"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, {self.task_type.__name__}, "
            f"version={self.version}, train={self.num_train}, test={self.num_test})"
        )


class BoxTaskDistribution(TaskDistribution[T]):
    """Tasks whose fields are floats drawn independently from intervals.

    This is the helper that turns a task dataclass with numeric fields into a distribution:
    each field ``f`` is drawn uniformly from ``[low[f], high[f]]``, or log-uniformly when
    ``f`` is in ``log_scale`` (then ``low``/``high`` are the factors' bounds, e.g.
    ``1.5**-3`` and ``1.5**3``). Fields of a sequence type are drawn as tuples of
    ``shape[f]`` floats. A task is accepted when every value lies inside its interval.

    Args:
        low, high: per-field bounds (inclusive).
        log_scale: fields drawn log-uniformly.
        shape: per-field length for tuple-valued fields.
        constraint: optional predicate with its description, e.g. a disc instead of a
            square, ``(lambda t: t.x**2 + t.y**2 <= 9, "inside the disc of radius 3")``;
            sampling is by rejection.
    """

    def __init__(
        self,
        name: str,
        task_type: type[T],
        *,
        low: Mapping[str, float],
        high: Mapping[str, float],
        log_scale: Iterable[str] = (),
        shape: Mapping[str, int] | None = None,
        constraint: tuple[Callable[[T], bool], str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, task_type, **kwargs)
        names = [f.name for f in dataclasses.fields(task_type)]  # type: ignore[arg-type]
        if set(low) != set(names) or set(high) != set(names):
            raise ValueError(
                f"low/high must give bounds for exactly the fields of {task_type.__name__} "
                f"{names}; got low={sorted(low)}, high={sorted(high)}"
            )
        self.log_scale = frozenset(log_scale)
        self.shape = dict(shape or {})
        for f in names:
            if not low[f] <= high[f]:
                raise ValueError(f"{name}: low[{f!r}]={low[f]} > high[{f!r}]={high[f]}")
            if f in self.log_scale and low[f] <= 0:
                raise ValueError(f"{name}: log-scaled field {f!r} needs low > 0, got {low[f]}")
        self.fields = names
        self.low = dict(low)
        self.high = dict(high)
        self.constraint = constraint

    def _draw_value(self, rng: np.random.Generator, f: str, size: int | None) -> Any:
        lo, hi = self.low[f], self.high[f]
        if f in self.log_scale:
            v = np.exp(rng.uniform(math.log(lo), math.log(hi), size=size))
        else:
            v = rng.uniform(lo, hi, size=size)
        # Clip against rounding in exp/log so a sampled task always validates.
        v = np.clip(v, lo, hi)
        return tuple(float(x) for x in v) if size is not None else float(v)

    def _sample(self, rng: np.random.Generator) -> T:
        for _ in range(10_000):
            values = {f: self._draw_value(rng, f, self.shape.get(f)) for f in self.fields}
            task = self.task_type(**values)
            if self.constraint is None or self.constraint[0](task):
                return task
        raise RuntimeError(f"{self.name}: constraint rejected 10000 draws in a row")

    def _check(self, task: T) -> None:
        for f in self.fields:
            value = getattr(task, f)
            values = value if isinstance(value, tuple | list | np.ndarray) else (value,)
            if f in self.shape and len(values) != self.shape[f]:
                raise TaskError(
                    f"{self.name}: field {f!r} must have {self.shape[f]} entries, got {len(values)}"
                )
            for v in values:
                if not (isinstance(v, int | float | np.floating) and math.isfinite(v)):
                    raise TaskError(f"{self.name}: field {f!r} must be a finite number, got {v!r}")
                if not self.low[f] <= v <= self.high[f]:
                    raise TaskError(
                        f"{self.name}: {f}={v!r} is outside the distribution's range "
                        f"[{self.low[f]}, {self.high[f]}]; sample tasks with the distribution or "
                        "pick one inside the range"
                    )
        if self.constraint is not None and not self.constraint[0](task):
            raise TaskError(f"{self.name}: {task!r} is not {self.constraint[1]}")


class FiniteTaskDistribution(TaskDistribution[T]):
    """A distribution over a small, enumerated set of tasks (e.g. two running directions).

    When the family has fewer tasks than the splits ask for, train and test are the whole
    set (``splits_disjoint`` is False), as in the papers (Finn et al. 2017 meta-train and
    evaluate HalfCheetahDir on the same two directions). Otherwise the set is shuffled once
    per (name, version, seed) and cut in two.
    """

    def __init__(self, name: str, task_type: type[T], tasks: Sequence[T], **kwargs: Any) -> None:
        super().__init__(name, task_type, **kwargs)
        if not tasks:
            raise ValueError(f"{name}: a finite task distribution needs at least one task")
        for t in tasks:
            if not isinstance(t, task_type):
                raise TypeError(f"{name}: {t!r} is not a {task_type.__name__}")
        self.tasks = tuple(tasks)

    @property
    def splits_disjoint(self) -> bool:
        return len(self.tasks) >= self.num_train + self.num_test

    def _sample(self, rng: np.random.Generator) -> T:
        return self.tasks[int(rng.integers(len(self.tasks)))]

    def _check(self, task: T) -> None:
        try:
            known = task in self.tasks
        except (TypeError, ValueError):  # a field of another type (an array) compares badly
            known = False
        if not known:
            raise TaskError(f"{self.name}: {task!r} is not one of the family's tasks {self.tasks}")

    def _draw_splits(self, seed: int) -> tuple[tuple[T, ...], tuple[T, ...]]:
        if not self.splits_disjoint:
            return self.tasks, self.tasks
        rng = np.random.default_rng(_stable_seed("metarl-split", self.name, self.version, seed))
        order = rng.permutation(len(self.tasks))
        test = tuple(self.tasks[i] for i in order[: self.num_test])
        train = tuple(self.tasks[i] for i in order[self.num_test : self.num_test + self.num_train])
        return train, test
