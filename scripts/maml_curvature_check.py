"""How far does MAML-TRPO's full step go, against the trust region it aims at?

TRPO (Schulman et al. 2015, App. C) scales the conjugate-gradient direction ``s`` so that the
quadratic model of the KL, ``½ sᵀ H s``, equals ``max_kl``; the backtracking line search then
tries the full step first. If the curvature ``H`` is right, the full step's *measured* mean
KL is close to ``max_kl``. This script loads meta-trained runs and, on the same meta-batches
(same tasks, same episodes), runs one meta-iteration per curvature variant from the same
parameters, and reports for the full step (the line search's first candidate) the measured
KL ÷ ``max_kl`` and the surrogate's change, then the step the line search accepted.

Variants: exact curvature (``--cg-subsample 1``), TRPO's per-sample subsample (the first 10%
of every task's episodes; in MAML the inner-step Hessians inside the curvature come from
those episodes too), and the task subsample (every episode of the first fraction of the
tasks). Episodes are sampled once per meta-batch: every variant adapts the same parameters
with the same seeds, so its episodes are the same and the sampler's result is reused.

Usage:
    python scripts/maml_curvature_check.py --run nav2d=RUN --run halfcheetah-vel=RUN \\
        [--batches 2] [--out maml_curvature]

writes ``benchmarks/OUT.{json,md}`` with the command and the machine's load.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.agents import maml_trpo as M
from metarl.evaluation.report import Provenance, write_report

OUT = Path(__file__).resolve().parent.parent / "benchmarks"
NOTES = "<!-- notes: kept when the script rewrites the table above -->"
# Every variant sets its backtracking ratio: the run's own may be either.
VARIANTS: dict[str, dict[str, Any]] = {
    "exact": {"cg_subsample": 1.0, "ls_backtrack_ratio": 0.5},
    "episodes 10%": {
        "cg_subsample": 0.1,
        "cg_subsample_unit": "episodes",
        "ls_backtrack_ratio": 0.5,
    },
    "tasks 10%": {"cg_subsample": 0.1, "cg_subsample_unit": "tasks", "ls_backtrack_ratio": 0.5},
    "tasks 25%": {"cg_subsample": 0.25, "cg_subsample_unit": "tasks", "ls_backtrack_ratio": 0.5},
    # Finn et al.'s released code (rllab) backtracks by 0.8, pytorch-maml-rl by 0.5.
    "exact, backtrack 0.8": {"cg_subsample": 1.0, "ls_backtrack_ratio": 0.8},
    "episodes 10%, backtrack 0.8": {"cg_subsample": 0.1, "ls_backtrack_ratio": 0.8},
}


def check_run(name: str, run: str, batches: int, seed: int) -> list[dict[str, Any]]:
    policy, _, cfg = M.load_policy(run)
    _, sampler = M.build(cfg, torch.device("cpu"))
    state = copy.deepcopy(policy.state_dict())
    train_tasks = list(sampler.task_distribution.split("train"))

    # The line search's candidates: (fraction, surrogate, KL), the full step first.
    candidates: list[tuple[float, float, float]] = []

    collect = sampler.collect
    cache: dict[tuple[int, bool], Any] = {}

    def cached(policy_: Any, params: Any, tasks: Any, *, seed: int, per_task_params: bool = False):
        key = (seed, per_task_params)
        if key not in cache:
            cache[key] = collect(policy_, params, tasks, seed=seed, per_task_params=per_task_params)
        return cache[key]

    sampler.collect = cached  # type: ignore[method-assign]
    rows = []
    rng = np.random.default_rng(seed)
    try:
        for b in range(batches):
            replace = len(train_tasks) < cfg.meta_batch_size
            idx = rng.choice(len(train_tasks), cfg.meta_batch_size, replace=replace)
            tasks = [train_tasks[i] for i in idx]
            cache.clear()
            for variant, changes in VARIANTS.items():
                policy.load_state_dict(state)
                candidates.clear()
                stats = M.meta_step(policy, sampler, tasks, 10_000 + b, cfg.replace(**changes),
                                    line_search_trace=candidates)  # fmt: skip
                _, full_loss, full_kl = candidates[0]
                before = stats["surrogate_before"]
                rows.append({
                    "run": name,
                    "batch": b,
                    "variant": variant,
                    "full_step_kl_ratio": full_kl / cfg.max_kl,
                    "full_step_gain": before - full_loss,
                    "accepted_step": stats["step_size"],
                    "accepted_kl_ratio": stats["kl"] / cfg.max_kl,
                    "accepted_gain": stats["surrogate_before"] - stats["surrogate_after"],
                    "outer_s": stats["outer_s"],
                })  # fmt: skip
                r = rows[-1]
                print(
                    f"{name} batch {b} {variant:27s} full step KL/max "
                    f"{r['full_step_kl_ratio']:8.3f} gain {r['full_step_gain']:.5f}; accepted "
                    f"step {r['accepted_step']:.4g} KL/max {r['accepted_kl_ratio']:.3f} gain "
                    f"{r['accepted_gain']:.5f}; outer {r['outer_s']:.1f} s",
                    flush=True,
                )
    finally:
        sampler.close()
    return rows


def markdown(rows: list[dict[str, Any]], runs: dict[str, dict[str, Any]], header: str) -> str:
    out = [header, "", "| run | variant | full step: KL ÷ max-KL | full step: surrogate gain | "
           "accepted step | accepted: KL ÷ max-KL | accepted: surrogate gain | outer step s |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name in runs:
        for variant in VARIANTS:
            sel = [r for r in rows if r["run"] == name and r["variant"] == variant]

            def cell(key: str, fmt: str, sel: list = sel) -> str:
                return " / ".join(format(r[key], fmt) for r in sel)

            out.append(
                f"| {name} | {variant} | {cell('full_step_kl_ratio', '.3g')} | "
                f"{cell('full_step_gain', '.4f')} | {cell('accepted_step', '.4g')} | "
                f"{cell('accepted_kl_ratio', '.3f')} | {cell('accepted_gain', '.4f')} | "
                f"{cell('outer_s', '.1f')} |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR")
    p.add_argument("--batches", type=int, default=2, help="meta-batches per run")
    p.add_argument("--seed", type=int, default=123, help="draws the meta-batches' tasks")
    p.add_argument("--out", default="maml_curvature", help="benchmarks/OUT.{json,md}")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    prov = Provenance("cpu", 1, argv=sys.argv[1:] if argv is None else argv, script=__file__)
    for spec in args.run:
        name, sep, run = spec.partition("=")
        if not sep:
            p.error(f"--run takes NAME=RUN_DIR, got {spec!r}")
        cfg = json.loads((Path(run) / "config.json").read_text())["config"]
        runs[name] = {"run_dir": run, "env_id": cfg["env_id"], "meta_batch_size":
                      cfg["meta_batch_size"], "max_kl": cfg["max_kl"]}  # fmt: skip
        rows += check_run(name, run, args.batches, args.seed)
    prov.finish()
    header = (
        f"{prov.header()[:-1]}; {prov.describe_load()}, {time.perf_counter() - t0:.0f} s. Runs: "
        + "; ".join(
            f"{k} = `{v['run_dir']}` ({v['env_id']}, meta-batch {v['meta_batch_size']})"
            for k, v in runs.items()
        )
        + f". One cell value per meta-batch ({args.batches}), separated by /."
    )
    md = OUT / f"{args.out}.md"
    # The text above the command line and the reading below the marker survive a re-run.
    old = md.read_text() if md.exists() else ""
    above = old.partition("`python scripts/maml_curvature_check.py")[0] if old else ""
    notes = old.partition(NOTES)[2]
    text = above + markdown(rows, runs, header) + "\n" + NOTES + (notes or "\n")
    write_report(args.out, {"runs": runs, "rows": rows}, text, OUT, prov)
    print(f"wrote {OUT / args.out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
