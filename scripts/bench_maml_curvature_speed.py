"""Seconds per MAML-TRPO meta-iteration with each curvature product, split by phase.

Side by side on the same episodes (the same seeds, tasks and initial policy): the 2D-navigation
paper preset of Finn et al. 2017 (20 tasks × 20 episodes × horizon 100, 2×100 ReLU policy,
10 CG iterations) with ``--curvature exact`` (double backward through the KL), ``gauss-newton``
(``Jᵀ M J`` by autograd) and ``structured`` (the same matrix by cached batched matmuls, the
default), exact and structured also with ``--cg-subsample 0.1`` and with the allocator
tuning off (``METARL_MALLOC_TUNING=0``; every other variant runs with it on, as the
``metarl`` command does); then HalfCheetahVel's paper preset with exact and structured
curvature. Every variant runs in its own process (so its peak resident memory is its own),
with one torch thread; the time of each iteration is split into sampling, adaptation, the
curvature (the products' set-up, the meta-gradient through the inner steps and conjugate
gradient) and the line search; median of the timed iterations after a warm-up; also the
process's CPU seconds per iteration (what a busy CPU's other processes do not inflate).

It also times the CG products alone, the three curvatures alternating on one
meta-iteration's data (robust to a change of the machine's load), and measures the agreement
of the curvatures: the TRPO step direction (10 CG iterations, from the meta-gradient each
path computes) of one meta-iteration of the nav2d preset, each curvature against exact on
the same episodes, in float64 and in float32, as the max relative difference.

Results go to ``benchmarks/OUT.{md,json}`` with the command.

Usage: python scripts/bench_maml_curvature_speed.py [--iterations 3]
       [--cheetah-iterations 1] [--out maml_curvature_speed]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.evaluation.report import Provenance, write_report

OUT = Path(__file__).resolve().parent.parent / "benchmarks"
CURVATURES = ("exact", "gauss-newton", "structured")
TUNING_OFF = {"METARL_MALLOC_TUNING": "0"}
PHASES = ("sample_s", "adapt_s", "curvature_s", "line_search_s", "iteration_s", "cpu_s")


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``spec["iterations"]`` meta-iterations (after a warm-up) in this process."""
    import time

    from metarl.agents.maml_trpo import MAMLTRPOConfig, build, meta_step
    from metarl.stepping.allocator import tune_allocator

    tuned = tune_allocator()  # as the metarl command does (off with METARL_MALLOC_TUNING=0)
    torch.set_num_threads(1)
    cfg = MAMLTRPOConfig.from_preset(spec["preset"], device="cpu", **spec["overrides"])
    torch.manual_seed(0)
    policy, sampler = build(cfg, torch.device("cpu"))
    tasks = list(sampler.task_distribution.split("train"))
    rng = np.random.default_rng(0)
    rows = []
    for it in range(spec["iterations"] + 1):  # the first is a warm-up
        batch = [tasks[i] for i in rng.choice(len(tasks), cfg.meta_batch_size, replace=False)]
        cpu = time.process_time()
        stats = meta_step(policy, sampler, batch, 1000 * it, cfg)
        stats["cpu_s"] = time.process_time() - cpu
        if it:
            rows.append(stats)
    sampler.close()
    out: dict[str, Any] = {k: float(np.median([r[k] for r in rows])) for k in PHASES}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["hidden_sizes"] = list(cfg.hidden_sizes)
    out["allocator_tuned"] = tuned
    return out


def run_child(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=full_env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


class _Captured(Exception):
    pass


def captured_products(preset: str, curvature: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """The CG product and right-hand side of the first meta-iteration of ``preset`` (the
    same tasks, seeds and initial policy for every call), captured before CG runs."""
    from metarl.agents import maml_trpo
    from metarl.agents.maml_trpo import MAMLTRPOConfig, build, meta_step

    captured: list[Any] = []
    real = maml_trpo.trust_region_step

    def capture(mvp: Any, grad: Any, max_kl: float, iters: int) -> Any:
        captured.append((mvp, grad))
        raise _Captured

    cfg = MAMLTRPOConfig.from_preset(preset, device="cpu", curvature=curvature)
    torch.manual_seed(0)
    policy, sampler = build(cfg, torch.device("cpu"))
    policy.to(dtype)
    tasks = list(sampler.task_distribution.split("train"))
    tasks = [tasks[i % len(tasks)] for i in range(cfg.meta_batch_size)]
    maml_trpo.trust_region_step = capture  # type: ignore[assignment]
    try:
        meta_step(policy, sampler, tasks, 0, cfg)
    except _Captured:
        pass
    finally:
        maml_trpo.trust_region_step = real  # type: ignore[assignment]
        sampler.close()
    return captured[0]


def agreement(dtype: torch.dtype) -> dict[str, float]:
    """Max relative difference of the TRPO direction (10 CG iterations, from each path's
    own meta-gradient) of gauss-newton and structured against exact, on the nav2d preset's
    first meta-iteration."""
    from metarl.learning.trpo import conjugate_gradient

    torch.set_num_threads(1)
    mvp_e, grad_e = captured_products("nav2d-paper", "exact", dtype)
    d_e = conjugate_gradient(mvp_e, grad_e, 10)
    flat_e = torch.cat([v.flatten() for v in d_e.values()])
    out = {}
    for curvature in ("gauss-newton", "structured"):
        mvp, grad = captured_products("nav2d-paper", curvature, dtype)
        d = conjugate_gradient(mvp, grad, 10)
        flat = torch.cat([d[k].flatten() for k in d_e])
        out[curvature] = float((flat_e - flat).abs().max() / flat_e.abs().max())
    return out


def product_seconds(preset: str, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Wall and CPU seconds per CG product (float32, one thread), the curvatures alternating
    on the same meta-iteration's data (so a change of the machine's load hits all alike);
    median over ``rounds`` × 3 products."""
    import time

    from metarl.stepping.allocator import tune_allocator

    tune_allocator()
    torch.set_num_threads(1)
    mvps = {c: captured_products(preset, c, torch.float32) for c in CURVATURES}
    wall: dict[str, list[float]] = {c: [] for c in mvps}
    cpu: dict[str, list[float]] = {c: [] for c in mvps}
    for _ in range(rounds):
        for c, (mvp, grad) in mvps.items():
            for _ in range(3):
                t0, c0 = time.perf_counter(), time.process_time()
                mvp(grad)
                wall[c].append(time.perf_counter() - t0)
                cpu[c].append(time.process_time() - c0)
    return {c: {"wall_s": float(np.median(wall[c])), "cpu_s": float(np.median(cpu[c]))}
            for c in mvps}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=3, help="timed nav2d iterations (median)")
    ap.add_argument("--cheetah-iterations", type=int, default=1, help="0 skips HalfCheetahVel")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--out", default="maml_curvature_speed",
                    help="results go to benchmarks/OUT.{md,json}")  # fmt: skip
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    prov = Provenance("cpu", 1, script=__file__)
    nav: dict[str, tuple[dict[str, Any], dict[str, str] | None]] = {
        "exact": ({"curvature": "exact"}, None),
        "gauss-newton": ({"curvature": "gauss-newton"}, None),
        "structured": ({"curvature": "structured"}, None),
        "exact, --cg-subsample 0.1": ({"curvature": "exact", "cg_subsample": 0.1}, None),
        "structured, --cg-subsample 0.1": (
            {"curvature": "structured", "cg_subsample": 0.1},
            None,
        ),
        "exact, allocator tuning off": ({"curvature": "exact"}, TUNING_OFF),
        "structured, allocator tuning off": ({"curvature": "structured"}, TUNING_OFF),
    }
    results: dict[str, Any] = {"nav2d": {}, "halfcheetah_vel": {}}
    for name, (overrides, env) in nav.items():
        spec = {"preset": "nav2d-paper", "overrides": overrides, "iterations": args.iterations}
        results["nav2d"][name] = run_child(spec, env)
        print("nav2d", name, results["nav2d"][name], flush=True)
    if args.cheetah_iterations:
        for curvature in ("exact", "structured"):
            spec = {"preset": "halfcheetah-vel-paper", "overrides": {"curvature": curvature},
                    "iterations": args.cheetah_iterations}  # fmt: skip
            results["halfcheetah_vel"][curvature] = run_child(spec)
            print("HalfCheetahVel", curvature, results["halfcheetah_vel"][curvature], flush=True)
    results["product_s"] = {"nav2d": product_seconds("nav2d-paper")}
    if args.cheetah_iterations:
        results["product_s"]["halfcheetah_vel"] = product_seconds("halfcheetah-vel-paper")
    print("seconds per product", results["product_s"], flush=True)
    results["direction_max_rel_diff"] = {"float64": agreement(torch.float64),
                                         "float32": agreement(torch.float32)}  # fmt: skip
    print("agreement", results["direction_max_rel_diff"], flush=True)
    prov.finish()

    header = [
        "| variant | sampling s | adaptation s | curvature s | line search s | total s/iter | "
        "vs exact | CPU s/iter | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines = [
        "# MAML-TRPO seconds per meta-iteration: exact, Gauss–Newton and structured curvature",
        "",
        f"{prov.header()[:-1]} (one process per variant); {prov.describe_load()}; under "
        "load, CPU seconds and the alternating per-product timings are the robust comparison.",
        "",
        "2D navigation, paper preset (20 tasks × 20 episodes × horizon 100, 2×100 ReLU "
        f"policy, one inner step, 10 CG iterations); median of {args.iterations} iterations "
        "after a warm-up. Curvature: the products' set-up, the meta-gradient through the "
        "inner step and the 10 CG products.",
        "",
        *header,
    ]

    def rows(table: dict[str, Any], ref: dict[str, Any]) -> None:
        for name, r in table.items():
            lines.append(
                f"| {name} | {r['sample_s']:.3f} | {r['adapt_s']:.3f} | {r['curvature_s']:.3f} "
                f"| {r['line_search_s']:.3f} | {r['iteration_s']:.3f} | "
                f"{ref['iteration_s'] / r['iteration_s']:.2f}× | {r['cpu_s']:.3f} | "
                f"{r['peak_rss_mb']:.0f} |"
            )

    rows(results["nav2d"], results["nav2d"]["exact"])
    if results["halfcheetah_vel"]:
        lines += [
            "",
            "HalfCheetahVel paper preset (40 tasks × 20 episodes × horizon 200, 2×100 ReLU "
            f"policy, native batched MuJoCo); median of {args.cheetah_iterations} after a "
            "warm-up.",
            "",
            *header,
        ]
        rows(results["halfcheetah_vel"], results["halfcheetah_vel"]["exact"])
    lines += [
        "",
        "Seconds per CG product (the curvature alone: the inner step's forward product, the "
        "Fisher of the adapted policies, the transpose), float32, one thread, the three "
        "curvatures alternating on the first meta-iteration's data, median of 9, wall-clock "
        "(CPU):",
        "",
        "| preset | exact s | gauss-newton s | structured s | exact / structured |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for preset, p in results["product_s"].items():
        cells = " | ".join(f"{p[c]['wall_s']:.3f} ({p[c]['cpu_s']:.3f})" for c in CURVATURES)
        lines.append(f"| {preset} | {cells} | "
                     f"{p['exact']['wall_s'] / p['structured']['wall_s']:.2f}× |")  # fmt: skip
    agree = results["direction_max_rel_diff"]
    lines += [
        "",
        "Agreement: the TRPO step direction of one nav2d meta-iteration (the same episodes, "
        "10 CG iterations, each path's own meta-gradient) against exact curvature, max "
        f"relative difference: gauss-newton {agree['float64']['gauss-newton']:.1e}, "
        f"structured {agree['float64']['structured']:.1e} in float64; "
        f"{agree['float32']['gauss-newton']:.1e} and {agree['float32']['structured']:.1e} "
        "in float32 (round-off, which conjugate gradient amplifies).",
        "",
        "Allocator rows: `METARL_MALLOC_TUNING=0` in that variant's environment (glibc's "
        "default thresholds); every other row runs with the tuning of "
        "`metarl.stepping.allocator` on, as the `metarl` command does.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        payload = {"threads": 1, "policy": "2x100 relu", **results}
        write_report(args.out, payload, text, OUT, prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
