"""Seconds per iteration and env steps per second of VariBAD training, beside RL²'s.

For each case — VariBAD's ``quick`` preset on the 5×5 gridworld (32 trials of 4 × 15
steps), RL²'s ``quick`` preset moved onto the same gridworld and trial (32 trials, GRU 32),
and VariBAD's ``halfcheetah-vel`` preset (16 trials of 2 × 200 MuJoCo steps, the paper's
setting) — this builds the agent and times ``--iterations`` training iterations after one
warm-up, from the seconds each iteration reports: collection (the trials, the encoder or GRU
stepped with the env), the update (VariBAD: PPO, then the VAE, also shown alone) and the
whole iteration. Env steps/s = env steps collected ÷ the iteration's seconds. Medians are
reported, every value in the JSON. The last column divides each case's seconds per
iteration by RL²'s on the same gridworld trials.

Results go to ``benchmarks/varibad_throughput.{json,md}`` with the command and the machine's
load.

Usage: python scripts/bench_varibad_throughput.py [--iterations 3] [--threads 1]
       [--skip-mujoco]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.agents import rl2, varibad
from metarl.evaluation.report import Provenance, describe_machine, write_report

OUT = Path(__file__).resolve().parent.parent / "benchmarks"
GRID = "metarl/GridNavigation-v0"


def _cases(skip_mujoco: bool) -> dict[str, tuple[Any, Any, str]]:
    """name -> (trainer class, config, policy size)."""
    vq = varibad.PRESETS["quick"]
    rq = rl2.RL2Config.from_preset("quick", env_id=GRID, episodes_per_trial=4, num_trials=32)
    out: dict[str, tuple[Any, Any, str]] = {
        "VariBAD quick (gridworld)": (
            varibad.VariBAD, vq,
            f"policy MLP {vq.hidden_sizes}, GRU encoder {vq.encoder_hidden}, latent "
            f"{vq.latent_dim}",
        ),
        "RL² quick (same gridworld trials)": (rl2.RL2, rq, f"GRU {rq.hidden_size}"),
    }  # fmt: skip
    if not skip_mujoco:
        hc = varibad.PRESETS["halfcheetah-vel"]
        out["VariBAD halfcheetah-vel (paper)"] = (
            varibad.VariBAD, hc,
            f"policy MLP {hc.hidden_sizes}, GRU encoder {hc.encoder_hidden}, latent "
            f"{hc.latent_dim}",
        )  # fmt: skip
    return out


def measure(trainer: Any, cfg: Any, iterations: int) -> dict[str, Any]:
    agent = trainer(cfg.replace(seed=0, device="cpu"))
    keys = ("sample_s", "update_s", "vae_s", "iteration_s")
    rows: dict[str, list[float]] = {k: [] for k in (*keys, "steps_per_s")}
    steps = 0
    try:
        for it in range(iterations + 1):  # the first is a warm-up
            stats = agent.iteration(it)
            if it:
                for k in keys:
                    if k in stats:
                        rows[k].append(float(stats[k]))
                rows["steps_per_s"].append(stats["env_steps"] / stats["iteration_s"])
                steps = int(stats["env_steps"])
    finally:
        agent.close()
    med = {k: float(np.median(v)) if v else None for k, v in rows.items()}
    return {"env_steps_per_iteration": steps, "median": med,
            "all": {k: [round(x, 4) for x in v] for k, v in rows.items()}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per case")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--skip-mujoco", action="store_true", help="leave out HalfCheetahVel")
    parser.add_argument("--out", default=str(OUT), help="folder for varibad_throughput.*")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.threads < 1:
        parser.error("--iterations and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    prov = Provenance(
        "cpu", args.threads, argv=sys.argv[1:] if argv is None else argv, script=__file__
    )
    results = []
    for name, (trainer, cfg, size) in _cases(args.skip_mujoco).items():
        row = {"case": name, "size": size, "env_id": cfg.env_id,
               "num_trials": cfg.num_trials, **measure(trainer, cfg, args.iterations)}  # fmt: skip
        results.append(row)
        m = row["median"]
        print(f"{name:36s} {m['iteration_s']:.3f} s/iteration  {m['steps_per_s']:,.0f} steps/s",
              flush=True)  # fmt: skip
    base = next(r for r in results if r["case"].startswith("RL²"))["median"]["iteration_s"]
    prov.finish()
    machine = f"{describe_machine(prov.machine)}, device `cpu`, {prov.describe_load()}"
    out = Path(args.out)
    lines = [
        "# VariBAD training throughput",
        "",
        f"Made by `{prov.command}`: {args.iterations} timed iterations per row after one warm-up, "
        "median shown (every value in varibad_throughput.json).",
        "",
        f"Machine: {machine}. Absolute numbers move with the load; the ratios within one run "
        "are the comparison.",
        "",
        "| case | networks | trials × steps | collection (s) | PPO + VAE update (s) | "
        "of which VAE (s) | s / iteration | env steps / s | s / iteration ÷ RL²'s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        m = r["median"]
        vae = "—" if m["vae_s"] is None else f"{m['vae_s']:.3f}"
        lines.append(
            f"| {r['case']} | {r['size']} | {r['num_trials']} × "
            f"{r['env_steps_per_iteration'] // r['num_trials']} | {m['sample_s']:.3f} | "
            f"{m['update_s']:.3f} | {vae} | {m['iteration_s']:.3f} | "
            f"{m['steps_per_s']:,.0f} | {m['iteration_s'] / base:.2f} |"
        )
    write_report("varibad_throughput", {"results": results}, lines, out, prov)
    print(f"wrote {out / 'varibad_throughput.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
