"""Benchmark: the native batched MuJoCo backend against its limit and against Gymnasium.

For each family, ``tasks × episodes`` rows (default 40 × 20 = 800) run one 200-step episode
each with uniformly random actions, in one process, measured in env steps per second:

(a) the limit: ``mujoco.rollout`` alone on the same rows and models, one native call per
    env step (as a policy in the loop needs), the state chained from call to call, outputs
    preallocated — no observations, rewards or bookkeeping; (a') for scale, one native call
    for the whole horizon;
(b) ``metarl.make_batched(..., backend="mujoco")``: observations, rewards, terminations and
    done masks every step, one ``mujoco.rollout`` call per env step;
(c) ``gymnasium.vector.SyncVectorEnv`` over the same single env (one ``step`` per env).

Steps that rows actually took are counted: Ant and Hopper episodes can end early, and then
(b) stops stepping the row while (a) steps every row for the whole horizon and (c) resets it
(autoreset), so for those families the rates mix different states. The ratios (b)/(a) and
(b)/(c) are printed side by side and written, with the command and the machine's load, to
``benchmarks/mujoco_batched.{json,md}``.

Usage: python scripts/bench_mujoco_batched.py [--tasks 40] [--episodes 20] [--nthread N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch
from mujoco import rollout as mj_rollout

import metarl
from metarl.envs.mujoco.batched import MujocoBatchedEnv, default_threads
from metarl.evaluation.report import Provenance, write_report

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ["HalfCheetahVel", "AntVel", "HopperRandParams"]
HORIZON = 200


def limit(batch: MujocoBatchedEnv, actions: np.ndarray, nthread: int) -> tuple[float, int]:
    """(a): ``mujoco.rollout`` alone, one native call per env step for every row, the state
    chained from call to call, outputs preallocated; nothing else."""
    rows, fs = batch.num_envs, batch.frame_skip
    ctrl = np.ascontiguousarray(np.repeat(actions[:, :, None, :], fs, axis=2), dtype=np.float64)
    state = batch._state.copy()  # the rows' initial states after reset
    out = np.zeros((rows, fs, state.shape[1]))
    warm = np.zeros((rows, batch.nv))
    sensors = np.zeros((rows, fs, 0))
    models = batch._models
    pool = mj_rollout.Rollout(nthread=0 if nthread == 1 else nthread)
    datas = [mujoco.MjData(models[0]) for _ in range(max(1, nthread))]
    spec = mujoco.mjtState.mjSTATE_CTRL.value
    t0 = time.perf_counter()
    for t in range(HORIZON):
        pool.rollout(models, datas, state, ctrl[t], control_spec=spec, skip_checks=True,
                     nstep=fs, initial_warmstart=warm, state=out, sensordata=sensors)  # fmt: skip
        state[:] = out[:, -1]
    seconds = time.perf_counter() - t0
    pool.close()
    return seconds, rows * HORIZON


def limit_one_call(batch: MujocoBatchedEnv, actions: np.ndarray, nthread: int) -> tuple[float, int]:
    """(a'): one native call for the whole horizon (warm-started throughout; for scale)."""
    fs = batch.frame_skip
    ctrl = np.repeat(actions.transpose(1, 0, 2), fs, axis=1).astype(np.float64)
    pool = mj_rollout.Rollout(nthread=0 if nthread == 1 else nthread)
    datas = [mujoco.MjData(batch._models[0]) for _ in range(max(1, nthread))]
    t0 = time.perf_counter()
    pool.rollout(batch._models, datas, batch._state.copy(), ctrl, nstep=HORIZON * fs)
    seconds = time.perf_counter() - t0
    pool.close()
    return seconds, batch.num_envs * HORIZON


def ours(batch: MujocoBatchedEnv, rows: list[Any], actions: np.ndarray) -> tuple[float, int]:
    """(b): the batched env, step by step."""
    t0 = time.perf_counter()
    batch.reset(rows, seeds=0)
    steps = 0
    for t in range(HORIZON):
        _, _, _, _, info = batch.step(actions[t])
        steps += int(info["active"].sum())
        if not batch.active.any():
            break
    return time.perf_counter() - t0, steps


def sync_vector(env_id: str, rows: list[Any], actions: np.ndarray) -> tuple[float, int]:
    """(c): Gymnasium's SyncVectorEnv; every env steps every time (autoreset included)."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in rows])
    for env, task in zip(envs.envs, rows, strict=True):
        env.unwrapped.set_task(task)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    envs.reset(seed=0)
    for t in range(HORIZON):
        envs.step(actions[t])
    seconds = time.perf_counter() - t0
    envs.close()
    return seconds, len(rows) * HORIZON


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--nthread", type=int, default=default_threads())
    parser.add_argument("--families", nargs="+", default=FAMILIES)
    parser.add_argument("--repeats", type=int, default=2, help="best of N, interleaved")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "mujoco_batched")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    prov = Provenance("cpu", 1, argv=sys.argv[1:] if argv is None else argv, script=__file__)
    results = []
    for name in args.families:
        env_id = f"metarl/{name}-v0"
        tasks = metarl.task_distribution(env_id).split("train")[: args.tasks]
        rows = [t for t in tasks for _ in range(args.episodes)]
        batch = metarl.make_batched(env_id, len(rows), backend="mujoco", nthread=args.nthread)
        assert isinstance(batch, MujocoBatchedEnv)
        rng = np.random.default_rng(0)
        shape = (HORIZON, len(rows), *batch.single_action_space.shape)  # type: ignore[misc]
        actions = rng.uniform(-1, 1, shape).astype(np.float32)
        # Interleaved repeats, best of each: the machine is shared, and its load varies.
        runs: dict[str, list[tuple[float, int]]] = {"a": [], "b": [], "c": [], "a1": []}
        for _ in range(args.repeats):
            runs["b"].append(ours(batch, rows, actions))
            batch.reset(rows, seeds=0)
            runs["a"].append(limit(batch, actions, args.nthread))
            runs["a1"].append(limit_one_call(batch, actions, args.nthread))
            runs["c"].append(sync_vector(env_id, rows, actions))
        batch.close()
        a, b, c, a1 = (max(runs[k], key=lambda r: r[1] / r[0]) for k in ("a", "b", "c", "a1"))
        sps = {k: v[1] / v[0] for k, v in {"a": a, "b": b, "c": c}.items()}
        row = {
            "family": name,
            "rows": len(rows),
            "steps_per_s": {
                "limit_rollout": sps["a"],
                "ours": sps["b"],
                "sync_vector": sps["c"],
                "rollout_one_call": a1[1] / a1[0],
            },
            "env_steps": {"limit_rollout": a[1], "ours": b[1], "sync_vector": c[1]},
            "ours_over_limit": sps["b"] / sps["a"],
            "ours_over_sync_vector": sps["b"] / sps["c"],
        }
        results.append(row)
        print(
            f"{name:22s} (a) limit {sps['a']:9.0f}/s  (b) ours {sps['b']:9.0f}/s  "
            f"(c) SyncVectorEnv {sps['c']:8.0f}/s  (b)/(a) {row['ours_over_limit']:.2f}  "
            f"(b)/(c) {row['ours_over_sync_vector']:.2f}",
            flush=True,
        )
    prov.finish()
    meta = {
        "tasks": args.tasks,
        "episodes": args.episodes,
        "horizon": HORIZON,
        "nthread": args.nthread,
        "cpus": default_threads(),
        "mujoco": mujoco.__version__,
        "gymnasium": gym.__version__,
    }
    lines = [
        "# Native batched MuJoCo stepping",
        "",
        f"{prov.header()[:-1]}; {args.tasks} tasks × {args.episodes} episodes, "
        f"{HORIZON} steps, random actions, {args.nthread} native threads on {meta['cpus']} "
        f"cores; {prov.describe_load()}. MuJoCo "
        f"{meta['mujoco']}, Gymnasium {meta['gymnasium']}.",
        "",
        "(a) the limit: `mujoco.rollout` alone, one native call per env step for all rows, "
        "state chained, no observation/reward work; (b) "
        '`metarl.make_batched(..., backend="mujoco")` with observations, rewards, terminations '
        "and done masks every step; (c) Gymnasium `SyncVectorEnv` over the same single env; "
        "(a') one `mujoco.rollout` call for the whole horizon, for scale. Env steps per second "
        "(steps rows actually took: Ant and Hopper rows that fall stop in (b), run on in (a) "
        "and autoreset in (c)).",
        "",
        "| family | (a) limit | (b) ours | (c) SyncVectorEnv | (b)/(a) | (b)/(c) | (a') one call |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        s = r["steps_per_s"]
        lines.append(
            f"| {r['family']} | {s['limit_rollout']:,.0f} | {s['ours']:,.0f} | "
            f"{s['sync_vector']:,.0f} | {r['ours_over_limit']:.2f} | "
            f"{r['ours_over_sync_vector']:.2f} | {s['rollout_one_call']:,.0f} |"
        )
    write_report(args.out.name, {**meta, "results": results}, lines, args.out.parent, prov)
    print(f"wrote {args.out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
