"""``metarl fewshot train|evaluate|presets``: the few-shot runs from the command line.

Each subcommand's options are a typed dataclass (:class:`~metarl.cli.args.FewShotTrainArgs`,
:class:`~metarl.cli.args.FewShotEvaluateArgs`) and a learner's own options are its config
class (:data:`metarl.fewshot.configs.LEARNER_CONFIGS`), all read by tyro through
:mod:`metarl.cli.parsing` as ``metarl train`` reads an agent's: ``--help`` shows each
option's doc and default (a preset's values as the defaults), a preset sits beneath the
options given, and a bad command line is one line with exit code 2.

Example:
    >>> from metarl.cli.args import FewShotTrainArgs
    >>> cfg = train_config(FewShotTrainArgs(preset="maml-sinusoid"), ["--num-iterations", "3"])
    >>> type(cfg).__name__, cfg.num_iterations, cfg.meta_batch_size
    ('MAMLConfig', 3, 25)
"""

from __future__ import annotations

import json
import sys
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["FEWSHOT_COMMANDS", "run_fewshot", "train_config"]

#: ``metarl fewshot``'s subcommands and their one-line help.
FEWSHOT_COMMANDS = {
    "train": "meta-train a few-shot learner, then evaluate it on held-out episodes",
    "evaluate": "evaluate a trained run on held-out episodes (mean ± 95% CI, JSON)",
    "presets": "list the presets with their settings",
}
_PROG = "metarl fewshot"


def _fewshot_help() -> None:
    print(f"usage: {_PROG} {{{','.join(FEWSHOT_COMMANDS)}}} [options]\n\ncommands:")
    for name, text in FEWSHOT_COMMANDS.items():
        print(f"  {name:9s} {text}")
    print(f"\n`{_PROG} COMMAND --help` lists the command's options.")


def _learner_and_default(args: Any) -> tuple[str, Any, bool]:
    """The learner the train options ask for, the config beneath the learner's options
    (the resumed run's, then the preset; None: the learner's defaults), and whether the
    learner was named (by --learner, --preset or the resumed run)."""
    from metarl.fewshot.configs import config_class, learner_of_preset
    from metarl.runs import Run

    learner = args.learner
    saved: dict[str, Any] = {}
    if args.resume:
        if args.run_dir is None:
            raise ValueError("--resume needs --run-dir: the run to continue")
        record = Run.read_record(args.run_dir)
        if record["agent"] != "fewshot":
            raise ValueError(f"{args.run_dir} is a {record['agent']} run, not a few-shot run")
        saved = dict(record["config"])
        made_by = str(saved.get("learner", "maml"))
        if learner is not None and learner != made_by:
            raise ValueError(
                f"{args.run_dir} was made by learner {made_by!r}, not {learner!r}; drop "
                "--learner or start a new run directory"
            )
        learner = made_by
    if args.preset is not None:
        owner = learner_of_preset(args.preset)
        if learner is not None and learner != owner:
            raise ValueError(
                f"preset {args.preset!r} is {owner}'s, not {learner}'s; drop --learner or pick "
                f"one of {learner}'s presets (`metarl fewshot presets`)"
            )
        learner = owner
    named = learner is not None
    learner = learner or "maml"
    cls = config_class(learner)  # an unknown learner is refused here
    default = None
    if args.resume:
        # The saved config, then the preset, beneath what this command line gives (only the
        # settings that may change on resume, e.g. --num-iterations, can differ).
        base = cls.upgrade(saved)
        if args.preset:
            base.update(cls.presets[args.preset])
        default = cls.from_dict(base)
    elif args.preset is not None:
        default = cls.from_preset(args.preset)
    return learner, default, named


def _unknown_options(learner: str, unknown: Sequence[str]) -> str:
    """One line for options the learner does not have, naming the learners that do."""
    from metarl.fewshot.configs import learner_of_option

    for token in unknown:
        if not token.startswith("--"):
            continue
        flag = token.split("=", 1)[0]
        name = flag[2:].replace("-", "_")
        owners = learner_of_option(name) or (
            learner_of_option(name[3:]) if name.startswith("no_") else []
        )
        if owners:
            return (
                f"{flag} is an option of {', '.join(owners)}, not of {learner} "
                f"(`metarl fewshot train --learner {owners[0]} --help` lists its options)"
            )
    return (
        f"unrecognized option(s) for {learner}: {' '.join(unknown)} "
        f"(`metarl fewshot train --learner {learner} --help` lists them)"
    )


def train_config(args: Any, rest: Sequence[str]) -> Any:
    """The config ``metarl fewshot train`` runs: the learner's defaults, the resumed run's
    config or the preset, then the learner options in ``rest``.

    Raises:
        CommandLineError: a value of the wrong type, or an option the learner does not have
            (the line names the learners that have it).
        ConfigError: a value the config refuses, an unknown learner or preset.
    """
    from metarl.cli.parsing import parse
    from metarl.fewshot.configs import config_class

    learner, default, _ = _learner_and_default(args)
    cls = config_class(learner)
    cfg, unknown = parse(cls, rest, prog=f"{_PROG} train --learner {learner}", default=default)
    if unknown:
        raise ValueError(_unknown_options(learner, unknown))
    return cfg


def _train_help(args: Any) -> None:
    from metarl.cli.args import FewShotTrainArgs
    from metarl.cli.parsing import print_help
    from metarl.fewshot.configs import LEARNER_CONFIGS, config_class

    print(
        f"usage: {_PROG} train [--learner NAME] [--preset NAME] [--run-dir DIR] [--resume] "
        "[--overwrite] [--num-eval-episodes N] [learner options]\n\nlearners:"
    )
    for name, cls in LEARNER_CONFIGS.items():
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        print(f"  {name:10s} {doc}")
    print()
    print_help(FewShotTrainArgs, prog=f"{_PROG} train", flags_only=True)
    learner, default, named = _learner_and_default(args)
    if not named:
        print(f"\n`{_PROG} train --learner NAME --help` lists the learner's options.")
        return
    cls = config_class(learner)
    print()
    print_help(cls, prog=f"{_PROG} train --learner {learner}", default=default,
               description=cls.__doc__)  # fmt: skip


def _train(argv: Sequence[str], state: MutableMapping[str, str]) -> int:
    import time

    from metarl.cli.args import FewShotTrainArgs
    from metarl.cli.parsing import parse
    from metarl.fewshot.train import summary_line, train

    # The learner's options are known only once --learner (or --preset, or the resumed run)
    # is: the train options are read first, the rest is the learner's (--help too).
    wants_help = any(a in ("-h", "--help") for a in argv)
    args, rest = parse(FewShotTrainArgs, [a for a in argv if a not in ("-h", "--help")],
                       prog=f"{_PROG} train", flags_only=True)  # fmt: skip
    if wants_help:
        _train_help(args)
        return 0
    if args.num_eval_episodes < 1:
        raise ValueError(f"--num-eval-episodes must be >= 1, got {args.num_eval_episodes}")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run and --overwrite replaces it: pick one")
    cfg = train_config(args, rest)
    run_dir = Path(
        args.run_dir or Path("runs") / f"fewshot-{cfg.learner}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    print(f"run directory: {run_dir}")
    state["run_path"] = str(run_dir)  # for the Ctrl-C line
    state["resume_hint"] = f"metarl fewshot train --run-dir {run_dir} --resume"
    result = train(
        cfg,
        run_dir,
        resume=args.resume,
        num_eval_episodes=args.num_eval_episodes,
        overwrite=args.overwrite,
    )
    print(summary_line(result))
    return 0


def _evaluate(argv: Sequence[str]) -> int:
    from metarl.cli.args import FewShotEvaluateArgs
    from metarl.cli.parsing import parse
    from metarl.fewshot.train import evaluate_run, summary_line
    from metarl.runs import Run
    from metarl.runs.rundir import check_writable

    prog = f"{_PROG} evaluate"
    args, unknown = parse(FewShotEvaluateArgs, argv, prog=prog, flags_only=True)
    if unknown:
        raise ValueError(
            f"unrecognized argument(s): {' '.join(unknown)} (`{prog} --help` lists the options)"
        )
    if args.num_episodes < 1:
        raise ValueError(f"--num-episodes must be >= 1, got {args.num_episodes}")
    for flag in ("num_ways", "eval_query"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    run_dir = Path(args.run_dir)
    out = None if args.out is None else Path(args.out)
    Run.read_record(run_dir)  # a run directory, holding no link where it writes
    check_writable(out.parent if out else run_dir)  # before the work
    result = evaluate_run(
        run_dir,
        args.num_episodes,
        device=args.device,
        lake_runs=args.lake_runs,
        out=out,
        num_ways=args.num_ways,
        eval_query=args.eval_query,
        checkpoint=args.checkpoint,
    )
    print(summary_line(result))
    if "lake_one_shot_runs" in result:
        lake = result["lake_one_shot_runs"]
        print(f"Lake et al.'s 20 runs: {100 * lake['mean']:.2f} ± {100 * lake['ci95']:.2f}%")
        if "warning" in lake:
            print(f"warning: {lake['warning']}", file=sys.stderr)
    return 0


def _presets(argv: Sequence[str]) -> int:
    from metarl.fewshot.configs import all_presets

    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {_PROG} presets\n\n{FEWSHOT_COMMANDS['presets']}")
        return 0
    if argv:
        raise ValueError(f"unrecognized argument(s): {' '.join(argv)} (`{_PROG} presets` "
                         "takes none)")  # fmt: skip
    for name, (learner, values) in sorted(all_presets().items()):
        print(f"{name}: {json.dumps({'learner': learner, **values})}")
    return 0


def run_fewshot(argv: Sequence[str], state: MutableMapping[str, str]) -> int:
    """``metarl fewshot ARGV``; ``state`` receives the run directory and how to resume it
    (for the Ctrl-C line)."""
    command, rest = (argv[0], list(argv[1:])) if argv else (None, [])
    if command in ("-h", "--help"):
        _fewshot_help()
        return 0
    if command == "train":
        return _train(rest, state)
    if command == "evaluate":
        return _evaluate(rest)
    if command == "presets":
        return _presets(rest)
    if command is None:
        raise ValueError(f"say what to do: {_PROG} {'|'.join(FEWSHOT_COMMANDS)} (see --help)")
    raise ValueError(
        f"no command {command!r}: {_PROG} {'|'.join(FEWSHOT_COMMANDS)} (`{_PROG} --help`)"
    )
