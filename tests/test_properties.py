"""Issue #7, guarantee 5: bad input is refused clearly — property-based (Hypothesis).

* Task parameters of every registered family: a valid task (sampled from any seed) gives a
  working env (reset and steps with finite, in-space observations); a task with one field
  replaced by an arbitrary value (NaN, inf, huge, wrong type, wrong length, None...) is either
  accepted — and then works — or refused with a :class:`metarl.TaskError` by the
  distribution, the single env and the batched env alike. No other exception is allowed.
* Every typed config class on main (:class:`metarl.runs.config.Config` subclasses, RL²'s config):
  any single field set to an arbitrary value is accepted — with its declared type and bounds
  holding, and a lossless round trip — or refused with a ConfigError/ValueError that names it.
* Unknown env ids get a KeyError that lists the registered ones.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import pkgutil
import typing
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metarl
from metarl.runs.config import Config, ConfigError, RunConfig, _flag, _unwrap_optional
from metarl.tasks import TaskError
from metarl.testing import tally

ENV_IDS = metarl.family_ids()
#: Examples per family and per config class (benchmarks/reliability.md counts them).
TASK_EXAMPLES = 50
CONFIG_EXAMPLES = 60
PROPERTY_SETTINGS = settings(
    max_examples=TASK_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never flakes on a new draw
    suppress_health_check=[HealthCheck.too_slow],
)


@functools.cache
def _envs(env_id: str) -> tuple[gym.Env[Any, Any], Any, Any]:
    """(single env, batched env of 2 rows, distribution), made once per family."""
    env = gym.make(env_id)
    return env, metarl.make_batched(env_id, num_envs=2), env.unwrapped.task_distribution


def _check_works(env_id: str, task: Any) -> None:
    env, batch, _ = _envs(env_id)
    obs, _ = env.reset(seed=0, options={"task": task})
    assert env.observation_space.contains(obs), f"{env_id}: {obs!r} outside the space"
    env.action_space.seed(0)
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert np.isfinite(np.asarray(obs, dtype=np.float64)).all()
        assert math.isfinite(float(reward))
        if terminated or truncated:
            break
    bobs, _ = batch.reset([task, task], seeds=0)
    assert np.isfinite(np.asarray(bobs, dtype=np.float64)).all()


# -- task parameters -------------------------------------------------------------------------
_ANY_SCALAR = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2.0, 2.0),  # often inside a family's range
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.just(float("nan")),
    st.just(np.float32("inf")),
)


def _mutations(value: Any) -> st.SearchStrategy[Any]:
    """Values to put in place of a task field that holds ``value``."""
    if isinstance(value, tuple):
        n = len(value)
        one_entry = st.tuples(st.integers(0, max(n - 1, 0)), st.deferred(lambda: _mutations(
            value[0] if value else 0.0))).map(
            lambda iv: tuple(iv[1] if i == iv[0] else v for i, v in enumerate(value))
        )  # fmt: skip
        return st.one_of(
            one_entry,
            st.lists(st.floats(-2.0, 2.0), max_size=n + 2).map(tuple),  # wrong length, often
            _ANY_SCALAR,
            st.just(list(value)),  # a list instead of a tuple
        )
    return _ANY_SCALAR


@pytest.mark.parametrize("env_id", ENV_IDS)
@PROPERTY_SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_every_sampled_task_gives_a_working_env(env_id: str, seed: int) -> None:
    _, _, dist = _envs(env_id)
    task = dist.sample(np.random.default_rng(seed))
    assert dist.validate(task) is task
    _check_works(env_id, task)
    tally("valid task gave a working env", env_id=env_id)


@pytest.mark.parametrize("env_id", ENV_IDS)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_a_mutated_task_is_refused_with_a_task_error_or_works(env_id: str, data: Any) -> None:
    env, batch, dist = _envs(env_id)
    base = dist.split("test")[0]
    names = [f.name for f in dataclasses.fields(base)]
    name = data.draw(st.sampled_from(names), label="field")
    value = data.draw(_mutations(getattr(base, name)), label="value")
    task = dataclasses.replace(base, **{name: value})
    try:
        dist.validate(task)
    except TaskError as e:
        assert dist.name in str(e) or type(base).__name__ in str(e), str(e)
        with pytest.raises(TaskError):
            env.reset(seed=0, options={"task": task})
        with pytest.raises(TaskError):
            env.unwrapped.set_task(task)
        with pytest.raises(TaskError):
            batch.reset([base, task], seeds=0)
        tally("mutated task refused with TaskError", env_id=env_id)
        return
    _check_works(env_id, task)
    tally("mutated task accepted and working", env_id=env_id)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_a_task_of_another_type_or_none_is_refused(env_id: str) -> None:
    env, batch, dist = _envs(env_id)

    @dataclasses.dataclass(frozen=True)
    class Other:
        x: float = 0.0

    with pytest.raises(TaskError, match="no task given"):
        env.unwrapped.set_task(None)
    for bad in (Other(), {"goal": (0.1, 0.1)}, 3.0):
        with pytest.raises(TaskError, match=f"expects a {type(dist.split('test')[0]).__name__}"):
            env.reset(seed=0, options={"task": bad})
        with pytest.raises(TaskError):
            batch.reset([bad, bad], seeds=0)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(env_id=st.text(max_size=30))
def test_unknown_env_ids_get_a_key_error_listing_the_registered_ones(env_id: str) -> None:
    if env_id in ENV_IDS or ":" in env_id:  # MODULE:ENV_ID imports MODULE (test_plugins.py)
        return
    with pytest.raises(KeyError, match="no task family registered") as info:
        metarl.make(env_id)
    assert "metarl/Navigation2D-v0" in str(info.value)
    with pytest.raises(KeyError, match="no task family registered"):
        metarl.make_batched(env_id, num_envs=2)
    tally("unknown env id refused")


# -- configs -----------------------------------------------------------------------------------
def _import_everything() -> None:
    """Import every module of metarl's agents and few-shot packages, so every config class
    defined on main is found (a new agent's config is then tested without editing this)."""
    for pkg_name in ("metarl.agents", "metarl.fewshot"):
        try:
            pkg = importlib.import_module(pkg_name)
        except ImportError:  # pragma: no cover - a package not on main yet
            continue
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg_name}.{info.name}")


def _config_classes() -> list[type[Config]]:
    _import_everything()
    found: list[type[Config]] = []
    todo = list(Config.__subclasses__())
    while todo:
        cls = todo.pop()
        # The few-shot base refuses to be built on its own: each learner has its config.
        base = cls.__module__ == "metarl.fewshot.configs" and cls.__name__ == "FewShotConfig"
        if cls.__module__.startswith("metarl") and cls not in found and not base:
            found.append(cls)
        todo += cls.__subclasses__()
    return sorted(found, key=lambda c: c.__qualname__)


CONFIG_CLASSES = _config_classes()

_ANY_VALUE = st.one_of(
    _ANY_SCALAR,
    st.integers(-3, 3),
    st.floats(-1e-3, 1e-3),
    st.lists(st.integers(-2, 300), max_size=3),
    st.lists(st.floats(allow_nan=True), max_size=2),
    st.sampled_from(["cpu", "cuda:0", "auto", "relu", "tanh", "metarl/Navigation2D-v0"]),
)


def test_config_classes_are_found() -> None:
    assert RunConfig in CONFIG_CLASSES


def _holds(cls: type[Config], f: dataclasses.Field[Any], value: Any) -> None:
    """An accepted value has the declared type and respects the declared bounds/choices."""
    base, optional = _unwrap_optional(typing.get_type_hints(cls)[f.name])
    if value is None:
        assert optional, f"{f.name}: None accepted for a non-optional field"
        return
    origin = typing.get_origin(base)
    values = list(value) if origin in (tuple, list) else [value]
    if origin in (tuple, list):
        assert isinstance(value, origin)
        args = [a for a in typing.get_args(base) if a is not Ellipsis]
        base = args[0] if args else Any
    meta = f.metadata
    for v in values:
        if base in (int, float, str, bool):
            assert isinstance(v, base) and not (base is int and isinstance(v, bool)), (f.name, v)
        if base is float:
            assert math.isfinite(v), f.name
        if meta.get("low") is not None:
            assert v > meta["low"] if meta.get("low_open") else v >= meta["low"], (f.name, v)
        if meta.get("high") is not None:
            assert v <= meta["high"], (f.name, v)
        if meta.get("choices") is not None:
            assert v in meta["choices"], (f.name, v)


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__qualname__)
@settings(
    max_examples=CONFIG_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_config_field_is_accepted_within_its_bounds_or_refused_by_name(
    cls: type[Config], data: Any
) -> None:
    fields = dataclasses.fields(cls)
    f = data.draw(st.sampled_from(fields), label="field")
    value = data.draw(_ANY_VALUE, label="value")
    try:
        cfg = cls(**{f.name: value})
    except ConfigError as e:
        assert _flag(f.name) in str(e) or f.name in str(e), str(e)
        tally("generated config value refused", cls=cls.__qualname__)
        return
    _holds(cls, f, getattr(cfg, f.name))
    tally("generated config value accepted within bounds", cls=cls.__qualname__)
    assert cls.from_dict(cfg.to_dict()) == cfg


RL2_INT_FIELDS = ("episodes_per_trial", "num_trials", "num_iterations", "hidden_size")


@settings(max_examples=CONFIG_EXAMPLES, deadline=None, derandomize=True)
@given(data=st.data())
def test_rl2_config_field_is_accepted_or_refused_by_name(data: Any) -> None:
    from metarl.agents import rl2

    fields = [f.name for f in dataclasses.fields(rl2.RL2Config)]
    name = data.draw(st.sampled_from(fields), label="field")
    value = data.draw(_ANY_VALUE, label="value")
    # Defaults small enough that every accepted config is built into an agent below.
    small = {"env_id": "metarl/BernoulliBandit-K5-v0", "num_trials": 4, "num_minibatches": 2,
             "hidden_size": 4, "max_episode_steps": 3}  # fmt: skip
    try:
        cfg = rl2.RL2Config(**{**small, name: value}).validate()
    except (ValueError, KeyError) as e:
        assert name in str(e) or (name == "env_id" and "no task family" in str(e)), str(e)
        tally("generated config value refused", cls="RL2Config")
        return
    tally("generated config value accepted within bounds", cls="RL2Config")
    got = getattr(cfg, name)
    if name in ("lr", "clip_coef", "max_grad_norm"):
        assert got > 0 and math.isfinite(got)
    if name in RL2_INT_FIELDS:
        assert isinstance(got, int) and got >= 1
    if name in (*RL2_INT_FIELDS, "max_episode_steps") and isinstance(got, int) and got > 64:
        return  # valid, but too big to build in a unit test
    if name == "device" and "cuda" in str(got) and not torch.cuda.is_available():
        # A well-formed device this machine lacks: building says so (not a config error).
        with pytest.raises(ValueError, match="no CUDA GPU"):
            rl2.RL2(cfg)
        return
    rl2.RL2(cfg)  # a valid config builds an agent
