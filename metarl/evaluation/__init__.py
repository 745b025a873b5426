"""One evaluation protocol for every agent: adaptation curves on held-out tasks.

An :class:`AdaptationCurve` holds, for every held-out task and seed, the return after
``0, 1, ..., K`` adaptation units — inner gradient steps for MAML and Reptile, episodes of a
trial for RL² — and summarises it as a mean with a 95% confidence interval. Every agent's
``evaluate`` returns one; ``metarl benchmark`` puts several side by side. Results are JSON,
plots PNG.

Example:
    >>> import numpy as np
    >>> curve = AdaptationCurve(agent="maml-trpo", env_id="metarl/Navigation2D-v0",
    ...                         unit="gradient steps", returns=np.zeros((1, 40, 2)))
    >>> curve.mean().shape
    (2,)
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metarl.runs.rundir import write_atomic

if TYPE_CHECKING:
    import torch

    from metarl.learning.policies import Policy
    from metarl.sampling.native import Episodes

__all__ = [
    "AdaptationCurve",
    "EvalSettings",
    "check_episode_eval",
    "curve_by_episodes",
    "curve_caption",
    "curve_figure",
    "default_episodes_per_step",
    "evaluate_policy_adaptation",
    "evaluate_run_by_episodes",
    "evaluate_run_policy",
    "mean_ci95",
    "plot_curves",
    "progress_bar",
    "save_run_curve",
]

# Two-sided 97.5% quantiles of Student's t for small degrees of freedom; the normal 1.96
# beyond (the difference is below 1% past 120).
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
    17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064,
    25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000,
    120: 1.980,
}  # fmt: skip


def _t975(dof: int) -> float:
    if dof <= 0:
        return math.nan
    if dof in _T975:
        return _T975[dof]
    larger = [d for d in _T975 if d > dof]
    return _T975[min(larger)] if larger else 1.96


def mean_ci95(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the 95% confidence interval (Student's t) along ``axis``.

    The half-width is NaN for a single sample.
    """
    samples = np.asarray(samples, dtype=np.float64)
    n = samples.shape[axis]
    mean = samples.mean(axis=axis)
    if n < 2:
        return mean, np.full_like(mean, math.nan)
    sem = samples.std(axis=axis, ddof=1) / math.sqrt(n)
    return mean, _t975(n - 1) * sem


@dataclass
class AdaptationCurve:
    """Returns on held-out tasks after 0..K adaptation units.

    Attributes:
        agent: the agent's name (``"maml-trpo"``, ``"rl2"``...).
        env_id: the task family.
        unit: what one adaptation unit is (``"gradient steps"`` or ``"episodes"``).
        returns: ``(num_seeds, num_tasks, K + 1)`` mean episode return per seed, task and
            number of units (index 0: before any adaptation).
        success: same shape, success rate where the env defines one, else None.
        env_steps: env steps spent adapting, per unit (length ``K + 1``, cumulative).
        wall_clock_s: seconds spent adapting, per unit (cumulative).
        split: the split evaluated (``"test"`` for held-out tasks).
        meta: anything else worth keeping (config, meta-training cost...).
    """

    agent: str
    env_id: str
    unit: str
    returns: np.ndarray
    success: np.ndarray | None = None
    env_steps: list[int] = field(default_factory=list)
    wall_clock_s: list[float] = field(default_factory=list)
    split: str = "test"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.returns = np.asarray(self.returns, dtype=np.float64)
        if self.returns.ndim != 3:
            raise ValueError(
                f"returns must be (num_seeds, num_tasks, K + 1), got shape {self.returns.shape}"
            )
        if self.success is not None:
            self.success = np.asarray(self.success, dtype=np.float64)
            if self.success.shape != self.returns.shape:
                raise ValueError("success must have the shape of returns")

    @property
    def num_units(self) -> int:
        return int(self.returns.shape[-1]) - 1

    def per_sample(self, values: np.ndarray | None = None) -> np.ndarray:
        """``values`` (default: the returns) as ``(seeds × tasks, K + 1)``: every (seed, task)
        pair is one sample of the return after 0..K units, what the means and CIs average."""
        values = self.returns if values is None else values
        return values.reshape(-1, values.shape[-1])

    def mean(self) -> np.ndarray:
        """Mean return after 0..K units, over tasks and seeds."""
        return self.per_sample(self.returns).mean(axis=0)

    def ci95(self) -> np.ndarray:
        """95% CI half-width after 0..K units, over (seed, task) samples."""
        return mean_ci95(self.per_sample(self.returns))[1]

    def improvement(self, units: int = 1) -> tuple[float, float]:
        """Mean and 95% CI half-width of (return after ``units``) − (return before)."""
        diff = self.per_sample(self.returns)
        d = diff[:, units] - diff[:, 0]
        mean, half = mean_ci95(d)
        return float(mean), float(half)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "agent": self.agent,
            "env_id": self.env_id,
            "split": self.split,
            "unit": self.unit,
            "num_seeds": int(self.returns.shape[0]),
            "num_tasks": int(self.returns.shape[1]),
            "mean": self.mean().tolist(),
            "ci95": self.ci95().tolist(),
        }
        if self.success is not None:
            out["success_rate"] = self.per_sample(self.success).mean(axis=0).tolist()
        if self.env_steps:
            out["env_steps"] = list(self.env_steps)
        if self.wall_clock_s:
            out["wall_clock_s"] = list(self.wall_clock_s)
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["returns"] = self.returns.tolist()
        data["success"] = None if self.success is None else self.success.tolist()
        data["summary"] = self.summary()
        return data

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(self.to_json(), indent=2).encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> AdaptationCurve:
        data = json.loads(Path(path).read_text())
        data.pop("summary", None)
        return cls(**data)


def curve_caption(curve: AdaptationCurve) -> str:
    """What a curve averages: the checkpoint's iteration (where known), the tasks and seeds.

    >>> c = AdaptationCurve("maml-trpo", "metarl/Navigation2D-v0", "gradient steps",
    ...                     np.zeros((3, 40, 4)), meta={"iterations": 500})
    >>> curve_caption(c)
    'checkpoint of iteration 500, 40 test tasks × 3 seeds'
    """
    seeds, tasks = int(curve.returns.shape[0]), int(curve.returns.shape[1])
    at = curve.meta.get("iterations")
    where = "" if at is None else f"checkpoint of iteration {at}, "
    return (f"{where}{tasks} {curve.split} task{'s' * (tasks != 1)} × {seeds} "
            f"seed{'s' * (seeds != 1)}")  # fmt: skip


def plot_curves(curves: list[AdaptationCurve], path: str | Path, title: str = "") -> Path:
    """Adaptation curves as a PNG (:func:`curve_figure`), written atomically to ``path``."""
    fig = curve_figure(curves, title)  # selects the Agg backend first
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # savefig would open the path itself, following a link
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return path


def curve_figure(curves: list[AdaptationCurve], title: str = "") -> Any:
    """The figure of :func:`plot_curves`: per curve its mean, a line, and the 95% confidence
    interval over (seed, task) samples, a band labelled "95% CI" in the legend; ``title``
    (default: the family) on top."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError("plots need matplotlib: pip install 'metarl[plots]'") from e
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, c in enumerate(curves):
        x = np.arange(c.num_units + 1)
        mean, half = c.mean(), np.nan_to_num(c.ci95())
        ax.plot(x, mean, marker="o" if c.num_units <= 20 else None, label=c.agent)
        # Every band is the same statistic: the legend names it once.
        band = "95% CI" if i == 0 else "_nolegend_"
        ax.fill_between(x, mean - half, mean + half, alpha=0.2, label=band)
    if curves:
        ax.set_xlabel(f"adaptation {curves[0].unit}")
        # Integer ticks, at most about ten of them (a curve of 100 episodes stays legible).
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    ax.set_ylabel("return on held-out tasks")
    ax.set_title(title or (curves[0].env_id if curves else ""), fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


#: ``adapt_fn(params, episodes, lr, per_task_params) -> per-task params``: one inner step.
AdaptFn = Callable[[Mapping[str, "torch.Tensor"], "Episodes", float, bool], dict[str, Any]]


@dataclass(frozen=True)
class EvalSettings:
    """How a run is evaluated on held-out tasks: what every agent's ``evaluate``, ``metarl
    evaluate`` and ``metarl benchmark`` take, checked here once.

    Attributes:
        split: the tasks: ``"test"`` (held out) or ``"train"``.
        num_steps: adaptation units K after the first point (gradient steps, or for agents
            that adapt by episodes the episodes after the first); None: the agent's own
            default (3 gradient steps; RL²: its trained trial length).
        seeds: evaluation seeds; the 95% CI is over (seed, task) pairs.
        episodes_per_step: episodes (RL²: trials) per task at each point; None:
            :func:`default_episodes_per_step`.
        device: where the policy runs.
        max_tasks: only the first tasks of the split.
        lrs: inner learning rates of adaptation steps 1, 2, … (the last repeats), for the
            agents that adapt by gradient steps; None: the run's own.

    Example:
        >>> EvalSettings.of(num_steps=1, seeds=[0]).seeds
        (0,)
    """

    split: str = "test"
    num_steps: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    episodes_per_step: int | None = None
    device: str = "cpu"
    max_tasks: int | None = None
    lrs: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(x) for x in self.seeds))
        if self.lrs is not None:
            object.__setattr__(self, "lrs", tuple(float(x) for x in self.lrs))
        if self.split not in ("train", "test"):
            raise ValueError(f"split (--tasks) must be 'train' or 'test', got {self.split!r}")
        for name, flag, low in (("num_steps", "--steps", 0), ("episodes_per_step", "--episodes",
                                1), ("max_tasks", "--max-tasks", 1)):  # fmt: skip
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < low):
                raise ValueError(f"{name} ({flag}) must be an integer >= {low}, got {value}")
        if not self.seeds or not all(0 <= x < 2**32 for x in self.seeds):
            raise ValueError(
                f"seeds (--seeds) must be one or more integers from 0 to {2**32 - 1}, got "
                f"{list(self.seeds)}"
            )
        if self.lrs is not None and not (
            self.lrs and all(math.isfinite(x) and x > 0 for x in self.lrs)
        ):
            raise ValueError(f"lrs (--lrs) must be positive finite numbers, got {list(self.lrs)}")

    @classmethod
    def of(cls, settings: EvalSettings | None = None, **overrides: Any) -> EvalSettings:
        """``settings`` (default: the defaults) with ``overrides`` by field name."""
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(
                f"unknown evaluation setting(s) {unknown}; the settings are "
                f"{[f.name for f in fields(cls)]}"
            )
        return replace(settings or cls(), **overrides)

    def without_lrs(self, agent: str) -> EvalSettings:
        """These settings for an agent that does not adapt by gradient steps: ``lrs`` refused."""
        if self.lrs is not None:
            raise ValueError(
                f"lrs (--lrs) sets inner learning rates, and {agent} does not adapt by gradient "
                "steps; drop them"
            )
        return self

    def protocol(self) -> dict[str, Any]:
        """The keywords of :func:`evaluate_policy_adaptation` these settings fill."""
        return {"split": self.split, "num_steps": self.num_steps, "seeds": self.seeds,
                "episodes_per_step": self.episodes_per_step, "device": self.device,
                "max_tasks": self.max_tasks}  # fmt: skip


def progress_bar(total: int, desc: str, unit: str = "it") -> Any:
    """A tqdm bar on the terminal (``sys.stderr``) over an evaluation's ``total`` pieces of
    work, so a long one does not sit silent; logs, pipes and tests get none (a disabled bar
    that takes the same calls). It is cleared once done, leaving the results on screen."""
    from tqdm.auto import tqdm

    tty = getattr(sys.stderr, "isatty", lambda: False)()
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                file=sys.stderr, disable=not tty)  # fmt: skip


def default_episodes_per_step(env_id: str) -> int:
    """Episodes averaged per task at each point of an evaluation curve, unless asked otherwise:
    40 for 2D navigation and 20 for the others, the trajectories per task of Finn et al. 2017's
    MAML-RL experiments; RL² averages as many trials per task, so the curves compare."""
    return 40 if "Navigation2D" in env_id else 20


def evaluate_policy_adaptation(
    policy: Policy,
    params: Mapping[str, torch.Tensor],
    env_id: str,
    adapt_fn: AdaptFn,
    *,
    agent: str,
    split: str = "test",
    num_steps: int | None = None,
    lrs: Sequence[float] = (0.1, 0.05),
    episodes_per_step: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    device: str = "cpu",
    backend: str = "auto",
    env_kwargs: Mapping[str, Any] | None = None,
    max_tasks: int | None = None,
    per_task_params: bool = False,
    num_workers: int = 2,
    worker_timeout: float = 60.0,
    tasks: Sequence[Any] | None = None,
) -> AdaptationCurve:
    """The held-out protocol of Finn et al. 2017 for gradient-based meta-RL.

    For every task of ``split`` (all of them at once, batched), and for each seed: the mean
    return of ``episodes_per_step`` episodes with the meta-parameters, then after each of
    ``num_steps`` inner steps — step ``k`` uses fresh episodes of the current policy and the
    learning rate ``lrs[k]`` (the last entry repeats: 0.1 then 0.05 in the paper).

    Args:
        adapt_fn: the agent's inner step (see :data:`AdaptFn`).
        episodes_per_step: default :func:`default_episodes_per_step`.
        seeds: evaluation seeds (action and env noise); the CI is over (seed, task) pairs.
        max_tasks: evaluate only the first tasks of the split (quick checks).
        per_task_params: ``params`` hold one set per evaluated task (the split's tasks in
            order, after ``max_tasks``) on a leading dimension, e.g. a task-conditioned
            policy's (the oracle baseline's).
        backend, num_workers, worker_timeout: how the envs are stepped
            (:class:`~metarl.sampling.native.BatchedSampler`); ``"subprocess"`` bounds a crashing or
            hanging env by ``worker_timeout`` seconds per step.
        tasks: evaluate these tasks of the family instead of ``split``'s (``split`` is then
            only recorded); ``max_tasks`` still keeps the first ones.
    """

    from metarl.sampling.native import BatchedSampler
    from metarl.stepping.registry import task_distribution

    num_steps = 3 if num_steps is None else num_steps  # Finn et al.'s three steps
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if not lrs:
        raise ValueError("lrs needs at least one learning rate")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    dist = task_distribution(env_id, **dict(env_kwargs or {}))
    if tasks is None:
        tasks = list(dist.split(split))  # type: ignore[arg-type]
    else:
        tasks = [dist.validate(t) for t in tasks]
        if not tasks:
            raise ValueError("tasks is empty: give at least one task to evaluate on")
    if max_tasks is not None:
        tasks = tasks[:max_tasks]
    if per_task_params:
        sizes = {int(v.shape[0]) if v.dim() else -1 for v in params.values()}
        if sizes != {len(tasks)}:
            raise ValueError(
                f"per_task_params: every parameter needs a leading dimension of {len(tasks)} "
                f"(one per {split} task evaluated), got {sorted(sizes)}"
            )
    if episodes_per_step is None:
        episodes_per_step = default_episodes_per_step(env_id)
    sampler = BatchedSampler(
        env_id,
        len(tasks),
        episodes_per_step,
        backend=backend,
        device=device,
        env_kwargs=env_kwargs,
        num_workers=num_workers,
        worker_timeout=worker_timeout,
    )
    returns = np.zeros((len(seeds), len(tasks), num_steps + 1))
    success: np.ndarray | None = None
    env_steps = [0] * (num_steps + 1)
    wall = [0.0] * (num_steps + 1)
    theta = {k: v.detach().to(sampler.device) for k, v in params.items()}
    # One unit of the bar: the episodes of every task at one point k of one seed.
    bar = progress_bar(len(seeds) * (num_steps + 1), f"{agent}: {len(tasks)} tasks", "step")
    for s, seed in enumerate(seeds):
        current: Mapping[str, torch.Tensor] = theta
        per_task = per_task_params
        start = time.perf_counter()
        for k in range(num_steps + 1):
            eps = sampler.collect(
                policy, current, tasks, seed=int(seed) * 1000 + k, per_task_params=per_task
            )
            returns[s, :, k] = eps.task_returns().cpu().numpy()
            rate = eps.task_success()
            if rate is not None:  # the family defines success (info["is_success"])
                if success is None:
                    success = np.zeros_like(returns)
                success[s, :, k] = rate.cpu().numpy()
            if s == 0 and k < num_steps:  # steps spent to reach unit k + 1
                env_steps[k + 1] = env_steps[k] + eps.num_steps()
            if k < num_steps:
                lr = float(lrs[min(k, len(lrs) - 1)])
                current = {n: v.detach() for n, v in adapt_fn(current, eps, lr, per_task).items()}
                per_task = True
            if s == 0:
                wall[k] = time.perf_counter() - start
            bar.update()
    bar.close()
    sampler.close()
    return AdaptationCurve(
        agent=agent,
        env_id=env_id,
        unit="gradient steps",
        returns=returns,
        success=success,
        env_steps=env_steps,
        wall_clock_s=wall,
        split=split,
        meta={
            "lrs": list(map(float, lrs)),
            "episodes_per_step": episodes_per_step,
            "seeds": list(map(int, seeds)),
        },
    )


def evaluate_run_policy(
    run_dir: str | Path,
    agent: str,
    policy: Policy,
    params: Mapping[str, torch.Tensor],
    cfg: Any,
    adapt_fn: AdaptFn,
    settings: EvalSettings,
    *,
    default_lrs: Sequence[float],
    meta: Mapping[str, Any] | None = None,
) -> tuple[AdaptationCurve, Path, Path]:
    """:func:`evaluate_policy_adaptation` of a run's policy under its config ``cfg`` (env,
    backend, episode length, workers), written into the run directory with the config in
    the curve's metadata: what the gradient-based agents' ``evaluate`` do.

    ``default_lrs``: the inner rates when ``settings.lrs`` is None; ``meta``: more metadata
    (the evaluated checkpoint's iteration, how the policy adapts)."""
    curve = evaluate_policy_adaptation(
        policy, params, cfg.env_id, adapt_fn, agent=agent, **settings.protocol(),
        lrs=default_lrs if settings.lrs is None else settings.lrs, backend=cfg.backend,
        env_kwargs=cfg.env_kwargs(), num_workers=cfg.num_workers,
        worker_timeout=cfg.worker_timeout,
    )  # fmt: skip
    curve.meta.update({"config": cfg.to_dict(), "run_dir": str(run_dir), **(meta or {})})
    return save_run_curve(curve, run_dir, settings.split)


def evaluate_run_by_episodes(
    run_dir: str | Path,
    settings: EvalSettings | None,
    overrides: dict[str, Any],
    *,
    agent: str,
    load_agent: Callable[[str | Path, str], Any],
    evaluate_tasks: Callable[..., AdaptationCurve],
) -> tuple[AdaptationCurve, Path, Path]:
    """The evaluation of a run of an agent that adapts by episodes (RL², PEARL, VariBAD): its
    settings checked before anything loads (no ``lrs``), the agent loaded, the split's first
    ``max_tasks`` tasks run through ``evaluate_tasks``, and the curve saved in the run."""
    s = EvalSettings.of(settings, **overrides).without_lrs(agent)  # before loading anything
    loaded = load_agent(run_dir, s.device)
    tasks = list(loaded.dist.split("test" if s.split == "test" else "train"))[: s.max_tasks]
    curve = evaluate_tasks(loaded, tasks, split=s.split, num_steps=s.num_steps, seeds=s.seeds,
                           episodes_per_step=s.episodes_per_step)  # fmt: skip
    curve.meta["run_dir"] = str(run_dir)
    return save_run_curve(curve, run_dir, s.split)


def check_episode_eval(num_steps: int | None, seeds: Sequence[int], tasks: Sequence[Any]) -> None:
    """The arguments every per-episode evaluation refuses, each in one line."""
    if num_steps is not None and (isinstance(num_steps, bool) or num_steps < 0):
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if not seeds:
        raise ValueError("give at least one evaluation seed")
    if not tasks:
        raise ValueError("no tasks to evaluate: give at least one task")


def curve_by_episodes(
    agent: str,
    config: Any,
    tasks: Sequence[Any],
    run: Callable[[list[Any], int, int], tuple[Any, Any, float]],
    *,
    split: str,
    num_steps: int | None,
    seeds: Sequence[int],
    episodes_per_step: int | None,
    meta: Mapping[str, Any],
) -> AdaptationCurve:
    """The per-episode curve of an agent that adapts within a trial (PEARL, VariBAD).

    Each seed runs one trial of ``n`` episodes (``num_steps + 1``; None: the config's
    ``episodes_per_trial``) on ``episodes_per_step`` copies of every task (None:
    :func:`default_episodes_per_step`) through ``run(rows, n, seed) -> (returns, success or
    None, env steps)``, ``returns``/``success`` shaped ``(n, rows)``; the copies are averaged,
    the CI is over (seed, task) pairs. ``env_steps[k]`` counts the steps one trial per task
    spends to reach episode ``k + 1``, summed over the tasks; ``wall_clock_s[k]`` the first
    seed's seconds spread evenly over its episodes. ``meta``: the agent's own entries (its
    iterations and meta-training env steps), before the protocol's."""
    check_episode_eval(num_steps, seeds, tasks)
    n = config.episodes_per_trial if num_steps is None else num_steps + 1
    per_task = episodes_per_step or default_episodes_per_step(config.env_id)
    rows = [t for _ in range(per_task) for t in tasks]

    def per_task_mean(x: Any) -> np.ndarray:
        x = x.T.reshape(per_task, len(tasks), n).mean(0)
        return np.asarray(x.cpu() if hasattr(x, "cpu") else x)

    returns, success, elapsed, steps_per_episode = [], [], 0.0, 0.0
    for i, seed in enumerate(seeds):
        start = time.perf_counter()
        ret, suc, steps = run(rows, n, int(seed))
        if i == 0:
            elapsed = time.perf_counter() - start
            steps_per_episode = steps / max(len(rows) * n, 1)
        returns.append(per_task_mean(ret))
        if suc is not None:
            success.append(per_task_mean(suc))
    return AdaptationCurve(
        agent=agent,
        env_id=config.env_id,
        unit="episodes",
        returns=np.stack(returns),
        success=np.stack(success) if success else None,
        env_steps=[round(steps_per_episode * k) * len(tasks) for k in range(n)],
        wall_clock_s=[elapsed * k / n for k in range(n)],
        split=split,
        meta={
            "config": config.to_dict(),
            **meta,
            "trials_per_task": per_task,
            "episodes_per_trial": n,
            "trained_episodes_per_trial": config.episodes_per_trial,
            "seeds": [int(s) for s in seeds],
        },
    )


def save_run_curve(
    curve: AdaptationCurve, run_dir: str | Path, split: str
) -> tuple[AdaptationCurve, Path, Path]:
    """Write a run's evaluation as ``eval_<split>.json`` and ``eval_<split>.png`` in its run
    directory (what ``metarl evaluate RUN_DIR`` leaves for every agent), and refresh the
    run's ``README.md`` model card (:mod:`metarl.runs.model_card`) with the held-out results."""
    from metarl.runs.model_card import write_model_card

    json_path = curve.save(Path(run_dir) / f"eval_{split}.json")
    title = f"{curve.agent} on {curve.env_id}\n{curve_caption(curve)}"
    png_path = plot_curves([curve], Path(run_dir) / f"eval_{split}.png", title=title)
    if (Path(run_dir) / "config.json").exists():
        write_model_card(run_dir)
    return curve, json_path, png_path
