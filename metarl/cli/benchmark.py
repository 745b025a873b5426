"""``metarl benchmark``: adaptation speed of several agents on one protocol.

For every agent × task family, :func:`run_benchmark` meta-trains one run per seed (or reuses
the finished runs it finds, and resumes unfinished ones), evaluates each on the held-out
split with the agent's own ``evaluate`` (:mod:`metarl.evaluation`'s protocol: the return after
``0..K`` adaptation units — inner gradient steps for MAML-TRPO and Reptile-RL, episodes of a
trial for RL²), and writes an adaptation-speed report:

* ``report.md`` — per family, one row per agent: return after each unit (mean ± 95% CI over
  (seed, task) pairs), success rate where the family defines one, env steps and wall-clock
  spent adapting, and the meta-training cost read from each run's ``metrics.csv``;
* ``report.json`` — the same numbers and every curve's raw returns;
* ``report.png`` — the adaptation curves, one panel per family; with ``eval_points > 1``
  (``--eval-points``) a second row: the held-out return against meta-training env steps.

With ``eval_points=N`` every run is also evaluated on the held-out split after each ``1/N`` of
its iterations (trained to that point, checkpointed, evaluated, then resumed), so agents whose
iterations cost different numbers of env steps compare at the same meta-training env steps;
the points made are kept in the run (``benchmark_points.json``) and reused.

Runs live in ``RUNS_DIR/AGENT/FAMILY-seedN``; a run whose checkpoint has reached the asked
number of iterations is reused as is, one that stopped earlier is resumed, and one made with
other settings is refused (``retrain=True`` starts it again).

Example:
    >>> from metarl.cli.benchmark import run_benchmark
    >>> report = run_benchmark(["maml-trpo", "rl2"], ["metarl/Navigation2D-v0"],
    ...                        seeds=[0, 1, 2], preset="quick", runs_dir="runs/bench",
    ...                        out="benchmarks/report_nav2d")  # doctest: +SKIP
    >>> print(report.markdown())  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metarl.evaluation import AdaptationCurve
from metarl.runs.rundir import read_bytes, write_atomic

__all__ = ["BenchmarkEntry", "BenchmarkError", "BenchmarkReport", "run_benchmark"]

#: What an adaptation unit is, per curve unit, for the report's text.
_UNIT_TEXT = {
    "gradient steps": "inner policy-gradient steps, each on a fresh batch of episodes per task",
    "episodes": "episodes of one trial, the memory kept across them",
}


class BenchmarkError(ValueError):
    """Bad benchmark input (unknown agent or family, an agent that cannot run a family, a
    run directory made with other settings); the message says what to do."""


@dataclass
class BenchmarkEntry:
    """One agent on one family: its runs (one per seed) and their pooled adaptation curve.

    Attributes:
        curve: every run's evaluation stacked along the seed axis, so the mean and CI are
            over (run seed × evaluation seed, task) pairs.
        runs: per run: ``seed``, ``run_dir``, ``reused`` (``"finished"``, ``"resumed"`` or
            ``"trained"``), and its meta-training cost from metrics.csv (``iterations``,
            ``env_steps``, ``wall_clock_s``; None where the run does not log it).
    """

    agent: str
    env_id: str
    preset: str | None
    curve: AdaptationCurve
    runs: list[dict[str, Any]] = field(default_factory=list)
    #: the held-out curve at points of meta-training (``eval_points``): per point
    #: ``iteration``, ``env_steps`` and ``wall_clock_s`` (means over the runs), ``curve``
    #: (the runs' evaluations pooled) and ``num_runs``; the last point is the finished run.
    progress: list[dict[str, Any]] = field(default_factory=list)

    def progress_summary(self) -> list[dict[str, Any]]:
        """The progress points as numbers: mean and 95% CI of the return after 0..K units."""
        out = []
        for p in self.progress:
            c: AdaptationCurve = p["curve"]
            out.append({
                "iteration": p["iteration"], "env_steps": p["env_steps"],
                "wall_clock_s": p["wall_clock_s"], "num_runs": p["num_runs"],
                "mean": c.mean().tolist(),
                "ci95": [None if math.isnan(h) else h for h in c.ci95().tolist()],
            })  # fmt: skip
        return out

    def meta_train(self) -> dict[str, Any]:
        """Mean meta-training cost over the runs (None where a run does not log it)."""
        out: dict[str, Any] = {}
        for key in ("iterations", "env_steps", "wall_clock_s"):
            values = [r[key] for r in self.runs]
            out[key] = None if any(v is None for v in values) else float(np.mean(values))
        return out

    def adapt_env_steps_per_task(self) -> list[float]:
        """Env steps one task spends to reach unit 0..K (the curve's counts over its tasks)."""
        tasks = self.curve.returns.shape[1]
        return [s / tasks for s in self.curve.env_steps]

    def summary(self) -> dict[str, Any]:
        c = self.curve
        out: dict[str, Any] = {
            "agent": self.agent,
            "env_id": self.env_id,
            "preset": self.preset,
            "unit": c.unit,
            "num_units": c.num_units,
            "num_samples": int(c.returns.shape[0] * c.returns.shape[1]),
            "num_tasks": int(c.returns.shape[1]),
            "seeds": [r["seed"] for r in self.runs],
            "mean": c.mean().tolist(),
            "ci95": [None if math.isnan(h) else h for h in c.ci95().tolist()],
            "success_rate": c.summary().get("success_rate"),
            "adapt_env_steps_per_task": self.adapt_env_steps_per_task(),
            "adapt_wall_clock_s": list(c.wall_clock_s),
            "meta_train": self.meta_train(),
            "runs": self.runs,
        }
        if self.progress:
            out["progress"] = self.progress_summary()
        return out


@dataclass
class BenchmarkReport:
    """The entries of a benchmark and how they were made; :meth:`write` saves the report."""

    entries: list[BenchmarkEntry]
    settings: dict[str, Any]

    def families(self) -> list[str]:
        return list(dict.fromkeys(e.env_id for e in self.entries))

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "entries": [
                {
                    **e.summary(),
                    "curve": e.curve.to_json(),
                    # every progress point's pooled curve, raw returns included
                    **(
                        {"progress_curves": [p["curve"].to_json() for p in e.progress]}
                        if e.progress
                        else {}
                    ),
                }
                for e in self.entries
            ],
        }

    def markdown(self, plot_name: str | None = "report.png") -> str:
        s = self.settings
        lines = ["# Adaptation-speed report", ""]
        lines.append(
            f"Held-out split `{s['split']}`; for every agent and family, one meta-training run "
            f"per seed ({', '.join(map(str, s['seeds']))}), each evaluated with evaluation "
            f"seed(s) {', '.join(map(str, s['eval_seeds']))}. Return after k adaptation units: "
            "mean ± 95% CI (Student's t) over (run seed × evaluation seed, task) pairs."
        )
        lines.append("")
        units = sorted({e.curve.unit for e in self.entries})
        for u in units:
            lines.append(f"- unit **{u}**: {_UNIT_TEXT.get(u, u)}.")
        if any(e.curve.meta.get("flat") for e in self.entries):
            lines.append(
                "- **none (flat)**: the agent does not adapt (the oracle is given the task); "
                "its 0-unit return is repeated."
            )
        lines += [
            "- *adapt steps/task*: env steps one task spends to reach the last unit shown; "
            "*adapt s*: wall-clock of that adaptation for all tasks of the split at once "
            "(one evaluation seed).",
            "- *meta-train*: mean over the runs of the env steps and wall-clock of meta-"
            "training, summed from each run's `metrics.csv`.",
            *(
                [
                    "- *success*: the share of evaluation episodes in which the env reported "
                    '`info["is_success"]` (2D navigation: the goal reached), before any '
                    "adaptation and after the last unit; families without a success "
                    "definition have no column."
                ]
                if any(e.curve.success is not None for e in self.entries)
                else []
            ),
            "",
            *([f"**Note:** {s['note']}", ""] if s.get("note") else []),
            f"Command: `{s['command']}`",
            "",
            f"Machine: {s['machine']}",
            "",
        ]
        for env_id in self.families():
            entries = [e for e in self.entries if e.env_id == env_id]
            k_max = max(e.curve.num_units for e in entries)
            has_success = any(e.curve.success is not None for e in entries)
            lines.append(f"## {env_id}")
            lines.append("")
            head = ["agent", "preset", "unit"] + [f"k={k}" for k in range(k_max + 1)]
            if has_success:
                head.append(f"success k=0 → {k_max}")
            head += ["adapt steps/task", "adapt s", "meta-train steps", "meta-train s"]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("| " + " | ".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + " |")
            for e in entries:
                mean, half = e.curve.mean(), e.curve.ci95()
                cells = [e.agent, e.preset or "—", _unit_cell(e.curve)]
                for k in range(k_max + 1):
                    cells.append(_pm(mean[k], half[k]) if k < len(mean) else "—")
                if has_success:  # the share of episodes that reached info["is_success"]
                    rate = e.curve.summary().get("success_rate")
                    cells.append(f"{rate[0]:.2f} → {rate[-1]:.2f}" if rate else "—")
                steps = e.adapt_env_steps_per_task()
                cells.append(f"{steps[-1]:,.0f}" if steps else "—")
                wall = e.curve.wall_clock_s
                cells.append(f"{wall[-1]:.2f}" if wall else "—")
                mt = e.meta_train()
                cells.append("—" if mt["env_steps"] is None else f"{mt['env_steps']:,.0f}")
                cells.append("—" if mt["wall_clock_s"] is None else f"{mt['wall_clock_s']:.0f}")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
            lines += _progress_table(entries)
        if plot_name:
            lines += [f"![adaptation curves]({plot_name})", ""]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Adaptation curves, one panel per family (mean ± 95% CI)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        families = self.families()
        by_steps = any(len(e.progress) > 1 for e in self.entries)
        rows = 2 if by_steps else 1
        fig, axes = plt.subplots(
            rows, len(families), figsize=(5.2 * len(families), 3.8 * rows), squeeze=False
        )
        for ax, env_id in zip(axes[0], families, strict=True):
            for e in self.entries:
                if e.env_id != env_id:
                    continue
                c = e.curve
                x = np.arange(c.num_units + 1)
                mean, half = c.mean(), np.nan_to_num(c.ci95())
                flat = bool(c.meta.get("flat"))
                ax.plot(x, mean, marker="o" if c.num_units <= 20 else None,
                        linestyle="--" if flat else "-",
                        label=f"{e.agent} ({'no adaptation' if flat else c.unit})")  # fmt: skip
                ax.fill_between(x, mean - half, mean + half, alpha=0.2)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
            ax.set_xlabel("adaptation units (gradient steps or episodes)")
            ax.set_ylabel(f"return on {self.settings['split']} tasks")
            ax.set_title(env_id)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for ax, env_id in zip(axes[1] if by_steps else (), families, strict=False):
            for e in self.entries:
                if e.env_id != env_id or len(e.progress) < 2:
                    continue
                points = [p for p in e.progress if p["env_steps"] is not None]
                x = np.array([p["env_steps"] for p in points])
                k = min(p["curve"].num_units for p in points)
                mean = np.array([p["curve"].mean()[k] for p in points])
                half = np.nan_to_num(np.array([p["curve"].ci95()[k] for p in points]))
                ax.plot(x, mean, marker="o", label=f"{e.agent} (after {k} {e.curve.unit})")
                ax.fill_between(x, mean - half, mean + half, alpha=0.2)
            ax.set_xlabel("meta-training env steps")
            ax.set_ylabel(f"return on {self.settings['split']} tasks")
            ax.set_title(f"{env_id.split('/')[-1]}: held-out return vs. env steps")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        note = self.settings.get("note")
        if note:
            import textwrap

            wrapped = "\n".join(textwrap.wrap(str(note), width=int(95 * len(families))))
            fig.text(0.01, 0.01, wrapped, fontsize=7, va="bottom", ha="left", color="0.3")
            # The note's height in inches, as a share of the figure's (taller with two rows).
            bottom = (0.15 + 0.115 * wrapped.count("\n")) / fig.get_figheight()
            fig.tight_layout(rect=(0, bottom, 1, 1))
        else:
            fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def write(self, out: str | Path) -> dict[str, Path]:
        """Write ``report.md``, ``report.json`` and ``report.png`` under ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        png = self.plot(out / "report.png")
        md = out / "report.md"
        md.write_text(self.markdown(png.name))
        js = out / "report.json"
        js.write_text(json.dumps(self.to_json(), indent=2))
        return {"markdown": md, "json": js, "png": png}


def _progress_table(entries: Sequence[BenchmarkEntry]) -> list[str]:
    """The held-out return at each point of meta-training, against its env steps."""
    entries = [e for e in entries if len(e.progress) > 1]
    if not entries:
        return []
    lines = [
        "### Held-out return against meta-training env steps",
        "",
        "Each run evaluated on the held-out tasks after every share of its iterations "
        "(`eval_points`); *meta-train steps*: the env steps of meta-training up to that "
        "point (mean over the runs); return before adaptation (k=0) and after the last unit.",
        "",
        "| agent | iteration | meta-train steps | meta-train s | k=0 | k=K (last unit) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in entries:
        for p in e.progress:
            c: AdaptationCurve = p["curve"]
            mean, half = c.mean(), c.ci95()
            steps = "—" if p["env_steps"] is None else f"{p['env_steps']:,.0f}"
            wall = "—" if p["wall_clock_s"] is None else f"{p['wall_clock_s']:.0f}"
            last = f"{_pm(mean[-1], half[-1])} (k={c.num_units})"
            lines.append(f"| {e.agent} | {p['iteration']:g} | {steps} | {wall} | "
                         f"{_pm(mean[0], half[0])} | {last} |")  # fmt: skip
    lines.append("")
    return lines


def _unit_cell(curve: AdaptationCurve) -> str:
    return "none (flat)" if curve.meta.get("flat") else curve.unit


def _pm(mean: float, half: float) -> str:
    if math.isnan(half):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {half:.2f}"


# -- runs -------------------------------------------------------------------------------------
def _run_dir(runs_dir: Path, agent: str, env_id: str, seed: int) -> Path:
    return runs_dir / agent / f"{env_id.split('/')[-1]}-seed{seed}"


def _checkpoint_iteration(run_dir: Path) -> int | None:
    """Iterations done according to the run's checkpoint (None: no readable checkpoint)."""
    from metarl.runs import CheckpointError, load_checkpoint_file

    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return None
    try:
        payload = load_checkpoint_file(path)
    except (CheckpointError, ValueError):
        return None
    it = payload.get("iteration") if isinstance(payload, dict) else None
    return int(it) if isinstance(it, int) else None


def _meta_train_cost(run_dir: Path) -> dict[str, Any]:
    """Iterations, env steps and seconds of meta-training from metrics.csv (None: the run
    does not log it, e.g. random-init, which does not train)."""
    file = run_dir / "metrics.csv"
    rows: list[dict[str, str]] = []
    if file.exists():
        with file.open(newline="") as f:
            rows = list(csv.DictReader(f))

    def total(column: str) -> float | None:
        if not rows or column not in rows[0]:
            return None
        values = [float(r[column]) for r in rows if r.get(column) not in (None, "")]
        return float(sum(values)) if values else None

    # ``env_steps_total`` (cumulative, where an agent logs it) wins over summing the
    # per-iteration ``env_steps``.
    cumulative = [r.get("env_steps_total") for r in rows]
    if rows and all(v not in (None, "") for v in cumulative):
        env_steps: float | None = float(cumulative[-1])  # type: ignore[arg-type]
    else:
        env_steps = total("env_steps")
    return {"iterations": len(rows), "env_steps": env_steps, "wall_clock_s": total("iteration_s")}


def _resolve_family(env_id: str, runs_dir: Path) -> str:
    """The registered id of ``env_id`` (``MODULE:ENV_ID`` imports ``MODULE``); for one that
    is unknown, the ``--import`` its earlier runs under ``runs_dir`` recorded (only shown)."""
    from metarl.runs import Run
    from metarl.stepping.registry import PluginError, import_hint, resolve_env_id

    try:
        return resolve_env_id(env_id)
    except PluginError as e:
        raise BenchmarkError(str(e)) from e
    except KeyError as e:
        imports: Any = None
        source: Any = None
        for config in sorted(runs_dir.glob("*/*/config.json")):
            try:
                record = Run.read_record(config.parent)
            except (OSError, ValueError):
                continue
            if record["config"].get("env_id") == env_id:
                imports, source = record.get("imports"), record.get("env_source")
                break
        if imports or source:
            raise BenchmarkError(
                f"unknown task family {env_id!r}; its runs in {runs_dir} were trained with it "
                f"registered: {import_hint(env_id, imports, source)}"
            ) from e
        raise BenchmarkError(f"unknown task family {env_id!r}: {e.args[0]}") from e


def _space_reason(env_id: str) -> str | None:
    """Why the registry's policies (MLP, GRU) cannot act in ``env_id``, or None."""
    import gymnasium as gym

    from metarl.stepping.registry import make

    env = make(env_id)
    try:
        spaces = (("observations", env.observation_space), ("actions", env.action_space))
    finally:
        env.close()
    for what, space in spaces:
        if not isinstance(space, gym.spaces.Box | gym.spaces.Discrete):
            return (
                f"its {what} are {type(space).__name__}, and the agents' policies take Box or "
                f"Discrete {what} (flatten them with a Gymnasium wrapper in the family)"
            )
    return None


def _check_support(module: Any, agent: str, env_id: str) -> None:
    """Refuse a family the agent cannot run, saying which and why: the spaces every policy
    needs, then what the agent declares (``CAPABILITIES.unsupported``)."""
    reason = _space_reason(env_id) or module.CAPABILITIES.reason_against(env_id)
    if reason:
        raise BenchmarkError(f"agent {agent!r} cannot run {env_id}: {reason}")


def _build_config(
    module: Any, agent: str, preset: str | None, env_id: str, seed: int,
    overrides: Mapping[str, Any], device: str,
) -> Any:  # fmt: skip
    from metarl.runs.config import ConfigError

    cls = module.CONFIG
    if preset is not None and preset not in cls.presets:
        have = ", ".join(sorted(cls.presets)) or "none"
        raise BenchmarkError(
            f"agent {agent!r} has no preset {preset!r} (its presets: {have}); give it one with "
            f"--preset {agent}=NAME"
        )
    try:
        return cls.from_preset(preset, **{"env_id": env_id, "seed": seed, "device": device,
                                          **overrides})  # fmt: skip
    except (ConfigError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise BenchmarkError(f"agent {agent!r} cannot run {env_id}: {msg}") from e


def _train_or_reuse(
    module: Any, agent: str, cfg: Any, run_dir: Path, retrain: bool,
    log: Callable[[str], None] | None,
) -> str:  # fmt: skip
    """Make sure ``run_dir`` holds a finished run of ``cfg``; returns how."""
    from metarl.runs import Run

    if retrain or not (run_dir / "config.json").exists():
        module.train(cfg, run_dir, overwrite=True, log=log)
        return "trained"
    record = Run.read_record(run_dir)
    if record["agent"] != agent:
        raise BenchmarkError(
            f"{run_dir} holds a {record['agent']} run, not {agent}; use another --runs-dir "
            "or --retrain"
        )
    saved = type(cfg).from_dict(record["config"])
    diff = saved.differences(cfg)
    if diff:
        lines = "; ".join(f"{k}: run has {a!r}, asked for {b!r}" for k, (a, b) in diff.items())
        raise BenchmarkError(
            f"{run_dir} was made with other settings ({lines}); use another --runs-dir, the "
            "run's settings, or --retrain to train it again"
        )
    done = _checkpoint_iteration(run_dir)
    if done is None:
        module.train(cfg, run_dir, overwrite=True, log=log)
        return "trained"
    if done >= cfg.num_iterations:
        if log:
            log(f"reusing finished run {run_dir} ({done} iterations)")
        return "finished"
    if log:
        log(f"resuming {run_dir} at iteration {done} of {cfg.num_iterations}")
    module.train(cfg, run_dir, resume=True, log=log)
    return "resumed"


def _evaluate_cached(module: Any, run_dir: Path, settings: dict[str, Any]) -> AdaptationCurve:
    """The run's evaluation with ``settings``, reused when nothing changed since."""
    ckpt = run_dir / "checkpoint.pt"
    stat = ckpt.stat() if ckpt.exists() else None
    key = {**settings, "checkpoint": None if stat is None else [stat.st_size, stat.st_mtime_ns]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = run_dir / "benchmark_eval.json"
    if os.path.lexists(cache):
        try:
            data = json.loads(read_bytes(cache, 1 << 30))
            if data.get("key") == digest:
                return _curve_from_json(data["curve"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            pass  # a damaged cache is recomputed
    curve, _, _ = module.evaluate(run_dir, **settings)
    write_atomic(cache, json.dumps({"key": digest, "curve": curve.to_json()}).encode())
    return curve


_POINTS_FILE = "benchmark_points.json"


def _point_targets(total: int, eval_points: int) -> list[int]:
    """The iterations before ``total`` at which a run is evaluated: after each ``1/N``."""
    return sorted({max(1, round(i * total / eval_points)) for i in range(1, eval_points)} - {total})


def _read_points(run_dir: Path) -> dict[str, Any]:
    path = run_dir / _POINTS_FILE
    if not os.path.lexists(path):
        return {}
    try:
        data = json.loads(read_bytes(path, 1 << 30))
        return data if isinstance(data, dict) else {}
    except (json.JSONDecodeError, ValueError, OSError):
        return {}  # a damaged file: its points are made again where the run allows


def _progress_points(
    module: Any, agent: str, cfg: Any, run_dir: Path, retrain: bool, eval_points: int,
    settings: dict[str, Any], log: Callable[[str], None] | None,
) -> tuple[list[dict[str, Any] | None], str | None]:  # fmt: skip
    """Train the run to each point before its end, evaluate it there, keep the point.

    Returns one record per point of :func:`_point_targets` (``iteration``, ``env_steps``,
    ``wall_clock_s``, ``curve``; None for a point the run went past before it was recorded)
    and how the run was first made (``"trained"``, ...; None when nothing was trained).
    """
    from dataclasses import replace

    targets = _point_targets(cfg.num_iterations, eval_points)
    if not targets:
        return [], None
    if retrain or not (run_dir / "config.json").exists():
        (run_dir / _POINTS_FILE).unlink(missing_ok=True)  # points of an older run
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    stored = _read_points(run_dir)
    out: list[dict[str, Any] | None] = []
    how: str | None = None
    for target in targets:
        key = f"{digest}-{target}"
        done = _checkpoint_iteration(run_dir) if (run_dir / "config.json").exists() else None
        if key in stored and done is not None and done >= target:
            record = stored[key]
            out.append({**record, "curve": _curve_from_json(record["curve"])})
            continue
        if done is not None and done > target and not (retrain and how is None):
            if log:
                log(f"   no held-out point at iteration {target}: {run_dir} is at {done} and "
                    "did not record it (--retrain makes it)")  # fmt: skip
            out.append(None)
            continue
        made = _train_or_reuse(module, agent, replace(cfg, num_iterations=target), run_dir,
                               retrain and how is None, log)  # fmt: skip
        how = how or made
        curve = _evaluate_cached(module, run_dir, settings)
        cost = _meta_train_cost(run_dir)
        record = {"iteration": target, "env_steps": cost["env_steps"],
                  "wall_clock_s": cost["wall_clock_s"], "curve": curve.to_json()}  # fmt: skip
        stored[key] = record
        write_atomic(run_dir / _POINTS_FILE, json.dumps(stored).encode())
        if log:
            log(f"   held-out point at iteration {target} ({cost['env_steps'] or 0:,.0f} env "
                f"steps): return after 0..K {curve.unit}: "
                f"{', '.join(f'{v:.2f}' for v in curve.mean())}")  # fmt: skip
        out.append({**record, "curve": curve})
    return out, how


def _pool_progress(
    per_run: list[list[dict[str, Any] | None]], final: AdaptationCurve,
    runs: list[dict[str, Any]], agent: str, env_id: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """The points of every run pooled (a point missing from a run is left out), then the
    finished runs' evaluation as the last point."""

    def mean(values: list[Any]) -> float | None:
        return None if any(v is None for v in values) else float(np.mean(values))

    out = []
    for i in range(len(per_run[0]) if per_run else 0):
        records = [point for r in per_run if (point := r[i]) is not None]
        if not records:
            continue
        out.append({
            "iteration": records[0]["iteration"],
            "env_steps": mean([r["env_steps"] for r in records]),
            "wall_clock_s": mean([r["wall_clock_s"] for r in records]),
            "num_runs": len(records),
            "curve": _pool([r["curve"] for r in records], agent, env_id),
        })  # fmt: skip
    if any(per_run):  # points were asked for: the finished runs are the last
        out.append({
            "iteration": runs[0]["iterations"],
            "env_steps": mean([r["env_steps"] for r in runs]),
            "wall_clock_s": mean([r["wall_clock_s"] for r in runs]),
            "num_runs": len(runs),
            "curve": final,
        })  # fmt: skip
    return out


def _curve_from_json(data: Mapping[str, Any]) -> AdaptationCurve:
    fields = {k: v for k, v in data.items() if k != "summary"}
    return AdaptationCurve(**fields)


def _pool(curves: list[AdaptationCurve], agent: str, env_id: str) -> AdaptationCurve:
    """One curve from every seed's run: returns stacked along the seed axis."""
    units = {c.unit for c in curves}
    lengths = {c.returns.shape[1:] for c in curves}
    if len(units) != 1 or len(lengths) != 1:
        raise BenchmarkError(
            f"{agent} on {env_id}: the runs' evaluations differ (units {sorted(units)}, shapes "
            f"{sorted(lengths)}); evaluate them with the same settings"
        )
    success = None
    if all(c.success is not None for c in curves):
        success = np.concatenate([np.asarray(c.success) for c in curves])
    n = len(curves)
    steps = [c.env_steps for c in curves]
    return AdaptationCurve(
        agent=agent,
        env_id=env_id,
        unit=curves[0].unit,
        returns=np.concatenate([c.returns for c in curves]),
        success=success,
        env_steps=[round(float(np.mean(v))) for v in zip(*steps, strict=True)],
        wall_clock_s=[sum(v) / n for v in zip(*(c.wall_clock_s for c in curves), strict=True)],
        split=curves[0].split,
        meta={
            "runs": [c.meta.get("run_dir") for c in curves],
            # An agent that does not adapt (the oracle) marks its curve flat.
            "flat": all(bool(c.meta.get("flat")) for c in curves),
        },
    )


def _machine() -> str:
    import torch

    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "unknown"
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), load average at the end {load}"
    )


def run_benchmark(
    agents: Sequence[str],
    envs: Sequence[str],
    seeds: Sequence[int] = (0, 1, 2),
    *,
    preset: str | Mapping[str, str | None] | None = "quick",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    runs_dir: str | Path = "runs/bench",
    out: str | Path | None = None,
    num_steps: int = 3,
    eval_seeds: Sequence[int] = (0,),
    episodes_per_step: int | None = None,
    max_tasks: int | None = None,
    split: str = "test",
    device: str = "cpu",
    retrain: bool = False,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
    note: str | None = None,
    eval_points: int = 1,
) -> BenchmarkReport:
    """Train (or reuse) and evaluate ``agents`` × ``envs`` × ``seeds``; write the report.

    Args:
        agents: registered agent names (``metarl train --help`` lists them).
        envs: task family ids (``metarl envs``).
        seeds: one meta-training run per seed.
        preset: the preset every agent uses, or ``{agent: preset}`` (an agent missing from
            the mapping, or mapped to None, uses its config's defaults). The preset's
            ``env_id`` is replaced by each family of ``envs``.
        overrides: ``{agent: {field: value}}`` on top of the preset (e.g. iterations).
        runs_dir: where the runs go (``RUNS_DIR/AGENT/FAMILY-seedN``) and are looked for.
        out: where ``report.md``, ``report.json`` and ``report.png`` go (None: not written).
        num_steps: ``K``, adaptation units evaluated after the first point (gradient steps,
            or for RL² episodes after the first: trials of ``K + 1`` episodes).
        eval_seeds, episodes_per_step, max_tasks, split, device: passed to each agent's
            ``evaluate``.
        retrain: train every run again even when a finished one exists.
        log: one-line progress messages (e.g. ``print``).
        command: how the report was made, written into it (the CLI passes its command line).
        note: a sentence for the report and the plot (schedules, a shared machine...).
        eval_points: N > 1 also evaluates every run on the held-out split after each
            ``1/N`` of its iterations (training it to that point, then resuming), for the
            held-out return against meta-training env steps (the report's second table and
            plot row); 1: only the finished run.
    """
    from metarl.agents import agent_names, get_agent

    agents, envs, seeds = list(agents), list(envs), [int(s) for s in seeds]
    if not agents or not envs or not seeds:
        raise BenchmarkError("give at least one agent, one task family and one seed")
    for name, values in (("agent", agents), ("family", envs), ("seed", seeds)):
        if len(set(values)) != len(values):
            raise BenchmarkError(f"a {name} is given twice: {values}")
    known_agents = agent_names()
    for a in agents:
        if a not in known_agents:
            raise BenchmarkError(f"unknown agent {a!r}; agents: {', '.join(known_agents)}")
    envs = [_resolve_family(env_id, Path(runs_dir)) for env_id in envs]
    if any(s < 0 for s in seeds):
        raise BenchmarkError(f"seeds must be >= 0, got {seeds}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise BenchmarkError(f"num_steps must be an integer >= 0, got {num_steps!r}")
    if isinstance(eval_points, bool) or not isinstance(eval_points, int) or eval_points < 1:
        raise BenchmarkError(f"eval_points must be an integer >= 1, got {eval_points!r}")
    if not eval_seeds:
        raise BenchmarkError("give at least one evaluation seed")
    if split not in ("train", "test"):
        raise BenchmarkError(f"split must be 'test' or 'train', got {split!r}")
    presets: dict[str, str | None]
    if isinstance(preset, Mapping):
        extra = sorted(set(preset) - set(agents))
        if extra:
            raise BenchmarkError(f"a preset is given for agent(s) not benchmarked: {extra}")
        presets = {a: preset.get(a) for a in agents}
    else:
        presets = dict.fromkeys(agents, preset)
    overrides = dict(overrides or {})
    extra = sorted(set(overrides) - set(agents))
    if extra:
        raise BenchmarkError(f"overrides are given for agent(s) not benchmarked: {extra}")
    runs_dir = Path(runs_dir)
    modules = {a: get_agent(a) for a in agents}

    # Every (agent, family) is checked before anything trains: bad input fails in a second.
    configs: dict[tuple[str, str, int], Any] = {}
    for a in agents:
        for env_id in envs:
            _check_support(modules[a], a, env_id)
            for s in seeds:
                configs[a, env_id, s] = _build_config(
                    modules[a], a, presets[a], env_id, s, overrides.get(a, {}), device
                )

    eval_settings: dict[str, Any] = {
        "split": split,
        "num_steps": num_steps,
        "seeds": tuple(int(s) for s in eval_seeds),
        "episodes_per_step": episodes_per_step,
        "device": device,
        "max_tasks": max_tasks,
    }
    entries = []
    for env_id in envs:
        for a in agents:
            curves, runs, points = [], [], []
            for s in seeds:
                run_dir = _run_dir(runs_dir, a, env_id, s)
                cfg = configs[a, env_id, s]
                if log:
                    log(f"== {a} on {env_id}, seed {s}: {run_dir}")
                run_points, first = _progress_points(
                    modules[a], a, cfg, run_dir, retrain, eval_points, eval_settings, log
                )
                points.append(run_points)
                how = _train_or_reuse(modules[a], a, cfg, run_dir, retrain and not first, log)
                if first == "trained":  # trained from scratch up to its first point
                    how = first
                t0 = time.perf_counter()
                curves.append(_evaluate_cached(modules[a], run_dir, eval_settings))
                if log:
                    m = curves[-1].mean()
                    log(f"   evaluated in {time.perf_counter() - t0:.1f} s: return after 0..K "
                        f"{curves[-1].unit}: {', '.join(f'{v:.2f}' for v in m)}")  # fmt: skip
                runs.append({"seed": s, "run_dir": str(run_dir), "reused": how,
                             **_meta_train_cost(run_dir)})  # fmt: skip
            pooled = _pool(curves, a, env_id)
            progress = _pool_progress(points, pooled, runs, a, env_id)
            entries.append(BenchmarkEntry(a, env_id, presets[a], pooled, runs, progress))
    settings = {
        "agents": agents,
        "envs": envs,
        "seeds": seeds,
        "presets": presets,
        "overrides": {a: dict(v) for a, v in overrides.items()},
        "runs_dir": str(runs_dir),
        "num_steps": num_steps,
        "eval_points": eval_points,
        "eval_seeds": list(eval_settings["seeds"]),
        "episodes_per_step": episodes_per_step,
        "max_tasks": max_tasks,
        "split": split,
        "device": device,
        "command": command or "metarl.cli.benchmark.run_benchmark(...) from Python",
        "note": note,
        "machine": _machine(),
        "python": sys.version.split()[0],
    }
    report = BenchmarkReport(entries, settings)
    if out is not None:
        paths = report.write(out)
        if log:
            log(f"report: {paths['markdown']}, {paths['json']}, {paths['png']}")
    return report


def format_command(argv: Sequence[str]) -> str:
    """``metarl benchmark ...`` as typed, for the report."""
    return "metarl benchmark " + " ".join(shlex.quote(a) for a in argv)
