"""Benchmark: the in-process sampler against the Ray sampler with local workers.

HalfCheetahVel, 40 tasks × 20 episodes × 200 steps (MAML's meta-batch), the paper's policy
(Gaussian MLP, 100-100 ReLU). One MAML iteration samples twice: with the shared parameters
(the inner step's episodes) and with per-task adapted parameters (the validation episodes);
both are timed, best of ``--repeats``:

(in-process) ``BatchedSampler`` on the native backend (``mujoco.rollout`` on all cores);
(Ray) ``RaySampler`` with ``--workers`` local actors, each stepping its share of the tasks
      on the native backend with one core.

Printed side by side and written, with the command and the machine's load, to
``benchmarks/ray_sampler.{json,md}``: env steps per second, the Ray overhead per collect
(wall time minus the slowest worker's sampling time: serialisation, the object store,
scheduling), and the bytes each collect sends to the workers (parameters, tasks) and
receives from them (episodes), which is what bounds scaling past one machine. The two
samplers' episodes are checked equal (the test suite checks it too).

Usage: python scripts/bench_ray_sampler.py [--tasks 40] [--episodes 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import metarl
from metarl.evaluation.report import Provenance, write_report
from metarl.learning.functional import named_params
from metarl.learning.policies import make_policy
from metarl.sampling.distributed import RaySampler, native_backend
from metarl.sampling.native import BatchedSampler

ROOT = Path(__file__).resolve().parent.parent
ENV = "metarl/HalfCheetahVel-v0"


def timed(sampler: Any, policy: Any, params: Any, tasks: Any, per_task: bool, seed: int) -> Any:
    t0 = time.perf_counter()
    eps = sampler.collect(policy, params, tasks, seed=seed, per_task_params=per_task)
    return time.perf_counter() - t0, eps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of N, interleaved")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ray_sampler")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    prov = Provenance("cpu", 1, argv=sys.argv[1:] if argv is None else argv, script=__file__)

    local = BatchedSampler(ENV, args.tasks, args.episodes, backend=native_backend(ENV))
    torch.manual_seed(0)
    policy = make_policy(local.observation_space, local.action_space, (100, 100), "relu", 1.0)
    shared = named_params(policy)
    adapted = {
        k: torch.stack([v + 0.01 * torch.randn_like(v) for _ in range(args.tasks)])
        for k, v in shared.items()
    }
    tasks = list(metarl.task_distribution(ENV).split("train"))[: args.tasks]

    t0 = time.perf_counter()
    remote = RaySampler(ENV, args.tasks, args.episodes, num_workers=args.workers)
    startup_s = time.perf_counter() - t0

    rows: dict[str, dict[str, Any]] = {}
    for kind, params, per_task in (("shared", shared, False), ("per-task", adapted, True)):
        best: dict[str, float] = {}
        for r in range(args.repeats):
            seed = 100 + r
            s_local, a = timed(local, policy, params, tasks, per_task, seed)
            s_ray, b = timed(remote, policy, params, tasks, per_task, seed)
            live = a.mask.bool()
            same = (
                torch.equal(a.mask, b.mask)
                and torch.equal(a.rewards, b.rewards)
                and torch.equal(a.obs[live], b.obs[live])
                and torch.equal(a.actions[live], b.actions[live])
            )
            if not same:
                raise SystemExit("the Ray sampler's episodes differ from the in-process ones")
            steps = a.num_steps()
            stats = remote.last_stats
            if not best or s_ray < best["ray_s"]:
                best.update(ray_s=s_ray, **{f"ray_{k}": v for k, v in stats.items()})
            best["local_s"] = min(best.get("local_s", float("inf")), s_local)
            best["env_steps"] = steps
        rows[kind] = {
            "env_steps": best["env_steps"],
            "in_process_steps_per_s": best["env_steps"] / best["local_s"],
            "ray_steps_per_s": best["env_steps"] / best["ray_s"],
            "ray_over_in_process": best["local_s"] / best["ray_s"],
            "ray_overhead_s": best["ray_overhead_s"],
            "ray_slowest_worker_s": best["ray_slowest_worker_s"],
            "bytes_sent": best["ray_bytes_sent"],
            "bytes_received": best["ray_bytes_received"],
            "in_process_s": best["local_s"],
            "ray_s": best["ray_s"],
        }
        r = rows[kind]
        print(
            f"{kind:9s} in-process {r['in_process_steps_per_s']:8.0f} steps/s  Ray "
            f"{r['ray_steps_per_s']:8.0f} steps/s  (Ray/in-process {r['ray_over_in_process']:.2f})"
            f"  Ray overhead {r['ray_overhead_s']:.3f} s  sent {r['bytes_sent'] / 1e6:.2f} MB"
            f"  received {r['bytes_received'] / 1e6:.1f} MB",
            flush=True,
        )
    remote.close()
    local.close()
    prov.finish()
    import ray

    meta = {
        "env": ENV,
        "tasks": args.tasks,
        "episodes": args.episodes,
        "horizon": 200,
        "workers": args.workers,
        "cpus": len(os.sched_getaffinity(0)),
        "ray_startup_s": startup_s,
        "ray": ray.__version__,
    }
    sent = sum(r["bytes_sent"] for r in rows.values())
    received = sum(r["bytes_received"] for r in rows.values())
    lines = [
        "# Sampling in-process vs on Ray",
        "",
        f"{prov.header()[:-1]}; {ENV}, {args.tasks} tasks × {args.episodes} episodes × 200 "
        f"steps, Gaussian MLP 100-100; {args.workers} local Ray workers of 1 core each vs one "
        f"process on {meta['cpus']} cores; {prov.describe_load()}. Ray {meta['ray']}; "
        f"starting the workers took {startup_s:.1f} s (once per run). Episodes checked equal.",
        "",
        "| collect | in-process steps/s | Ray steps/s | Ray / in-process | Ray overhead (s) "
        "| sent to workers | received |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, r in rows.items():
        lines.append(
            f"| {kind} parameters | {r['in_process_steps_per_s']:,.0f} | "
            f"{r['ray_steps_per_s']:,.0f} | {r['ray_over_in_process']:.2f} | "
            f"{r['ray_overhead_s']:.3f} | {r['bytes_sent'] / 1e3:,.0f} kB | "
            f"{r['bytes_received'] / 1e6:,.1f} MB |"
        )
    lines += [
        "",
        f"Per MAML iteration (one collect of each kind): {sent / 1e6:.2f} MB sent to the "
        f"workers, {received / 1e6:.1f} MB received. The policy's architecture is sent once "
        "per run, not per iteration. Ray overhead = wall time − the slowest worker's sampling "
        "time (serialisation, object store, scheduling).",
    ]
    write_report(args.out.name, {**meta, "results": rows}, lines, args.out.parent, prov)
    print(f"wrote {args.out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
