"""Returns against environment steps, from a ``metarl benchmark`` report: PEARL's claim is
sample efficiency, so beside the per-unit curves this lists, for every agent, the held-out
return after each adaptation unit together with the env steps one task spent to reach it, and
the env steps and seconds of meta-training.

Usage: python scripts/pearl_benchmark_summary.py benchmarks/pearl_nav2d [--out FILE.md]
(default: the report directory's name with ``.md``, e.g. ``benchmarks/pearl_nav2d.md``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def _pm(mean: float, half: float) -> str:
    return f"{mean:.2f} ± {half:.2f}" if half == half else f"{mean:.2f}"


def summary(report_dir: Path, command: str) -> str:
    data = json.loads((report_dir / "report.json").read_text())
    s = data["settings"]
    lines = [
        f"# PEARL beside MAML-TRPO and RL² on {', '.join(s['envs'])}",
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
    lines += [
        "",
        "Meta-training, mean over the runs (from each run's `metrics.csv`):",
        "",
        "| agent | iterations | env steps | seconds |",
        "| --- | ---: | ---: | ---: |",
    ]
    for e in data["entries"]:
        mt = e["meta_train"]
        steps = "—" if mt["env_steps"] is None else f"{mt['env_steps']:,.0f}"
        secs = "—" if mt["wall_clock_s"] is None else f"{mt['wall_clock_s']:,.0f}"
        lines.append(f"| {e['agent']} | {mt['iterations']:.0f} | {steps} | {secs} |")
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
    command = "python scripts/pearl_benchmark_summary.py " + shlex.join(argv or sys.argv[1:])
    out.write_text(summary(report_dir, command))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
