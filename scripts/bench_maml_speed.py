"""Seconds per MAML-TRPO meta-iteration, split into sampling, adaptation and the outer step.

The 2D-navigation paper preset of Finn et al. 2017: 20 tasks × 20 episodes × horizon 100 for
the inner step, as many validation episodes with the adapted policies, and the TRPO step
(10 CG iterations on the exact second-order KL Hessian-vector product, backtracking line
search, max-KL 0.01), 2×100 ReLU policy. The products use the default ``--curvature``
(``scripts/bench_maml_curvature_speed.py`` compares ``exact``, ``gauss-newton`` and
``structured``; ``benchmarks/maml_speed.md`` was made when ``exact`` was the default).
Measured in one run, side by side:

* ``ours`` — ``agents/maml_trpo.py`` as trained: on-device torch env, every task at once
  (vmap over tasks for the inner step, the rollouts and the Hessian-vector products);
* ``ours, CG on 10%`` — the same with the curvature products on 10% of the episodes
  (TRPO, Schulman et al. 2015, Sec. 6 uses 10%), ``--cg-subsample 0.1``;
* ``ours, first order`` — FOMAML (no inner-step Jacobian);
* ``per-task loop`` — the same algorithm written the way pytorch-maml-rl does it: a Python
  loop over tasks for sampling (NumPy env, 20 rows per task), adaptation with
  ``create_graph=True``, and the KL Hessian-vector product by double backward through every
  task's adaptation graph. Its per-iteration time is the in-run reference for the ratio
  (pytorch-maml-rl itself, with its multiprocessing sampler, was reported at about 25 s per
  iteration on this kind of 2-core machine; it is not installed here).

Then ``--cheetah-iterations`` iterations of the HalfCheetahVel paper preset (40 tasks × 20
episodes × horizon 200, native batched MuJoCo backend), with its exact curvature and with CG
on 10% of the episodes. Results go to
``benchmarks/maml_speed.{json,md}`` with the command.

Usage: python scripts/bench_maml_speed.py [--iterations 3] [--threads 1] [--device cpu]
       [--out maml_speed]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import metarl
from metarl.adaptation.policy_gradient import advantages
from metarl.agents.maml_trpo import MAMLTRPOConfig, build, meta_step
from metarl.evaluation.report import Provenance, write_report
from metarl.learning.functional import Params, forward, load_params
from metarl.learning.policies import Policy
from metarl.learning.trpo import conjugate_gradient
from metarl.sampling.native import BatchedSampler, Episodes

OUT = Path(__file__).resolve().parent.parent / "benchmarks"


def time_ours(cfg: MAMLTRPOConfig, iterations: int, device: str) -> dict[str, Any]:
    torch.manual_seed(0)
    policy, sampler = build(cfg, torch.device(device))
    tasks = list(sampler.task_distribution.split("train"))
    rng = np.random.default_rng(0)
    rows = []
    for it in range(iterations + 1):  # the first is a warm-up
        batch = [tasks[i] for i in rng.choice(len(tasks), cfg.meta_batch_size, replace=False)]
        stats = meta_step(policy, sampler, batch, 1000 * it, cfg)
        if it:
            rows.append(stats)
    sampler.close()
    keys = ("sample_s", "adapt_s", "outer_s", "iteration_s", "env_steps_per_s")
    return {k: float(np.median([r[k] for r in rows])) for k in keys}


# -- the per-task-loop reference --------------------------------------------------------------
def _task_loss(policy: Policy, params: Params, eps: Episodes, adv: torch.Tensor) -> torch.Tensor:
    logp = policy.log_prob(tuple(forward(policy, params, eps.obs)), eps.actions)
    return -(logp * adv * eps.mask).sum() / eps.mask.sum()


def reference_iteration(
    policy: Policy, sampler: BatchedSampler, tasks: list, seed: int, cfg: MAMLTRPOConfig
) -> dict[str, float]:
    """One MAML-TRPO meta-iteration, one task at a time (pytorch-maml-rl's structure)."""
    theta = dict(policy.named_parameters())
    names = list(theta)
    t0 = time.perf_counter()
    sample_s = adapt_s = 0.0
    per_task = []
    for i, task in enumerate(tasks):
        ts = time.perf_counter()
        train = sampler.collect(policy, theta, [task], seed=seed + i)
        sample_s += time.perf_counter() - ts
        ta = time.perf_counter()
        adv = advantages(train, cfg.gamma, cfg.gae_lambda)
        grads = torch.autograd.grad(
            _task_loss(policy, theta, train, adv), [theta[k] for k in names], create_graph=True
        )
        adapted = {k: theta[k] - cfg.inner_lr * g for k, g in zip(names, grads, strict=True)}
        adapt_s += time.perf_counter() - ta
        ts = time.perf_counter()
        valid = sampler.collect(policy, adapted, [task], seed=seed + 1000 + i)
        sample_s += time.perf_counter() - ts
        with torch.no_grad():
            old = tuple(d.detach() for d in forward(policy, adapted, valid.obs))
        per_task.append((train, adv, valid, advantages(valid, cfg.gamma, cfg.gae_lambda), old))
    to = time.perf_counter()

    def losses(params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        loss = kl = torch.zeros(())
        for train, adv, valid, vadv, old in per_task:
            g = torch.autograd.grad(
                _task_loss(policy, params, train, adv),
                [params[k] for k in names],
                create_graph=True,
            )
            adapted = {k: params[k] - cfg.inner_lr * gk for k, gk in zip(names, g, strict=True)}
            dist = tuple(forward(policy, adapted, valid.obs))
            ratio = torch.exp(policy.log_prob(dist, valid.actions) - policy.log_prob(old,
                              valid.actions))  # fmt: skip
            m = valid.mask
            loss = loss - (ratio * vadv * m).sum() / m.sum() / len(tasks)
            kl = kl + (policy.kl(old, dist) * m).sum() / m.sum() / len(tasks)
        return loss, kl

    loss, kl = losses(theta)
    g = torch.autograd.grad(loss, [theta[k] for k in names], retain_graph=True)
    kl_grad = torch.autograd.grad(kl, [theta[k] for k in names], create_graph=True)

    def hvp(v: Params) -> Params:
        dot = torch.stack([(kg * v[k]).sum() for kg, k in zip(kl_grad, names, strict=True)])
        h = torch.autograd.grad(dot.sum(), [theta[k] for k in names], retain_graph=True)
        return {k: hk + cfg.cg_damping * v[k] for k, hk in zip(names, h, strict=True)}

    direction = conjugate_gradient(hvp, dict(zip(names, g, strict=True)), cfg.cg_iters)
    shs = 0.5 * sum((direction[k] * hvp(direction)[k]).sum() for k in names)
    step = {k: v / torch.sqrt(shs / cfg.max_kl) for k, v in direction.items()}
    with torch.no_grad():
        base = {k: v.detach().clone() for k, v in theta.items()}
    ratio = 1.0
    for _ in range(cfg.ls_max_steps):
        cand = {k: (base[k] - ratio * step[k]).requires_grad_(True) for k in names}
        new_loss, new_kl = losses(cand)
        if new_loss.item() < loss.item() and new_kl.item() <= cfg.max_kl:
            load_params(policy, {k: v.detach() for k, v in cand.items()})
            break
        ratio *= cfg.ls_backtrack_ratio
    outer_s = time.perf_counter() - to
    return {"sample_s": sample_s, "adapt_s": adapt_s, "outer_s": outer_s,
            "iteration_s": time.perf_counter() - t0}  # fmt: skip


def time_reference(cfg: MAMLTRPOConfig, iterations: int) -> dict[str, Any]:
    torch.manual_seed(0)
    policy, _ = build(cfg.replace(meta_batch_size=1), torch.device("cpu"))
    sampler = BatchedSampler(cfg.env_id, 1, cfg.episodes_per_task, backend="numpy")
    tasks = list(sampler.task_distribution.split("train"))
    rng = np.random.default_rng(0)
    rows = []
    for it in range(iterations):
        batch = [tasks[i] for i in rng.choice(len(tasks), cfg.meta_batch_size, replace=False)]
        rows.append(reference_iteration(policy, sampler, batch, 1000 * it, cfg))
    keys = ("sample_s", "adapt_s", "outer_s", "iteration_s")
    return {k: float(np.median([r[k] for r in rows])) for k in keys}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations (median)")
    ap.add_argument("--reference-iterations", type=int, default=1)
    ap.add_argument("--cheetah-iterations", type=int, default=1, help="0 skips HalfCheetahVel")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (ours only)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--out", default="maml_speed",
                    help="results go to benchmarks/OUT.{md,json}")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prov = Provenance(args.device, args.threads, script=__file__)
    nav = MAMLTRPOConfig.from_preset("nav2d-paper", device=args.device)
    results: dict[str, Any] = {}
    variants = {
        "ours (exact second order)": nav,
        "ours, CG on 10% of the episodes": nav.replace(cg_subsample=0.1),
        "ours, first order": nav.replace(first_order=True),
    }
    for name, cfg in variants.items():
        results[name] = time_ours(cfg, args.iterations, args.device)
        print(name, {k: round(v, 3) for k, v in results[name].items()}, flush=True)
    if args.reference_iterations:
        results["per-task loop (pytorch-maml-rl's structure)"] = time_reference(
            nav, args.reference_iterations
        )
        print("reference", results["per-task loop (pytorch-maml-rl's structure)"], flush=True)
    cheetah = cheetah_cg = None
    if args.cheetah_iterations:
        hc = MAMLTRPOConfig.from_preset("halfcheetah-vel-paper", device=args.device)
        cheetah = time_ours(hc, args.cheetah_iterations, args.device)
        print("HalfCheetahVel", cheetah, flush=True)
        # The preset's exact curvature, and TRPO's 10% subsample as in the nav2d row.
        cheetah_cg = time_ours(hc.replace(cg_subsample=0.1), args.cheetah_iterations, args.device)
        print("HalfCheetahVel, CG on 10%", cheetah_cg, flush=True)
    prov.finish()

    ref = results.get("per-task loop (pytorch-maml-rl's structure)")
    lines = [
        "# MAML-TRPO seconds per meta-iteration",
        "",
        f"{prov.header()[:-1]}; {args.device}, {prov.describe_load()}.",
        "",
        "2D navigation, paper preset (20 tasks × 20 episodes × horizon 100, one inner step, "
        "validation episodes, TRPO step with 10 CG iterations); median of "
        f"{args.iterations} iterations after a warm-up ({args.reference_iterations} for the "
        "reference).",
        "",
        "| variant | sampling s | adaptation s | outer step s | total s/iter | vs per-task loop |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        speedup = f"{ref['iteration_s'] / r['iteration_s']:.1f}×" if ref else "—"
        lines.append(
            f"| {name} | {r['sample_s']:.3f} | {r['adapt_s']:.3f} | {r['outer_s']:.3f} | "
            f"{r['iteration_s']:.3f} | {speedup} |"
        )
    lines += ["", "Target: ≤ 1 s per iteration (pytorch-maml-rl: about 25 s, reported, not "
              "measured here)."]  # fmt: skip
    if cheetah:
        lines += [
            "",
            "HalfCheetahVel paper preset (40 tasks × 20 episodes × horizon 200, native batched "
            f"MuJoCo); median of {args.cheetah_iterations} after a warm-up.",
            "",
            "| variant | sampling s | adaptation s | outer step s | total s/iter |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        hc_rows = {"exact second order (the preset)": cheetah,
                   "CG on 10% of the episodes (`--cg-subsample 0.1`)": cheetah_cg}  # fmt: skip
        for name, r in hc_rows.items():
            lines.append(
                f"| {name} | {r['sample_s']:.2f} | {r['adapt_s']:.2f} | {r['outer_s']:.2f} | "
                f"{r['iteration_s']:.2f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        payload = {"device": args.device, "threads": args.threads, "nav2d": results,
                   "halfcheetah_vel": cheetah, "halfcheetah_vel_cg_subsample_0.1": cheetah_cg,
                   "metarl": metarl.__version__}  # fmt: skip
        write_report(args.out, payload, text, OUT, prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
