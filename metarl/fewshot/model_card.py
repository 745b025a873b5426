"""A few-shot run's ``README.md`` model card, the few-shot counterpart of
:mod:`metarl.runs.model_card`.

Written whenever a held-out evaluation is saved into the run (the end of ``metarl fewshot
train``, ``metarl fewshot evaluate RUN_DIR``), from the run's own files: ``config.json``
(learner, dataset, ways and shots) and ``eval.json`` (the mean query accuracy, or MSE for
regression, over seeded held-out episodes with its 95% CI). The front matter carries Hugging
Face's ``library_name``, tags and a ``model-index`` with that metric. Like the RL card it is
documentation, never what fails a run: :func:`write_model_card` warns in one line and returns
None when it cannot write.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from metarl.runs.model_card import write_model_card as write_run_card
from metarl.runs.rundir import read_bytes

__all__ = ["model_card", "write_model_card"]

_MAX_BYTES = 64 << 20
_EVAL_FILE = "eval.json"


def _read(path: Path) -> Any:
    return json.loads(read_bytes(path, _MAX_BYTES))


def _value(result: dict[str, Any], key: str) -> str:
    x, scale = result[key], 100.0 if result["metric"] == "accuracy" else 1.0
    if not isinstance(x, int | float) or not math.isfinite(x):
        return "n/a"
    return f"{scale * x:.2f}" if scale != 1.0 else f"{x:.4f}"


def model_card(run_dir: str | Path) -> str:
    """The model card of the few-shot run in ``run_dir`` (Markdown with YAML front matter);
    reads the run's files, writes nothing."""
    run_dir = Path(run_dir)
    cfg = dict(_read(run_dir / "config.json")["config"])
    learner, dataset = str(cfg.get("learner", "?")), str(cfg.get("dataset", "?"))
    ways, shots = cfg.get("num_ways"), cfg.get("num_shots")
    path = run_dir / _EVAL_FILE
    result = _read(path) if path.exists() else None
    regression = dataset == "sinusoid"
    setting = f"{shots}-shot regression" if regression else f"{ways}-way {shots}-shot"
    tags = ["few-shot-learning", "meta-learning", "metarl", learner, dataset]
    lines = ["---", "library_name: metarl", "tags:", *(f"- {json.dumps(t)}" for t in tags)]
    if result is not None:
        unit = "%" if result["metric"] == "accuracy" else ""
        kind = "regression" if regression else "classification"
        value = f"{_value(result, 'mean')}{unit} +/- {_value(result, 'ci95')}{unit}"
        name = f"{setting} query {result['metric']} (95% CI)"
        lines += [
            "model-index:",
            f"- name: {json.dumps(f'{learner}-{dataset}-{setting}'.replace(' ', '-'))}",
            "  results:",
            "  - task:",
            f"      type: {json.dumps('few-shot-' + kind)}",
            "    dataset:",
            f"      name: {json.dumps(f'{dataset} (held-out test split)')}",
            f"      type: {json.dumps(dataset)}",
            "    metrics:",
            f"    - type: {json.dumps(result['metric'])}",
            f"      value: {json.dumps(value)}",
            f"      name: {json.dumps(name)}",
            "      verified: false",
        ]
    lines += ["---", "", f"# {learner} on {dataset}, {setting}", ""]
    lines += [
        f"A few-shot learner trained with `metarl fewshot train --learner {learner}` on the "
        f"training classes of `{dataset}`, evaluated on episodes drawn from its held-out test "
        "split.",
        "",
        "## Held-out episodes",
        "",
    ]
    if result is None:
        lines += ["Not evaluated yet: `metarl fewshot evaluate RUN_DIR` fills in this section.", ""]
    else:
        unit = " (%)" if result["metric"] == "accuracy" else ""
        lines += [
            f"| metric | mean{unit} | 95% CI{unit} | episodes | checkpoint |",
            "| --- | ---: | ---: | ---: | --- |",
            f"| query {result['metric']} | {_value(result, 'mean')} | ± {_value(result, 'ci95')}"
            f" | {result.get('num_episodes', '?')} | {result.get('checkpoint', 'latest')} |",
            "",
            f"From `{_EVAL_FILE}`; `metarl fewshot evaluate path/to/this/run` reproduces it "
            "(the episodes are seeded).",
            "",
        ]
    lines += [
        "## Config",
        "",
        "```json",
        json.dumps(cfg, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path) -> Path | None:
    """Write (or rewrite) ``run_dir/README.md`` through
    :func:`metarl.runs.model_card.write_model_card`; returns its path, or None with a
    one-line warning when it could not be written."""
    return write_run_card(run_dir, model_card)
