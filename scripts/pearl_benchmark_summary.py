"""Returns against environment steps, from a ``metarl benchmark`` report: PEARL's claim is
sample efficiency, so beside the per-unit curves this lists, for every agent, the held-out
return after each adaptation unit together with the env steps one task spent to reach it; the
held-out return at each point of meta-training against the env steps spent up to it (a report
made with ``--eval-points N``); and the env steps, seconds, seconds per iteration and env
steps per second of meta-training.

Usage: python scripts/pearl_benchmark_summary.py benchmarks/pearl_nav2d [--out FILE.md]
(default: the report directory's name with ``.md``, e.g. ``benchmarks/pearl_nav2d.md``).
Text below the line ``<!-- by hand below -->`` in an existing page is kept.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

#: What follows this line in the page is written by hand and kept when the page is rewritten.
HAND = "<!-- by hand below -->"

_NAMES = {"maml-trpo": "MAML-TRPO", "rl2": "RL²", "pearl": "PEARL", "varibad": "VariBAD"}


def _pm(mean: float, half: float | None) -> str:
    return f"{mean:.2f} ± {half:.2f}" if half is not None and half == half else f"{mean:.2f}"


def _title(data: dict[str, Any]) -> str:
    names = [_NAMES.get(e["agent"], e["agent"]) for e in data["entries"]]
    names = list(dict.fromkeys(names))
    envs = ", ".join(data["settings"]["envs"])
    if "PEARL" in names and len(names) > 1:
        others = [n for n in names if n != "PEARL"]
        rest = ", ".join(others[:-1]) + (" and " if len(others) > 1 else "") + others[-1]
        return f"PEARL beside {rest} on {envs}"
    return f"{' and '.join(names)} on {envs}"


def summary(report_dir: Path, command: str) -> str:
    data = json.loads((report_dir / "report.json").read_text())
    s = data["settings"]
    lines = [
        f"# {_title(data)}",
        "",
        f"From the benchmark report [{report_dir.name}/report.md]({report_dir.name}/report.md) "
        f"(its command: `{s['command']}`); this page made by `{command}`.",
        "",
        f"Machine: {s['machine']}.",
        "",
        f"**Budget:** {s['note']}" if s.get("note") else "",
        "",
        "Held-out split, the same tasks for every agent; return after k adaptation units, mean ± "
        "95% CI over (run seed × evaluation seed, task) pairs; *env steps/task* is what one "
        "task spent to reach that point (adaptation only).",
        "",
        "| agent | unit | k | return | env steps/task to reach it |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for e in data["entries"]:
        for k, (m, h) in enumerate(zip(e["mean"], e["ci95"], strict=True)):
            steps = e["adapt_env_steps_per_task"][k]
            lines.append(f"| {e['agent']} | {e['unit']} | {k} | {_pm(m, h)} | {steps:,.0f} |")
    if any(len(e.get("progress", [])) > 1 for e in data["entries"]):
        lines += [
            "",
            "Held-out return against meta-training env steps (`--eval-points`): each run "
            "evaluated on the same held-out tasks after every share of its iterations; env steps "
            "of meta-training up to that point, mean over the runs; return before adaptation "
            "(k = 0) and after the last unit:",
            "",
            "| agent | iteration | meta-train env steps | k = 0 | last k |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for e in data["entries"]:
            for p in e.get("progress", []):
                steps = "—" if p["env_steps"] is None else f"{p['env_steps']:,.0f}"
                k = len(p["mean"]) - 1
                lines.append(
                    f"| {e['agent']} | {p['iteration']} | {steps} | "
                    f"{_pm(p['mean'][0], p['ci95'][0])} | {_pm(p['mean'][k], p['ci95'][k])} "
                    f"(k = {k}) |"
                )
    lines += [
        "",
        "Meta-training, mean over the runs (from each run's `metrics.csv`; wall-clock seconds "
        "of the iterations alone, evaluations not counted):",
        "",
        "| agent | iterations | env steps | seconds | s / iteration | env steps / s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in data["entries"]:
        mt = e["meta_train"]
        steps = "—" if mt["env_steps"] is None else f"{mt['env_steps']:,.0f}"
        secs = "—" if mt["wall_clock_s"] is None else f"{mt['wall_clock_s']:,.0f}"
        per_it = per_s = "—"
        if mt["wall_clock_s"] and mt["iterations"]:
            per_it = f"{mt['wall_clock_s'] / mt['iterations']:.2f}"
            if mt["env_steps"] is not None:
                per_s = f"{mt['env_steps'] / mt['wall_clock_s']:,.0f}"
        lines.append(
            f"| {e['agent']} | {mt['iterations']:.0f} | {steps} | {secs} | {per_it} | {per_s} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir", help="a metarl benchmark --out directory")
    parser.add_argument("--out", default=None, help="the page to write")
    args = parser.parse_args(argv)
    report_dir = Path(args.report_dir)
    if not (report_dir / "report.json").is_file():
        print(f"{report_dir} holds no report.json: give a metarl benchmark --out directory",
              file=sys.stderr)  # fmt: skip
        return 2
    out = Path(args.out) if args.out else report_dir.with_suffix(".md")
    command = "python scripts/pearl_benchmark_summary.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    page = summary(report_dir, command)
    if out.exists() and HAND in out.read_text():
        page += "\n" + HAND + out.read_text().split(HAND, 1)[1]
    out.write_text(page)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
