"""Few-shot results beside the papers': shortened CPU runs of every learner, one at a time.

    python scripts/fewshot_results.py run maml-5w1s      # one learner (resumes if cut off)
    python scripts/fewshot_results.py run all            # every entry of SCHEDULES in turn
    python scripts/fewshot_results.py run maml-mini-5w1s --data-path DIR   # with mini-ImageNet
    python scripts/fewshot_results.py table              # benchmarks/fewshot_results.md + docs

Each ``run`` meta-trains one learner through :func:`metarl.fewshot.train.train` (the same code as
``metarl fewshot train``) with its paper preset and a SHORTENED number of meta-iterations, in
``runs/fewshot-results/NAME`` (checkpointed, so an interrupted run resumes), evaluates it on
600 held-out episodes (mean ± 95% CI) and writes ``benchmarks/fewshot/NAME.json`` with the
command, schedule, device, threads and wall-clock. ``table`` puts every JSON there beside the
published numbers (Finn et al. 2017 Table 1; Li et al. 2017; Nichol et al. 2018; Snell et al.
2017; Vinyals et al. 2016; Santoro et al. 2016) in a Markdown table.

The runs are far shorter than the papers' (tens of thousands of iterations on a GPU): the
table says how short, and its accuracies are what such a schedule reaches on the CPU, not a
reproduction of the published ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from metarl.evaluation.report import Provenance
from metarl.fewshot.configs import all_presets
from metarl.fewshot.data import lake_one_shot_runs
from metarl.fewshot.evaluate import evaluate, evaluate_episodes
from metarl.fewshot.train import (
    EVAL_SEED_OFFSET,
    FewShotConfig,
    evaluate_run,
    load_run,
    make_sampler,
    train,
)
from metarl.runs import Run

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks" / "fewshot"
TABLE = ROOT / "benchmarks" / "fewshot_results.md"
RUNS = ROOT / "runs" / "fewshot-results"
#: docs/results.md shows the same tables between these markers
RESULTS_PAGE = ROOT / "docs" / "results.md"
PAGE_START, PAGE_END = "<!-- fewshot-results -->", "<!-- /fewshot-results -->"

#: name -> (preset, overrides of the shortened CPU schedule). Everything not overridden is the
#: paper's setting (see FewShotConfig.presets). The iteration counts were sized to 5-25 minutes
#: of training each on one thread of a 2-core CPU (1-minute load averages of 6-12); test episodes
#: after protonet-5w1s have 5 queries per class instead of 15 (a quarter of the evaluation
#: time; the per-episode accuracy estimates the same quantity) -- the table shows both.
SCHEDULES: dict[str, tuple[str, dict[str, Any]]] = {
    "maml-sinusoid": ("maml-sinusoid", {"num_iterations": 20_000}),
    "baseline-sinusoid": ("baseline-sinusoid", {"num_iterations": 20_000}),
    "maml-5w1s": ("maml-omniglot-5w1s", {"num_iterations": 150, "eval_query": 5}),
    "fomaml-5w1s": ("fomaml-omniglot-5w1s", {"num_iterations": 150, "eval_query": 5}),
    "metasgd-5w1s": ("metasgd-omniglot-5w1s", {"num_iterations": 50, "eval_query": 5}),
    # Nichol et al. adapt for 50 steps at test time; 10 here (the evaluation of 600 episodes
    # with 50 steps would take longer than the training). The committed run was started with
    # 500 iterations, cut at its iteration-100 checkpoint when the machine's load made
    # 500 too long (ε had annealed 1.0 -> 0.8 toward 500), and resumed to 150 (ε 0.33 -> 0).
    "reptile-5w1s": (
        "reptile-omniglot-5w1s",
        {"num_iterations": 150, "eval_query": 5, "num_eval_steps": 10},
    ),
    "protonet-5w1s": ("protonet-omniglot-5w1s", {"num_iterations": 200}),
    # 32 episodes of 30 images per update cost ~7 s on one CPU thread: 8 per update here.
    "matching-5w1s": (
        "matching-omniglot-5w1s",
        {"num_iterations": 60, "meta_batch_size": 8, "eval_query": 5},
    ),
    # 300 iterations stay at chance (20.0 ± 0.5%, the loss falls only toward the label
    # marginals); MANN leaves chance after ~1100 (Santoro et al. train for 100k episodes).
    "mann-5w1s": ("mann-omniglot-5w1s", {"num_iterations": 3000, "eval_query": 5}),
    "baseline-5w1s": ("baseline-omniglot-5w1s", {"num_iterations": 300, "eval_query": 5}),
    "maml-5w5s": ("maml-omniglot-5w5s", {"num_iterations": 100, "eval_query": 5}),
    "protonet-5w5s": ("protonet-omniglot-5w5s", {"num_iterations": 20, "eval_query": 5}),
    "maml-20w1s": ("maml-omniglot-20w1s", {"num_iterations": 20, "eval_query": 5}),
    # Snell et al. train one model per shot count and test it 5-way and 20-way: the 20-way
    # row is protonet-5w1s's model (60-way 1-shot training) on 20-way test episodes.
    "protonet-20w1s": ("protonet-omniglot-20w1s", {"num_iterations": 200, "eval_query": 5}),
    # Lake et al.'s 20 one-shot runs need a learner that never saw images_evaluation.
    "protonet-lake": (
        "protonet-omniglot-20w1s",
        {"num_iterations": 100, "eval_query": 5, "omniglot_split": "lake"},
    ),
    # 5 queries per class in training too (a third of the images per update of the preset's
    # 15; one episode per update either way).
    "metanet-5w1s": (
        "metanet-omniglot-5w1s",
        {"num_iterations": 1000, "num_query": 5, "eval_query": 5},
    ),
}

#: mini-ImageNet (Ravi & Larochelle's split): the papers' full schedules, for a user who has
#: the data (`run NAME --data-path DIR`; the images cannot be shipped): name -> (preset,
#: overrides). Each trains on train.csv, keeps the best checkpoint on val.csv and tests it on
#: test.csv.
MINI_IMAGENET: dict[str, tuple[str, dict[str, Any]]] = {
    f"{learner}-mini-{setting}": (f"{learner}-miniimagenet-{setting}", {})
    for learner in ("maml", "protonet", "matching")
    for setting in ("5w1s", "5w5s")
}
SCHEDULES.update(MINI_IMAGENET)

#: name -> (run whose trained learner it evaluates, the settings that change at test time).
EVALUATE_FROM: dict[str, tuple[str, dict[str, Any]]] = {
    "protonet-20w1s": ("protonet-5w1s", {"num_ways": 20, "eval_query": 5}),
}

#: name -> what else a committed run's table row must say about how it was made.
NOTES: dict[str, str] = {
    "reptile-5w1s": "ε annealed toward 500 iterations for the first 100 (1.0 → 0.8), then "
    "resumed to 150 (0.33 → 0), see SCHEDULES",
    "mann-5w1s": "no published 5-way 1-shot number: Santoro et al. report the accuracy of each "
    "instance of a class within 50-image episodes (Table 1); 300 iterations stayed at chance "
    "(20.0 ± 0.5%)",
}

#: Published accuracies (%) / MSE: (value, ± or None, source).
PAPERS: dict[tuple[str, str], tuple[float, float | None, str]] = {
    ("maml", "5w1s"): (98.7, 0.4, "Finn et al. 2017, Table 1"),
    ("fomaml", "5w1s"): (98.3, 0.5, "Finn et al. 2017, Table 1"),
    ("metasgd", "5w1s"): (99.53, 0.26, "Li et al. 2017, Table 1"),
    ("reptile", "5w1s"): (97.68, 0.04, "Nichol et al. 2018, Table 1 (transductive)"),
    ("protonet", "5w1s"): (98.8, None, "Snell et al. 2017, Table 1"),
    ("matching", "5w1s"): (98.1, None, "Vinyals et al. 2016, Table 1"),
    ("maml", "5w5s"): (99.9, 0.1, "Finn et al. 2017, Table 1"),
    ("protonet", "5w5s"): (99.7, None, "Snell et al. 2017, Table 1"),
    ("maml", "20w1s"): (95.8, 0.3, "Finn et al. 2017, Table 1"),
    ("protonet", "20w1s"): (96.0, None, "Snell et al. 2017, Table 1"),
    ("metanet", "5w1s"): (98.95, None, "Munkhdalai & Yu 2017, Table 1"),
    ("metanet", "20w1s"): (97.00, None, "Munkhdalai & Yu 2017, Table 1"),
}

#: Published mini-ImageNet accuracies (%), 5-way: (learner, setting) -> (value, source).
PAPERS_MINI_IMAGENET: dict[tuple[str, str], tuple[float, str]] = {
    ("maml", "5w1s"): (48.70, "Finn et al. 2017, Table 2"),
    ("maml", "5w5s"): (63.11, "Finn et al. 2017, Table 2"),
    ("protonet", "5w1s"): (49.42, "Snell et al. 2017, Table 2"),
    ("protonet", "5w5s"): (68.20, "Snell et al. 2017, Table 2"),
    ("matching", "5w1s"): (43.56, "Ravi & Larochelle 2017, Table 1"),
    ("matching", "5w5s"): (55.31, "Ravi & Larochelle 2017, Table 1"),
}

NAMES = {
    "maml": "MAML",
    "fomaml": "first-order MAML",
    "metasgd": "Meta-SGD",
    "reptile": "Reptile",
    "protonet": "Prototypical Networks",
    "matching": "Matching Networks",
    "mann": "MANN (Santoro et al. 2016)",
    "metanet": "MetaNet (Munkhdalai & Yu 2017)",
    "baseline": "pretrain + fine-tune",
}


def run_one(
    name: str, iterations: int | None, eval_episodes: int, data_path: str | None = None
) -> dict[str, Any]:
    if name not in SCHEDULES:
        raise SystemExit(f"unknown run {name!r}; one of: all, {', '.join(SCHEDULES)}")
    preset, overrides = SCHEDULES[name]
    if name in MINI_IMAGENET:
        if data_path is None:
            raise SystemExit(
                f"{name} needs your mini-ImageNet copy: --data-path DIR (train.csv, val.csv, "
                "test.csv and images/; it cannot be downloaded here)"
            )
        overrides = {**overrides, "data_path": data_path}
    start, prov = time.perf_counter(), Provenance("cpu", script=__file__)
    lake = overrides.get("omniglot_split") == "lake"
    if name in EVALUATE_FROM:
        source, changes = EVALUATE_FROM[name]
        src_dir = RUNS / source
        if not (OUT_DIR / f"{source}.json").is_file() or not (src_dir / "checkpoint.pt").is_file():
            raise SystemExit(f"{name} evaluates {source}'s learner: run `run {source}` first")
        src_cfg, learner = load_run(src_dir, "cpu")
        print(f"{name}: evaluating {source}'s learner with {changes}")
        result = evaluate_run(src_dir, eval_episodes, learner=learner, cfg=src_cfg,
                              out=RUNS / name / "eval.json", lake_runs=True,
                              **changes)  # fmt: skip
        cfg = FewShotConfig.from_dict(result["config"])
        result["trained_by"] = source
        preset = SCHEDULES[source][0]
    else:
        overrides = dict(
            overrides, device="cpu", tensorboard=False, log_every=10, checkpoint_every=25
        )
        if iterations is not None:
            overrides["num_iterations"] = iterations
        cfg = FewShotConfig.from_preset(preset, **overrides)
        run_dir = RUNS / name
        resume = (run_dir / "checkpoint.pt").exists()
        if resume:
            # Settings that may change on resume (iterations, checkpointing) are not compared.
            saved = Run.read_record(run_dir)["config"]
            if {k: v for k, v in saved.items() if k not in _MAY_CHANGE} != {
                k: v for k, v in cfg.to_dict().items() if k not in _MAY_CHANGE
            }:
                shutil.rmtree(run_dir)
                resume = False
        elif run_dir.exists():
            shutil.rmtree(run_dir)
        print(f"{name}: {'resuming' if resume else 'training'} {cfg.num_iterations} iterations")
        result = train(cfg, run_dir, resume=resume, num_eval_episodes=eval_episodes)
        if lake:  # the 20 runs too (the same as `metarl fewshot evaluate --lake-runs`)
            _, learner = load_run(run_dir, "cpu")
            scores = evaluate_episodes(learner, lake_one_shot_runs(cfg.data_path, cfg.image_size))
            result["lake_one_shot_runs"] = {k: v for k, v in scores.items() if k != "per_episode"}
    result.pop("per_episode", None)
    provenance = prov.finish()
    result.update(
        {
            "name": name,
            "preset": preset,
            "schedule": "paper's schedule"
            if cfg.num_iterations >= _preset(preset).get("num_iterations", 60_000)
            else "shortened CPU schedule",
            "command": f"python scripts/fewshot_results.py run {name}"
            + (f" --iterations {iterations}" if iterations is not None else "")
            + (" --data-path DIR" if name in MINI_IMAGENET else ""),
            "cli_equivalent": _cli(name, preset, cfg),
            "threads": prov.machine["threads"],
            "torch": prov.machine["torch"],
            "machine": prov.machine["cpu"],
            "cpu_count": prov.machine["cores"],
            "device": str(cfg.device),
            "session_wall_clock_s": time.perf_counter() - start,
            # 1/5/15-minute load averages of the machine at start and end
            "loadavg": {"start": prov.load_before, "end": provenance["load_average_after"]},
            "provenance": provenance,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
    )
    if cfg.dataset == "sinusoid":
        result["mse_by_steps"] = mse_by_steps(run_dir, eval_episodes, (0, 1, 10))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{name}: {result['metric']} {result['mean']:.4f} ± {result['ci95']:.4f} -> {path}")
    return result


_MAY_CHANGE = ("num_iterations", "checkpoint_every", "device", "tensorboard")


def _preset(name: str) -> dict[str, Any]:
    """The overrides of preset ``name`` (whichever learner's class holds it)."""
    return all_presets()[name][1]


def _cli(name: str, preset: str, cfg: FewShotConfig) -> str:
    """The ``metarl fewshot`` commands that make the same run."""
    base = FewShotConfig.from_preset(preset).to_dict()
    if name in EVALUATE_FROM:
        source, changes = EVALUATE_FROM[name]
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in changes.items())
        return f"metarl fewshot evaluate runs/fewshot-results/{source} {flags}"
    flags = [f"--preset {preset}", f"--num-iterations {cfg.num_iterations}", "--device cpu"]
    for key, value in cfg.to_dict().items():
        if key in ("num_iterations", "device", "tensorboard", "log_every", "checkpoint_every"):
            continue
        if value != base[key]:
            flag = key.replace("_", "-")
            if isinstance(value, bool):
                flags.append(f"--{flag}" if value else f"--no-{flag}")
            else:
                flags.append(f"--{flag} {value}")
    cmd = "metarl fewshot train " + " ".join(flags)
    if cfg.omniglot_split == "lake":
        cmd += " --run-dir R && metarl fewshot evaluate R --lake-runs"
    return cmd


class _Steps:
    """``learner`` predicting with a fixed number of adaptation steps."""

    def __init__(self, learner: Any, steps: int) -> None:
        self.learner, self.steps = learner, steps

    def eval(self) -> None:
        self.learner.eval()

    def predict(self, batch: Any) -> torch.Tensor:
        return self.learner.predict(batch, num_steps=self.steps)


def mse_by_steps(
    run_dir: Path, episodes: int, steps: tuple[int, ...]
) -> dict[str, tuple[float, float]]:
    """Query MSE after 0, 1, 10 adaptation steps on the same held-out tasks (Finn et al. Fig. 2)."""
    cfg, learner = load_run(run_dir, "cpu")
    sampler = make_sampler(cfg, "test")
    out = {}
    for k in steps:
        r = evaluate(_Steps(learner, k), sampler, episodes, seed=cfg.seed + EVAL_SEED_OFFSET)  # type: ignore[arg-type]
        out[str(k)] = (r["mean"], r["ci95"])
    return out


def _setting(r: dict[str, Any]) -> str:
    return f"{r['num_ways']}w{r['num_shots']}s"


def _hours(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _differences(r: dict[str, Any]) -> str:
    """The settings of a run, other than its length and test queries, that are not its preset's."""
    if "trained_by" in r:
        return f"the model of `{r['trained_by']}` (60-way training), tested 20-way"
    out = _settings_differences(r)
    if r.get("name") in NOTES:
        out = "; ".join(x for x in (out, NOTES[r["name"]]) if x)
    return out


def _settings_differences(r: dict[str, Any]) -> str:
    preset = FewShotConfig.from_preset(r["preset"]).to_dict()
    config = FewShotConfig.from_dict(r["config"]).to_dict()  # older runs: a flat config
    skip = {"num_iterations", "eval_query", "device", "tensorboard", "log_every"}
    skip |= {"checkpoint_every", "data_path"}
    out = []
    for key, value in config.items():
        if key not in skip and key in preset and value != preset[key]:
            out.append(f"{key} {value} (paper {preset[key]})")
    return "; ".join(out)


def write_table() -> str:
    order = {name: i for i, name in enumerate(SCHEDULES)}
    paths = sorted(OUT_DIR.glob("*.json"), key=lambda p: (order.get(p.stem, len(order)), p.stem))
    results = [json.loads(p.read_text()) for p in paths]
    if not results:
        raise SystemExit(f"no results in {OUT_DIR}; run `python {__file__} run all` first")
    lines = [
        "# Few-shot results beside the papers'",
        "",
        "Written by `python scripts/fewshot_results.py table` from `benchmarks/fewshot/*.json`;",
        "each JSON was made by the command it records (`python scripts/fewshot_results.py run "
        "NAME`).",
        "",
        "**Shortened CPU schedules.** The papers train for 20k–100k meta-iterations on a GPU; "
        "these runs train for a few hundred to a few thousand iterations on one CPU thread "
        "(not measured on a GPU), with every other setting the paper's preset "
        "(`metarl fewshot presets`). Their accuracies show that each learner learns, not a "
        "reproduction of the published numbers.",
        "",
        "## Omniglot (1200/423-character split, rotations as classes, 600 held-out test "
        "episodes, mean ± 95% CI)",
        "",
        "| learner | setting | ours (%) | paper (%) | iterations (paper's) | queries/class "
        "at test | train wall-clock | differs from the paper's setting | source |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    sinusoid, lake, mini = [], [], {}
    for r in results:
        if r["metric"] != "accuracy":
            sinusoid.append(r)
            continue
        if r["config"].get("dataset") == "miniimagenet":
            mini[(r["config"]["learner"], _setting(r))] = r
            continue
        if "lake_one_shot_runs" in r:
            lake.append(r)
        if r["config"].get("omniglot_split", "vinyals") != "vinyals":
            continue
        learner = r["config"]["learner"]
        setting = _setting(r)
        paper = PAPERS.get((learner, setting))
        paper_txt = (
            "—"
            if paper is None
            else f"{paper[0]}" + (f" ± {paper[1]}" if paper[1] is not None else "")
        )
        full = _preset(r["preset"]).get("num_iterations", 60_000)
        lines.append(
            f"| {NAMES[learner]} | {r['num_ways']}-way {r['num_shots']}-shot | "
            f"**{100 * r['mean']:.1f} ± {100 * r['ci95']:.1f}** | {paper_txt} | "
            f"{r['iterations']} ({full}) | {r['num_query']} | "
            f"{_hours(r['train_wall_clock_s'])} | {_differences(r)} | "
            f"{'' if paper is None else paper[2]} |"
        )
    if lake:
        lines += [
            "",
            "## Lake et al.'s 20 one-shot runs (`all_runs.zip`, 20-way 1-shot, 20 queries each)",
            "",
            "The runs are drawings of `images_evaluation` characters. A learner trained on the "
            "1200-character split above has seen 141 of their 200 characters (the very drawings), "
            "so its score is not comparable to Lake et al.'s; the clean score trains on "
            "`images_background` only (`--omniglot-split lake`, Lake et al.'s protocol). "
            "Lake et al. 2015 (Science) report people at 95.5% (4.5% error) and Bayesian "
            "Program Learning at 96.7% (3.3% error) on these runs.",
            "",
            "| learner | trained on | the 20 runs (%) | 600 held-out 20-way 1-shot episodes (%) | "
            "iterations | comparable |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in lake:
            runs = r["lake_one_shot_runs"]
            clean = r["config"].get("omniglot_split", "vinyals") == "lake"
            trained = (
                "images_background (964 characters × 4 rotations)"
                if clean
                else "the 1200-character split (× 4 rotations)"
            )
            test = "images_evaluation" if clean else "the 423 test characters"
            lines.append(
                f"| {NAMES[r['config']['learner']]} | {trained} | "
                f"**{100 * runs['mean']:.1f} ± {100 * runs['ci95']:.1f}** | "
                f"{100 * r['mean']:.1f} ± {100 * r['ci95']:.1f} ({test}, "
                f"{r['num_query']} queries/class) | {r['iterations']} | "
                f"{'yes' if clean else 'no: seen characters'} |"
            )
    lines += [
        "",
        "## mini-ImageNet (Ravi & Larochelle's 64/16/20-class split, 84×84, 5-way, 600 "
        "test episodes)",
        "",
        "The images are ImageNet's and cannot be shipped, so our column is empty until a user "
        "with the data runs the command of its row (`--data-path`: the folder with `train.csv`, "
        "`val.csv`, `test.csv` and `images/`): the preset's full schedule, the best checkpoint "
        "on the validation split (`--val-every`), tested on `test.csv`. The same run from the "
        "command line: `metarl fewshot train --preset PRESET --data-path DIR`.",
        "",
        "| learner | setting | ours (%) | paper (%) | source | preset | command |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (preset, _) in MINI_IMAGENET.items():
        learner, setting = name.split("-mini-")
        value, source = PAPERS_MINI_IMAGENET[(learner, setting)]
        r = mini.get((learner, setting))
        ours = "" if r is None else f"**{100 * r['mean']:.2f} ± {100 * r['ci95']:.2f}**"
        shots = setting[2:-1]
        lines.append(
            f"| {NAMES[learner]} | 5-way {shots}-shot | {ours} | {value:.2f} | {source} | "
            f"`{preset}` | `python scripts/fewshot_results.py run {name} --data-path DIR` |"
        )
    if sinusoid:
        lines += [
            "",
            "## Sinusoid regression (Finn et al. 2017, Sec. 5.1; K = 10, 600 test tasks)",
            "",
            "Mean squared error on the query points after adapting to K = 10 support points "
            "(MAML: its inner step from the meta-learned initialisation; pretrain + fine-tune: "
            "the same step from a network trained on all tasks at once). Finn et al.'s Fig. 2 "
            "shows the same ordering.",
            "",
            "| learner | steps at test | MSE (± 95% CI) | iterations (paper's) | "
            "train wall-clock |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in sinusoid:
            learner = r["config"]["learner"]
            full = _preset(r["preset"]).get("num_iterations", 60_000)
            for steps, (mean, ci) in sorted(
                r.get("mse_by_steps", {}).items(), key=lambda x: int(x[0])
            ):
                lines.append(
                    f"| {NAMES[learner]} | {steps} | {mean:.3f} ± {ci:.3f} | "
                    f"{r['iterations']} ({full}) | {_hours(r['train_wall_clock_s'])} |"
                )
    machine = results[-1]
    # Records made before cpu_count and device were recorded ran on 2 cores, on the CPU.
    cores = machine.get("cpu_count", 2)
    gpu = "a GPU" if str(machine.get("device", "cpu")).startswith("cuda") else "no GPU"
    loads = [x for r in results if "loadavg" in r for x in (r["loadavg"]["start"][0],
             r["loadavg"]["end"][0])]  # fmt: skip
    load = (
        f"; 1-minute load average {min(loads):.0f}–{max(loads):.0f} during the "
        "runs that recorded it"
        if loads
        else ""
    )
    lines += [
        "",
        f"Machine: {machine['machine'].split(',')[0]}, {cores}-core CPU, {gpu}, torch "
        f"{machine['torch']}, {machine['threads']} thread(s){load} (wall-clocks are indicative "
        "only).",
        "",
    ]
    text = "\n".join(lines)
    TABLE.write_text(text)
    # docs/results.md shows the same tables between its markers.
    body = RESULTS_PAGE.read_text()
    if PAGE_START in body and PAGE_END in body:
        head, rest = body.split(PAGE_START, 1)
        tables = text.split("\n## ", 1)[1]  # from the first table's heading on
        block = "\n".join(
            ("#### " + line[3:]) if line.startswith("## ") else line
            for line in ("## " + tables).strip().splitlines()
        )
        RESULTS_PAGE.write_text(
            f"{head}{PAGE_START}\n{block}\n{PAGE_END}{rest.split(PAGE_END, 1)[1]}"
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train + evaluate one entry (or all) of SCHEDULES")
    r.add_argument("name", help=f"all or one of: {', '.join(SCHEDULES)}")
    r.add_argument("--iterations", type=int, help="override the shortened schedule")
    r.add_argument("--eval-episodes", type=int, default=600)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--data-path", help="mini-ImageNet's folder (the *-mini-* runs)")
    sub.add_parser("table", help=f"write {TABLE.relative_to(ROOT)}")
    args = parser.parse_args()
    if args.cmd == "table":
        print(write_table())
        return
    torch.set_num_threads(args.threads)
    names = [n for n in SCHEDULES if n not in MINI_IMAGENET] if args.name == "all" else [args.name]
    for name in names:
        run_one(name, args.iterations, args.eval_episodes, args.data_path)


if __name__ == "__main__":
    main()
