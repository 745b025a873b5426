"""MAML-TRPO seconds per meta-iteration with ``--sampler torch`` beside ``--sampler native``.

The 2D-navigation paper preset of Finn et al. 2017 (20 tasks × 20 episodes × horizon 100,
one inner step, validation episodes, the TRPO outer step; ``--cg-subsample`` as trained in
the README, 0.1 by default), the same config except for the sampler:

* ``torch``: the family's pure-torch envs on ``--device``, stepped with the policy, no host
  round trip (``envs/torch_envs.py``);
* ``native``: the family's vectorised NumPy env in one process, one host ↔ torch transfer
  per env step.

Both give the same episodes for the same seed (docs/samplers.md), so the
difference is only where the env steps. Iterations alternate between the two samplers
(ABAB…) so that a change in the machine's load falls on both; the first iteration
of each is a warm-up; medians of the rest are reported, split into sampling, inner-step
adaptation and outer step (``meta_step``'s own timers).

The GPU column of the issue (``--device cuda``) is only measured on a machine with a GPU;
the report says "not measured" otherwise. RL²'s iteration time with its torch vs NumPy env
backend is in benchmarks/rl2_throughput.md (scripts/bench_rl2_throughput.py).

Usage: python scripts/bench_maml_sampler.py [--iterations 3] [--threads 1] [--device cpu]
    [--cg-subsample 0.1] [--out benchmarks/maml_sampler]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.agents.maml_trpo import MAMLTRPOConfig, build, meta_step
from metarl.evaluation.report import Provenance, write_report

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("sample_s", "adapt_s", "outer_s", "iteration_s", "env_steps_per_s")
SAMPLERS = ("torch", "native")


def run(iterations: int, device: str, cg_subsample: float) -> dict[str, Any]:
    """Alternate meta-iterations of the two samplers; per-iteration timers of each."""
    built = {}
    for name in SAMPLERS:
        cfg = MAMLTRPOConfig.from_preset(
            "nav2d-paper", sampler=name, device=device, cg_subsample=cg_subsample
        )
        torch.manual_seed(0)  # the same initial policy for both
        built[name] = (cfg, *build(cfg, torch.device(device)))
    tasks = list(built["torch"][2].task_distribution.split("train"))
    rng = np.random.default_rng(0)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in SAMPLERS}
    for it in range(iterations + 1):  # the first is a warm-up
        idx = rng.choice(len(tasks), built["torch"][0].meta_batch_size, replace=False)
        for name in SAMPLERS:
            cfg, policy, sampler = built[name]
            stats = meta_step(policy, sampler, [tasks[i] for i in idx], 1000 * it, cfg)
            if it:
                rows[name].append({k: float(stats[k]) for k in KEYS})
            print(f"iteration {it} {name:6s} " + " ".join(
                f"{k}={stats[k]:.3f}" for k in KEYS), flush=True)  # fmt: skip
    for _, _, sampler in built.values():
        sampler.close()
    return {
        name: {"median": {k: float(np.median([r[k] for r in rs])) for k in KEYS}, "all": rs}
        for name, rs in rows.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--iterations", type=int, default=3, help="timed iterations per sampler")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, or cuda where there is a GPU")
    p.add_argument("--cg-subsample", type=float, default=0.1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "maml_sampler"))
    args = p.parse_args(argv)
    if args.iterations < 1:
        p.error("--iterations must be at least 1")
    torch.set_num_threads(args.threads)
    prov = Provenance(
        args.device, args.threads, argv=sys.argv[1:] if argv is None else argv, script=__file__
    )
    res = run(args.iterations, args.device, args.cg_subsample)
    prov.finish()
    t, n = res["torch"]["median"], res["native"]["median"]
    print(
        f"iteration: torch {t['iteration_s']:.3f} s, native {n['iteration_s']:.3f} s "
        f"(native ÷ torch {n['iteration_s'] / t['iteration_s']:.2f}); sampling: torch "
        f"{t['sample_s']:.3f} s, native {n['sample_s']:.3f} s "
        f"(native ÷ torch {n['sample_s'] / t['sample_s']:.2f})"
    )
    meta = {
        "device": args.device,
        "threads": args.threads,
        "cg_subsample": args.cg_subsample,
        "iterations": args.iterations,
    }
    out = Path(args.out)
    write_report(out.name, {"meta": meta, "results": res}, _markdown(meta, res, prov),
                 out.parent, prov)  # fmt: skip
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


def _paired(res: dict[str, Any], key: str) -> list[float]:
    """native ÷ torch of ``key``, iteration by iteration."""
    return [n[key] / t[key] for t, n in zip(res["torch"]["all"], res["native"]["all"], strict=True)]


def _markdown(meta: dict[str, Any], res: dict[str, Any], prov: Provenance) -> str:
    t, n = res["torch"]["median"], res["native"]["median"]
    gpu = "measured" if meta["device"].startswith("cuda") else "not measured: no GPU"
    lines = [
        "# MAML-TRPO meta-iteration: `--sampler torch` vs `--sampler native`",
        "",
        f"{prov.header()[:-1]}; device `{meta['device']}`, {prov.describe_load()}.",
        "",
        "2D navigation, paper preset (Finn et al. 2017: 20 tasks × 20 episodes × horizon 100, "
        f"one inner step, validation episodes, TRPO outer step, CG on {meta['cg_subsample']:g} "
        f"of the episodes); median of {meta['iterations']} iterations per sampler after a "
        "warm-up, the two samplers alternating. Same episodes either way (docs/samplers.md); "
        "only where the envs step differs.",
        "",
        "| `--sampler` | sampling s | adaptation s | outer step s | iteration s | env steps/s "
        "(whole iteration) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in SAMPLERS:
        r = res[name]["median"]
        lines.append(
            f"| {name} ({meta['device']}) | {r['sample_s']:.3f} | {r['adapt_s']:.3f} | "
            f"{r['outer_s']:.3f} | {r['iteration_s']:.3f} | {r['env_steps_per_s']:,.0f} |"
        )
    paired = {k: _paired(res, k) for k in ("sample_s", "iteration_s")}
    lines += [
        f"| torch (GPU) | {gpu} | | | | |",
        "",
        f"native ÷ torch of the medians: sampling {n['sample_s'] / t['sample_s']:.2f}×, whole "
        f"iteration {n['iteration_s'] / t['iteration_s']:.2f}×. Paired (each iteration of one "
        "sampler with the other's run right after it, so under nearly the same load): sampling "
        + ", ".join(f"{x:.2f}" for x in paired["sample_s"])
        + "; iteration "
        + ", ".join(f"{x:.2f}" for x in paired["iteration_s"])
        + f" (medians {np.median(paired['sample_s']):.2f} and "
        f"{np.median(paired['iteration_s']):.2f}).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
