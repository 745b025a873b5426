"""The 2D-navigation variant table of benchmarks/maml_nav2d_variants.md: the gap to the
published one-step number.

Each variant is a MAML-TRPO run (``metarl train --agent maml-trpo --preset nav2d-paper ...``)
evaluated with ``metarl evaluate RUN --steps 3 --seeds ...`` (its ``eval_test.json``). This
script reads, per run, the held-out curve (mean ± 95% CI over (seed, task) pairs after 0..3
steps, and the one-step gain), what its config changes against the ``nav2d-paper`` preset,
its meta-training cost (metrics.csv) and the training-batch return after adaptation over the
last 20 iterations; it writes ``benchmarks/maml_nav2d_variants.json`` and the table between
the ``<!-- variants -->`` markers of ``benchmarks/maml_nav2d_variants.md``. The published
bar (Li et al. 2017: −9.12 after one step) is checked per row from the data.

Usage:
    python scripts/maml_nav2d_variants.py --run base=runs/v-base --run norm=runs/v-norm05 ...
    python scripts/maml_nav2d_variants.py --keep-existing --run more=runs/v-more   # add rows
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from metarl.agents.maml_trpo import MAMLTRPOConfig
from metarl.evaluation import AdaptationCurve, mean_ci95

PUBLISHED = -9.12  # Li et al. 2017 (Meta-SGD), MAML after one gradient step
BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
# Options that say how a run was executed, not what it learns.
_NOT_SETTINGS = {"num_iterations", "checkpoint_every", "num_threads", "device", "tensorboard"}


def variant(name: str, run: Path) -> dict[str, Any]:
    """One row: the run's curve, its settings against the preset, its training cost."""
    curve = AdaptationCurve.load(run / "eval_test.json")
    cfg = json.loads((run / "config.json").read_text())
    cfg = cfg.get("config", cfg)
    preset = MAMLTRPOConfig.from_preset("nav2d-paper").to_dict()
    changed = {
        k: v
        for k, v in cfg.items()
        if k not in _NOT_SETTINGS and k in preset and preset[k] != v and k != "seed"
    }
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    # The checkpoint the evaluation read (recorded since round 6): a run may have trained on.
    rows = rows[: int(curve.meta.get("iterations", len(rows)))]
    its = [float(r["iteration_s"]) for r in rows]
    post = [float(r["post_adapt_return"]) for r in rows[-20:]]
    # The outer steps the line search accepted: mean KL measured after the step (max-KL 0.01
    # in the preset) and the accepted fraction of TRPO's full step (0 where none was).
    kls = [float(r["kl"]) for r in rows if "kl" in r]
    fractions = [float(r["step_size"]) for r in rows if "step_size" in r]
    gain, gain_ci = curve.improvement(1)
    k1 = curve.per_sample()[:, 1]
    k1_mean, k1_ci = mean_ci95(k1)
    return {
        "name": name,
        "run": str(run),
        "seed": cfg.get("seed"),
        "changes": changed,
        "iterations": len(rows),
        "train_s": round(sum(its), 1),
        "median_s_per_iteration": round(statistics.median(its), 2),
        "train_post_adapt_last20": round(float(np.mean(post)), 2),
        "median_accepted_kl": round(statistics.median(kls), 5) if kls else None,
        "median_step_fraction": statistics.median(fractions) if fractions else None,
        "full_step_share": (
            round(sum(f == 1.0 for f in fractions) / len(fractions), 3) if fractions else None
        ),
        "eval_seeds": curve.meta.get("seeds"),
        "episodes_per_step": curve.meta.get("episodes_per_step"),
        "eval_lrs": curve.meta.get("lrs"),
        "mean": [round(float(m), 3) for m in curve.mean()],
        "ci95": [round(float(c), 3) for c in curve.ci95()],
        "gain_1_step": [round(gain, 3), round(gain_ci, 3)],
        # Returns are negative distances: reaching the bar means a return of at least −9.12.
        "reaches_published_1_step": bool(k1_mean >= PUBLISHED),
        "published_within_k1_ci": bool(k1_mean - k1_ci <= PUBLISHED <= k1_mean + k1_ci),
    }


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| variant | changes vs `nav2d-paper` | it. | k=0 | k=1 | k=2 | k=3 | gain k=1 | "
        "k=1 ≥ −9.12 | train (median s/it) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: |",
    ]
    for r in rows:
        ch = ", ".join(f"`{k}={v}`" for k, v in r["changes"].items()) or "—"
        cells = [f"{m:.2f} ± {c:.2f}" for m, c in zip(r["mean"], r["ci95"], strict=True)]
        g = r["gain_1_step"]
        out.append(
            f"| {r['name']} (seed {r['seed']}) | {ch} | {r['iterations']} | "
            + " | ".join(cells)
            + f" | {g[0]:.2f} ± {g[1]:.2f} | {'yes' if r['reaches_published_1_step'] else 'no'}"
            f" | {r['train_s'] / 60:.1f} min ({r['median_s_per_iteration']}) |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--out", default=str(BENCH / "maml_nav2d_variants"))
    ap.add_argument(
        "--keep-existing",
        action="store_true",
        help="keep the rows already in OUT.json (runs no longer on disk) before the new ones; "
        "a new row replaces an old one of the same name and seed",
    )
    args = ap.parse_args(argv)
    rows = []
    out = Path(args.out)
    if args.keep_existing and out.with_suffix(".json").exists():
        rows = json.loads(out.with_suffix(".json").read_text())["variants"]
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "eval_test.json").exists():
            ap.error(f"--run {item!r}: give NAME=DIR of an evaluated run (DIR/eval_test.json)")
        new = variant(name, Path(path))
        rows = [r for r in rows if (r["name"], r["seed"]) != (new["name"], new["seed"])]
        rows.append(new)
    out.with_suffix(".json").write_text(json.dumps({"published": PUBLISHED, "variants": rows},
                                                   indent=2))  # fmt: skip
    md = out.with_suffix(".md")
    text = md.read_text() if md.exists() else "<!-- variants -->\n<!-- /variants -->\n"
    head, _, rest = text.partition("<!-- variants -->")
    _, _, tail = rest.partition("<!-- /variants -->")
    md.write_text(f"{head}<!-- variants -->\n{table(rows)}\n<!-- /variants -->{tail}")
    print(table(rows))
    print(f"wrote {out.with_suffix('.json')} and the table of {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
