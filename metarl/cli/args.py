"""The options of the ``metarl`` subcommands, one typed dataclass each (see
:mod:`metarl.cli.parsing`); an agent's own options are its config class's
(``metarl train --agent AGENT --help``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import tyro

from metarl.runs.config import option

__all__ = [
    "BenchmarkArgs",
    "CheckEnvArgs",
    "EnvsArgs",
    "EvaluateArgs",
    "FewShotEvaluateArgs",
    "FewShotTrainArgs",
    "TrainArgs",
]

NUM_THREADS_HELP = (
    "CPU threads for torch (0: torch's default); 1, as metarl train's default, avoids "
    "oversubscribing shared CPUs"
)

#: ``--import MODULE_OR_FILE.py``, repeatable: what every command that takes families has.
Imports = Annotated[
    tuple[str, ...],
    tyro.conf.arg(name="import", metavar="MODULE_OR_FILE.py"),
    tyro.conf.UseAppendAction,
]
_IMPORTS_HELP = (
    "import a module (my_pkg.families) or a file (path/to/families.py) that registers task "
    "families, before anything else; repeatable"
)
_TARGET_HELP = (
    "MODULE:ATTR or path/to/file.py:ATTR naming a task env class, a function that builds one, "
    "or a TaskDistribution (the file's folder goes on the import path); or an env id: "
    "registered (metarl/HalfCheetahVel-v0) or MODULE:ENV_ID"
)


@dataclass
class EnvsArgs:
    """list every registered task family, what varies and its splits"""

    json: bool = option(False, "print JSON instead of a table")
    imports: Imports = option((), _IMPORTS_HELP)  # noqa: RUF009 - a field, as option() gives


@dataclass
class CheckEnvArgs:
    """check that a task env (yours) is ready for meta-learning: Gymnasium/SB3 checkers,
    determinism, task sensitivity, splits, batched vs single"""

    target: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="TARGET")] = field(
        metadata={"help": _TARGET_HELP}
    )
    steps: int = option(50, "steps per checking rollout")
    seed: int = option(0, "seed of the checking rollouts")
    imports: Imports = option((), _IMPORTS_HELP)  # noqa: RUF009 - a field, as option() gives


@dataclass
class TrainArgs:
    """meta-train an agent; its options follow (``--agent AGENT --help`` lists them)"""

    agent: str | None = option(None, "the agent (`metarl train --help` lists them)")
    preset: str | None = option(
        None, "named settings of the agent, applied beneath the options given here"
    )
    run_dir: str | None = option(None, "where the run goes (default: runs/AGENT/ENV-seedN)")
    resume: str | None = option(None, "continue this run directory from its checkpoint")
    overwrite: bool = option(False, "delete an existing run directory first")
    imports: Imports = option((), _IMPORTS_HELP)  # noqa: RUF009 - a field, as option() gives


@dataclass
class EvaluateArgs:
    """held-out evaluation of a run: return after 0..K adaptation steps, JSON and PNG"""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")] = field(
        metadata={"help": "a run directory made by metarl train"}
    )
    tasks: Literal["test", "train"] = option("test", "which split")
    steps: int | None = option(
        None,
        "adaptation units K: gradient steps (None: 3), or for RL² episodes after the first "
        "(None: the trained trial length minus one)",
    )
    seeds: tuple[int, ...] = option((0, 1, 2), "evaluation seeds")
    episodes: int | None = option(
        None, "episodes per step and task (None: 40 for 2D navigation, 20 otherwise)"
    )
    device: str = option("cpu", "auto, cpu or cuda")
    num_threads: int = option(1, NUM_THREADS_HELP)
    max_tasks: int | None = option(None, "only the first N tasks")
    lrs: tuple[float, ...] | None = option(
        None,
        "inner learning rates of adaptation steps 1, 2, ... (the last repeats), for the agents "
        "that adapt by gradient steps; None: the run's own (MAML, pretrained, random init: "
        "inner_lr then inner_lr/2 as in Finn et al. 2017; Reptile: inner_lr; for a Meta-SGD "
        "run they multiply the learned rates, default 1)",
    )
    video: str | None = option(
        None,
        "also write into this folder, for the first 3 tasks (fewer with --max-tasks), a video "
        "of an episode before adaptation and after 1..K units side by side (K: --steps, "
        "default 1; the first --seeds seed): MP4 with pip install 'metarl[video]', else GIF. "
        "Every family renders: 2D navigation, bandits and tabular MDPs are drawn; MuJoCo and "
        "Meta-World render off-screen, headless through EGL (MUJOCO_GL=egl, the default "
        "without a display) or OSMesa (MUJOCO_GL=osmesa)",
    )
    imports: Imports = option((), _IMPORTS_HELP)  # noqa: RUF009 - a field, as option() gives


@dataclass
class BenchmarkArgs:
    """adaptation-speed report: several agents on one or more task families, trained (or
    reused) per seed and evaluated on the held-out tasks; Markdown, JSON, PNG"""

    agents: tuple[str, ...] = field(
        metadata={"help": "agents to compare (`metarl train --help` lists them)"}
    )
    envs: tuple[str, ...] = field(
        metadata={"help": "task families (`metarl envs` lists them)", "aliases": ("--env",)}
    )
    seeds: tuple[int, ...] = option((0, 1, 2), "one meta-training run per seed")
    preset: tuple[str, ...] = option(
        ("quick",),
        "the preset of every agent (NAME), or of one (AGENT=NAME; AGENT=none: its defaults); "
        "the family of --envs replaces the preset's",
    )
    set: tuple[str, ...] = option(
        (),
        "an agent's option over its preset as AGENT.OPTION=VALUE, e.g. rl2.num_iterations=100 "
        "or maml-trpo.hidden_sizes=32,32: VALUE is read as the option's type, as metarl train "
        "reads it (a sequence's items separated by commas or spaces; a boolean: true or false)",
    )
    runs_dir: str = option("runs/bench", "where runs go and are reused from")
    out: str = option("benchmarks/report", "directory of report.md, report.json, report.png")
    steps: int = option(
        3,
        "adaptation units K after the first point: gradient steps, or for RL² episodes "
        "(trials of K+1 episodes)",
    )
    eval_seeds: tuple[int, ...] = option((0,), "evaluation seeds of every run")
    eval_points: int = option(
        1,
        "N > 1: also evaluate every run on the held-out tasks after each 1/N of its "
        "iterations (trained to that point, then resumed), for the held-out return against "
        "meta-training env steps; 1: only the finished run",
    )
    episodes: int | None = option(
        None, "episodes (RL²: trials) per step and task (None: 40 for 2D navigation, 20 "
        "otherwise)"
    )  # fmt: skip
    max_tasks: int | None = option(None, "only the first N tasks")
    tasks: Literal["test", "train"] = option("test", "which split to evaluate on")
    device: str = option("cpu", "auto, cpu or cuda")
    num_threads: int = option(1, NUM_THREADS_HELP)
    note: str | None = option(
        None,
        "a sentence written into the report and its plot (schedules, a shared machine...)",
    )
    retrain: bool = option(False, "train every run again, even a finished one")
    imports: Imports = option((), _IMPORTS_HELP)  # noqa: RUF009 - a field, as option() gives


@dataclass
class FewShotTrainArgs:
    """meta-train a few-shot learner, then evaluate it on held-out episodes; the learner's
    options follow (``--learner NAME --help`` lists them)"""

    learner: str | None = option(
        None, "the meta-learner (None: the --preset's, the resumed run's, or maml)"
    )
    preset: str | None = option(
        None,
        "a paper's settings (`metarl fewshot presets`), applied beneath the options given here",
    )
    run_dir: str | None = option(None, "run directory (None: runs/fewshot-LEARNER-TIME)")
    resume: bool = option(False, "continue the run in --run-dir")
    overwrite: bool = option(False, "replace a run already in --run-dir")
    num_eval_episodes: int = option(600, "held-out episodes of the final evaluation")


@dataclass
class FewShotEvaluateArgs:
    """evaluate a trained few-shot run on held-out episodes (mean ± 95% CI, JSON)"""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")] = field(
        metadata={"help": "the run directory `metarl fewshot train` made"}
    )
    num_episodes: int = option(600, "held-out episodes")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    lake_runs: bool = option(False, "also Lake et al.'s 20 one-shot runs")
    out: str | None = option(None, "JSON file (None: RUN_DIR/eval.json)")
    num_ways: int | None = option(
        None, "N of the test episodes (None: the run's; another N for protonet and matching)"
    )
    eval_query: int | None = option(None, "queries per class (None: the run's)")
    checkpoint: Literal["latest", "best"] = option(
        "latest",
        "latest: the last checkpoint; best: the one of the best validation accuracy (best.pt, "
        "kept by a run trained with --val-every)",
    )
