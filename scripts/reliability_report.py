"""Run every reliability test of issues #7 and #20 once (fast and slow) and write what was tried.

The tests record each case they try (a kill, a malicious or damaged file, a faulty env, a
generated bad input, the soak's memory, a symlink planted in a run directory, a bomb
checkpoint's peak memory, a second writer...) through ``metarl.testing.tally``; this script runs
them with the tally on, checks that every test passed, and writes

* ``benchmarks/reliability.md`` — the counts, the soak's memory and iteration times, the
  command, the commit and the machine;
* ``benchmarks/reliability.json`` — the same as data.

Usage:
    python scripts/reliability_report.py  # about 15 CPU-minutes on 2 cores (longer when shared)
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from metarl.evaluation.report import Provenance, describe_machine, write_report

ROOT = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/test_crash_resume.py",
    "tests/test_checkpoint_safety.py",
    "tests/test_runs.py",
    "tests/test_no_hang.py",
    "tests/test_numerical_faults.py",
    "tests/test_properties.py",
    "tests/test_bad_input.py",
    "tests/test_soak.py",
    "tests/test_run_dir_safety.py",
]
COMMAND = "python scripts/reliability_report.py"


def run_tests(tally: Path, junit: Path) -> tuple[int, float]:
    env = dict(os.environ, METARL_RELIABILITY_TALLY=str(tally))
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "slow or not slow", "-p",
           "no:cacheprovider", f"--junitxml={junit}", "--timeout=900", *TESTS]  # fmt: skip
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    return code, time.perf_counter() - start


def junit_counts(junit: Path) -> dict[str, int]:
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def read_tally(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = collections.Counter()
    for r in records:
        counts[r["what"]] += r["n"]
    kills = [r for r in records if r["what"] == "random SIGKILL"]
    soak = [r for r in records if r["what"] == "soak"]
    by_agent: dict[str, int] = collections.Counter(
        r.get("agent", "") for r in records if r["what"] == "killed run resumed bit-exact"
    )
    return {
        "counts": dict(sorted(counts.items())),
        "random_kills": len(kills),
        "random_kills_hit_live_process": sum(1 for r in kills if r["hit"]),
        "kills_inside_checkpoint_write": counts["SIGKILL inside a checkpoint write"],
        "resumed_bit_exact_by_agent": dict(by_agent),
        "malicious_loads": counts["malicious checkpoint refused"],
        "corrupt_loads": counts["truncated checkpoint refused"]
        + counts["bit-flipped checkpoint refused"]
        + counts["bit-flipped checkpoint loaded identical"],
        "faulty_envs": counts["faulty env in a worker surfaced, workers reaped"]
        + counts["faulty env in process surfaced"]
        + counts["trainer SIGKILLed, no orphan workers"],
        "numerical_faults": counts["numerical fault stopped the run, checkpoint kept"],
        "numerical_fault_agents": sorted(
            {
                r.get("agent", "")
                for r in records
                if r["what"] == "numerical fault stopped the run, checkpoint kept"
            }
        ),
        "generated_inputs": sum(
            v
            for k, v in counts.items()
            if k.startswith(("valid task", "mutated task", "unknown env", "generated config"))
        ),
        "bad_command_lines": counts["bad command line refused"],
        "soak": soak,
        "bombs": [r for r in records if r["what"] == "bomb checkpoint peak memory"],
        "symlink_names": sorted(
            {r["name"] for r in records if r["what"] == "symlink at a written name refused"}
        ),
        "symlink_commands": sorted(
            {r["command"] for r in records if r["what"] == "symlink at a written name refused"}
        ),
    }


def write(summary: dict[str, Any], junit: dict[str, int], seconds: float, prov: Provenance) -> None:
    prov.finish()
    commit = str(prov.machine["git_revision"])
    if prov.machine["git_dirty"]:
        commit += " with uncommitted changes"
    machine = describe_machine(prov.machine)
    ok = junit["failures"] == 0 and junit["errors"] == 0
    data = {"commit": commit, "tests": junit, "all_passed": ok, "seconds": round(seconds, 1),
            **summary}  # fmt: skip
    out = ROOT / "benchmarks"

    c = summary["counts"]
    lines = [
        "# Reliability (issues #7, #20): what was tried, and that nothing was lost, hung or "
        "written outside its run directory",
        "",
        f"Made by `{COMMAND}` at commit `{commit}` on {machine}, in {seconds:.0f} s. It runs "
        "the fast and the slow reliability tests once with a tally on "
        f"({', '.join(f'`{t}`' for t in TESTS)}); "
        f"{junit['tests']} tests, {junit['failures']} failures, {junit['errors']} errors, "
        f"{junit['skipped']} skipped — **{'all passed' if ok else 'FAILURES: see above'}**.",
        "",
        "| guarantee | tried | outcome |",
        "| --- | --- | --- |",
        f"| 1. crash-safe exact resume | {summary['random_kills']} SIGKILLs at random moments "
        f"({summary['random_kills_hit_live_process']} hit a live process), "
        f"{summary['kills_inside_checkpoint_write']} inside a checkpoint write | every "
        "checkpoint loadable after every kill; "
        + ", ".join(f"{n} {a} runs" for a, n in summary["resumed_bit_exact_by_agent"].items())
        + " resumed to final parameters (and logged metrics) bit-equal to an uninterrupted run; "
        f"{c.get('edited config.json refused on resume', 0)} resumes of a hand-edited "
        "config.json refused with the changed fields, the run untouched |",
        f"| 2. checkpoints cannot run code | {summary['malicious_loads']} loads of crafted "
        f"malicious pickles (4 kinds × each loader), {summary['corrupt_loads']} loads of "
        "truncated or bit-flipped copies, plus other-agent, other-family and other-format files"
        f" | marker file never created; {c.get('truncated checkpoint refused', 0)} truncations "
        f"and {c.get('bit-flipped checkpoint refused', 0)} flips refused with a clear error, "
        f"{c.get('bit-flipped checkpoint loaded identical', 0)} flips landed in bytes that "
        "change nothing (loaded the identical values); none loaded different values |",
        f"| 3. no hang | {summary['faulty_envs']} faulty-env cases: raise in step or reset, "
        "`os._exit`, SIGKILL, never return (in batched-env and SB3 VecEnv worker processes); "
        "raise in-process; the trainer itself SIGKILLed; training runs of MAML-TRPO, "
        "Reptile-RL, RL², pretrained and oracle on envs that hang, die or raise; fine-tuning "
        "evaluations on an env that hangs | each surfaced as an error naming the env, the "
        "task, the iteration (training runs) and the original traceback (or exit code / "
        "signal) within the timeout; the last checkpoint kept; all workers reaped, no "
        "orphans |",
        f"| 4. numerical faults | {summary['numerical_faults']} injected NaN/inf (observations, "
        "rewards, losses, gradients, TRPO step, inner and outer steps, NaN data, diverged "
        f"learning rate) in {', '.join(summary['numerical_fault_agents'])} "
        "| each stopped the run with an error naming the iteration and the quantity; "
        "the last good checkpoint kept byte for byte |",
        f"| 5. bad input | {summary['generated_inputs']} Hypothesis-generated task parameters, "
        f"config values and env ids; {summary['bad_command_lines']} bad command lines | "
        "every invalid one refused with TaskError/ConfigError/ValueError/KeyError naming it, "
        "every valid task a working env (single and batched) |",
        "",
        "## Soak (guarantee 6)",
        "",
        "Many small meta-iterations with logging and checkpoints on (`tests/test_soak.py`); "
        "resident memory (RSS) after the first iteration, median after warm-up (10–20% of "
        "the run) and median over the last 10%, and the median seconds per iteration in "
        "the same windows.",
        "",
        "| agent | iterations | RSS first (MB) | RSS after warm-up (MB) | RSS at end (MB) | "
        "RSS max (MB) | s/iter after warm-up | s/iter at end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["soak"]:
        lines.append(
            f"| {r['agent']} | {r['iterations']} | {r['rss_start_mb']:.1f} | "
            f"{r['rss_early_mb']:.1f} | {r['rss_end_mb']:.1f} | {r['rss_max_mb']:.1f} | "
            f"{r['iter_s_early']:.4f} | {r['iter_s_end']:.4f} |"
        )
    lines += [
        "",
        f"{prov.describe_load().capitalize()} (1, 5 and 15 minutes); the wall-clock "
        "figures (seconds per iteration, the run's duration) grow with it, the memory figures "
        "do not.",
    ]
    lines += _run_dir_section(summary, ok)
    lines += ["", "## Every tallied case", "", "| case | count |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in c.items()]
    write_report("reliability", data, lines, out, prov)


def _run_dir_section(summary: dict[str, Any], ok: bool) -> list[str]:
    """Run directories from elsewhere, one writer, one-line failures."""
    c = summary["counts"]
    held = "held" if ok else "NOT HELD (see the failures)"

    def n(what: str) -> int:
        return int(c.get(what, 0))

    rows = [
        (
            f"a symlink (to a file outside) planted at each of the {len(summary['symlink_names'])} "
            f"names metarl writes ({', '.join(f'`{x}`' for x in summary['symlink_names'])}), "
            f"opened by {', '.join(f'`metarl {x}`' for x in summary['symlink_commands'])}",
            n("symlink at a written name refused"),
            "refused in one line naming the link (exit 2); the file outside unchanged",
        ),
        (
            "links at the temporary names earlier versions wrote (`metrics.tmp`, "
            "`eval_test.json.tmp`, `benchmark_eval.tmp`, `.eval.json.PID.tmp`) while metrics "
            "are truncated and rewritten, an evaluation, the benchmark cache and eval.json saved",
            n("stale temporary name not written through"),
            "written around them (fresh random temporary names); the file outside unchanged",
        ),
        (
            "a symlink, a hard link or a FIFO at metrics.csv and resumes.jsonl, appended to",
            n("append through a link or FIFO refused"),
            "refused in one line; nothing written, nothing blocked",
        ),
        (
            "Hypothesis-generated run directories (files of random sizes and bytes, empty "
            "files, directories, symlinks to files, directories and missing paths outside, "
            "hard links, FIFOs at written and temporary names), then create/overwrite, resume "
            "+ log + checkpoint, evaluation saves, the benchmark cache, loads",
            n("generated run directory: no write outside"),
            "no file outside the run directory created, changed or touched",
        ),
        (
            "oversize checkpoints (a sparse file over the cap; a genuine one over it) and "
            "decompression bombs (a stride-0 payload, a deflated archive entry)",
            n("oversize checkpoint refused") + n("decompression-bomb checkpoint refused"),
            "refused before reading or unpacking: too large for a metarl checkpoint; peak "
            "memory below",
        ),
        (
            "a second writer (`train --resume`, `train --overwrite`) beside a live run, two "
            "`train --resume` processes started together, resume after the holder was SIGKILLed",
            n("second writer refused naming the holder")
            + n("concurrent writers: one ran, one refused, log intact")
            + n("stale lock of a killed process did not block resume"),
            "the second gets one line naming the holder's pid (exit 1), metrics.csv intact "
            "(each iteration once); a killed holder's lock never blocks the resume",
        ),
        (
            "a handed config.json asking for `--sampler ray --ray-address attacker:port`",
            n("hostile config.json field refused"),
            "`train --resume` refuses, naming what the file asked for; the values come from "
            "the command line only",
        ),
        (
            "a read-only disk (`evaluate`, `fewshot evaluate`, `train --resume`) and a full "
            "one (`train --resume` on a full 1 MB tmpfs)",
            n("read-only disk: one line, before the work")
            + n("full disk: one line, last checkpoint kept"),
            "one line (exit 1); the evaluations fail before the work; the last checkpoint kept "
            "byte for byte, no temporary file left",
        ),
    ]
    lines = [
        "",
        "## Run directories from elsewhere, one writer, one-line failures",
        "",
        "| attack | tried | outcome | result |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {t} | {o} | {held} ({t}/{t}) |" for a, t, o in rows]
    if summary["bombs"]:
        lines += [
            "",
            "Peak resident memory (`VmHWM`) of a fresh process loading each bomb (refused); "
            "a process that only imports metarl needs the baseline:",
            "",
            "| bomb | file (MB) | peak (MB) | baseline (MB) |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {b['kind']} | {b['file_mb']:.3f} | {b['peak_mb']:.1f} | {b['baseline_mb']:.1f} |"
            for b in summary["bombs"]
        ]
    return lines


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        tally, junit = Path(d) / "tally.jsonl", Path(d) / "junit.xml"
        prov = Provenance("cpu", script=__file__)
        code, seconds = run_tests(tally, junit)
        summary = summarise(read_tally(tally))
        counts = junit_counts(junit)
    write(summary, counts, seconds, prov)
    print((ROOT / "benchmarks" / "reliability.md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(main())
