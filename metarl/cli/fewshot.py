"""``metarl fewshot train|evaluate|presets``: the few-shot runs from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metarl.runs.config import add_arguments, from_args

__all__ = ["add_fewshot_arguments", "run_fewshot"]


def add_fewshot_arguments(parser: argparse.ArgumentParser) -> None:
    from metarl.fewshot.train import FewShotConfig

    subs = parser.add_subparsers(dest="fewshot_command", metavar="{train,evaluate,presets}")
    train = subs.add_parser(
        "train",
        help="meta-train a few-shot learner, then evaluate it on held-out episodes",
        description="Meta-train a few-shot learner (options below; a --preset holds a "
        "paper's settings), checkpointing into --run-dir, then evaluate it on held-out "
        "episodes (eval.json). Resume an interrupted run with --resume.",
    )
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
    add_arguments(train, FewShotConfig)
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
    subs.add_parser("presets", help="list the presets with their settings")


def run_fewshot(args: argparse.Namespace) -> int:
    import time

    from metarl.fewshot.train import FewShotConfig, evaluate_run, summary_line, train

    cmd = args.fewshot_command
    if cmd == "presets":
        for name, values in sorted(FewShotConfig.presets.items()):
            print(f"{name}: {json.dumps(values)}")
        return 0
    if cmd == "train":
        if args.num_eval_episodes < 1:
            raise ValueError(f"--num-eval-episodes must be >= 1, got {args.num_eval_episodes}")
        run_dir = args.run_dir
        if args.resume:
            if run_dir is None:
                raise ValueError("--resume needs --run-dir: the run to continue")
            # The saved config, under what this command line gives explicitly (only the
            # settings that may change on resume, e.g. --num-iterations, can differ).
            from metarl.runs import Run

            base = dict(Run.read_record(run_dir)["config"])
            if getattr(args, "preset", None):
                base.update(FewShotConfig.presets[args.preset])
            names = {f for f in FewShotConfig.__dataclass_fields__}
            explicit = {k: v for k, v in vars(args).items() if k in names}
            cfg = FewShotConfig.from_dict({**base, **explicit})
        else:
            cfg = from_args(FewShotConfig, args)
        if run_dir is None:
            run_dir = Path("runs") / f"fewshot-{cfg.learner}-{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"run directory: {run_dir}")
        args.run_path = run_dir  # for the Ctrl-C line
        args.resume_hint = f"metarl fewshot train --run-dir {run_dir} --resume"
        if args.resume and args.overwrite:
            raise ValueError("--resume continues the run and --overwrite replaces it: pick one")
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
        )
        print(summary_line(result))
        if "lake_one_shot_runs" in result:
            lake = result["lake_one_shot_runs"]
            print(f"Lake et al.'s 20 runs: {100 * lake['mean']:.2f} ± {100 * lake['ci95']:.2f}%")
            if "warning" in lake:
                print(f"warning: {lake['warning']}", file=sys.stderr)
        return 0
    raise ValueError("say what to do: metarl fewshot train|evaluate|presets (see --help)")
