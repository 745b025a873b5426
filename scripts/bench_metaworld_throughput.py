"""Benchmark: Meta-World through metarl's ``--backend subprocess`` against Meta-World's own
vector env, in env steps per second.

For ML1 reach and ML10, ``rows`` envs (default 20: 2 per ML10 training type) each step one
episode of ``steps`` steps (default 200) with uniformly random actions, measured after the
reset:

* ``metarl subprocess, N workers``: ``metarl.make_batched(env_id, rows, backend="subprocess",
  num_workers=N)`` for N = 1, 2, 4 — what ``metarl train --backend subprocess --num-workers
  N`` steps (rows split over worker processes, a timeout on every answer);
* ``metarl generic``: the same rows in this process (``backend="generic"``), for scale;
* ``Meta-World sync`` / ``async``: Meta-World's own vector env of its training tasks
  (``metaworld.make_ml_envs``, ``gymnasium.vector.SyncVectorEnv`` or
  ``AsyncVectorEnv``, one process per env for async) with the same number of envs.

Each setting is timed ``repeats`` times (default 3), interleaved, and the median is kept.
Results, the ratios to Meta-World's vector envs, the command and the machine's load go to
``benchmarks/metaworld_throughput.{json,md}``.

Usage: python scripts/bench_metaworld_throughput.py [--rows 20] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import metarl
from metarl.envs import meta_world
from metarl.evaluation.report import Provenance, write_report

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {"ML1 reach": ("metarl/MetaWorld-ML1-reach-v3-v0", "reach-v3"),
            "ML10": ("metarl/MetaWorld-ML10-v0", "ML10")}  # fmt: skip
WORKERS = (1, 2, 4)


def _ours(env_id: str, rows: int, steps: int, backend: str, workers: int) -> Callable[[], float]:
    """A function that times one episode of ``steps`` steps on ``rows`` rows; env steps/s."""
    kwargs: dict[str, Any] = {"num_workers": workers} if backend == "subprocess" else {}
    batch = metarl.make_batched(env_id, rows, backend=backend, **kwargs)
    tasks = list(metarl.task_distribution(env_id).split("train"))
    # Spread the rows over the task types (ML10: 2 rows per training type, as Meta-World's).
    per_type: dict[str, list[Any]] = {}
    for t in tasks:
        per_type.setdefault(t.env_name, []).append(t)
    types = list(per_type.values())
    rows_tasks = [types[i % len(types)][i // len(types)] for i in range(rows)]
    rng = np.random.default_rng(0)
    low, high = batch.single_action_space.low, batch.single_action_space.high  # type: ignore[attr-defined]

    def run() -> float:
        batch.reset(rows_tasks, seeds=0)
        actions = rng.uniform(low, high, (steps, rows, low.shape[-1])).astype(np.float32)
        t0 = time.perf_counter()
        for a in actions:
            batch.step(a)
        return rows * steps / (time.perf_counter() - t0)

    run.close = batch.close  # type: ignore[attr-defined]
    return run


def _theirs(name: str, rows: int, steps: int, strategy: str) -> Callable[[], float]:
    import metaworld

    # Its training tasks, one drawn at every reset (make_ml_envs_train draws only on request).
    # Each env gets an equal share of its type's 50 tasks (Meta-World asserts it divides).
    per_env = rows // (1 if name != "ML10" else 10)
    envs = metaworld.make_ml_envs(
        name, seed=0, meta_batch_size=rows, vector_strategy=strategy, split="train",
        task_select="random", terminate_on_success=False,
        total_tasks_per_cls=50 // per_env * per_env,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    space = envs.single_action_space

    def run() -> float:
        envs.reset(seed=0)
        actions = rng.uniform(space.low, space.high, (steps, rows, space.shape[0]))
        actions = actions.astype(np.float32)
        t0 = time.perf_counter()
        for a in actions:
            envs.step(a)
        return rows * steps / (time.perf_counter() - t0)

    run.close = envs.close  # type: ignore[attr-defined]
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20, help="envs stepped together")
    parser.add_argument("--steps", type=int, default=200, help="steps per timed episode")
    parser.add_argument("--repeats", type=int, default=3, help="timed episodes per setting")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "metaworld_throughput"))
    args = parser.parse_args()
    if args.rows % 10:
        parser.error("--rows must be a multiple of 10 (ML10's training types)")
    meta_world.import_metaworld()  # patched for the installed MuJoCo before Meta-World runs
    prov = Provenance("cpu", script=__file__)
    results = []
    for label, (env_id, name) in FAMILIES.items():
        settings: dict[str, Callable[[], float]] = {}
        for w in WORKERS:
            settings[f"metarl subprocess, {w} worker{'s' if w > 1 else ''}"] = _ours(
                env_id, args.rows, args.steps, "subprocess", w
            )
        settings["metarl generic (one process)"] = _ours(env_id, args.rows, args.steps,
                                                         "generic", 1)  # fmt: skip
        settings["Meta-World sync vector env"] = _theirs(name, args.rows, args.steps, "sync")
        settings["Meta-World async vector env"] = _theirs(name, args.rows, args.steps, "async")
        rates: dict[str, list[float]] = {k: [] for k in settings}
        for _ in range(args.repeats):  # interleaved, so load changes hit every setting alike
            for k, run in settings.items():
                rates[k].append(run())
        for run in settings.values():
            run.close()  # type: ignore[attr-defined]
        median = {k: statistics.median(v) for k, v in rates.items()}
        results.append({"family": label, "env_id": env_id, "steps_per_s": median,
                        "all_repeats": rates})  # fmt: skip
        print(f"{label}: " + ", ".join(f"{k} {v:,.0f}" for k, v in median.items()), flush=True)
    import gymnasium
    import metaworld
    import mujoco

    prov.finish()
    data = {
        "rows": args.rows,
        "steps": args.steps,
        "repeats": args.repeats,
        "mujoco": mujoco.__version__,
        "gymnasium": gymnasium.__version__,
        "metaworld": getattr(metaworld, "__version__", "3.1.1"),
        "results": results,
    }
    out = Path(args.out)
    write_report(out.name, data, _markdown(data, prov), out.parent, prov)
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


def _markdown(data: dict[str, Any], prov: Provenance) -> str:
    lines = [
        "# Meta-World throughput: metarl's `--backend subprocess` against Meta-World's vector env",
        "",
        f"{prov.header()[:-1]}; {data['rows']} envs × one {data['steps']}-step episode of "
        f"random actions per timing, median of {data['repeats']} interleaved timings; "
        f"{prov.describe_load()} (timings are indicative at such a load); MuJoCo "
        f"{data['mujoco']}, Gymnasium {data['gymnasium']}, Meta-World "
        f"{data['metaworld']}.",
        "",
        "Env steps per second (higher is better); the ratios divide by Meta-World's own vector "
        "env of the same number of envs, measured in the same run.",
        "",
    ]
    for r in data["results"]:
        rates = r["steps_per_s"]
        sync = rates["Meta-World sync vector env"]
        asyn = rates["Meta-World async vector env"]
        lines += [f"## {r['family']} (`{r['env_id']}`)", "",
                  "| stepped by | env steps/s | ÷ Meta-World sync | ÷ Meta-World async |",
                  "| --- | ---: | ---: | ---: |"]  # fmt: skip
        for k, v in rates.items():
            lines.append(f"| {k} | {v:,.0f} | {v / sync:.2f} | {v / asyn:.2f} |")
        lines.append("")
    lines += [
        "Reading: a worker process steps its rows with the in-process backend and answers "
        "over a pipe, so with more workers than cores the processes share the CPUs; on 2 "
        "cores the subprocess backend buys isolation (a crashed or hung env becomes an error, "
        "never a hang) more than speed. Meta-World's async vector env runs one process per "
        "env.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
