"""``metarl check-env``: is a task environment ready for meta-learning?

:func:`check_env` runs a task env (or a task distribution alone) through the checks every
family of metarl passes, and returns one :class:`CheckResult` per check, each failure with
what to fix:

* **task API** — ``set_task``, ``task`` and a :class:`~metarl.tasks.TaskDistribution`;
* **Gymnasium checker** and **SB3 checker** — the two libraries' own env checkers;
* **determinism** — the same task, seed and actions give the same observations and rewards;
* **task sensitivity** — two different tasks give different observations or rewards
  (catches a ``set_task`` that does not reach the simulation);
* **splits** — train and test splits reproducible, disjoint, and valid tasks;
* **batched vs single** — each batched backend (the generic one for a user's env) gives the
  single env's observations and rewards row by row.

Example:
    >>> from metarl.stepping.checks import check_env, format_report
    >>> results = check_env("metarl/Navigation2D-v0")
    >>> all(r.ok for r in results)
    True
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from metarl.stepping.batched import BatchedTaskEnv, GenericBatchedEnv
from metarl.tasks import TaskDistribution

__all__ = ["CheckResult", "check_env", "format_report", "load_target"]

EnvFn = Callable[[], gym.Env[Any, Any]]


@dataclass(frozen=True)
class CheckResult:
    """One check: ``ok`` is True (passed), False (failed) or None (skipped)."""

    name: str
    ok: bool | None
    message: str = ""


def load_target(spec: str) -> Any:
    """What ``MODULE:ATTR`` (or ``path/to/file.py:ATTR``) or an env id names.

    An env id may be registered (``metarl/HalfCheetahVel-v0``, one from ``--import`` or an
    entry point) or given as ``MODULE:ENV_ID``, which imports ``MODULE`` first; a file's
    folder goes on the import path, as running the file would.
    """
    from metarl.stepping import registry

    module_name, sep, attr = spec.rpartition(":")
    if not sep and spec in gym.registry:  # a Gymnasium id that is no metarl family
        return spec
    if not sep or "/" in attr:  # an env id, bare or MODULE:ENV_ID
        try:
            return registry.resolve_env_id(spec)
        except KeyError as e:
            if sep or "/" in spec:  # an id: the registry's message says how to register it
                raise
            raise ValueError(
                f"{spec!r} is neither MODULE:ATTR nor a registered env id; e.g. "
                "`metarl check-env mypkg.envs:MyTaskEnv`, `metarl check-env my_env.py:MyTaskEnv`, "
                "`metarl check-env mypkg.envs:mine/MyEnv-v0` or `metarl check-env "
                "metarl/HalfCheetahVel-v0`"
            ) from e
    if (module_name.endswith(".py") or os.sep in module_name) and not Path(module_name).is_file():
        raise FileNotFoundError(f"no file {module_name} (from {spec!r})")
    module = registry.import_plugin(module_name)
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ValueError(f"{module_name} has no attribute {attr!r}; it has: {', '.join(names)}")
    return getattr(module, attr)


def _env_fn(target: Any) -> tuple[EnvFn | None, TaskDistribution[Any] | None, dict[str, Any]]:
    """(env factory, distribution, registered batched backends) for a target."""
    if isinstance(target, TaskDistribution):
        return None, target, {}
    if isinstance(target, str):
        from metarl.stepping import registry

        backends: dict[str, Any] = {}
        if ":" in target or target not in gym.registry:  # MODULE:ENV_ID, or registered lazily
            target = registry.resolve_env_id(target)
        if target in registry.family_ids():
            fam = registry.family(target)
            # Approximate backends (another physics engine) cannot equal the single env.
            backends = {k: v for k, v in fam.batched.items() if k in fam.exact_backends}
        env_id = target
        return (lambda: gym.make(env_id)), None, backends
    if isinstance(target, gym.Env):
        raise TypeError(
            "check-env needs fresh envs: pass the env class or a function that builds one, "
            f"not an instance of {type(target).__name__}"
        )
    if isinstance(target, type) and not issubclass(target, gym.Env):
        raise TypeError(
            f"{target.__name__} is a class but not a gymnasium.Env: pass a task env class, a "
            "function returning a task env, a registered env id or a metarl TaskDistribution"
        )
    if callable(target):
        return target, None, {}
    raise TypeError(
        f"cannot check {target!r}: pass a task env class, a function returning a task env, a "
        "registered env id or a metarl TaskDistribution"
    )


def _actions(env: gym.Env[Any, Any], n: int, seed: int) -> list[Any]:
    env.action_space.seed(seed)
    return [env.action_space.sample() for _ in range(n)]


def _rollout(
    env: gym.Env[Any, Any], task: Any, seed: int, actions: list[Any]
) -> tuple[list[np.ndarray], list[float]]:
    obs, _ = env.reset(seed=seed, options={"task": task})
    observations, rewards = [np.asarray(obs, dtype=np.float64)], []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        observations.append(np.asarray(obs, dtype=np.float64))
        rewards.append(float(r))
        if term or trunc:
            break
    return observations, rewards


def _same(a: tuple[list[np.ndarray], list[float]], b: tuple[list[np.ndarray], list[float]]) -> bool:
    if len(a[1]) != len(b[1]):
        return False
    return all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True)) and np.array_equal(
        a[1], b[1]
    )


def _close(
    a: tuple[list[np.ndarray], list[float]], b: tuple[list[np.ndarray], list[float]]
) -> bool:
    n = min(len(a[1]), len(b[1]))
    obs_close = all(np.allclose(x, y) for x, y in zip(a[0][: n + 1], b[0][: n + 1], strict=True))
    return obs_close and np.allclose(a[1][:n], b[1][:n])


def _check_api(env: gym.Env[Any, Any]) -> CheckResult:
    base: Any = env.unwrapped
    missing = [n for n in ("set_task", "task_distribution") if not hasattr(base, n)]
    if missing:
        return CheckResult(
            "task API",
            False,
            f"{type(base).__name__} has no {' or '.join(missing)}: subclass metarl.TaskEnv, or "
            "build the class with metarl.make_task_env(EnvClass, distribution, apply_task)",
        )
    if not isinstance(base.task_distribution, TaskDistribution):
        return CheckResult(
            "task API",
            False,
            f"task_distribution is a {type(base.task_distribution).__name__}, not a metarl "
            "TaskDistribution; use BoxTaskDistribution, FiniteTaskDistribution or a subclass",
        )
    return CheckResult("task API", True)


def _check_gymnasium(env_fn: EnvFn) -> CheckResult:
    from gymnasium.utils.env_checker import check_env as gym_check

    env = env_fn()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gym_check(env.unwrapped, skip_render_check=True)
    except Exception as e:  # the checker's own assertion, reported, not raised
        return CheckResult("Gymnasium checker", False, f"{type(e).__name__}: {e}")
    finally:
        env.close()
    bad = [str(w.message) for w in caught if "determinis" in str(w.message).lower()]
    if bad:
        return CheckResult("Gymnasium checker", False, bad[0])
    return CheckResult("Gymnasium checker", True)


def _check_sb3(env_fn: EnvFn) -> CheckResult:
    try:
        from stable_baselines3.common.env_checker import check_env as sb3_check
    except ImportError:
        return CheckResult("SB3 checker", None, "stable-baselines3 is not installed")
    env = env_fn()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sb3_check(env.unwrapped, warn=False)
    except Exception as e:
        return CheckResult("SB3 checker", False, f"{type(e).__name__}: {e}")
    finally:
        env.close()
    return CheckResult("SB3 checker", True)


def _check_determinism(env_fn: EnvFn, task: Any, steps: int, seed: int) -> CheckResult:
    a, b = env_fn(), env_fn()
    actions = _actions(a, steps, seed)
    first, second = _rollout(a, task, seed, actions), _rollout(b, task, seed, actions)
    again = _rollout(a, task, seed, actions)  # the same env, reset with the same seed
    if _same(first, second) and _same(first, again):
        return CheckResult("determinism", True)
    return CheckResult(
        "determinism",
        False,
        "the same task, seed and actions gave different observations or rewards: draw every "
        "random number from self.np_random (seeded by super().reset(seed=seed)), never from "
        "np.random, random or the clock, and reset all episode state in reset()",
    )


#: Random action sequences tried before two tasks count as indistinguishable.
_SENSITIVITY_ATTEMPTS = 32


def _check_sensitivity(env_fn: EnvFn, tasks: list[Any], steps: int, seed: int) -> CheckResult:
    if len(tasks) < 2:
        return CheckResult("task sensitivity", None, "the distribution has a single task")
    env = env_fn()
    # A sparse reward (a hidden goal cell) shows the task only where the actions meet it, so
    # several random action sequences are tried before the tasks count as the same.
    for attempt in range(_SENSITIVITY_ATTEMPTS):
        actions = _actions(env, steps, seed + attempt)
        first = _rollout(env, tasks[0], seed, actions)
        for other in tasks[1:]:
            if not _close(first, _rollout(env_fn(), other, seed, actions)):
                return CheckResult("task sensitivity", True)
    return CheckResult(
        "task sensitivity",
        False,
        f"tasks {tasks[0]!r} and {tasks[1]!r} gave the same observations and rewards for the "
        f"same seed and {_SENSITIVITY_ATTEMPTS} random action sequences: set_task (your "
        "apply_task or _apply_task) does not reach the simulation — write the task into the "
        "attribute the env's step/reset actually reads",
    )


def _check_splits(dist: TaskDistribution[Any]) -> CheckResult:
    try:
        train, test = dist.split("train"), dist.split("test")
        problems = []
        if dist.split("test") != test or dist.split("train") != train:
            problems.append("splits change between calls; derive them only from the seed")
        if dist.splits_disjoint and set(train) & set(test):
            problems.append(
                f"{len(set(train) & set(test))} task(s) are in both train and test; a test "
                "task must never be meta-trained on (for a finite family smaller than its "
                "splits, set splits_disjoint to say they are shared)"
            )
        for t in (*train[:5], *test[:5]):
            dist.validate(t)
        s1 = dist.sample(np.random.default_rng(0))
        s2 = dist.sample(np.random.default_rng(0))
        if s1 != s2:
            problems.append("sample(rng) is not a function of rng; draw only from the rng")
    except Exception as e:
        return CheckResult("splits", False, f"{type(e).__name__}: {e}")
    if problems:
        return CheckResult("splits", False, "; ".join(problems))
    shared = "" if dist.splits_disjoint else " (shared: the family is smaller than its splits)"
    return CheckResult("splits", True, f"{len(train)} train / {len(test)} test{shared}")


def _check_batched(
    name: str, make_batch: Callable[[int, int], BatchedTaskEnv], env_fn: EnvFn,
    tasks: list[Any], steps: int, seed: int,
) -> CheckResult:  # fmt: skip
    check = f"batched vs single ({name})"
    rows = [t for t in tasks[:2] for _ in range(2)]
    try:
        batch = make_batch(len(rows), steps)
        space = batch.single_action_space
        space.seed(seed)
        actions = np.stack([np.stack([space.sample() for _ in rows]) for _ in range(steps)])
        obs, _ = batch.reset(rows, seeds=seed)
        b_obs, b_rew, b_act = [obs], [], []
        for t in range(steps):
            if not batch.active.any():
                break
            obs, rew, _, _, info = batch.step(actions[t])
            b_obs.append(obs)
            b_rew.append(rew)
            b_act.append(info["active"])
        batch.close()
    except Exception as e:
        return CheckResult(check, False, f"{type(e).__name__}: {e}")
    for i, task in enumerate(rows):
        env = env_fn()
        o, _ = env.reset(seed=seed + i, options={"task": task})
        if not np.allclose(b_obs[0][i], o, atol=1e-6):
            return CheckResult(check, False, f"row {i}: the first observation differs")
        for t in range(len(b_rew)):
            if not b_act[t][i]:
                break
            o, r, term, trunc, _ = env.step(actions[t, i])
            if not (
                np.allclose(b_obs[t + 1][i], o, atol=1e-6) and np.isclose(b_rew[t][i], float(r))
            ):
                return CheckResult(
                    check,
                    False,
                    f"row {i} ({task!r}) differs from a single env at step {t}: the backend "
                    "must step row i exactly as a single env reset with seed+i and that task",
                )
            if term or trunc:
                break
    return CheckResult(check, True)


def _with_horizon(factory: Callable[..., BatchedTaskEnv]) -> Callable[[int, int], BatchedTaskEnv]:
    return lambda n, h: factory(n, max_episode_steps=h)


def _batched_check(
    name: str, make: Callable[[int, int], BatchedTaskEnv], env_fn: EnvFn,
    tasks: list[Any], steps: int, seed: int,
) -> Callable[[], CheckResult]:  # fmt: skip
    return lambda: _check_batched(name, make, env_fn, tasks, steps, seed)


def check_env(target: Any, *, steps: int = 50, seed: int = 0) -> list[CheckResult]:
    """Run every check that applies to ``target``; see the module docstring.

    Args:
        target: a task env class, a function returning a task env, a registered env id, or
            a :class:`~metarl.tasks.TaskDistribution` (then only the split checks run).
        steps: steps per rollout in the determinism, sensitivity and batched checks.
        seed: the seed of those rollouts.
    """
    env_fn, dist, backends = _env_fn(target)
    results: list[CheckResult] = []
    if env_fn is None:
        assert dist is not None
        return [_check_splits(dist)]

    def guarded(name: str, fn: Callable[[], CheckResult]) -> None:
        try:
            results.append(fn())
        except Exception as e:
            tb = traceback.extract_tb(e.__traceback__)[-1]
            where = f" ({Path(tb.filename).name}:{tb.lineno})"
            results.append(CheckResult(name, False, f"{type(e).__name__}: {e}{where}"))

    try:
        env = env_fn()
    except Exception as e:
        return [CheckResult("construct", False, f"building the env failed: {e}")]
    api = _check_api(env)
    results.append(api)
    env.close()
    if not api.ok:
        return results
    dist = env.unwrapped.task_distribution  # type: ignore[attr-defined]
    assert dist is not None
    guarded("Gymnasium checker", lambda: _check_gymnasium(env_fn))
    guarded("SB3 checker", lambda: _check_sb3(env_fn))
    guarded("splits", lambda: _check_splits(dist))
    try:
        tasks = list(dist.split("test")[:3])
    except Exception:
        tasks = dist.sample_tasks(np.random.default_rng(seed), 3)
    guarded("determinism", lambda: _check_determinism(env_fn, tasks[0], steps, seed))
    guarded("task sensitivity", lambda: _check_sensitivity(env_fn, tasks, steps, seed))
    makers: dict[str, Callable[[int, int], BatchedTaskEnv]] = {
        "generic": lambda n, h: GenericBatchedEnv(env_fn, n, horizon=h)
    }
    for name, factory in backends.items():
        makers[name] = _with_horizon(factory)
    for name, make in makers.items():
        guarded(
            f"batched vs single ({name})", _batched_check(name, make, env_fn, tasks, steps, seed)
        )
    return results


def format_report(target: str, results: list[CheckResult]) -> str:
    """A readable report: one line per check, failures with what to fix."""
    lines = [f"check-env {target}"]
    for r in results:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[r.ok]
        lines.append(f"  {mark}  {r.name}" + (f": {r.message}" if r.message else ""))
    failed = sum(r.ok is False for r in results)
    lines.append(
        f"{len(results) - failed} of {len(results)} checks passed"
        + (f"; fix the {failed} failure(s) above" if failed else "; ready for metarl")
    )
    return "\n".join(lines)
