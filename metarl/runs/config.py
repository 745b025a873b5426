"""Typed run configurations: dataclasses whose field docs are the ``--help`` text.

Every agent (and every few-shot learner) describes its settings as a dataclass deriving from
:class:`Config`. A field is declared with :func:`option`, which records its help text and its
constraints in the field's metadata. The ``metarl`` command reads a config with tyro
(:func:`metarl.cli.parsing.parse`: ``meta_batch_size`` → ``--meta-batch-size``, the help text
from the metadata) in the order *dataclass defaults < preset < command line*, every
command and few-shot learner alike. Validation runs whenever a config is built, so a negative
learning rate or an empty meta-batch is refused with a message that names the option and says what is allowed.

Presets are named dicts of overrides kept on the class (``presets``), e.g. the paper settings
of Finn et al. 2017 for 2D navigation.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class MyConfig(Config):
    ...     lr: float = option(0.1, "inner step size", low=0.0, low_open=True)
    ...     presets = {"paper": {"lr": 0.05}}
    >>> MyConfig.from_preset("paper").lr
    0.05
    >>> MyConfig(lr=-1.0)
    Traceback (most recent call last):
    ...
    metarl.runs.config.ConfigError: MyConfig.lr (--lr) must be > 0.0, got -1.0
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

__all__ = [
    "MAX_SEED",
    "Config",
    "ConfigError",
    "EnvOptions",
    "PolicyOptions",
    "ReturnOptions",
    "RunConfig",
    "command_line_only_fields",
    "num_workers_option",
    "option",
    "worker_timeout_option",
]

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A configuration value is out of range, of the wrong type, or unknown."""


#: Seeds go to NumPy's legacy generator and torch, which take at most 32 and 64 bits.
MAX_SEED = 2**32 - 1


def option(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: Sequence[Any] | None = None,
    check: Callable[[Any], str | None] | None = None,
    may_change_on_resume: bool = False,
    command_line_only: bool = False,
    aliases: Sequence[str] = (),
) -> Any:
    """A config field with its help text and constraints.

    Args:
        default: the default value (a list/tuple default is copied per instance).
        help: the ``--help`` text of the option.
        low, high: inclusive bounds (``low_open=True`` makes ``low`` exclusive).
        choices: the allowed values.
        check: ``value -> error message or None`` for anything else.
        may_change_on_resume: the value may differ when a run is resumed (the number of
            iterations, the device); every other field must match the run's config.
        command_line_only: the value decides where the process connects or what it imports
            (a Ray address): ``metarl train --resume`` never takes it from a run directory,
            which may come from someone else (see :func:`command_line_only_fields`).
    """
    meta = {
        "help": help,
        "low": low,
        "high": high,
        "low_open": low_open,
        "choices": tuple(choices) if choices is not None else None,
        "check": check,
        "may_change_on_resume": may_change_on_resume,
        "command_line_only": command_line_only,
        "aliases": tuple(aliases),
    }
    if isinstance(default, list | dict | set):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def command_line_only_fields(cls: type[Config]) -> dict[str, Any]:
    """``{name: default}`` of the fields marked ``command_line_only``."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.metadata.get("command_line_only"):
            out[f.name] = f.default if f.default is not dataclasses.MISSING else None
    return out


def num_workers_option() -> Any:
    """The ``num_workers`` field of every agent with ``--backend subprocess``."""
    return option(2, "worker processes with --backend subprocess", low=1,
                  may_change_on_resume=True)  # fmt: skip


def tensorboard_option() -> Any:
    """The ``tensorboard`` field of every run, RL and few-shot."""
    return option(
        None,
        "TensorBoard logs beside metrics.csv: None (the default) writes them when the "
        "tensorboard package is importable and is silent otherwise; true (--tensorboard) "
        "asks for them, with one warning when the package is missing; false "
        "(--no-tensorboard) never",
        may_change_on_resume=True,
    )


def worker_timeout_option() -> Any:
    """The ``worker_timeout`` field of every agent with ``--backend subprocess``: how long a
    worker may take before its env counts as hung (an error, never a wait forever)."""
    return option(
        60.0,
        "seconds a worker may take to answer a reset or step with --backend subprocess",
        low=0.0,
        low_open=True,
        may_change_on_resume=True,
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(cls_name: str, name: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (with int → float widening)."""
    base, optional = _unwrap_optional(tp)
    where = f"{cls_name}.{name} ({_flag(name)})"
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} may not be None")
    origin = typing.get_origin(base)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a sequence, got {value!r}")
        args = [a for a in typing.get_args(base) if a is not Ellipsis]
        item = args[0] if args else Any
        items = [_coerce(cls_name, name, item, v) for v in value]
        return tuple(items) if origin is tuple else items
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if value != value:  # NaN passes no bound check and poisons every update
            raise ConfigError(f"{where} must be a number, got NaN")
        if value in (float("inf"), float("-inf")):  # a rate or a bound of inf diverges at once
            raise ConfigError(f"{where} must be a finite number, got {value}")
        return float(value)
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


@dataclass
class Config:
    """Base class of every run configuration; validates on construction.

    Subclasses declare fields with :func:`option` and may add presets (``presets``: name →
    dict of overrides) and extra cross-field checks (override :meth:`validate` and call
    ``super().validate()``).
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Type-check every field and enforce its bounds, choices and checks."""
        name_cls = type(self).__name__
        hints = _field_types(type(self))
        for f in fields(self):
            value = _coerce(name_cls, f.name, hints[f.name], getattr(self, f.name))
            object.__setattr__(self, f.name, value)
            meta = f.metadata
            where = f"{name_cls}.{f.name} ({_flag(f.name)})"
            values = value if isinstance(value, list | tuple) else [value]
            for v in values:
                if v is None:
                    continue
                low, high = meta.get("low"), meta.get("high")
                if low is not None:
                    if meta.get("low_open") and not v > low:
                        raise ConfigError(f"{where} must be > {low}, got {v!r}")
                    if not meta.get("low_open") and not v >= low:
                        raise ConfigError(f"{where} must be >= {low}, got {v!r}")
                if high is not None and not v <= high:
                    raise ConfigError(f"{where} must be <= {high}, got {v!r}")
                choices = meta.get("choices")
                if choices is not None and v not in choices:
                    allowed = ", ".join(map(str, choices))
                    raise ConfigError(f"{where} must be one of {allowed}; got {v!r}")
                check = meta.get("check")
                if check is not None and (msg := check(v)):
                    raise ConfigError(f"{where}: {msg}")

    # -- conversions ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain JSON-able data."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def upgrade(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` (a run's config.json, maybe written by an older version) in this version's
        terms; :meth:`from_dict` and the checkpoint's config check read through it. The base
        class changes nothing."""
        return dict(data)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a dict (e.g. a run's config.json); unknown keys are an error."""
        data = cls.upgrade(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} option(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    @classmethod
    def from_preset(cls: type[C], preset: str | None = None, **overrides: Any) -> C:
        """Defaults, then the preset's overrides, then ``overrides``."""
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in cls.presets:
                have = ", ".join(sorted(cls.presets)) or "none"
                raise ConfigError(f"{cls.__name__} has no preset {preset!r}; presets: {have}")
            values.update(cls.presets[preset])
        values.update(overrides)
        return cls.from_dict(values)

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def differences(self, other: Config) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ and may not change on resume: name → (self, other)."""
        mine, theirs = self.to_dict(), other.to_dict()
        out = {}
        for f in fields(self):
            if f.metadata.get("may_change_on_resume"):
                continue
            if mine.get(f.name) != theirs.get(f.name):
                out[f.name] = (mine.get(f.name), theirs.get(f.name))
        return out


def _check_device(value: str) -> str | None:
    if value in ("auto", "cpu", "cuda") or value.startswith("cuda:"):
        return None
    return "must be auto, cpu, cuda or cuda:N"


def _check_env_id(value: str) -> str | None:
    # A config is also read from run directories, which must never make metarl import: the
    # command line resolves MODULE:ENV_ID to ENV_ID before a config is built.
    if ":" in value:
        module, _, env_id = value.rpartition(":")
        return (
            f"a config holds the bare id ({env_id!r}): import {module} first (`--import "
            f"{module}` on the command line, `import {module}` in Python)"
        )
    return None


@dataclass
class RunConfig(Config):
    """Settings every training run has; agents' configs derive from it."""

    env_id: str = option(
        "metarl/Navigation2D-v0",
        "the task family to meta-train on (`metarl envs` lists them); MODULE:ENV_ID "
        "imports MODULE first, as gymnasium.make does",
        aliases=("--env",),
        check=_check_env_id,
    )
    seed: int = option(0, "seed of every random number generator of the run", low=0, high=MAX_SEED)
    device: str = option(
        "auto",
        "where the learner runs: auto (CUDA if available), cpu, cuda or cuda:N",
        check=_check_device,
        may_change_on_resume=True,
    )
    num_iterations: int = option(
        500, "number of meta-iterations (outer updates)", low=1, may_change_on_resume=True
    )
    checkpoint_every: int = option(
        10,
        "save a checkpoint every this many meta-iterations (and at the end)",
        low=1,
        may_change_on_resume=True,
    )
    num_threads: int = option(
        1,
        "CPU threads for torch (0: torch's default); 1 avoids oversubscribing shared CPUs",
        low=0,
        may_change_on_resume=True,
    )
    tensorboard: bool | None = tensorboard_option()


# -- option groups that several agents share (each written once) ---------------------------
@dataclass
class PolicyOptions:
    """The policy network (:func:`metarl.learning.policies.make_policy`): an MLP with a Gaussian head
    and a state-independent log-std, or a categorical head for discrete actions."""

    hidden_sizes: tuple[int, ...] = option(
        (100, 100), "policy MLP hidden widths (Finn et al. 2017: 100, 100)", low=1
    )
    nonlinearity: str = option("relu", "policy nonlinearity", choices=("relu", "tanh"))
    init_std: float = option(1.0, "initial policy standard deviation", low=0.0, low_open=True)


@dataclass
class ReturnOptions:
    """How rewards become advantages: discount and GAE (Schulman et al. 2016)."""

    gamma: float = option(0.99, "discount γ", low=0.0, high=1.0)
    gae_lambda: float = option(
        1.0, "GAE λ of the advantages (1.0: returns − baseline)", low=0.0, high=1.0
    )


@dataclass
class TrialPPOOptions:
    """PPO (Schulman et al. 2017) over batches of whole trials, the update of the agents that
    adapt within a trial (RL², VariBAD); an agent's own defaults come from
    :func:`option_of`."""

    num_trials: int = option(256, "trials (tasks) per PPO iteration, stepped together", low=1)
    lr: float = option(1e-3, "Adam learning rate", low=0.0, low_open=True)
    clip_coef: float = option(0.2, "PPO's clipping epsilon", low=0.0, low_open=True)
    update_epochs: int = option(4, "PPO epochs over each batch of trials", low=1)
    num_minibatches: int = option(4, "minibatches of whole trials per epoch", low=1)
    ent_coef: float = option(0.01, "entropy bonus coefficient", low=0.0)
    vf_coef: float = option(0.5, "value loss coefficient", low=0.0)
    max_grad_norm: float = option(0.5, "gradient norm clipping", low=0.0, low_open=True)

    def validate(self) -> Any:
        """Every field's type and bounds (the next class's ``validate``), then whole trials
        in each minibatch."""
        super().validate()  # type: ignore[misc]
        if self.num_trials % self.num_minibatches:
            raise ConfigError(
                f"num_trials ({self.num_trials}) must be a multiple of num_minibatches "
                f"({self.num_minibatches})"
            )
        return self


def option_of(cls: type, name: str, default: Any) -> Any:
    """Option ``name`` of the options class ``cls`` (its help text and checks) with another
    default, for an agent whose defaults differ: ``clip_coef: float = option_of(
    TrialPPOOptions, "clip_coef", 0.1)``."""
    meta = {f.name: f.metadata for f in fields(cls)}[name]
    return option(default, **meta)


@dataclass
class EnvOptions:
    """The episode length and the worker processes of ``--backend subprocess``."""

    horizon: int = option(0, "episode length; 0: the env's registered one", low=0)
    num_workers: int = num_workers_option()
    worker_timeout: float = worker_timeout_option()

    def env_kwargs(self) -> dict[str, Any]:
        """What ``gymnasium.make`` and the batched envs take for this episode length."""
        return {"max_episode_steps": self.horizon} if self.horizon else {}
