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
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        # Bad input: one clear line, no traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"metarl {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
