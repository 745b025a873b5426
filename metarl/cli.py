"""The ``metarl`` command.

Subcommands live in small functions registered in ``COMMANDS``; each later capability
(``train``, ``evaluate``, ``benchmark``, ``check-env``...) adds one entry.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["COMMANDS", "main"]


def _envs_parser(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _envs(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import metarl

    rows: list[dict[str, Any]] = []
    for env_id in metarl.family_ids():
        fam = metarl.family(env_id)
        dist = metarl.task_distribution(env_id)
        spec = gym.spec(env_id)
        rows.append(
            {
                "id": env_id,
                **{k: v for k, v in dist.describe().items() if k != "name"},
                "horizon": spec.max_episode_steps,
                "backends": fam.backends + (["torch"] if fam.torch is not None else []),
                "paper": fam.paper,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = ["id", "what varies", "train/test", "horizon", "batched backends", "paper"]
    table = [
        [
            r["id"],
            r["varies"],
            f"{r['num_train']}/{r['num_test']}" + ("" if r["splits_disjoint"] else " (shared)"),
            str(r["horizon"]),
            ", ".join(r["backends"]),
            r["paper"],
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _check_env_parser(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "target",
        help="MODULE:ATTR or path/to/file.py:ATTR naming a task env class, a function that "
        "builds one, or a TaskDistribution; or a registered env id (metarl/HalfCheetahVel-v0)",
    )
    sub.add_argument("--steps", type=int, default=50, help="steps per checking rollout")
    sub.add_argument("--seed", type=int, default=0, help="seed of the checking rollouts")


def _check_env(args: argparse.Namespace) -> int:
    from metarl.checks import check_env, format_report, load_target

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    results = check_env(load_target(args.target), steps=args.steps, seed=args.seed)
    print(format_report(args.target, results))
    return 1 if any(r.ok is False for r in results) else 0


def _train_parser(sub: argparse.ArgumentParser) -> None:
    from metarl.agents import describe_agents

    # The agent's own options are known only once --agent is: they are parsed in _train, and
    # --help there shows them.
    sub.conflict_handler = "resolve"  # replace argparse's -h/--help with ours
    sub._optionals.conflict_handler = "resolve"
    sub.add_argument("-h", "--help", action="store_true", help="show the agent's options")
    sub.add_argument(
        "--agent",
        help="the agent: "
        + "; ".join(f"{name} ({desc})" for name, desc in describe_agents().items()),
    )
    sub.add_argument("--run-dir", help="where the run goes (default: runs/AGENT/ENV-seedN)")
    sub.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its checkpoint")
    sub.add_argument(
        "--overwrite", action="store_true", help="delete an existing run directory first"
    )
    sub.set_defaults(accepts_extra=True)


def _train(args: argparse.Namespace) -> int:
    from metarl.agents import agent_names, get_agent
    from metarl.config import add_arguments, from_args
    from metarl.runs import Run

    agent = args.agent
    saved: dict[str, Any] = {}
    if args.resume:
        record = Run.read_record(args.resume)
        if agent is not None and agent != record["agent"]:
            raise ValueError(
                f"{args.resume} was made by agent {record['agent']!r}, not {agent!r}; drop "
                "--agent or start a new run directory"
            )
        agent, saved = record["agent"], record["config"]
    if agent is None:
        if args.help:
            _train_help(None)
            return 0
        raise ValueError(f"say which agent to train with --agent ({', '.join(agent_names())})")
    module = get_agent(agent)
    cfg_parser = argparse.ArgumentParser(
        prog=f"metarl train --agent {agent}", usage=argparse.SUPPRESS, add_help=False
    )
    add_arguments(cfg_parser, module.CONFIG)
    if args.help:
        _train_help(cfg_parser)
        return 0
    # `--env` is the short form the docs use for `--env-id`.
    extra = ["--env-id" if a == "--env" else a for a in args.extra]
    extra = [f"--env-id={a[6:]}" if a.startswith("--env=") else a for a in extra]
    opts, unknown = cfg_parser.parse_known_args(extra)
    if unknown:
        raise ValueError(
            f"unrecognized option(s) for {agent}: {' '.join(unknown)} "
            f"(`metarl train --agent {agent} --help` lists them)"
        )
    if args.resume:
        explicit = {k: v for k, v in vars(opts).items() if k != "preset"}
        base = dict(saved)
        if getattr(opts, "preset", None):
            base.update(module.CONFIG.presets[opts.preset])
        cfg = module.CONFIG.from_dict({**base, **explicit})
        run_dir = args.resume
    else:
        cfg = from_args(module.CONFIG, opts)
        run_dir = args.run_dir or (f"runs/{agent}/{cfg.env_id.split('/')[-1]}-seed{cfg.seed}")
    run = module.train(
        cfg,
        run_dir,
        resume=bool(args.resume),
        overwrite=args.overwrite,
        log=lambda m: print(m, flush=True),
    )
    print(f"run directory: {run.path} (config.json, metrics.csv, checkpoint.pt)")
    print(f"evaluate it on the held-out tasks with: metarl evaluate {run.path}")
    return 0


def _train_help(cfg_parser: argparse.ArgumentParser | None) -> None:
    from metarl.agents import describe_agents

    print(
        "usage: metarl train --agent AGENT [--run-dir DIR | --resume RUN_DIR] [--overwrite] "
        "[--preset NAME] [agent options]\n\nagents:"
    )
    for name, desc in describe_agents().items():
        print(f"  {name:12s} {desc}")
    if cfg_parser is None:
        print("\n`metarl train --agent AGENT --help` lists the agent's options.")
        return
    print("\n" + cfg_parser.format_help().strip())


def _evaluate_parser(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by metarl train")
    sub.add_argument(
        "--tasks", default="test", choices=["test", "train"], help="which split (default: test)"
    )
    sub.add_argument("--steps", type=int, default=3, help="adaptation steps K (default: 3)")
    sub.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="evaluation seeds (default: 0 1 2)"
    )
    sub.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="episodes per step and task (default: 40 for 2D navigation, 20 otherwise)",
    )
    sub.add_argument("--device", default="cpu", help="auto, cpu or cuda (default: cpu)")
    sub.add_argument("--max-tasks", type=int, default=None, help="only the first N tasks")


def _evaluate(args: argparse.Namespace) -> int:
    from metarl.agents import get_agent
    from metarl.runs import Run

    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    if args.episodes is not None and args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    record = Run.read_record(args.run_dir)
    module = get_agent(record["agent"])
    curve, json_path, png_path = module.evaluate(
        args.run_dir,
        split=args.tasks,
        num_steps=args.steps,
        seeds=tuple(args.seeds),
        episodes_per_step=args.episodes,
        device=args.device,
        max_tasks=args.max_tasks,
    )
    mean, half = curve.mean(), curve.ci95()
    print(f"{record['agent']} on {curve.env_id}, {curve.returns.shape[1]} {args.tasks} tasks × "
          f"{curve.returns.shape[0]} seeds: mean return (95% CI) after k {curve.unit}")  # fmt: skip
    for k in range(len(mean)):
        print(f"  k={k}: {mean[k]:9.3f} ± {half[k]:.3f}")
    gain, gain_half = curve.improvement(1) if curve.num_units else (0.0, 0.0)
    print(f"  gain after 1 step: {gain:.3f} ± {gain_half:.3f}")
    print(f"results: {json_path}\nplot:    {png_path}")
    return 0


def _fewshot_parser(sub: argparse.ArgumentParser) -> None:
    from metarl.fewshot.cli import add_fewshot_arguments

    add_fewshot_arguments(sub)


def _fewshot(args: argparse.Namespace) -> int:
    from metarl.fewshot.cli import run_fewshot

    return run_fewshot(args)


#: name -> (help, add_arguments, run)
COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "envs": ("list every registered task family, what varies and its splits", _envs_parser, _envs),
    "check-env": (
        "check that a task env (yours) is ready for meta-learning: Gymnasium/SB3 checkers, "
        "determinism, task sensitivity, splits, batched vs single",
        _check_env_parser,
        _check_env,
    ),
    "train": ("meta-train an agent (metarl train --agent maml-trpo --help)", _train_parser, _train),
    "evaluate": (
        "held-out evaluation of a run: return after 0..K adaptation steps, JSON and PNG",
        _evaluate_parser,
        _evaluate,
    ),
    "fewshot": (
        "supervised few-shot learning: train, evaluate, presets (MAML, Meta-SGD, Reptile, "
        "ProtoNets, Matching Networks, MANN, a transfer baseline)",
        _fewshot_parser,
        _fewshot,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    from metarl import __version__

    parser = argparse.ArgumentParser(
        prog="metarl",
        description="Meta-reinforcement learning: task families, MAML, Reptile, RL², "
        "few-shot learning, one evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"metarl {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if args.command is None:
        parser.print_help()
        return 2
    from metarl.numerics import NonFiniteError
    from metarl.runs import CheckpointError
    from metarl.workers import EnvWorkerError

    try:
        return int(args.run(args))
    except (CheckpointError, NonFiniteError, EnvWorkerError) as e:
        # A run that had to stop: the message says why, where, and what was kept.
        print(f"metarl {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        # Bad input: one clear line, no traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"metarl {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
