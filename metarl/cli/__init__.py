"""The ``metarl`` command.

Subcommands live in small functions registered in ``COMMANDS``; each later capability
(``train``, ``evaluate``, ``benchmark``, ``check-env``...) adds one entry.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["COMMANDS", "main"]


def _envs_parser(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _envs(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import metarl
    from metarl import registry

    rows: list[dict[str, Any]] = []
    # Installed packages' entry points and the optional families (Meta-World) too.
    for env_id in registry.load_plugins(optional=True):
        fam = metarl.family(env_id)
        # A family slow to build (a Meta-World benchmark) says what it is without building.
        described = fam.listing or metarl.task_distribution(env_id).describe()
        spec = gym.spec(env_id)
        rows.append(
            {
                "id": env_id,
                **{k: v for k, v in described.items() if k != "name"},
                "horizon": spec.max_episode_steps,
                "backends": fam.backends + (["torch"] if fam.torch is not None else []),
                "paper": fam.paper,
                "source": registry.family_source(env_id),
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
        "builds one, or a TaskDistribution (the file's folder goes on the import path); or an "
        "env id: registered (metarl/HalfCheetahVel-v0) or MODULE:ENV_ID",
    )
    sub.add_argument("--steps", type=int, default=50, help="steps per checking rollout")
    sub.add_argument("--seed", type=int, default=0, help="seed of the checking rollouts")


def _check_env(args: argparse.Namespace) -> int:
    from metarl.checks import check_env, format_report, load_target

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    _check_seeds("--seed", [args.seed])
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
        _require_family(record, args.resume, "train {} --resume {}")
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
    if getattr(opts, "env_id", None):  # MODULE:ENV_ID imports MODULE; the config keeps ENV_ID
        from metarl.registry import resolve_env_id

        opts.env_id = resolve_env_id(opts.env_id)
    if args.resume:
        explicit = {k: v for k, v in vars(opts).items() if k != "preset"}
        base = dict(saved)
        _refuse_handed_fields(args.resume, module.CONFIG, base, explicit)
        if getattr(opts, "preset", None):
            base.update(module.CONFIG.presets[opts.preset])
        cfg = module.CONFIG.from_dict({**base, **explicit})
        run_dir = args.resume
    else:
        cfg = from_args(module.CONFIG, opts)
        run_dir = args.run_dir or (f"runs/{agent}/{cfg.env_id.split('/')[-1]}-seed{cfg.seed}")
    args.resume_hint = f"metarl train --resume {run_dir}"  # for the Ctrl-C line
    args.run_path = run_dir
    run = module.train(
        cfg,
        run_dir,
        resume=bool(args.resume),
        overwrite=args.overwrite,
        log=lambda m: print(m, flush=True),
    )
    from metarl.registry import run_record

    imports = "".join(f"--import {shlex.quote(i)} " for i in run_record(cfg.env_id)["imports"])
    print(f"run directory: {run.path} (config.json, metrics.csv, checkpoint.pt)")
    print(f"evaluate it on the held-out tasks with: metarl evaluate {imports}{run.path}")
    return 0


def _refuse_handed_fields(
    run_dir: str, cls: Any, saved: dict[str, Any], explicit: dict[str, Any]
) -> None:
    """Where a resumed run connects (Ray) comes from this command line, never from the run
    directory: drop those fields from ``saved``, and refuse when the run asked for other
    values than this command line gives."""
    from metarl.config import _flag, command_line_only_fields

    wanted = []
    for name, default in command_line_only_fields(cls).items():
        value = saved.pop(name, default)
        if name not in explicit and value != default:
            wanted.append(f"{_flag(name)} {value}")
    if wanted:
        raise ValueError(
            f"{run_dir}/config.json asks for {' '.join(wanted)}, which decide where this "
            "process connects; they are never taken from a run directory: give them on the "
            "command line to use them (or other values)"
        )


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
    sub.add_argument(
        "--steps",
        type=int,
        default=None,
        help="adaptation units K: gradient steps (default 3), or for RL² episodes after the "
        "first (default: the trained trial length minus one)",
    )
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
    sub.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        default=None,
        metavar="LR",
        help="inner learning rates of adaptation steps 1, 2, ... (the last repeats), for the "
        "agents that adapt by gradient steps; default: the run's own (MAML, pretrained, "
        "random init: inner_lr then inner_lr/2 as in Finn et al. 2017; Reptile: inner_lr; "
        "for a Meta-SGD run they multiply the learned rates, default 1)",
    )
    sub.add_argument(
        "--video",
        metavar="DIR",
        default=None,
        help="also write into DIR, for the first 3 tasks (fewer with --max-tasks), a video of "
        "an episode before adaptation and after 1..K units side by side (K: --steps, "
        "default 1; the first --seeds seed): MP4 with pip install 'metarl[video]', else GIF. "
        "Headless: MuJoCo renders off-screen through EGL (MUJOCO_GL=egl, the default without "
        "a display) or OSMesa (MUJOCO_GL=osmesa)",
    )


def _evaluate(args: argparse.Namespace) -> int:
    from metarl.agents import get_agent
    from metarl.evaluation import EvalSettings
    from metarl.rundir import check_writable
    from metarl.runs import Run

    if args.steps is not None and args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    if args.episodes is not None and args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.lrs is not None and not all(math.isfinite(x) and x > 0 for x in args.lrs):
        raise ValueError(f"--lrs must be positive finite numbers, got {args.lrs}")
    if args.max_tasks is not None and args.max_tasks < 1:
        raise ValueError(f"--max-tasks must be >= 1, got {args.max_tasks}")
    _check_seeds("--seeds", args.seeds)
    record = Run.read_record(args.run_dir)
    _require_family(record, args.run_dir, "evaluate {} {}")
    check_writable(args.run_dir)  # before the work, not after it
    if args.video is not None:
        from metarl.video import check_renders

        check_renders(record["config"]["env_id"])
    module = get_agent(record["agent"])
    if args.lrs is not None and not module.CAPABILITIES.takes_lrs:
        raise ValueError(
            f"--lrs sets inner learning rates, and {record['agent']} does not adapt by "
            "gradient steps; drop --lrs"
        )
    settings = EvalSettings(
        split=args.tasks, num_steps=args.steps, seeds=tuple(args.seeds),
        episodes_per_step=args.episodes, device=args.device, max_tasks=args.max_tasks,
        lrs=None if args.lrs is None else tuple(args.lrs),
    )  # fmt: skip
    curve, json_path, png_path = module.evaluate(args.run_dir, settings)
    mean, half = curve.mean(), curve.ci95()
    at = curve.meta.get("iterations")
    at_text = "" if at is None else f" (checkpoint of iteration {at})"
    print(f"{record['agent']} on {curve.env_id}{at_text}, {curve.returns.shape[1]} "
          f"{args.tasks} tasks × {curve.returns.shape[0]} seeds: mean return (95% CI) "
          f"after k {curve.unit}")  # fmt: skip
    success = None
    if curve.success is not None:  # the family reports info["is_success"]
        from metarl.evaluation import mean_ci95

        success = mean_ci95(curve.success.reshape(-1, curve.success.shape[-1]))
    for k in range(len(mean)):
        rate = "" if success is None else f"   success {success[0][k]:.2f} ± {success[1][k]:.2f}"
        print(f"  k={k}: {mean[k]:9.3f} ± {half[k]:.3f}{rate}")
    gain, gain_half = curve.improvement(1) if curve.num_units else (0.0, 0.0)
    print(f"  gain after 1 unit ({curve.unit}): {gain:.3f} ± {gain_half:.3f}")
    if success is not None:
        print("  success: the share of episodes in which the env reported info['is_success']")
    print(f"results: {json_path}\nplot:    {png_path}")
    if args.video is not None:
        _videos(args)
    return 0


def _videos(args: argparse.Namespace) -> None:
    """``evaluate --video DIR``: the policy before and after adaptation, side by side."""
    from metarl.agents.trained import load, record_videos

    paths = record_videos(
        load(args.run_dir, args.device), args.video, steps=1 if args.steps is None else args.steps,
        num_tasks=min(3, args.max_tasks or 3), episodes=args.episodes, seed=args.seeds[0],
        split=args.tasks,
    )  # fmt: skip
    print("videos:  " + "\n         ".join(map(str, paths)))


def _require_family(record: dict[str, Any], run_dir: str, command: str) -> None:
    """Refuse a run whose family is not registered, with the ``--import`` it records; the
    run directory itself never makes metarl import anything. ``command`` is the command to
    show, with ``{}`` for the ``--import`` options and then for the run, e.g. ``"evaluate {}
    {}"``."""
    from metarl import registry

    config = record.get("config")
    env_id = config.get("env_id") if isinstance(config, dict) else None
    if not isinstance(env_id, str) or registry.is_registered(env_id):
        return
    hint = registry.import_hint(env_id, record.get("imports"), record.get("env_source"))
    example = ""
    if hint.startswith("pass --import"):
        example = f": metarl {command.format(hint[5:], shlex.quote(str(run_dir)))}"
    raise ValueError(
        f"{run_dir} was trained on {env_id!r}, which no module imported here registers; "
        f"{hint}{example} (a run directory never makes metarl import anything itself)"
    )


def _benchmark_parser(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--agents", nargs="+", required=True, help="agents to compare "
                     "(`metarl train --help` lists them)")  # fmt: skip
    sub.add_argument("--envs", "--env", nargs="+", required=True, dest="envs",
                     help="task families (`metarl envs` lists them)")  # fmt: skip
    sub.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                     help="one meta-training run per seed (default: 0 1 2)")  # fmt: skip
    sub.add_argument(
        "--preset",
        nargs="+",
        default=["quick"],
        metavar="[AGENT=]NAME",
        help="the preset of every agent (NAME), or of one (AGENT=NAME; AGENT=none: its "
        "defaults); the family of --envs replaces the preset's (default: quick)",
    )
    sub.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="AGENT.OPTION=VALUE",
        help="an agent's option over its preset, e.g. rl2.num_iterations=100 or "
        "maml-trpo.hidden_sizes=[32,32] (VALUE read as JSON, else as a string)",
    )
    sub.add_argument("--runs-dir", default="runs/bench",
                     help="where runs go and are reused from (default: runs/bench)")  # fmt: skip
    sub.add_argument(
        "--out",
        default="benchmarks/report",
        help="directory of report.md, report.json, report.png (default: benchmarks/report)",
    )
    sub.add_argument("--steps", type=int, default=3,
                     help="adaptation units K after the first point: gradient steps, or for "
                          "RL² episodes (trials of K+1 episodes) (default: 3)")  # fmt: skip
    sub.add_argument("--eval-seeds", type=int, nargs="+", default=[0],
                     help="evaluation seeds of every run (default: 0)")  # fmt: skip
    sub.add_argument("--episodes", type=int, default=None,
                     help="episodes (RL²: trials) per step and task (default: 40 for 2D "
                          "navigation, 20 otherwise)")  # fmt: skip
    sub.add_argument("--max-tasks", type=int, default=None, help="only the first N tasks")
    sub.add_argument("--tasks", default="test", choices=["test", "train"],
                     help="which split to evaluate on (default: test)")  # fmt: skip
    sub.add_argument("--device", default="cpu", help="auto, cpu or cuda (default: cpu)")
    sub.add_argument("--num-threads", type=int, default=1,
                     help="torch CPU threads (default: 1; 0: torch's default)")  # fmt: skip
    sub.add_argument("--note", default=None,
                     help="a sentence written into the report and its plot (schedules, a "
                          "shared machine...)")  # fmt: skip
    sub.add_argument("--retrain", action="store_true",
                     help="train every run again, even a finished one")  # fmt: skip


def _benchmark(args: argparse.Namespace) -> int:
    import torch

    from metarl.cli.benchmark import BenchmarkError, format_command, run_benchmark

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.episodes is not None and args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.max_tasks is not None and args.max_tasks < 1:
        raise ValueError(f"--max-tasks must be >= 1, got {args.max_tasks}")
    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    if args.num_threads < 0:
        raise ValueError(f"--num-threads must be >= 0, got {args.num_threads}")
    _check_seeds("--seeds", args.seeds)
    _check_seeds("--eval-seeds", args.eval_seeds)
    default: str | None = None
    per_agent: dict[str, str | None] = {}
    for item in args.preset:
        name = item.split("=", 1)[-1]
        value = None if name.lower() == "none" else name
        if "=" in item:
            per_agent[item.split("=", 1)[0]] = value
        else:
            default = value
    preset: Any = {a: per_agent.get(a, default) for a in args.agents} if per_agent else default
    unknown = sorted(set(per_agent) - set(args.agents))
    if unknown:
        raise BenchmarkError(f"--preset names agent(s) not in --agents: {', '.join(unknown)}")
    overrides: dict[str, dict[str, Any]] = {}
    for item in args.set:
        key, eq, raw = item.partition("=")
        agent, dot, option = key.partition(".")
        if not (eq and dot and agent and option):
            raise BenchmarkError(f"--set takes AGENT.OPTION=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides.setdefault(agent, {})[option.replace("-", "_")] = value
    report = run_benchmark(
        args.agents,
        args.envs,
        args.seeds,
        preset=preset,
        overrides=overrides,
        runs_dir=args.runs_dir,
        out=args.out,
        num_steps=args.steps,
        eval_seeds=args.eval_seeds,
        episodes_per_step=args.episodes,
        max_tasks=args.max_tasks,
        split=args.tasks,
        device=args.device,
        retrain=args.retrain,
        log=lambda m: print(m, flush=True),
        command=format_command(sys.argv[2:] if args.argv is None else args.argv),
        note=args.note,
    )
    print(report.markdown(plot_name=None))
    return 0


def _fewshot_parser(sub: argparse.ArgumentParser) -> None:
    from metarl.cli.fewshot import add_fewshot_arguments

    add_fewshot_arguments(sub)


def _fewshot(args: argparse.Namespace) -> int:
    from metarl.cli.fewshot import run_fewshot

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
    "benchmark": (
        "adaptation-speed report: several agents on one or more task families, trained (or "
        "reused) per seed and evaluated on the held-out tasks; Markdown, JSON, PNG",
        _benchmark_parser,
        _benchmark,
    ),
    "fewshot": (
        "supervised few-shot learning: train, evaluate, presets (MAML, Meta-SGD, Reptile, "
        "ProtoNets, Matching Networks, MANN, MetaNet, a transfer baseline)",
        _fewshot_parser,
        _fewshot,
    ),
}


#: the commands that take task families, and so ``--import``
_TAKE_FAMILIES = ("envs", "check-env", "train", "evaluate", "benchmark")


def _with_imports(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``run`` after importing the ``--import`` modules, in the order given."""

    def run_with_imports(args: argparse.Namespace) -> int:
        from metarl.registry import import_plugin

        for spec in getattr(args, "imports", None) or []:
            import_plugin(spec)
        return run(args)

    return run_with_imports


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
        if name in _TAKE_FAMILIES:
            sub.add_argument(
                "--import",
                dest="imports",
                action="append",
                default=[],
                metavar="MODULE_OR_FILE.py",
                help="import a module (my_pkg.families) or a file (path/to/families.py) that "
                "registers task families, before anything else; repeatable",
            )
            run = _with_imports(run)
        sub.set_defaults(run=run)
    return parser


def _check_seeds(flag: str, seeds: Sequence[int]) -> None:
    from metarl.config import MAX_SEED

    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"{flag} must be integers from 0 to {MAX_SEED}, got {bad[0]}")


def _interrupted(args: argparse.Namespace) -> str:
    """The Ctrl-C line: what was kept and how to continue."""
    from pathlib import Path

    run_path = getattr(args, "run_path", None)
    if run_path is None:
        return "interrupted"
    ckpt = Path(run_path) / "checkpoint.pt"
    if ckpt.is_file():
        return (
            f"interrupted; the last checkpoint ({ckpt}) is kept: continue with `{args.resume_hint}`"
        )
    return f"interrupted before the first checkpoint; start {run_path} again with --overwrite"


def _os_error(e: OSError) -> str:
    """One line for a failed file operation: what, where, and what to do."""
    import errno

    where = f" ({e.filename})" if e.filename else ""
    advice = {
        errno.EROFS: "the file system is read-only: choose a writable directory (copy the run "
        "there first)",
        errno.ENOSPC: "the disk is full: free some space and run it again (a run resumes "
        "from its last checkpoint, which is kept)",
        errno.EDQUOT: "the disk quota is exhausted: free some space, then resume",
        errno.EACCES: "permission denied: choose a directory you can write",
        errno.EPERM: "permission denied: choose a directory you can write",
    }.get(e.errno or 0, "check the path and the disk")
    return f"{e.strerror or e}{where}; {advice}"


def _out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or any(
        w in text
        for w in ("out of memory", "not enough memory", "can't allocate", "cannot allocate")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    args.argv = None if argv is None else list(argv)[1:]
    if args.command is None:
        parser.print_help()
        return 2

    from metarl.numerics import NonFiniteError
    from metarl.runs import CheckpointError, RunLockedError, UnsafeRunDirError
    from metarl.workers import EnvWorkerError

    def fail(msg: object, code: int) -> int:
        print(f"metarl {args.command}: error: {msg}", file=sys.stderr)
        return code

    # Every failure is one line: exit 2 for bad input, 1 for a run that could not go on, 130
    # for Ctrl-C. METARL_TRACEBACK=1 shows the traceback of an unexpected one.
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print(f"metarl {args.command}: {_interrupted(args)}", file=sys.stderr)
        return 130
    except (CheckpointError, NonFiniteError, EnvWorkerError, RunLockedError) as e:
        # A run that had to stop: the message says why, where, and what was kept.
        return fail(e, 1)
    except (ValueError, KeyError, TypeError, FileNotFoundError, UnsafeRunDirError) as e:
        # Bad input: one clear line, no traceback.
        return fail(e.args[0] if isinstance(e, KeyError) and e.args else e, 2)
    except (NotADirectoryError, IsADirectoryError, FileExistsError) as e:
        return fail(e if e.filename is None else _os_error(e), 2)
    except BrokenPipeError:  # `metarl envs | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        return fail(_os_error(e), 1)
    except Exception as e:
        if os.environ.get("METARL_TRACEBACK"):
            raise
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        if _out_of_memory(e):
            return fail(
                f"ran out of memory ({first or type(e).__name__}); lower the batch sizes "
                "(--meta-batch-size, episodes or trials per task)",
                1,
            )
        return fail(f"{type(e).__name__}: {first} (unexpected: METARL_TRACEBACK=1 shows where)", 1)
