"""MAML-TRPO learning figures: held-out adaptation curves beside the baselines and the papers.

For a meta-trained run (``metarl train --agent maml-trpo ...``) evaluated with ``metarl
evaluate RUN --steps 3`` (its ``eval_test.json``), this script evaluates on exactly the same
protocol (``metarl.evaluation.evaluate_policy_adaptation``: every held-out task, fresh
episodes per step, inner steps with lr α then α/2, 95% CIs over (seed, task) pairs):

* ``random-init`` — fine-tuning from a randomly initialised policy of the same architecture
  with the same inner steps (no meta-training; one initialisation per evaluation seed);
* any baseline run given with ``--baseline DIR`` (e.g. the ``pretrained`` agent of Finn et
  al. 2017, Sec. 5.2, if it is registered), through its agent's own ``evaluate``.

``eval`` writes ``benchmarks/maml_learning/<name>.{json,png}`` (curves, the meta-training
cost from the run's metrics.csv, the machine's load); ``report`` turns every such JSON into
``benchmarks/maml_learning.md`` with the comparisons to the published numbers, each
computed from the data (the 2D-navigation bar is checked, not asserted).

Usage:
    metarl evaluate RUN --steps 3 --seeds 0 1 2 3 4
    python scripts/maml_learning.py eval --name nav2d --run RUN [--load-log FILE] \\
        [--baseline DIR ...] [--note TEXT]
    python scripts/maml_learning.py report
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.agents import get_agent
from metarl.agents.maml_trpo import MAMLTRPOConfig, inner_step_fn
from metarl.evaluation import AdaptationCurve, evaluate_policy_adaptation, mean_ci95
from metarl.evaluation.report import Provenance, describe_machine
from metarl.learning.functional import load_params
from metarl.learning.policies import make_policy
from metarl.runs import Run
from metarl.stepping.registry import make

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "maml_learning"
REPORT = ROOT / "benchmarks" / "maml_learning.md"

# Published reference points, with what they are. Li et al. 2017 ("Meta-SGD: Learning to
# Learn Quickly for Few-Shot Learning", Sec. 4.3): MAML on 2D navigation, average return
# after one gradient step, in the setting of Finn et al. 2017 (the rllab point env of
# cbfinn/maml_rl: reward −‖x − g‖ per step, at most 100 steps, "average return" = mean over
# episodes of the undiscounted per-episode sum) — the quantity our curves hold.
PUBLISHED = {
    "metarl/Navigation2D-v0": {
        "value": -9.12,
        "steps": 1,
        "source": "Li et al. 2017 (Meta-SGD), MAML after one gradient step on 2D navigation",
    },
}


def training_summary(run_dir: Path, evaluated: int | None = None) -> dict[str, Any]:
    """Meta-training cost and progress from the run's metrics.csv, up to the ``evaluated``
    checkpoint's iteration when the evaluation recorded it (a run may have trained on)."""
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    if evaluated is not None:
        rows = rows[:evaluated]
    if not rows:
        raise SystemExit(f"{run_dir}/metrics.csv has no iterations yet")
    its = [float(r["iteration_s"]) for r in rows]

    def mean(key: str, part: list[dict[str, str]]) -> float:
        return float(np.mean([float(r[key]) for r in part]))

    return {
        "iterations": len(rows),
        "wall_clock_s": sum(its),
        "median_iteration_s": statistics.median(its),
        "env_steps": sum(float(r["env_steps"]) for r in rows),
        "first10_pre_adapt_return": mean("pre_adapt_return", rows[:10]),
        "first10_post_adapt_return": mean("post_adapt_return", rows[:10]),
        "last10_pre_adapt_return": mean("pre_adapt_return", rows[-10:]),
        "last10_post_adapt_return": mean("post_adapt_return", rows[-10:]),
    }


def load_summary(path: Path | None, run_dir: Path) -> dict[str, Any] | None:
    """1-minute load averages sampled during meta-training: the lines ``HH:MM:SS l1 l5 l15 ...``
    (UTC, today) of ``path`` between the run's config.json and its last metrics.csv write."""
    if path is None or not path.exists():
        return None
    day = 24 * 3600
    start = (run_dir / "config.json").stat().st_mtime % day
    end = (run_dir / "metrics.csv").stat().st_mtime % day
    vals = []
    for line in path.read_text().splitlines():
        parts = line.split()
        try:
            h, m, sec = (int(x) for x in parts[0].split(":"))
            t, load = h * 3600 + m * 60 + sec, float(parts[1])
        except (ValueError, IndexError):
            continue
        inside = start <= t <= end + 60 if start <= end else t >= start or t <= end + 60
        if inside:  # (a run past midnight UTC wraps around)
            vals.append(load)
    if not vals:
        return None
    return {
        "samples": len(vals),
        "min": min(vals),
        "median": statistics.median(vals),
        "max": max(vals),
    }


def random_init_curve(
    cfg: MAMLTRPOConfig, seeds: list[int], num_steps: int, episodes: int | None
) -> AdaptationCurve:
    """Fine-tuning from a random initialisation (a fresh one per seed) with MAML's inner step
    and the evaluation protocol of the MAML run."""
    env = make(cfg.env_id, **cfg.env_kwargs())
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    curves = []
    for s in seeds:
        torch.manual_seed(10_000 + s)
        policy = make_policy(obs_space, act_space, cfg.hidden_sizes, cfg.nonlinearity, cfg.init_std,
                             normalize_actions=cfg.normalize_actions)  # fmt: skip
        params = {k: v.detach().clone() for k, v in policy.named_parameters()}
        load_params(policy, params)
        curves.append(
            evaluate_policy_adaptation(
                policy,
                params,
                cfg.env_id,
                inner_step_fn(policy, cfg),
                agent="random-init",
                num_steps=num_steps,
                lrs=(cfg.inner_lr, cfg.inner_lr / 2),
                episodes_per_step=episodes,
                seeds=(s,),
                backend=cfg.backend,
                env_kwargs=cfg.env_kwargs(),
            )
        )
    first = curves[0]
    return AdaptationCurve(
        agent="random-init",
        env_id=cfg.env_id,
        unit=first.unit,
        returns=np.concatenate([c.returns for c in curves], axis=0),
        env_steps=first.env_steps,
        split="test",
        meta={**first.meta, "seeds": seeds, "init": "torch.manual_seed(10000 + seed), per seed"},
    )


def plot(curves: list[AdaptationCurve], run_dir: Path, path: Path, title: str, note: str) -> None:
    """Left: the held-out adaptation curves; right: the meta-training returns per iteration
    (training tasks, before and after the inner step, 10-iteration moving mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, tx) = plt.subplots(1, 2, figsize=(10, 3.8))
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    it = np.array([int(r["iteration"]) for r in rows])
    for key, label in (("pre_adapt_return", "before the inner step"),
                       ("post_adapt_return", "after one inner step")):  # fmt: skip
        y = np.array([float(r[key]) for r in rows])
        w = min(10, len(y))
        smooth = np.convolve(y, np.ones(w) / w, mode="valid")
        tx.plot(it[w - 1 :], smooth, label=label)
    tx.set_xlabel("meta-iteration")
    tx.set_ylabel("mean episode return (training tasks)")
    tx.set_title("meta-training (10-iteration moving mean)", fontsize=9)
    tx.legend(fontsize=8)
    tx.grid(alpha=0.3)
    for c in curves:
        x = np.arange(c.num_units + 1)
        mean, half = c.mean(), np.nan_to_num(c.ci95())
        ax.plot(x, mean, marker="o", label=c.agent)
        ax.fill_between(x, mean - half, mean + half, alpha=0.2)
    ref = PUBLISHED.get(curves[0].env_id)
    if ref:
        ax.scatter([ref["steps"]], [ref["value"]], marker="*", s=120, color="k", zorder=5,
                   label=f"published MAML ({ref['value']})")  # fmt: skip
    ax.set_xticks(np.arange(max(c.num_units for c in curves) + 1))
    ax.set_xlabel("inner gradient steps on the held-out task")
    ax.set_ylabel("mean episode return (held-out tasks)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, note, fontsize=6, color="0.35")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def resumes_before(run: Path, curve: AdaptationCurve) -> list[dict[str, Any]]:
    """The run's changes of settings on resume (resumes.jsonl) made before the evaluated
    checkpoint's iteration (all of them when the evaluation did not record it)."""
    its = curve.meta.get("iterations")
    return [r for r in Run.read_resumes(run) if its is None or r["iteration"] < int(its)]


def cmd_eval(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    record = Run.read_record(run)
    if record["agent"] != "maml-trpo":
        raise SystemExit(f"{run} is a {record['agent']} run, not maml-trpo")
    cfg = MAMLTRPOConfig.from_dict(record["config"])
    ev = run / "eval_test.json"
    if not ev.exists():
        raise SystemExit(f"{ev} is missing: run `metarl evaluate {run} --steps 3` first")
    maml = AdaptationCurve.load(ev)
    maml.agent = "maml-trpo"
    seeds = list(maml.meta["seeds"])
    steps = maml.num_units
    episodes = int(maml.meta["episodes_per_step"])
    prov = Provenance("cpu", script=__file__)
    t0 = time.perf_counter()
    curves = [maml, random_init_curve(cfg, seeds, steps, episodes)]
    for d in args.baseline:
        agent = Run.read_record(d)["agent"]
        c, _, _ = get_agent(agent).evaluate(d, num_steps=steps, seeds=tuple(seeds),
                                            episodes_per_step=episodes)  # fmt: skip
        c.agent = agent
        curves.append(c)
    eval_s = time.perf_counter() - t0
    provenance = prov.finish()
    OUT.mkdir(parents=True, exist_ok=True)
    result = {
        "name": args.name,
        "env_id": cfg.env_id,
        "run_dir": str(run),
        "config": cfg.to_dict(),
        "training": training_summary(run, maml.meta.get("iterations")),
        "resumes": resumes_before(run, maml),
        "training_load": load_summary(Path(args.load_log) if args.load_log else None, run),
        "note": args.note,
        "baseline_eval_s": eval_s,
        "baseline_eval_load_before_after": [
            " ".join(f"{x:.2f}" for x in load or []) or "n/a"
            for load in (prov.load_before, prov.load_after)
        ],
        "machine": describe_machine(provenance["machine"]),
        "commands": list(args.commands),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "provenance": provenance,
        "curves": {c.agent: c.to_json() for c in curves},
    }
    (OUT / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    title = f"{cfg.env_id}, held-out tasks ({len(seeds)} seeds × {maml.returns.shape[1]} tasks)"
    note = (f"{result['training']['iterations']} meta-iterations; "
            f"{provenance['machine']['cores']}-core CPU; "
            "mean ± 95% CI over (seed, task)")  # fmt: skip
    plot(curves, run, OUT / f"{args.name}.png", title, note)
    print(f"wrote {OUT / (args.name + '.json')} and .png")


def _short_command(cmd: str) -> str:
    """The eval command with its --note paragraph and --commands list elided (shown above)."""
    cmd = re.sub(r"--note '.*?' (?=--commands|--threads|$)", "--note '<the paragraph above>' ",
                 cmd, flags=re.S)  # fmt: skip
    return re.sub(r"--commands .*$", "--commands <the command lines above>", cmd, flags=re.S)


def _fmt(m: float, h: float) -> str:
    return f"{m:.2f} ± {h:.2f}"


def section(data: dict[str, Any]) -> list[str]:
    curves = {k: AdaptationCurve(**{x: v for x, v in c.items() if x != "summary"})
              for k, c in data["curves"].items()}  # fmt: skip
    maml = curves["maml-trpo"]
    k = maml.num_units
    cfg, tr = data["config"], data["training"]
    lines = [f"## {data['env_id']} (`{data['name']}`)", ""]
    if data.get("note"):
        lines += [data["note"], ""]
    lines += [
        f"![{data['name']}](maml_learning/{data['name']}.png)",
        "",
        "Mean episode return on the held-out (test) tasks, ± 95% CI over (seed, task) pairs, "
        f"{maml.returns.shape[0]} seeds × {maml.returns.shape[1]} tasks, "
        f"{maml.meta['episodes_per_step']} fresh episodes per step, inner lr "
        f"{maml.meta['lrs'][0]} then {maml.meta['lrs'][-1]}:",
        "",
        "| agent | " + " | ".join(f"k={i}" for i in range(k + 1)) + " | step 1 − step 0 |",
        "| --- | " + " | ".join("---:" for _ in range(k + 2)) + " |",
    ]
    for name, c in curves.items():
        m, h = c.mean(), c.ci95()
        im, ih = c.improvement(1)
        lines.append(f"| {name} | " + " | ".join(_fmt(m[i], h[i]) for i in range(k + 1))
                     + f" | {_fmt(im, ih)} |")  # fmt: skip
    lines.append("")
    # MAML after one step against every baseline after one step: paired over (seed, task)
    # when the seeds and tasks agree (they do: same split, same seeds).
    a1 = maml.returns[..., 1].reshape(-1)
    for name, c in curves.items():
        if name == "maml-trpo" or c.returns.shape != maml.returns.shape:
            continue
        for steps in sorted({1, k}):
            diff = a1 if steps == 1 else maml.returns[..., k].reshape(-1)
            d_mean, d_half = mean_ci95(diff - c.returns[..., steps].reshape(-1))
            paired = _fmt(float(d_mean), float(d_half))
            lines.append(f"- maml-trpo − {name} after {steps} step(s): {paired} (paired over "
                         "seed × task)")  # fmt: skip
    im, ih = maml.improvement(1)
    lines.append(
        f"- maml-trpo, return after one step − before: {_fmt(im, ih)}; the 95% CI "
        + ("excludes zero." if im - ih > 0 else "does **not** exclude zero.")
    )
    ref = PUBLISHED.get(data["env_id"])
    if ref:
        m1, h1 = maml.mean()[ref["steps"]], maml.ci95()[ref["steps"]]
        reached = m1 >= ref["value"]
        lines.append(
            f"- Published: {ref['value']} ({ref['source']}). Ours after {ref['steps']} step: "
            f"{_fmt(m1, h1)} — " + ("reaches it." if reached else "does **not** reach it.")
        )
    lines += [
        "",
        f"Meta-training: {tr['iterations']} meta-iterations, meta-batch "
        f"{cfg['meta_batch_size']} tasks × {cfg['episodes_per_task']} episodes, horizon "
        f"{cfg['horizon'] or 'registered'}, {'first' if cfg['first_order'] else 'second'} order, "
        f"CG on {cfg['cg_subsample']:.0%} of the episodes, line search backtracking by "
        f"{cfg.get('ls_backtrack_ratio', 0.5)}, {cfg['hidden_sizes']} "
        f"{cfg['nonlinearity']} policy, seed {cfg['seed']}; "
        f"{tr['wall_clock_s'] / 60:.1f} min wall-clock (median {tr['median_iteration_s']:.2f} "
        f"s/iteration, {tr['env_steps'] / 1e6:.1f} M env steps), 1 torch thread.",
        f"Training-batch returns, mean of the first → last 10 iterations: before adaptation "
        f"{tr['first10_pre_adapt_return']:.2f} → {tr['last10_pre_adapt_return']:.2f}, after "
        f"{tr['first10_post_adapt_return']:.2f} → {tr['last10_post_adapt_return']:.2f}.",
    ]
    for r in data.get("resumes", []):
        changes = ", ".join(f"{k} {a} → {b}" for k, (a, b) in r["changed"].items())
        lines.append(f"Resumed at iteration {r['iteration']} with other settings "
                     f"(the run's resumes.jsonl): {changes}.")  # fmt: skip
    ld = data.get("training_load")
    if ld:
        lines.append(
            f"Machine: {data['machine']}; 1-minute load during meta-training (sampled each "
            f"minute, {ld['samples']} samples): min {ld['min']:.1f}, median {ld['median']:.1f}, "
            f"max {ld['max']:.1f}."
        )
    else:
        lines.append(f"Machine: {data['machine']}.")
    lines += [
        f"Baseline evaluation: {data['baseline_eval_s']:.0f} s, load before/after "
        f"{data['baseline_eval_load_before_after']}.",
        "",
        "```bash",
        *data.get("commands", []),
        _short_command(data["command"]),
        "```",
        "",
    ]
    return lines


def cmd_report(args: argparse.Namespace) -> None:
    files = sorted(OUT.glob("*.json"))
    if not files:
        raise SystemExit(f"no results in {OUT}: run `eval` first")
    lines = [
        "# MAML-TRPO learning on held-out tasks",
        "",
        "Written by `python scripts/maml_learning.py report` from `benchmarks/maml_learning/"
        "*.json`; every comparison below is computed from those files. The machine has 2 CPU "
        "cores (load figures per section).",
        "",
    ]
    order = {"nav2d": 0, "halfcheetah-vel": 1, "halfcheetah-dir": 2}
    files = sorted(files, key=lambda p: (order.get(p.stem, 9), p.stem))
    for f in files:
        lines += section(json.loads(f.read_text()))
    REPORT.write_text("\n".join(lines))
    print(f"wrote {REPORT}")
    results_table(files)


def results_table(files: list[Path]) -> None:
    """The compact table between the ``maml-results`` markers of ``docs/results.md``."""
    rows = [
        "| family (schedule) | agent | 0 steps | 1 step | 3 steps |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for f in files:
        data = json.loads(f.read_text())
        cfg, tr = data["config"], data["training"]
        sched = (f"{tr['iterations']} it., {cfg['meta_batch_size']}×{cfg['episodes_per_task']}"
                 f" ep., {tr['wall_clock_s'] / 60:.0f} min")  # fmt: skip
        for name, c in data["curves"].items():
            curve = AdaptationCurve(**{x: v for x, v in c.items() if x != "summary"})
            m, h = curve.mean(), curve.ci95()
            cells = " | ".join(_fmt(m[i], h[i]) if i < len(m) else "" for i in (0, 1, 3))
            rows.append(f"| {data['env_id'].split('/')[-1]} ({sched}) | {name} | {cells} |")
        ref = PUBLISHED.get(data["env_id"])
        if ref:
            rows.append(f"| {data['env_id'].split('/')[-1]} | published MAML ({ref['source']}) "
                        f"| | {ref['value']} | |")  # fmt: skip
    page = ROOT / "docs" / "results.md"
    text = page.read_text()
    start, end = "<!-- maml-results -->", "<!-- /maml-results -->"
    if start not in text or end not in text:
        raise SystemExit(f"{page} has no maml-results markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(head + start + "\n" + "\n".join(rows) + "\n" + end + tail)
    print(f"updated the results table of {page}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="evaluate the baselines beside a MAML run's eval_test.json")
    e.add_argument("--name", required=True, help="output name under benchmarks/maml_learning/")
    e.add_argument("--run", required=True, help="a maml-trpo run directory, already evaluated")
    e.add_argument("--baseline", nargs="*", default=[], help="run directories of baseline agents")
    e.add_argument("--load-log", default="", help="file of sampled /proc/loadavg lines")
    e.add_argument("--note", default="", help="a sentence for the report (e.g. 'shortened')")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--commands", nargs="*", default=[],
                   help="the command lines that made the run, for the report")  # fmt: skip
    sub.add_parser("report", help="write benchmarks/maml_learning.md")
    args = p.parse_args()
    {"eval": cmd_eval, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
