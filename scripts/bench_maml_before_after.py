"""MAML-TRPO meta-iteration before and after the outer-step speed-up, paired.

The implementation before (``scripts/maml_trpo_reference.py``, the oracle of the equality test)
and the current ``agents/maml_trpo.py`` run the same meta-iteration — same policy state, same
tasks, same seeds — one after the other, their order alternating between iterations, in one
process: both see the same machine load, so the per-iteration ratio before ÷ after is robust
to the machine's load (the absolute seconds are not). Variants: the 2D-navigation
paper preset (exact second order, CG on 10% of the episodes, first order), and the
HalfCheetahVel paper preset (exact second order, 40 tasks × 20 episodes × horizon 200).

Results go to ``benchmarks/maml_speed_before_after.{md,json}`` with the command and the load.

Usage: python scripts/bench_maml_before_after.py [--iterations 3] [--cheetah-iterations 1]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from maml_trpo_reference import meta_step_before  # beside this script

from metarl.agents.maml_trpo import MAMLTRPOConfig, build, meta_step
from metarl.evaluation.report import Provenance, write_report

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks"
KEYS = ("sample_s", "adapt_s", "outer_s", "iteration_s")


def paired(cfg: MAMLTRPOConfig, iterations: int, warmup: bool) -> dict[str, Any]:
    """``iterations`` paired meta-iterations (plus one warm-up pair if ``warmup``)."""
    torch.manual_seed(0)
    policy, sampler = build(cfg, torch.device("cpu"))
    tasks = list(sampler.task_distribution.split("train"))
    rng = np.random.default_rng(0)
    rows: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for it in range(iterations + int(warmup)):
        batch = [tasks[i] for i in rng.choice(len(tasks), cfg.meta_batch_size, replace=True)]
        state = copy.deepcopy(policy.state_dict())
        pair = [("before", meta_step_before), ("after", meta_step)]
        for name, step in pair if it % 2 else pair[::-1]:
            policy.load_state_dict(state)
            stats = step(policy, sampler, batch, 1000 * it, cfg)
            if it or not warmup:
                rows[name].append(stats)
            print(it, name, {k: round(stats[k], 3) for k in KEYS}, flush=True)
    sampler.close()
    out: dict[str, Any] = {"iterations": iterations, "warmup": warmup}
    for name, rs in rows.items():
        out[name] = {k: float(np.median([r[k] for r in rs])) for k in KEYS}
    for k in ("outer_s", "iteration_s"):
        ratios = [b[k] / a[k] for b, a in zip(rows["before"], rows["after"], strict=True)]
        out[f"ratio_{k}"] = float(np.median(ratios))
        out[f"ratios_{k}"] = ratios
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=3, help="paired nav2d iterations (median)")
    ap.add_argument("--cheetah-iterations", type=int, default=1,
                    help="paired HalfCheetahVel iterations, no warm-up (0 skips it)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prov = Provenance("cpu", args.threads, script=__file__)
    nav = MAMLTRPOConfig.from_preset("nav2d-paper")
    variants: dict[str, tuple[MAMLTRPOConfig, int, bool]] = {
        "2D navigation, exact second order": (nav, args.iterations, True),
        "2D navigation, CG on 10% of the episodes": (
            nav.replace(cg_subsample=0.1), args.iterations, True),
        "2D navigation, first order": (nav.replace(first_order=True), args.iterations, True),
    }  # fmt: skip
    if args.cheetah_iterations:
        hc = MAMLTRPOConfig.from_preset("halfcheetah-vel-paper")
        variants["HalfCheetahVel, exact second order"] = (hc, args.cheetah_iterations, False)
    results = {name: paired(cfg, n, warm) for name, (cfg, n, warm) in variants.items()}
    prov.finish()
    lines = [
        "# MAML-TRPO meta-iteration before and after the outer-step speed-up (paired)",
        "",
        f"{prov.header()[:-1]}; {prov.describe_load()}.",
        "",
        "Before: `scripts/maml_trpo_reference.py` (the code of commit 441edd4); after: "
        "`agents/maml_trpo.py`. Each iteration runs both on the same policy state, tasks and "
        "seeds, in alternating order; medians over the iterations (nav2d after a warm-up "
        "pair, HalfCheetahVel without), and the median of the per-iteration ratios, which "
        "is what the machine's load affects least.",
        "",
        "| variant | iterations | outer step before s | after s | before ÷ after (paired) "
        "| iteration before s | after s | before ÷ after (paired) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        b, a = r["before"], r["after"]
        lines.append(
            f"| {name} | {r['iterations']} | {b['outer_s']:.2f} | {a['outer_s']:.2f} | "
            f"{r['ratio_outer_s']:.2f}× | {b['iteration_s']:.2f} | {a['iteration_s']:.2f} | "
            f"{r['ratio_iteration_s']:.2f}× |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        payload = {"threads": args.threads, "results": results}
        write_report("maml_speed_before_after", payload, text, OUT, prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
