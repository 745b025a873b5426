"""Seconds per MAML-TRPO meta-iteration with the exact and the Gauss–Newton curvature.

Side by side on the same episodes (the same seeds, tasks and initial policy): the 2D-navigation
paper preset of Finn et al. 2017 (20 tasks × 20 episodes × horizon 100, 2×100 ReLU policy,
10 CG iterations), with ``--curvature exact`` (double backward through the KL) and
``--curvature gauss-newton`` (``Jᵀ M J``, the default), each with and without
``--cg-subsample 0.1``; the Gauss–Newton preset once more with glibc's allocator thresholds
raised (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``, set in the environment of the
process before it starts); then HalfCheetahVel's paper preset with both curvatures. Every
variant runs in its own process (so its peak resident memory is its own), with one torch
thread, median of the timed iterations after a warm-up.

It also times the CG products alone, exact and Gauss–Newton alternating on one
meta-iteration's data (robust to a change of the machine's load), and measures the agreement
of the two curvatures: the TRPO step direction (10 CG iterations) of one meta-iteration of the
nav2d preset in float64, both products on the same episodes, as the max relative difference.

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
MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``spec["iterations"]`` meta-iterations (after a warm-up) in this process."""
    from metarl.agents.maml_trpo import MAMLTRPOConfig, build, meta_step

    torch.set_num_threads(1)
    cfg = MAMLTRPOConfig.from_preset(spec["preset"], device="cpu", **spec["overrides"])
    torch.manual_seed(0)
    policy, sampler = build(cfg, torch.device("cpu"))
    tasks = list(sampler.task_distribution.split("train"))
    rng = np.random.default_rng(0)
    rows = []
    for it in range(spec["iterations"] + 1):  # the first is a warm-up
        batch = [tasks[i] for i in rng.choice(len(tasks), cfg.meta_batch_size, replace=False)]
        stats = meta_step(policy, sampler, batch, 1000 * it, cfg)
        if it:
            rows.append(stats)
    sampler.close()
    keys = ("sample_s", "adapt_s", "outer_s", "iteration_s")
    out: dict[str, Any] = {k: float(np.median([r[k] for r in rows])) for k in keys}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["hidden_sizes"] = list(cfg.hidden_sizes)
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


def agreement() -> float:
    """Max relative difference of the TRPO direction (10 CG iterations), exact vs
    Gauss–Newton, float64, on the nav2d preset's first meta-iteration."""
    from metarl.learning.trpo import conjugate_gradient

    torch.set_num_threads(1)
    mvp_e, grad = captured_products("nav2d-paper", "exact", torch.float64)
    mvp_g, grad_g = captured_products("nav2d-paper", "gauss-newton", torch.float64)
    assert all(torch.equal(grad[k], grad_g[k]) for k in grad)  # the same episodes
    d_e = conjugate_gradient(mvp_e, grad, 10)
    d_g = conjugate_gradient(mvp_g, grad, 10)
    flat_e = torch.cat([v.flatten() for v in d_e.values()])
    flat_g = torch.cat([d_g[k].flatten() for k in d_e])
    return float((flat_e - flat_g).abs().max() / flat_e.abs().max())


def product_seconds(preset: str, rounds: int = 3) -> dict[str, float]:
    """Seconds per CG product (float32, one thread), exact and Gauss–Newton alternating on
    the same meta-iteration's data (so a change of the machine's load hits both alike);
    median over ``rounds`` × 3 products."""
    import time

    torch.set_num_threads(1)
    mvps = {c: captured_products(preset, c, torch.float32) for c in ("exact", "gauss-newton")}
    times: dict[str, list[float]] = {c: [] for c in mvps}
    for _ in range(rounds):
        for c, (mvp, grad) in mvps.items():
            for _ in range(3):
                t0 = time.perf_counter()
                mvp(grad)
                times[c].append(time.perf_counter() - t0)
    return {c: float(np.median(t)) for c, t in times.items()}


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
        "exact, --cg-subsample 0.1": ({"curvature": "exact", "cg_subsample": 0.1}, None),
        "gauss-newton, --cg-subsample 0.1": (
            {"curvature": "gauss-newton", "cg_subsample": 0.1},
            None,
        ),
        "gauss-newton, malloc thresholds raised": ({"curvature": "gauss-newton"}, MALLOC),
    }
    results: dict[str, Any] = {"nav2d": {}, "halfcheetah_vel": {}}
    for name, (overrides, env) in nav.items():
        spec = {"preset": "nav2d-paper", "overrides": overrides, "iterations": args.iterations}
        results["nav2d"][name] = run_child(spec, env)
        print("nav2d", name, results["nav2d"][name], flush=True)
    if args.cheetah_iterations:
        for curvature in ("exact", "gauss-newton"):
            spec = {"preset": "halfcheetah-vel-paper", "overrides": {"curvature": curvature},
                    "iterations": args.cheetah_iterations}  # fmt: skip
            results["halfcheetah_vel"][curvature] = run_child(spec)
            print("HalfCheetahVel", curvature, results["halfcheetah_vel"][curvature], flush=True)
    results["product_s"] = {"nav2d": product_seconds("nav2d-paper")}
    if args.cheetah_iterations:
        results["product_s"]["halfcheetah_vel"] = product_seconds("halfcheetah-vel-paper")
    print("seconds per product", results["product_s"], flush=True)
    results["direction_max_rel_diff_float64"] = agreement()
    print("agreement", results["direction_max_rel_diff_float64"], flush=True)
    prov.finish()
    lines = [
        "# MAML-TRPO seconds per meta-iteration: exact vs Gauss–Newton curvature",
        "",
        f"{prov.header()[:-1]} (one process per variant); {prov.describe_load()}.",
        "",
        "2D navigation, paper preset (20 tasks × 20 episodes × horizon 100, 2×100 ReLU "
        f"policy, one inner step, 10 CG iterations); median of {args.iterations} iterations "
        "after a warm-up.",
        "",
        "| variant | sampling s | adaptation s | outer step s | total s/iter | vs exact | "
        "peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def rows(table: dict[str, Any], ref: dict[str, Any]) -> None:
        for name, r in table.items():
            lines.append(
                f"| {name} | {r['sample_s']:.3f} | {r['adapt_s']:.3f} | {r['outer_s']:.3f} | "
                f"{r['iteration_s']:.3f} | {ref['iteration_s'] / r['iteration_s']:.2f}× | "
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
            "| variant | sampling s | adaptation s | outer step s | total s/iter | vs exact | "
            "peak RSS MB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        rows(results["halfcheetah_vel"], results["halfcheetah_vel"]["exact"])
    lines += [
        "",
        "Seconds per CG product (the curvature alone: two inner-step Hessian-vector "
        "products and one with the KL's Hessian in the adapted parameters), float32, "
        "exact and Gauss–Newton alternating on the first meta-iteration's data, median of "
        "9:",
        "",
        "| preset | exact s | gauss-newton s | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for preset, p in results["product_s"].items():
        lines.append(f"| {preset} | {p['exact']:.3f} | {p['gauss-newton']:.3f} | "
                     f"{p['exact'] / p['gauss-newton']:.2f}× |")  # fmt: skip
    lines += [
        "",
        "Agreement: the TRPO step direction of one nav2d meta-iteration (float64, the same "
        "episodes, 10 CG iterations) differs between the two curvatures by "
        f"{results['direction_max_rel_diff_float64']:.1e} (max relative difference).",
        "",
        "Malloc row: `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` set to "
        f"{MALLOC['MALLOC_MMAP_THRESHOLD_']} in the environment of that variant's process.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        payload = {"threads": 1, "policy": "2x100 relu", "malloc_env": MALLOC, **results}
        write_report(args.out, payload, text, OUT, prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
