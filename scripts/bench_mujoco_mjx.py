"""Benchmark: the MJX backend (JAX's device) beside the native one (``mujoco.rollout``).

For each family and batch size ``B``, the same rows (tasks × episodes, task-major) step
``--steps`` env steps with uniformly random actions, in one process, and the env steps per
second are printed side by side:

(n) ``make_batched(..., backend="mujoco")``: native MuJoCo on ``--nthread`` CPU threads,
    observations and rewards in NumPy;
(m) ``make_batched(..., backend="mjx")``: MJX on JAX's device, observations and rewards on
    the device, copied to the host as NumPy every step;
(d) the MJX engine alone, outputs left on the device (what the torch face hands over by
    DLPack, without copying), timed to ``block_until_ready``.

MJX's first step of a robot and batch size compiles the program; that time is reported
apart (``compile s``) and left out of the rates, which are over the steps after a warm-up
step. Results, with the device JAX ran on, the command and the machine's load, go to
``benchmarks/mujoco_mjx.{json,md}`` (``--out`` to change).

Usage: python scripts/bench_mujoco_mjx.py [--families HalfCheetahVel AntVel]
    [--num-envs 64 256] [--steps 20] [--nthread N] [--out benchmarks/mujoco_mjx]
On a GPU: install JAX's CUDA build (``pip install -U "jax[cuda12]"``) and run the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import torch

import metarl
from metarl.envs.mujoco.batched import default_threads
from metarl.envs.mujoco.mjx_batched import MjxBatchedEnv, import_mjx

ROOT = Path(__file__).resolve().parent.parent


def _rows(env_id: str, b: int) -> list[Any]:
    tasks = list(metarl.task_distribution(env_id).split("train"))
    episodes = min(20, b)  # 20 episodes per task, as in the papers' meta-batches
    return [tasks[(i // episodes) % len(tasks)] for i in range(b)]


def _run(batch: Any, rows: list[Any], actions: np.ndarray) -> tuple[float, int]:
    batch.reset(rows, seeds=0)
    batch.step(actions[0])  # warm-up (MJX: compiles on the first call)
    steps = 0
    t0 = time.perf_counter()
    for a in actions[1:]:
        if not batch.active.any():
            break
        steps += int(batch.active.sum())
        batch.step(a)
    return time.perf_counter() - t0, steps


def bench(family: str, b: int, steps: int, nthread: int) -> dict[str, Any]:
    env_id = f"metarl/{family}-v0"
    rows = _rows(env_id, b)
    horizon = steps + 1
    native = metarl.make_batched(env_id, b, backend="mujoco", nthread=nthread,
                                 max_episode_steps=horizon)  # fmt: skip
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (horizon, b, *native.single_action_space.shape))
    n_s, n_steps = _run(native, rows, actions)
    native.close()

    mjx = MjxBatchedEnv(family, b, max_episode_steps=horizon)
    mjx.reset(rows, seeds=0)
    t0 = time.perf_counter()
    mjx.step(actions[0])
    compile_s = time.perf_counter() - t0
    m_s, m_steps = _run(mjx, rows, actions)

    engine = mjx.engine
    jax = engine.jax
    engine.reset(rows, [None] * b)
    on_device = jax.device_put(actions.astype(engine.dtype), engine.device)
    active = jax.device_put(np.ones(b, dtype=bool), engine.device)
    jax.block_until_ready(engine.step(on_device[0], active))
    t0 = time.perf_counter()
    for t in range(1, horizon):
        out = engine.step(on_device[t], active)
    jax.block_until_ready(out)
    d_s = time.perf_counter() - t0
    mjx.close()
    return {
        "family": family,
        "num_envs": b,
        "steps": steps,
        "native_steps_per_s": n_steps / n_s,
        "mjx_steps_per_s": m_steps / m_s,
        "mjx_device_steps_per_s": b * steps / d_s,
        "mjx_compile_s": compile_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--families", nargs="+", default=["HalfCheetahVel", "AntVel"])
    p.add_argument("--num-envs", nargs="+", type=int, default=[64, 256])
    p.add_argument("--steps", type=int, default=20, help="timed env steps per measurement")
    p.add_argument("--nthread", type=int, default=default_threads(), help="native threads")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "mujoco_mjx"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    jax, _, _ = import_mjx()

    dev = jax.devices()[0]
    device = f"{dev.platform}: {getattr(dev, 'device_kind', dev)}"
    load_before = os.getloadavg()[0]
    results = []
    for family in args.families:
        for b in args.num_envs:
            r = bench(family, b, args.steps, args.nthread)
            results.append(r)
            print(
                f"{family:16s} B={b:5d}  native {r['native_steps_per_s']:10,.0f}  "
                f"mjx {r['mjx_steps_per_s']:9,.0f}  "
                f"mjx on device {r['mjx_device_steps_per_s']:9,.0f}  steps/s  "
                f"(compile {r['mjx_compile_s']:.0f} s)",
                flush=True,
            )
    load_after = os.getloadavg()[0]
    versions = {
        "jax": jax.__version__,
        "mujoco": mujoco.__version__,
        "mujoco_mjx": _dist_version("mujoco-mjx"),
    }
    meta = {
        "command": "python scripts/bench_mujoco_mjx.py " + " ".join(argv or sys.argv[1:]),
        "jax_device": device,
        "jax_x64": bool(jax.config.jax_enable_x64),
        "native_threads": args.nthread,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_1min_before": load_before,
        "load_1min_after": load_after,
        "versions": versions,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    out.with_suffix(".md").write_text(_markdown(meta, results))
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _markdown(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    v = meta["versions"]
    lines = [
        "# MJX backend beside the native one",
        "",
        f"`{meta['command'].strip()}` — JAX device **{meta['jax_device']}** "
        f"({'float64' if meta['jax_x64'] else 'float32'}); native `mujoco.rollout` on "
        f"{meta['native_threads']} thread(s); {meta['cores']} cores shared with other jobs, "
        f"1-min load average {meta['load_1min_before']:.1f} before, "
        f"{meta['load_1min_after']:.1f} after. JAX {v['jax']}, MuJoCo {v['mujoco']}, "
        f"mujoco-mjx {v['mujoco_mjx']}.",
        "",
        "Env steps per second, random actions, the first (compiling) step left out: (n) native "
        "backend; (m) MJX backend through the NumPy interface (device → host copy each step); "
        "(d) the MJX engine with outputs left on the device (the torch face's DLPack path).",
        "",
        "| family | B | (n) native | (m) mjx | (d) mjx on device | (d)/(n) | compile s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['family']} | {r['num_envs']} | {r['native_steps_per_s']:,.0f} | "
            f"{r['mjx_steps_per_s']:,.0f} | {r['mjx_device_steps_per_s']:,.0f} | "
            f"{r['mjx_device_steps_per_s'] / r['native_steps_per_s']:.3f} | "
            f"{r['mjx_compile_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
