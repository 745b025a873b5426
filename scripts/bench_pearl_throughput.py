"""Seconds per iteration and env steps per second of PEARL, at the paper's settings.

For each setting — the ``halfcheetah-vel`` preset (Rakelly et al. 2019's HalfCheetahVel:
policy and twin Q-functions of 3 × 300 units, encoder 3 × 200, meta-batch 16 tasks × 256 RL
transitions + 100 context transitions, 5 tasks × (400 prior + 600 posterior) env steps and
2000 gradient steps per iteration) and the fast ``nav2d`` preset — this builds the agent of
``agents/pearl.py`` on its training tasks, fills their replay with the initial steps, and
times:

* **a collection round**, the ``num_tasks_sample`` tasks stepped together through the
  family's batched env (what ``PEARL.iteration`` does), and the same episodes one task
  after the other (what the paper's code does: one env, one task at a time); env steps/s of
  each and their ratio;
* **a SAC gradient step** (context posterior, twin-Q/encoder, policy and temperature
  updates, target averaging), the median of ``--steps`` steps after two warm-up steps.

Seconds per iteration = the batched round + ``num_train_steps_per_itr`` × the step's median:
an estimate from those two measurements (an iteration of the HalfCheetahVel preset is 2000
steps, minutes on a CPU); the nav2d row is also measured whole. Results go to
``benchmarks/pearl_throughput.{json,md}`` with the command and the machine's load.

Usage: python scripts/bench_pearl_throughput.py [--steps 20] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.agents import pearl
from metarl.evaluation.report import Provenance, describe_machine, write_report

OUT = Path(__file__).resolve().parent.parent / "benchmarks"

#: setting -> (preset, overrides): the initial steps only fill the replay.
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "HalfCheetahVel (paper)": ("halfcheetah-vel", {"num_train_tasks": 16,
                                                   "num_initial_steps": 400}),
    "2D navigation (nav2d preset)": ("nav2d", {}),
}  # fmt: skip


def measure(preset: str, overrides: dict[str, Any], steps: int, device: str) -> dict[str, Any]:
    cfg = pearl.PEARLConfig.from_preset(preset, device=device, tensorboard=False, **overrides)
    agent = pearl.PEARL(cfg)
    try:
        every = np.arange(cfg.num_train_tasks)  # the initial steps: every replay filled
        agent.replay.clear_encoder(torch.as_tensor(every, device=agent.device))
        agent._collect(every, cfg.num_initial_steps, posterior=False, to_encoder=True)
        ids = agent.rng.choice(cfg.num_train_tasks, size=cfg.num_tasks_sample, replace=False)
        n = cfg.num_steps_prior + cfg.num_extra_rl_steps_posterior
        agent._env(len(ids)), agent._env(1)  # both envs built before the clocks start
        start = time.perf_counter()
        together = agent._collect(ids, n, posterior=True, to_encoder=False).steps
        batched_s = time.perf_counter() - start
        start = time.perf_counter()
        alone = sum(agent._collect(ids[i : i + 1], n, posterior=True, to_encoder=False).steps
                    for i in range(len(ids)))  # fmt: skip
        sequential_s = time.perf_counter() - start
        ready = torch.arange(cfg.num_train_tasks, device=agent.device)
        for _ in range(2):
            agent._update(ready)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            agent._update(ready)
            times.append(time.perf_counter() - start)
        step_s = float(np.median(times))
        whole = None
        if cfg.num_train_steps_per_itr * step_s < 30:
            start = time.perf_counter()
            agent.iteration(1)
            whole = time.perf_counter() - start
    finally:
        agent.close()
    return {
        "preset": preset,
        "overrides": overrides,
        "num_tasks_sample": cfg.num_tasks_sample,
        "round_env_steps": together,
        "batched_round_s": batched_s,
        "batched_steps_per_s": together / batched_s,
        "sequential_round_s": sequential_s,
        "sequential_steps_per_s": alone / sequential_s,
        "speedup_batched": (together / batched_s) / (alone / sequential_s),
        "sac_step_s": step_s,
        "num_train_steps_per_itr": cfg.num_train_steps_per_itr,
        "iteration_s_estimate": batched_s + cfg.num_train_steps_per_itr * step_s,
        "iteration_s_measured": whole,
        "hidden_sizes": list(cfg.hidden_sizes),
        "encoder_hidden_sizes": list(cfg.encoder_hidden_sizes),
        "meta_batch": cfg.meta_batch,
        "batch_size": cfg.batch_size,
        "embedding_batch_size": cfg.embedding_batch_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed SAC gradient steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(OUT / "pearl_throughput"))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        print("--steps and --threads must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    prov = Provenance(
        args.device, args.threads, argv=sys.argv[1:] if argv is None else argv, script=__file__
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    rows = {}
    for name, (preset, overrides) in SETTINGS.items():
        print(f"{name} ...", flush=True)
        rows[name] = measure(preset, overrides, args.steps, args.device)
        print(json.dumps(rows[name], indent=1), flush=True)
    share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    prov.finish()
    machine = (f"{describe_machine(prov.machine)}, device `{args.device}`, "
               f"{prov.describe_load()}; this process ran on the CPU {share:.0%} of the "
               "wall-clock time")  # fmt: skip
    out = Path(args.out)
    lines = [
        "# PEARL training throughput",
        "",
        f"Made by `{prov.command}`. Machine: {machine}. Absolute numbers move with the "
        "machine's load; the ratios within one run are the comparison.",
        "",
        "| setting | policy / Q MLP | meta-batch × (RL + context) | collection round (env "
        "steps) | batched round (steps/s) | one task at a time (steps/s) | batched ÷ one at a "
        "time | SAC step (s) | gradient steps / iteration | s / iteration |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        it = (f"{r['iteration_s_measured']:.1f} (measured)" if r["iteration_s_measured"]
              else f"{r['iteration_s_estimate']:.0f} (estimated)")  # fmt: skip
        lines.append(
            f"| {name} | {'×'.join(map(str, r['hidden_sizes']))} | {r['meta_batch']} × "
            f"({r['batch_size']} + {r['embedding_batch_size']}) | {r['round_env_steps']:,} | "
            f"{r['batched_steps_per_s']:,.0f} | {r['sequential_steps_per_s']:,.0f} | "
            f"{r['speedup_batched']:.2f} | {r['sac_step_s']:.4f} | "
            f"{r['num_train_steps_per_itr']} | {it} |"
        )
    lines += [
        "",
        "A collection round steps the round's tasks together through the family's batched env "
        "(MuJoCo's native rollout for HalfCheetahVel, the torch env for 2D navigation), one "
        "row per task with its own z; *one task at a time* runs the same episodes with a "
        "one-row env per task, as the paper's code collects. *s / iteration* is the batched "
        "round plus the gradient steps at the measured median step time (estimated where an "
        "iteration takes minutes), or one whole timed iteration; all are wall-clock seconds, "
        "so on a loaded machine (the share of the wall-clock this process ran is under "
        "Machine) they are that many times slower than on an idle one. The paper trains "
        "HalfCheetahVel for hundreds of such iterations; on a 2-core CPU without a GPU an "
        "iteration of its setting is dominated by the 2000 SAC steps.",
    ]
    write_report(out.name, {"cpu_share": share, "rows": rows}, lines, out.parent, prov)
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
