"""A run's ``README.md`` model card, in the shape of Hugging Face's RL model cards.

Written at the end of training (:func:`metarl.runs.training.train_loop`) and rewritten whenever a
held-out evaluation is saved (``metarl evaluate``, an agent's ``evaluate``), so a run
directory can be published as it is. The card is built from the run's own files:
``config.json`` (agent, config), ``eval_test.json`` (the held-out adaptation results) and
``eval_test.png`` (their plot). It holds

* YAML front matter: ``library_name: metarl``, tags (``reinforcement-learning``,
  ``meta-reinforcement-learning``, the agent, the family) and, once the run has been
  evaluated, a ``model-index`` whose metrics are the mean held-out return after 0..K
  adaptation units (``"mean +/- 95% CI half-width"``, as Hugging Face's RL cards write
  ``mean_reward``) and the success rate where the family defines one;
* the task family, the agent, the held-out adaptation table (return after 0..K units with
  its 95% CI, success rate where defined), the plot, how to load the policy
  (``metarl.agents.load``) and the resolved config.

The card is documentation, never the thing that fails a run: :func:`write_model_card` warns
in one line and returns None when it cannot write (the write itself goes through
:func:`metarl.runs.rundir.write_atomic`, never through a link).

Example:
    >>> import tempfile, json
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text(json.dumps(
    ...     {"agent": "maml-trpo", "config": {"env_id": "metarl/Navigation2D-v0"}}))
    >>> card = model_card(d)
    >>> card.splitlines()[:2]
    ['---', 'library_name: metarl']
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metarl.runs.rundir import read_bytes, write_atomic

__all__ = ["CARD_FILE", "RESULTS_END", "RESULTS_START", "model_card", "write_model_card"]

CARD_FILE = "README.md"
#: The held-out results section lies between these lines (``metarl evaluate`` refreshes it).
RESULTS_START = "<!-- metarl:results:start -->"
RESULTS_END = "<!-- metarl:results:end -->"
_MAX_EVAL_BYTES = 64 << 20
_MAX_RECORD_BYTES = 16 << 20


def _yaml(value: Any) -> str:
    """A YAML scalar: JSON's spelling of strings and numbers is valid YAML."""
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(str(value))
    return json.dumps(value)


def _number(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _read_json(path: Path, limit: int) -> Any:
    return json.loads(read_bytes(path, limit))


def _family(env_id: str) -> dict[str, Any]:
    """What the registry says of ``env_id`` (empty when it is not registered here)."""
    from metarl.stepping import registry

    try:
        if not registry.is_registered(env_id):
            return {}
        fam = registry.family(env_id)
        described = dict(fam.listing or registry.task_distribution(env_id).describe())
        described["paper"] = fam.paper
        return described
    except Exception:  # a family that fails to build still gets a card
        return {}


def _results(run_dir: Path) -> dict[str, Any] | None:
    """The held-out evaluation's summary (``eval_test.json``), or None."""
    path = run_dir / "eval_test.json"
    if not path.exists():
        return None
    data = _read_json(path, _MAX_EVAL_BYTES)
    summary = dict(data["summary"])
    summary["meta"] = data.get("meta") or {}
    return summary


def _unit(unit: str, k: int) -> str:
    singular = {"gradient steps": "gradient step", "episodes": "episode"}.get(unit, unit)
    return singular if k == 1 else unit


def _front_matter(agent: str, env_id: str, results: dict[str, Any] | None) -> list[str]:
    family = env_id.split("/")[-1]
    tags = ["reinforcement-learning", "meta-reinforcement-learning", "metarl", agent, family]
    lines = ["---", "library_name: metarl", "tags:", *(f"- {_yaml(t)}" for t in tags)]
    if results is None:
        return [*lines, "---"]
    unit = results["unit"]
    metrics = []
    for k, (m, h) in enumerate(zip(results["mean"], results["ci95"], strict=True)):
        metrics.append((f"mean_reward_after_{k}_{unit.replace(' ', '_')}",
                        f"{_number(m)} +/- {_number(h)}",
                        f"mean return after {k} {_unit(unit, k)} (95% CI)"))  # fmt: skip
    for k, s in enumerate(results.get("success_rate") or []):
        metrics.append((f"success_rate_after_{k}_{unit.replace(' ', '_')}", _number(s),
                        f"success rate after {k} {_unit(unit, k)}"))  # fmt: skip
    lines += [
        "model-index:",
        f"- name: {_yaml(f'{agent}-{family}')}",
        "  results:",
        "  - task:",
        "      type: reinforcement-learning",
        "      name: meta-reinforcement-learning",
        "    dataset:",
        f"      name: {_yaml(f'{env_id} (held-out test tasks)')}",
        f"      type: {_yaml(env_id)}",
        "    metrics:",
    ]
    for type_, value, name in metrics:
        lines += [f"    - type: {_yaml(type_)}", f"      value: {_yaml(value)}",
                  f"      name: {_yaml(name)}", "      verified: false"]  # fmt: skip
    return [*lines, "---"]


def results_section(run_dir: Path, results: dict[str, Any] | None) -> list[str]:
    """The held-out adaptation table and plot, between :data:`RESULTS_START` and
    :data:`RESULTS_END`."""
    lines = [RESULTS_START, "## Held-out adaptation", ""]
    if results is None:
        lines += [
            "Not evaluated yet. `metarl evaluate RUN_DIR` measures the return on the "
            "held-out test tasks after 0, 1, …, K adaptation units and fills in this "
            "section.",
            "",
            RESULTS_END,
        ]
        return lines
    unit, meta = results["unit"], results["meta"]
    success = results.get("success_rate")
    at = meta.get("iterations")
    lines += [
        f"Return on {results['num_tasks']} held-out test tasks × {results['num_seeds']} "
        f"evaluation seed(s) after k adaptation {unit} (mean and 95% confidence interval "
        "over (task, seed) pairs)"
        + ("" if at is None else f", checkpoint of iteration {at}")
        + ". From `eval_test.json`, written by `metarl evaluate`.",
        "",
        f"| {unit} | mean return | 95% CI |" + (" success rate |" if success else ""),
        "| ---: | ---: | ---: |" + (" ---: |" if success else ""),
    ]
    for k, (m, h) in enumerate(zip(results["mean"], results["ci95"], strict=True)):
        row = f"| {k} | {_number(m)} | ± {_number(h)} |"
        lines.append(row + (f" {_number(success[k])} |" if success else ""))
    lines.append("")
    if (run_dir / "eval_test.png").exists():
        lines += ["![adaptation on held-out tasks](eval_test.png)", ""]
    return [*lines, RESULTS_END]


def model_card(run_dir: str | Path) -> str:
    """The model card of the run in ``run_dir``, as Markdown with YAML front matter (see
    the module doc); reads the run's files, writes nothing."""
    run_dir = Path(run_dir)
    record = _read_json(run_dir / "config.json", _MAX_RECORD_BYTES)
    agent, cfg = str(record["agent"]), dict(record["config"])
    env_id = str(cfg.get("env_id", ""))
    results = _results(run_dir)
    family = _family(env_id)
    lines = [*_front_matter(agent, env_id, results), "", f"# {agent} on {env_id}", ""]
    adapts = "" if results is None else f", which adapts to a new task by {results['unit']}"
    lines += [
        f"A policy meta-trained with metarl's `{agent}` agent{adapts}, on the task family "
        f"`{env_id}`.",
        "",
        "## Environment",
        "",
        f"- id: `{env_id}`",
    ]
    if family:
        lines += [
            f"- what varies between tasks: {family.get('varies', 'n/a')}",
            f"- tasks: {family.get('num_train', '?')} train, {family.get('num_test', '?')} "
            "held-out test (never used in meta-training)",
        ]
        if family.get("paper"):
            lines.append(f"- from: {family['paper']}")
    lines += [
        "",
        "## Agent",
        "",
        f"- agent: `{agent}` (`metarl train --agent {agent}`)",
        f"- meta-training iterations: {cfg.get('num_iterations', 'n/a')}, seed "
        f"{cfg.get('seed', 'n/a')}",
        f"- metarl version: {record.get('metarl_version', 'unknown')}",
        "",
        *results_section(run_dir, results),
        "",
        "## Usage",
        "",
        "```python",
        "import metarl.agents",
        "",
        'policy = metarl.agents.load("path/to/this/run")   # this directory',
        'task = policy.tasks("test")[0]               # or a task / env of the family',
        "adapted = policy.adapt(task, steps=1)",
        "action = adapted.act(obs)                     # obs: an observation of the family",
        'adapted.export("policy.pt")                   # TorchScript; format="onnx" for ONNX',
        "```",
        "",
        "Reproduce the table with `metarl evaluate path/to/this/run`; add `--video DIR` to "
        "watch the policy before and after adaptation.",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(cfg, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    run_dir: str | Path, card: Callable[[str | Path], str] | None = None
) -> Path | None:
    """Write (or rewrite) ``run_dir/README.md`` from ``card(run_dir)`` (default: this
    module's :func:`model_card`; few-shot runs give theirs); returns its path, or None with a
    one-line warning when it could not be written (the card never fails a run)."""
    path = Path(run_dir) / CARD_FILE
    try:
        write_atomic(path, (card or model_card)(run_dir).encode())
    except Exception as e:  # documentation only: the run's results are already safe
        warnings.warn(f"model card {path} not written: {type(e).__name__}: {e}", stacklevel=2)
        return None
    return path
