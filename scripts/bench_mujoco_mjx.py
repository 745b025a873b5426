"""Benchmark: the MJX backend (JAX's device) beside the native one (``mujoco.rollout``).

For each family and batch size ``B``, the same rows (tasks × episodes, task-major) step
env steps with uniformly random actions, and the env steps per second are printed side by
side:

(n) ``make_batched(..., backend="mujoco")``: native MuJoCo on ``--nthread`` CPU threads,
    observations and rewards in NumPy;
(m) ``make_batched(..., backend="mjx")``: MJX on JAX's device, observations and rewards on
    the device, copied to the host as NumPy every step;
(d) the MJX engine alone, outputs left on the device (what the torch face hands over by
    DLPack, without copying), timed to ``block_until_ready``.

Compilation is measured apart from the steady state: MJX's first env step of a robot and
batch size traces and compiles the programs (``first step s``); the steady rate is over the
steps after it, and ``compile s`` = first step − one steady step. Reset (which compiles two
small programs) is timed apart too.

Bounded time. Every (family, B) runs in a child process that is killed when it outlives its
share of ``--max-seconds`` (a compile that does not finish is reported as such, with the
time it was given, never waited on); each timed loop stops at the first env step past
``--phase-seconds``, or after ``--steps`` env steps, and the rate is over the steps it made.
The whole run therefore ends within about ``--max-seconds``.

Threads. ``--nthread`` (default 1) for the native backend; for JAX the children get
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` (XLA's CPU backend then runs its kernels
on the calling thread) unless XLA_FLAGS is already set, and ``--pin-core K`` pins a child
(native and MJX alike) to one core with ``sched_setaffinity``. Each phase records its CPU
time ÷ wall time, so how many cores a backend really used is measured, not assumed.

Results, with the device JAX ran on, the command and the machine's load, go to
``benchmarks/mujoco_mjx.{json,md}`` (``--out`` to change).

Usage: python scripts/bench_mujoco_mjx.py [--families HalfCheetahVel AntVel]
    [--num-envs 64 256] [--steps 20] [--max-seconds 1500] [--nthread 1] [--pin-core K]
On a GPU: install JAX's CUDA build (``pip install -U "jax[cuda12]"``) and run the same.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"


class _Clock:
    """Wall and CPU (user + system, this process and its threads) seconds of a phase."""

    def __enter__(self) -> _Clock:
        self.wall0 = time.perf_counter()
        self.cpu0 = _cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = _cpu_s() - self.cpu0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rows(env_id: str, b: int) -> list[Any]:
    import metarl

    tasks = list(metarl.task_distribution(env_id).split("train"))
    episodes = min(20, b)  # 20 episodes per task, as in the papers' meta-batches
    return [tasks[(i // episodes) % len(tasks)] for i in range(b)]


def _timed_steps(batch: Any, actions: Any, max_s: float) -> dict[str, float]:
    """Step ``batch`` (already reset and warmed up) through ``actions[1:]`` or ``max_s``."""
    steps = 0
    with _Clock() as c:
        for a in actions[1:]:
            if not batch.active.any() or time.perf_counter() - c.wall0 > max_s:
                break
            steps += int(batch.active.sum())
            batch.step(a)
    return {"steps": steps, "s": c.wall, "cpu_per_wall": c.cpu / c.wall}


def measure(family: str, b: int, steps: int, nthread: int, phase_s: float) -> dict[str, Any]:
    """One (family, B): native, MJX NumPy face and MJX on device; runs in a child."""
    import numpy as np
    import torch

    import metarl
    from metarl.envs.mujoco.mjx_batched import MjxBatchedEnv

    torch.set_num_threads(1)
    env_id = f"metarl/{family}-v0"
    rows = _rows(env_id, b)
    horizon = steps + 1
    native = metarl.make_batched(env_id, b, backend="mujoco", nthread=nthread,
                                 max_episode_steps=horizon)  # fmt: skip
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (horizon, b, *native.single_action_space.shape))
    native.reset(rows, seeds=0)
    native.step(actions[0])
    n = _timed_steps(native, actions, phase_s)
    native.close()
    out: dict[str, Any] = {"family": family, "num_envs": b, "status": "ok"}
    out["native"] = n
    print(json.dumps({"partial": out}), flush=True)  # what the parent keeps if MJX times out

    mjx = MjxBatchedEnv(family, b, max_episode_steps=horizon)
    with _Clock() as c_reset:
        mjx.reset(rows, seeds=0)
    with _Clock() as c_first:
        mjx.step(actions[0])
    m = _timed_steps(mjx, actions, phase_s)
    steady_step_s = m["s"] / max(1, m["steps"] / b)

    engine = mjx.engine
    jax = engine.jax
    engine.reset(rows, [None] * b)
    on_device = jax.device_put(actions.astype(engine.dtype), engine.device)
    active = jax.device_put(np.ones(b, dtype=bool), engine.device)
    jax.block_until_ready(engine.step(on_device[0], active))
    d_steps = 0
    with _Clock() as c_dev:
        for t in range(1, horizon):
            res = engine.step(on_device[t], active)
            d_steps += b
            if time.perf_counter() - c_dev.wall0 > phase_s:
                break
        jax.block_until_ready(res)
    mjx.close()
    out["mjx"] = m
    out["mjx_device"] = {"steps": d_steps, "s": c_dev.wall, "cpu_per_wall": c_dev.cpu / c_dev.wall}
    out["mjx_reset_s"] = c_reset.wall
    out["mjx_first_step_s"] = c_first.wall
    out["mjx_compile_s"] = max(0.0, c_first.wall - steady_step_s)
    out["mjx_compile_cpu_per_wall"] = c_first.cpu / c_first.wall
    return out


def _child(args: argparse.Namespace) -> int:
    if args.pin_core is not None:
        os.sched_setaffinity(0, {args.pin_core})
    r = measure(args.child[0], int(args.child[1]), args.steps, args.nthread, args.phase_seconds)
    print(json.dumps({"result": r}), flush=True)
    return 0


def _run_child(argv: list[str], family: str, b: int, limit_s: float) -> dict[str, Any]:
    """Run one measurement in a child process; kill it after ``limit_s`` seconds."""
    env = dict(os.environ)
    env.setdefault("XLA_FLAGS", XLA_ONE_THREAD)
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", family, str(b)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit_s)
        stdout, failed = proc.stdout, proc.returncode != 0
        err = proc.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        partial = _last(out, "partial") or {"family": family, "num_envs": b}
        partial["status"] = (
            f"stopped after {limit_s:.0f} s (the limit): MJX had not finished compiling "
            "and stepping"
        )
        return partial
    result = _last(stdout, "result")
    if failed or result is None:
        tail = err.strip().splitlines()[-3:]
        return {"family": family, "num_envs": b, "status": "failed: " + " | ".join(tail)}
    result["child_s"] = time.perf_counter() - t0
    return result


def _last(stdout: str, key: str) -> dict[str, Any] | None:
    found = None
    for line in stdout.splitlines():
        if line.startswith("{"):
            with_key = json.loads(line)
            if key in with_key:
                found = with_key[key]
    return found


def _rate(r: dict[str, Any], key: str) -> float | None:
    p = r.get(key)
    if not p or not p["steps"]:
        return None
    return float(p["steps"] / p["s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--families", nargs="+", default=["HalfCheetahVel", "AntVel"])
    p.add_argument("--num-envs", nargs="+", type=int, default=[64, 256])
    p.add_argument("--steps", type=int, default=20, help="most timed env steps per phase")
    p.add_argument("--phase-seconds", type=float, default=30.0,
                   help="a timed phase stops after this many seconds")  # fmt: skip
    p.add_argument("--max-seconds", type=float, default=1500.0,
                   help="the whole run's time; a measurement that would outlive it is "
                   "stopped and reported as such")  # fmt: skip
    p.add_argument("--nthread", type=int, default=1, help="native threads")
    p.add_argument("--pin-core", type=int, default=None, help="pin each child to this core")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "mujoco_mjx"))
    p.add_argument("--child", nargs=2, metavar=("FAMILY", "B"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.max_seconds <= 0 or args.phase_seconds <= 0:
        p.error("--steps, --max-seconds and --phase-seconds must be positive")
    if args.child:
        return _child(args)

    import mujoco

    from metarl.envs.mujoco.mjx_batched import import_mjx

    jax, _, _ = import_mjx()
    dev = jax.devices()[0]
    device = f"{dev.platform}: {getattr(dev, 'device_kind', dev)}"
    child_argv = ["--steps", str(args.steps), "--phase-seconds", str(args.phase_seconds),
                  "--nthread", str(args.nthread)]  # fmt: skip
    if args.pin_core is not None:
        child_argv += ["--pin-core", str(args.pin_core)]
    from metarl.evaluation.report import Provenance, write_report

    prov = Provenance("cpu", argv=sys.argv[1:] if argv is None else argv, script=__file__)
    t_start = time.perf_counter()
    configs = [(f, b) for f in args.families for b in args.num_envs]
    results = []
    for i, (family, b) in enumerate(configs):
        left = args.max_seconds - (time.perf_counter() - t_start)
        if left < 1:
            spent = f"not run: the {args.max_seconds:.0f} s budget was spent"
            results.append({"family": family, "num_envs": b, "status": spent})
            print(f"{family:16s} B={b:5d}  {results[-1]['status']}", flush=True)
            continue
        # What is left, shared evenly among the measurements still to run (time an earlier
        # one did not use goes to the later ones).
        limit = left / (len(configs) - i)
        r = _run_child(child_argv, family, b, limit)
        results.append(r)
        print(_line(r), flush=True)
    prov.finish()
    meta = {
        "jax_device": device,
        "jax_x64": bool(jax.config.jax_enable_x64),
        "xla_flags": os.environ.get("XLA_FLAGS", XLA_ONE_THREAD),
        "native_threads": args.nthread,
        "pinned_core": args.pin_core,
        "wall_s": time.perf_counter() - t_start,
        "max_seconds": args.max_seconds,
        "versions": {
            "jax": jax.__version__,
            "mujoco": mujoco.__version__,
            "mujoco_mjx": _dist_version("mujoco-mjx"),
        },
    }
    out = Path(args.out)
    write_report(out.name, {"meta": meta, "results": results}, _markdown(meta, results, prov),
                 out.parent, prov)  # fmt: skip
    print(f"wrote {out.with_suffix('.md')} and .json ({meta['wall_s']:.0f} s)")
    return 0


def _line(r: dict[str, Any]) -> str:
    head = f"{r['family']:16s} B={r['num_envs']:5d}"
    n, m, d = _rate(r, "native"), _rate(r, "mjx"), _rate(r, "mjx_device")
    parts = [f"native {n:10,.0f}" if n else "native -"]
    if m and d:
        parts += [f"mjx {m:9,.0f}", f"mjx on device {d:9,.0f} steps/s",
                  f"(compile {r['mjx_compile_s']:.0f} s)"]  # fmt: skip
    if r["status"] != "ok":
        parts.append(r["status"])
    return head + "  " + "  ".join(parts)


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "—" if x is None else format(x, spec)


def _markdown(meta: dict[str, Any], results: list[dict[str, Any]], prov: Any) -> str:
    v = meta["versions"]
    pin = f", each measurement pinned to core {meta['pinned_core']}" if meta["pinned_core"] else ""
    lines = [
        "# MJX backend beside the native one",
        "",
        f"{prov.header()[:-1]}; JAX device **{meta['jax_device']}** "
        f"({'float64' if meta['jax_x64'] else 'float32'}), `XLA_FLAGS={meta['xla_flags']}`; "
        f"native `mujoco.rollout` on {meta['native_threads']} thread(s){pin}. "
        f"{prov.describe_load()}; "
        f"the run took {meta['wall_s']:.0f} s (limit {meta['max_seconds']:.0f} s). "
        f"JAX {v['jax']}, MuJoCo {v['mujoco']}, mujoco-mjx {v['mujoco_mjx']}.",
        "",
        "Env steps per second, random actions, after the first (compiling) step: (n) native "
        "backend; (m) MJX backend through the NumPy interface (device → host copy each step); "
        "(d) the MJX engine with outputs left on the device (the torch face's DLPack path). "
        "`compile s`: MJX's first env step of that robot and B minus one steady step (trace + "
        "XLA compile); `cpu/wall`: CPU seconds per wall second in the timed phase (1.0 = one "
        "core busy).",
        "",
        "| family | B | (n) native | (m) mjx | (d) mjx on device | (d)/(n) | compile s "
        "| cpu/wall (n) | cpu/wall (d) | status |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        n, m, d = _rate(r, "native"), _rate(r, "mjx"), _rate(r, "mjx_device")
        ratio = f"{d / n:.4f}" if n and d else "—"
        lines.append(
            f"| {r['family']} | {r['num_envs']} | {_fmt(n)} | {_fmt(m)} | {_fmt(d)} | {ratio} | "
            f"{_fmt(r.get('mjx_compile_s'), '.0f')} | "
            f"{_fmt((r.get('native') or {}).get('cpu_per_wall'), '.2f')} | "
            f"{_fmt((r.get('mjx_device') or {}).get('cpu_per_wall'), '.2f')} | {r['status']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
