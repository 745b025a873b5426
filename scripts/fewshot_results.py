"""Few-shot results beside the papers': shortened CPU runs of every learner, one at a time.

    python scripts/fewshot_results.py run maml-5w1s      # one learner (resumes if cut off)
    python scripts/fewshot_results.py run all            # every entry of SCHEDULES in turn
    python scripts/fewshot_results.py table              # benchmarks/fewshot_results.md + README

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
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from metarl.fewshot.evaluate import evaluate
from metarl.fewshot.train import EVAL_SEED_OFFSET, FewShotConfig, load_run, make_sampler, train
from metarl.runs import Run

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks" / "fewshot"
TABLE = ROOT / "benchmarks" / "fewshot_results.md"
RUNS = ROOT / "runs" / "fewshot-results"
README_START, README_END = "<!-- fewshot-results -->", "<!-- /fewshot-results -->"

#: name -> (preset, overrides of the shortened CPU schedule). Everything not overridden is the
#: paper's setting (see FewShotConfig.presets).
SCHEDULES: dict[str, tuple[str, dict[str, Any]]] = {
    "maml-sinusoid": ("maml-sinusoid", {"num_iterations": 20_000}),
    "baseline-sinusoid": ("baseline-sinusoid", {"num_iterations": 20_000}),
    "maml-5w1s": ("maml-omniglot-5w1s", {"num_iterations": 600}),
    "protonet-5w1s": ("protonet-omniglot-5w1s", {"num_iterations": 250}),
    "metasgd-5w1s": ("metasgd-omniglot-5w1s", {"num_iterations": 600}),
    "fomaml-5w1s": ("fomaml-omniglot-5w1s", {"num_iterations": 1500}),
    # 32 episodes of 30 images per update cost ~7 s on one CPU thread: 8 per update here.
    "matching-5w1s": ("matching-omniglot-5w1s", {"num_iterations": 250, "meta_batch_size": 8}),
    "baseline-5w1s": ("baseline-omniglot-5w1s", {"num_iterations": 300}),
    "mann-5w1s": ("mann-omniglot-5w1s", {"num_iterations": 1500}),
    "reptile-5w1s": ("reptile-omniglot-5w1s", {"num_iterations": 300}),
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
}

NAMES = {
    "maml": "MAML",
    "fomaml": "first-order MAML",
    "metasgd": "Meta-SGD",
    "reptile": "Reptile",
    "protonet": "Prototypical Networks",
    "matching": "Matching Networks",
    "mann": "MANN (Santoro et al. 2016)",
    "baseline": "pretrain + fine-tune",
}


def run_one(name: str, iterations: int | None, eval_episodes: int) -> dict[str, Any]:
    if name not in SCHEDULES:
        raise SystemExit(f"unknown run {name!r}; one of: all, {', '.join(SCHEDULES)}")
    preset, overrides = SCHEDULES[name]
    overrides = dict(overrides, device="cpu", tensorboard=False, log_every=50)
    if iterations is not None:
        overrides["num_iterations"] = iterations
    cfg = FewShotConfig.from_preset(preset, **overrides)
    run_dir = RUNS / name
    resume = (run_dir / "checkpoint.pt").exists()
    if resume:
        saved = Run.read_record(run_dir)["config"]
        if {k: v for k, v in saved.items() if k != "num_iterations"} != {
            k: v for k, v in cfg.to_dict().items() if k != "num_iterations"
        }:
            shutil.rmtree(run_dir)
            resume = False
    elif run_dir.exists():
        shutil.rmtree(run_dir)
    print(f"{name}: {'resuming' if resume else 'training'} {cfg.num_iterations} iterations")
    start = time.perf_counter()
    result = train(cfg, run_dir, resume=resume, num_eval_episodes=eval_episodes)
    result.pop("per_episode", None)
    result.update(
        {
            "name": name,
            "preset": preset,
            "schedule": "paper's schedule"
            if cfg.num_iterations >= FewShotConfig.presets[preset].get("num_iterations", 60_000)
            else "shortened CPU schedule",
            "command": f"python scripts/fewshot_results.py run {name}"
            + (f" --iterations {iterations}" if iterations is not None else ""),
            "cli_equivalent": f"metarl fewshot train --preset {preset} "
            f"--num-iterations {cfg.num_iterations} --device cpu",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
            "session_wall_clock_s": time.perf_counter() - start,
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
        "these runs train for a few hundred to a few thousand iterations on one CPU thread of a "
        "shared machine (no GPU was available), with every other setting the paper's preset "
        "(`metarl fewshot presets`). Their accuracies show that each learner learns, not a "
        "reproduction of the published numbers.",
        "",
        "## Omniglot (1200/423-character split, rotations as classes, 600 held-out test "
        "episodes, mean ± 95% CI)",
        "",
        "| learner | setting | ours (%) | paper (%) | iterations (paper's) | train wall-clock | "
        "source |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    sinusoid = []
    for r in results:
        if r["metric"] != "accuracy":
            sinusoid.append(r)
            continue
        learner = r["config"]["learner"]
        setting = _setting(r)
        paper = PAPERS.get((learner, setting))
        paper_txt = (
            "—"
            if paper is None
            else f"{paper[0]}" + (f" ± {paper[1]}" if paper[1] is not None else "")
        )
        full = FewShotConfig.presets[r["preset"]].get("num_iterations", 60_000)
        lines.append(
            f"| {NAMES[learner]} | {r['num_ways']}-way {r['num_shots']}-shot | "
            f"**{100 * r['mean']:.1f} ± {100 * r['ci95']:.1f}** | {paper_txt} | "
            f"{r['iterations']} ({full}) | {_hours(r['train_wall_clock_s'])} | "
            f"{'' if paper is None else paper[2]} |"
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
            full = FewShotConfig.presets[r["preset"]].get("num_iterations", 60_000)
            for steps, (mean, ci) in sorted(
                r.get("mse_by_steps", {}).items(), key=lambda x: int(x[0])
            ):
                lines.append(
                    f"| {NAMES[learner]} | {steps} | {mean:.3f} ± {ci:.3f} | "
                    f"{r['iterations']} ({full}) | {_hours(r['train_wall_clock_s'])} |"
                )
    machine = results[-1]
    lines += [
        "",
        f"Machine: {machine['machine']}, torch {machine['torch']}, {machine['threads']} "
        "thread(s), CPU shared with other jobs (wall-clocks are indicative only).",
        "",
    ]
    text = "\n".join(lines)
    TABLE.write_text(text)
    # The README shows the same tables between its markers.
    readme = ROOT / "README.md"
    body = readme.read_text()
    if README_START in body and README_END in body:
        head, rest = body.split(README_START, 1)
        tables = text.split("\n## ", 1)[1]  # from the first table's heading on
        block = "\n".join(
            ("#### " + line[3:]) if line.startswith("## ") else line
            for line in ("## " + tables).strip().splitlines()
        )
        readme.write_text(
            f"{head}{README_START}\n{block}\n{README_END}{rest.split(README_END, 1)[1]}"
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
    sub.add_parser("table", help=f"write {TABLE.relative_to(ROOT)}")
    args = parser.parse_args()
    if args.cmd == "table":
        print(write_table())
        return
    torch.set_num_threads(args.threads)
    names = list(SCHEDULES) if args.name == "all" else [args.name]
    for name in names:
        run_one(name, args.iterations, args.eval_episodes)


if __name__ == "__main__":
    main()
