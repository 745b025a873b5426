"""``metarl fewshot train|evaluate|presets``: the few-shot runs from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from metarl.runs.config import add_arguments

__all__ = ["add_fewshot_arguments", "run_fewshot"]


def add_fewshot_arguments(parser: argparse.ArgumentParser) -> None:
    from metarl.fewshot.configs import LEARNERS

    subs = parser.add_subparsers(dest="fewshot_command", metavar="{train,evaluate,presets}")
    train = subs.add_parser(
        "train",
        help="meta-train a few-shot learner, then evaluate it on held-out episodes",
        description="Meta-train a few-shot learner (`--learner NAME --help` lists its options; "
        "a --preset holds a paper's settings), checkpointing into --run-dir, then evaluate it "
        "on held-out episodes (eval.json). Resume an interrupted run with --resume.",
        add_help=False,
    )
    # The learner's own options are known only once --learner (or --preset, or the resumed
    # run) is: they are parsed in _train, and --help there shows them.
    train.add_argument("-h", "--help", action="store_true", help="show the learner's options")
    train.add_argument(
        "--learner",
        choices=LEARNERS,
        help="the meta-learner (default: the --preset's, the resumed run's, or maml)",
    )
    train.add_argument("--preset", help="a paper's settings (`metarl fewshot presets`)")
    train.add_argument(
        "--run-dir", type=Path, help="run directory (default runs/fewshot-<learner>-<time>)"
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    train.add_argument(
        "--overwrite", action="store_true", help="replace a run already in --run-dir"
    )
    train.add_argument(
        "--num-eval-episodes", type=int, default=600, help="held-out episodes (default 600)"
    )
    train.set_defaults(accepts_extra=True)
    ev = subs.add_parser(
        "evaluate",
        help="evaluate a trained run on held-out episodes (mean ± 95%% CI, JSON)",
        description="Evaluate a run's latest checkpoint on held-out test episodes.",
    )
    ev.add_argument("run_dir", type=Path, help="the run directory `metarl fewshot train` made")
    ev.add_argument("--num-episodes", type=int, default=600, help="held-out episodes (default 600)")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ev.add_argument("--lake-runs", action="store_true", help="also Lake et al.'s 20 one-shot runs")
    ev.add_argument("--out", type=Path, help="JSON file (default <run_dir>/eval.json)")
    ev.add_argument(
        "--num-ways",
        type=int,
        help="N of the test episodes (default the run's; another N for protonet and matching)",
    )
    ev.add_argument("--eval-query", type=int, help="queries per class (default the run's)")
    ev.add_argument(
        "--checkpoint",
        choices=("latest", "best"),
        default="latest",
        help="latest: the last checkpoint; best: the one of the best validation accuracy "
        "(best.pt, kept by a run trained with --val-every)",
    )
    subs.add_parser("presets", help="list the presets with their settings")


def _learner_parser(learner: str) -> argparse.ArgumentParser:
    from metarl.fewshot.configs import config_class

    parser = argparse.ArgumentParser(
        prog=f"metarl fewshot train --learner {learner}", usage=argparse.SUPPRESS, add_help=False
    )
    add_arguments(parser, config_class(learner))
    return parser


def _train_help(learner: str | None) -> None:
    from metarl.fewshot.configs import LEARNER_CONFIGS

    print(
        "usage: metarl fewshot train [--learner NAME] [--preset NAME] [--run-dir DIR] "
        "[--resume] [--overwrite] [--num-eval-episodes N] [learner options]\n\nlearners:"
    )
    for name, cls in LEARNER_CONFIGS.items():
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        print(f"  {name:10s} {doc}")
    if learner is None:
        print("\n`metarl fewshot train --learner NAME --help` lists the learner's options.")
        return
    print("\n" + _learner_parser(learner).format_help().strip())


def _unknown_options(learner: str, unknown: list[str]) -> str:
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


def _train_config(args: argparse.Namespace) -> tuple[Any, Any]:
    """The config the command line asks for, and the run directory."""
    from metarl.fewshot.configs import FewShotConfig, config_class, learner_of_preset
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
    if learner is None:
        learner = "maml"
    if args.help:
        _train_help(learner if (args.learner or args.preset or args.resume) else None)
        return None, None
    opts, unknown = _learner_parser(learner).parse_known_args(args.extra)
    if unknown:
        raise ValueError(_unknown_options(learner, unknown))
    explicit = {k: v for k, v in vars(opts).items() if k != "preset"}
    cls = config_class(learner)
    if args.resume:
        # The saved config, under what this command line gives explicitly (only the settings
        # that may change on resume, e.g. --num-iterations, can differ).
        base = cls.upgrade(saved)
        if args.preset:
            base.update(cls.presets[args.preset])
        cfg = cls.from_dict({**base, **explicit})
    else:
        cfg = FewShotConfig.from_preset(args.preset, learner=learner, **explicit)
    return cfg, args.run_dir


def run_fewshot(args: argparse.Namespace) -> int:
    import time

    from metarl.fewshot.train import evaluate_run, summary_line, train

    cmd = args.fewshot_command
    if cmd == "presets":
        from metarl.fewshot.configs import all_presets

        for name, (learner, values) in sorted(all_presets().items()):
            print(f"{name}: {json.dumps({'learner': learner, **values})}")
        return 0
    if cmd == "train":
        if args.num_eval_episodes < 1:
            raise ValueError(f"--num-eval-episodes must be >= 1, got {args.num_eval_episodes}")
        if args.resume and args.overwrite:
            raise ValueError("--resume continues the run and --overwrite replaces it: pick one")
        cfg, run_dir = _train_config(args)
        if cfg is None:  # --help
            return 0
        if run_dir is None:
            run_dir = Path("runs") / f"fewshot-{cfg.learner}-{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"run directory: {run_dir}")
        args.run_path = run_dir  # for the Ctrl-C line
        args.resume_hint = f"metarl fewshot train --run-dir {run_dir} --resume"
        result = train(
            cfg,
            run_dir,
            resume=args.resume,
            num_eval_episodes=args.num_eval_episodes,
            overwrite=args.overwrite,
        )
        print(summary_line(result))
        return 0
    if cmd == "evaluate":
        if args.num_episodes < 1:
            raise ValueError(f"--num-episodes must be >= 1, got {args.num_episodes}")
        for flag in ("num_ways", "eval_query"):
            value = getattr(args, flag)
            if value is not None and value < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
        from metarl.runs import Run
        from metarl.runs.rundir import check_writable

        Run.read_record(args.run_dir)  # a run directory, holding no link where it writes
        check_writable(args.out.parent if args.out else args.run_dir)  # before the work
        result = evaluate_run(
            args.run_dir,
            args.num_episodes,
            device=args.device,
            lake_runs=args.lake_runs,
            out=args.out,
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
    raise ValueError("say what to do: metarl fewshot train|evaluate|presets (see --help)")
