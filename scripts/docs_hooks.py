"""MkDocs hook: the options and presets tables of the docs, generated from the config classes.

A page writes a marker where a table goes, and the build replaces it, so the tables never
drift from the code (``mkdocs.yml`` names this file under ``hooks``):

* ``<!-- options: agent maml-trpo -->`` — every option of an agent's config class: the
  command-line flag, its default, its help text and its constraints;
* ``<!-- options: fewshot -->`` — the same for the options every learner of ``metarl fewshot
  train`` shares; ``<!-- options: fewshot reptile -->`` — a learner's own options;
* ``<!-- presets: agent rl2 -->`` — each preset of an agent with the options it sets;
* ``<!-- presets: fewshot maml fomaml -->`` — the few-shot presets of those learners.

``python scripts/docs_hooks.py PAGE.md`` prints a page with its markers expanded.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import Any

from mkdocs.plugins import event_priority

MARKER = re.compile(r"<!--\s*(options|presets):\s*(agent|fewshot)\s*([^>]*?)\s*-->")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return " ".join(_value(v) for v in value) if value else "(empty)"
    return str(value)


def _config_class(kind: str, name: str) -> type:
    if kind == "agent":
        from metarl.agents import get_agent

        return get_agent(name).CONFIG  # type: ignore[no-any-return]
    from metarl.fewshot.configs import FewShotConfig, config_class

    return config_class(name) if name else FewShotConfig


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def options_table(cls: type, own_only: bool = False) -> str:
    """A Markdown table of ``cls``'s options, in declaration order (``own_only``: those its
    few-shot base class does not have)."""
    rows = ["| option | default | what |", "| --- | --- | --- |"]
    shared: set[str] = set()
    if own_only:
        from metarl.fewshot.configs import FewShotConfig

        shared = {f.name for f in dataclasses.fields(FewShotConfig)}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta or f.name in shared or f.name == "learner":
            continue
        notes = []
        if meta.get("choices"):
            notes.append("one of " + ", ".join(f"`{_value(c)}`" for c in meta["choices"]))
        low, high = meta.get("low"), meta.get("high")
        if low is not None:
            notes.append(f"{'>' if meta.get('low_open') else '≥'} {low}")
        if high is not None:
            notes.append(f"≤ {high}")
        if meta.get("may_change_on_resume"):
            notes.append("may change on `--resume`")
        if meta.get("command_line_only"):
            notes.append("never read from a run directory")
        what = meta["help"] + (f" ({'; '.join(notes)})" if notes else "")
        flag = "--" + f.name.replace("_", "-")
        default = _default(f)
        if f.name == "data_path":
            default = "$METARL_OMNIGLOT or ../shared/data/omniglot"  # read when imported
        flags = f"`{flag}`, `--no-{flag[2:]}`" if isinstance(default, bool) else f"`{flag}`"
        flags += "".join(f", `{a}`" for a in meta.get("aliases") or ())
        rows.append(f"| {flags} | `{_cell(_value(default))}` | {_cell(what)} |")
    if len(rows) == 2:
        rows.append("| (none beyond the shared options) | | |")
    return "\n".join(rows)


def presets_table(cls: type, learners: list[str] | None = None) -> str:
    """A Markdown table of ``cls.presets`` (for few-shot, the presets of ``learners``)."""
    presets: dict[str, dict[str, Any]] = cls.presets  # type: ignore[attr-defined]
    if learners:
        from metarl.fewshot.configs import all_presets

        presets = {name: {"learner": learner, **values}
                   for name, (learner, values) in all_presets().items()
                   if learner in learners}  # fmt: skip
    rows = ["| preset | sets |", "| --- | --- |"]
    for name, values in presets.items():
        sets = ", ".join(f"`{k}={_value(v)}`" for k, v in values.items())
        rows.append(f"| `{name}` | {_cell(sets)} |")
    if len(rows) == 2:
        raise ValueError(f"no preset of {cls.__name__} for {learners}")
    return "\n".join(rows)


def expand(markdown: str) -> str:
    """``markdown`` with every options/presets marker replaced by its table."""

    def table(m: re.Match[str]) -> str:
        what, kind, names = m.group(1), m.group(2), m.group(3).split()
        if kind == "agent" and len(names) != 1:
            raise ValueError(f"{m.group(0)}: name one agent")
        cls = _config_class(kind, names[0] if names else "")
        if what == "options":
            return options_table(cls, own_only=kind == "fewshot" and bool(names))
        return presets_table(cls, names if kind == "fewshot" else None)

    return MARKER.sub(table, markdown)


@event_priority(100)  # before mkdocstrings reads its paths
def on_config(config: Any, **kwargs: Any) -> Any:
    """Mirror the installed layout (``envs/`` as ``metarl/envs``, ``agents/`` as
    ``metarl/agents``) under ``build/docs-api/``, where mkdocstrings reads the sources."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from typecheck import ROOT, build_tree

    build_tree(ROOT / "build" / "docs-api")
    return config


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return expand(markdown)


if __name__ == "__main__":
    for page in sys.argv[1:]:
        with open(page, encoding="utf-8") as f:
            print(expand(f.read()))
