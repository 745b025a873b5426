"""The ``metarl`` command.

Subcommands live in small functions registered in ``COMMANDS``. Each one's options are a
typed dataclass (:mod:`metarl.cli.args`; an agent's are its config class), read by tyro
through :mod:`metarl.cli.parsing`, so ``--help`` shows every option's doc and default and a
bad value is one line with exit code 2; ``metarl fewshot``'s subcommands and learners
(:mod:`metarl.cli.fewshot`) too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["COMMANDS", "main"]

T = TypeVar("T")


def _envs(argv: Sequence[str]) -> int:
    import gymnasium as gym

    import metarl
    from metarl.cli.args import EnvsArgs
    from metarl.stepping import registry

    args = _parse_command(EnvsArgs, "envs", argv)

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


def _check_env(argv: Sequence[str]) -> int:
    from metarl.cli.args import CheckEnvArgs
    from metarl.stepping.checks import check_env, format_report, load_target

    args = _parse_command(CheckEnvArgs, "check-env", argv)

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    _check_seeds("--seed", [args.seed])
    results = check_env(load_target(args.target), steps=args.steps, seed=args.seed)
    print(format_report(args.target, results))
    return 1 if any(r.ok is False for r in results) else 0


def _train(argv: Sequence[str]) -> int:
    from metarl.agents import agent_names, get_agent
    from metarl.cli.args import TrainArgs
    from metarl.cli.parsing import flags_given, parse, print_help
    from metarl.runs import Run

    # The agent's own options are known only once --agent is: the train options are read
    # first, the rest is the agent's (--help too, once the agent is known).
    wants_help = any(a in ("-h", "--help") for a in argv)
    args, rest = parse(TrainArgs, [a for a in argv if a not in ("-h", "--help")],
                       prog="metarl train", flags_only=True)  # fmt: skip
    _import_all(args.imports)
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
        if wants_help:
            _train_help(None)
            return 0
        raise ValueError(f"say which agent to train with --agent ({', '.join(agent_names())})")
    module = get_agent(agent)
    cls = module.CONFIG
    rest = _resolve_env_ids(cls, rest)
    default = None
    if args.resume:  # the run's config, then the preset, beneath the options given here
        base = dict(saved)
        _refuse_handed_fields(args.resume, cls, base, flags_given(cls, rest))
        if args.preset:
            cls.from_preset(args.preset)  # an unknown preset is refused here
            base.update(cls.presets[args.preset])
        default = cls.from_dict(base)
    elif args.preset:
        default = cls.from_preset(args.preset)
    prog = f"metarl train --agent {agent}"
    if wants_help:
        _train_help(agent)
        print_help(cls, prog=prog, default=default, description=cls.__doc__)
        return 0
    cfg, unknown = parse(cls, rest, prog=prog, default=default)
    if unknown:
        raise ValueError(
            f"unrecognized option(s) for {agent}: {' '.join(unknown)} "
            f"(`metarl train --agent {agent} --help` lists them)"
        )
    run_dir = args.resume or args.run_dir
    run_dir = run_dir or f"runs/{agent}/{cfg.env_id.split('/')[-1]}-seed{cfg.seed}"
    _state["resume_hint"] = f"metarl train --resume {run_dir}"  # for the Ctrl-C line
    _state["run_path"] = run_dir
    run = module.train(
        cfg,
        run_dir,
        resume=bool(args.resume),
        overwrite=args.overwrite,
        log=lambda m: print(m, flush=True),
    )
    from metarl.stepping.registry import run_record

    imports = "".join(f"--import {shlex.quote(i)} " for i in run_record(cfg.env_id)["imports"])
    print(f"run directory: {run.path} (config.json, metrics.csv, checkpoint.pt, README.md)")
    print(f"evaluate it on the held-out tasks with: metarl evaluate {imports}{run.path}")
    return 0


def _resolve_env_ids(cls: Any, argv: Sequence[str]) -> list[str]:
    """``--env-id MODULE:ENV_ID`` imports MODULE; the config keeps ENV_ID."""
    from metarl.cli.parsing import spelled_out
    from metarl.stepping.registry import resolve_env_id

    out = spelled_out(cls, argv)
    for i, token in enumerate(out):
        if token.startswith("--env-id="):
            out[i] = "--env-id=" + resolve_env_id(token.split("=", 1)[1])
        elif token == "--env-id" and i + 1 < len(out):
            out[i + 1] = resolve_env_id(out[i + 1])
    return out


def _refuse_handed_fields(
    run_dir: str, cls: Any, saved: dict[str, Any], explicit: Collection[str]
) -> None:
    """Where a resumed run connects (Ray) comes from this command line, never from the run
    directory: drop those fields from ``saved``, and refuse when the run asked for other
    values than this command line gives."""
    from metarl.runs.config import _flag, command_line_only_fields

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


def _train_help(agent: str | None) -> None:
    from metarl.agents import describe_agents, get_agent

    print(
        "usage: metarl train --agent AGENT [--run-dir DIR | --resume RUN_DIR] [--overwrite] "
        "[--preset NAME] [--import MODULE_OR_FILE.py] [agent options]\n\nagents:"
    )
    for name, desc in describe_agents().items():
        print(f"  {name:12s} {desc}")
    if agent is None:
        print("\n`metarl train --agent AGENT --help` lists the agent's options.")
        return
    presets = get_agent(agent).CONFIG.presets
    print(f"\n{agent}'s presets (--preset NAME: its values beneath the options given here):")
    for name, values in sorted(presets.items()):
        print(f"  {name:12s} " + ", ".join(f"{k}={v}" for k, v in values.items()))
    if not presets:
        print("  none")
    print("\n--env is short for --env-id.\n")


def _set_num_threads(n: int) -> None:
    """``--num-threads`` (as ``metarl train``'s): torch's CPU threads; 0 keeps its default."""
    import torch

    if n < 0:
        raise ValueError(f"--num-threads must be >= 0 (0: torch's default), got {n}")
    if n:
        torch.set_num_threads(n)


def _evaluate(argv: Sequence[str]) -> int:
    from metarl.agents import get_agent
    from metarl.cli.args import EvaluateArgs
    from metarl.evaluation import EvalSettings
    from metarl.runs import Run
    from metarl.runs.rundir import check_writable

    args = _parse_command(EvaluateArgs, "evaluate", argv)
    if args.steps is not None and args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    if args.episodes is not None and args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.lrs is not None and not all(math.isfinite(x) and x > 0 for x in args.lrs):
        raise ValueError(f"--lrs must be positive finite numbers, got {args.lrs}")
    if args.max_tasks is not None and args.max_tasks < 1:
        raise ValueError(f"--max-tasks must be >= 1, got {args.max_tasks}")
    _check_seeds("--seeds", args.seeds)
    _set_num_threads(args.num_threads)
    record = Run.read_record(args.run_dir)
    _require_family(record, args.run_dir, "evaluate {} {}")
    check_writable(args.run_dir)  # before the work, not after it
    if args.video is not None:
        from metarl.evaluation.video import check_renders

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
        rate = (
            "" if success is None else f"   success rate {success[0][k]:.2f} ± {success[1][k]:.2f}"
        )
        print(f"  k={k}: {mean[k]:9.3f} ± {half[k]:.3f}{rate}")
    gain, gain_half = curve.improvement(1) if curve.num_units else (0.0, 0.0)
    print(f"  gain after 1 unit ({curve.unit}): {gain:.3f} ± {gain_half:.3f}")
    if success is not None:
        print("  success rate: the share of episodes in which the env reported "
              "info['is_success']")  # fmt: skip
    print(f"results: {json_path}\nplot:    {png_path}")
    card = Path(args.run_dir) / "README.md"
    if card.is_file() and not card.is_symlink():
        print(f"card:    {card} (model card, results refreshed)")
    if args.video is not None:
        _videos(args)
    return 0


def _videos(args: Any) -> None:
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
    from metarl.stepping import registry

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


def _benchmark(argv: Sequence[str]) -> int:
    from metarl.agents import agent_names, get_agent
    from metarl.cli.args import BenchmarkArgs
    from metarl.cli.benchmark import BenchmarkError, format_command, run_benchmark
    from metarl.cli.parsing import CommandLineError, parse_option

    args = _parse_command(BenchmarkArgs, "benchmark", argv)
    _set_num_threads(args.num_threads)
    if args.episodes is not None and args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.max_tasks is not None and args.max_tasks < 1:
        raise ValueError(f"--max-tasks must be >= 1, got {args.max_tasks}")
    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    if args.eval_points < 1:
        raise ValueError(f"--eval-points must be >= 1, got {args.eval_points}")
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
        if agent not in agent_names():
            raise BenchmarkError(f"--set {item}: no agent {agent!r}; agents: "
                                 f"{', '.join(agent_names())}")  # fmt: skip
        try:  # the option's type, read as `metarl train` reads it
            value = parse_option(get_agent(agent).CONFIG, option, raw,
                                 prog=f"metarl train --agent {agent}")  # fmt: skip
        except CommandLineError as e:
            raise BenchmarkError(f"--set {item}: {agent}'s {e}") from None
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
        command=format_command(argv),
        note=args.note,
        eval_points=args.eval_points,
    )
    print(report.markdown(plot_name=None))
    return 0


def _fewshot(argv: Sequence[str]) -> int:
    from metarl.cli.fewshot import run_fewshot

    return run_fewshot(argv, _state)  # it records the run for the Ctrl-C line


def _doc(name: str) -> str:
    """The one-line description of a command, its options class's docstring."""
    from metarl.cli import args

    return " ".join(str(getattr(args, name).__doc__).split())


#: name -> (help, run): ``run`` takes the command's arguments, after its name.
COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "envs": (_doc("EnvsArgs"), _envs),
    "check-env": (_doc("CheckEnvArgs"), _check_env),
    "train": ("meta-train an agent (metarl train --agent maml-trpo --help)", _train),
    "evaluate": (_doc("EvaluateArgs"), _evaluate),
    "benchmark": (_doc("BenchmarkArgs"), _benchmark),
    "fewshot": (
        "supervised few-shot learning: train, evaluate, presets (MAML, Meta-SGD, Reptile, "
        "ProtoNets, Matching Networks, MANN, MetaNet, a transfer baseline)",
        _fewshot,
    ),
}

#: What a command records for the Ctrl-C line (the run directory, how to resume it).
_state: dict[str, str] = {}


def _parse_command(cls: type[T], command: str, argv: Sequence[str]) -> T:
    """``metarl COMMAND``'s options (:mod:`metarl.cli.args`), its ``--import`` modules
    imported; anything else on the line is an error."""
    from metarl.cli.parsing import parse

    args, unknown = parse(cls, argv, prog=f"metarl {command}", description=_doc(cls.__name__),
                          flags_only=True)  # fmt: skip
    if unknown:
        raise ValueError(
            f"unrecognized argument(s): {' '.join(unknown)} (`metarl {command} --help` lists "
            "the options)"
        )
    _import_all(getattr(args, "imports", ()))
    return args


def _import_all(imports: Sequence[str]) -> None:
    """The ``--import`` modules, in the order given."""
    from metarl.stepping.registry import import_plugin

    for spec in imports:
        import_plugin(spec)


def build_parser() -> argparse.ArgumentParser:
    """The command's top level: ``--version`` and ``--help`` (the commands); every command
    reads its own options (:func:`main`)."""
    from metarl import __version__

    parser = argparse.ArgumentParser(
        prog="metarl",
        description="Meta-reinforcement learning: task families, MAML, Reptile, RL², "
        "few-shot learning, one evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"metarl {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, _run) in COMMANDS.items():
        subs.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def _check_seeds(flag: str, seeds: Sequence[int]) -> None:
    from metarl.runs.config import MAX_SEED

    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"{flag} must be integers from 0 to {MAX_SEED}, got {bad[0]}")


def _interrupted() -> str:
    """The Ctrl-C line: what was kept and how to continue."""
    from pathlib import Path

    run_path = _state.get("run_path")
    if run_path is None:
        return "interrupted"
    ckpt = Path(run_path) / "checkpoint.pt"
    if ckpt.is_file():
        return (
            f"interrupted; the last checkpoint ({ckpt}) is kept: continue with "
            f"`{_state['resume_hint']}`"
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
    from metarl.stepping.allocator import tune_allocator

    tune_allocator()  # glibc's allocator thresholds (METARL_MALLOC_TUNING=0 turns it off)
    argv = list(sys.argv[1:] if argv is None else argv)
    _state.clear()
    command = argv[0] if argv else None
    if command in COMMANDS:
        run, rest = COMMANDS[command][1], argv[1:]  # it reads its own options
    else:  # --help, --version or an unknown command
        parser = build_parser()
        parser.parse_args(argv)  # --help and --version exit here, an unknown command too
        parser.print_help()  # no command
        return 2

    from metarl.numerics import NonFiniteError
    from metarl.runs import CheckpointError, RunLockedError, UnsafeRunDirError
    from metarl.stepping.workers import EnvWorkerError

    def fail(msg: object, code: int) -> int:
        print(f"metarl {command}: error: {msg}", file=sys.stderr)
        return code

    # Every failure is one line: exit 2 for bad input, 1 for a run that could not go on, 130
    # for Ctrl-C. METARL_TRACEBACK=1 shows the traceback of an unexpected one.
    try:
        return int(run(rest))
    except KeyboardInterrupt:
        print(f"metarl {command}: {_interrupted()}", file=sys.stderr)
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
