"""The documentation's code runs as written.

Every fenced block of the pages under ``docs/`` is either run here or marked as not run with
the reason, by an HTML comment on the line above it: ``<!-- skip: trains for minutes -->``.

* ``python`` blocks are executed, in order, one fresh namespace per page, in a temporary
  directory (all pages in one subprocess, so that torch is imported once and a page's
  registrations never reach the other tests);
* every ``metarl ...`` command of a ``bash`` block — run or not — must parse: the command and
  its options, an agent's own options and preset, a few-shot preset, the families it names;
  every ``python scripts/X.py`` must exist;
* relative links of the README and of the pages point to files that exist;
* no page speaks of the people or the work history behind the project.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: the documentation's own pages (docs/benchmarks links to the reports of benchmarks/)
PAGES = sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).parts[0] != "benchmarks")
#: pages written alongside, which the README may link to before they land
PENDING_PAGES: set[str] = set()

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SKIP = re.compile(r"^<!--\s*skip:\s*(\S.*?)\s*-->$")
LANGS = {"python", "bash", "text", "toml"}


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None  # the reason it is not run, or None

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").splitlines()
        above = before[-1].strip() if before else ""
        skip = SKIP.match(above)
        line = text.count("\n", 0, m.start()) + 1
        out.append(Block(page, line, m.group(1), m.group(2), skip.group(1) if skip else None))
    return out


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]


def test_the_docs_have_pages_and_blocks() -> None:
    assert len(PAGES) >= 20, PAGES
    assert sum(b.lang == "python" and b.skip is None for b in ALL_BLOCKS) >= 5
    assert sum(b.lang == "bash" for b in ALL_BLOCKS) >= 20


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=Block.where)
def test_every_block_is_run_or_says_why_not(block: Block) -> None:
    assert block.lang in LANGS, f"{block.where()}: say the language of the block ({LANGS})"
    if block.skip is not None:
        assert block.lang in ("python", "bash"), f"{block.where()}: only code is skipped"
        assert len(block.skip) >= 8, f"{block.where()}: say why the block is not run"


# --------------------------------------------------------------------------------------------
# python blocks

_RUNNER = r"""
import contextlib, io, json, os, sys, tempfile, traceback
pages = json.loads(sys.stdin.read())
results = {}
for page, codes in pages.items():
    scope = {"__name__": "__docs__"}
    cwd = tempfile.mkdtemp(prefix="metarl-docs-")
    os.chdir(cwd)
    sys.path.insert(0, cwd)
    error = None
    for line, code in codes:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(code, f"{page}:{line}", "exec"), scope)
        except BaseException:
            error = f"the block at {page}:{line} failed:\n" + traceback.format_exc()
            break
    sys.path.remove(cwd)
    results[page] = error
print(json.dumps(results))
"""

PYTHON_PAGES = sorted(
    {str(b.page.relative_to(ROOT)) for b in ALL_BLOCKS if b.lang == "python" and b.skip is None}
)


@pytest.fixture(scope="module")
def python_results() -> dict[str, str | None]:
    pages: dict[str, list[tuple[int, str]]] = {}
    for b in ALL_BLOCKS:
        if b.lang == "python" and b.skip is None:
            pages.setdefault(str(b.page.relative_to(ROOT)), []).append((b.line, b.code))
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(pages),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_blocks_run(page: str, python_results: dict[str, str | None]) -> None:
    assert python_results[page] is None, python_results[page]


# --------------------------------------------------------------------------------------------
# bash blocks: metarl commands parse


def commands(code: str) -> list[list[str]]:
    """The simple commands of a bash block, as argument lists (comments dropped)."""
    code = re.sub(r"\\\n", " ", code)
    out: list[list[str]] = []
    for line in code.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if token in (";", "&&", "||", "|", "&"):
                out.append(current)
                current = []
            else:
                current.append(token)
        out.append(current)
    # `VAR=value command ...`: the command
    cleaned = []
    for cmd in out:
        while cmd and re.match(r"^[A-Z_][A-Z0-9_]*=", cmd[0]):
            cmd = cmd[1:]
        if cmd:
            cleaned.append(cmd)
    return cleaned


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | None:
    """``argv`` parsed, None for ``--help``; a parse error fails with argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            args, extra = parser.parse_known_args(argv)
    except SystemExit as e:
        if e.code == 0:
            return None
        raise AssertionError(err.getvalue().strip()) from None
    if extra:
        raise AssertionError(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _show_help(argv: list[str]) -> None:
    from metarl.cli import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as e:  # tyro exits after printing a command's help
        code = e.code
    assert code in (0, None), err.getvalue().strip()


def _check_fewshot_command(argv: list[str]) -> None:
    """``metarl fewshot ARGV`` parses as the command would read it, the learner's options
    with its preset, without running it."""
    from metarl.cli.args import FewShotEvaluateArgs, FewShotTrainArgs
    from metarl.cli.fewshot import FEWSHOT_COMMANDS, train_config
    from metarl.cli.parsing import parse

    assert argv and argv[0] in FEWSHOT_COMMANDS, f"no command metarl fewshot {argv[:1]}"
    command, rest = argv[0], argv[1:]
    prog = f"metarl fewshot {command}"
    try:
        if command == "train":
            args, extra = parse(FewShotTrainArgs, rest, prog=prog, flags_only=True)
            if not args.resume:  # a resumed run's learner reads its options
                train_config(args, extra)
        elif command == "evaluate":
            _args, extra = parse(FewShotEvaluateArgs, rest, prog=prog, flags_only=True)
            assert not extra, f"unrecognized arguments: {' '.join(extra)}"
        else:
            assert not rest, f"{prog} takes no arguments"
    except ValueError as e:  # the command's one-line error
        raise AssertionError(str(e)) from None


def _check_env_id(env_id: str) -> None:
    import metarl

    if ":" in env_id or env_id.startswith("metarl/MetaWorld-"):
        return  # a user's MODULE:ENV_ID, or an optional extra's family
    assert env_id in metarl.family_ids(), f"{env_id} is not a registered family"


def check_metarl_command(argv: list[str]) -> None:
    """``metarl ARGV`` parses as the command would read it (its options, then the agent's
    options with its preset for ``train``), without running it."""
    from metarl.agents import agent_names, get_agent
    from metarl.cli import args as cli_args
    from metarl.cli import build_parser
    from metarl.cli.parsing import parse

    if not argv or argv[0].startswith("-"):
        _parse(build_parser(), argv)
        return
    if "--help" in argv or "-h" in argv:  # the help itself, as the command prints it
        _show_help(argv)
        return
    command, rest = argv[0], argv[1:]
    if command == "fewshot":
        _check_fewshot_command(rest)
        return
    classes = {"envs": cli_args.EnvsArgs, "check-env": cli_args.CheckEnvArgs,
               "train": cli_args.TrainArgs, "evaluate": cli_args.EvaluateArgs,
               "benchmark": cli_args.BenchmarkArgs}  # fmt: skip
    assert command in classes, f"no command {command!r}"
    try:
        args, extra = parse(classes[command], rest, prog=f"metarl {command}", flags_only=True)
        if command == "train" and args.agent:
            cls = get_agent(args.agent).CONFIG
            if args.preset:
                assert args.preset in cls.presets, f"{args.agent} has no preset {args.preset}"
            env_ids = [extra[k + 1] for k, a in enumerate(extra[:-1]) if a in ("--env", "--env-id")]
            extra = [a if a not in env_ids or ":" not in a else "metarl/Navigation2D-v0"
                     for a in extra]  # fmt: skip  # a user's MODULE:ENV_ID is not imported here
            _cfg, extra = parse(cls, extra, prog="metarl train", preset=args.preset)
            for env_id in env_ids:
                _check_env_id(env_id)
        if command == "train" and args.resume and not args.agent:
            extra = []  # the run's own agent reads these options
        if command == "benchmark":
            for agent in args.agents:
                assert agent in agent_names(), f"no agent {agent}"
            for env_id in args.envs:
                _check_env_id(env_id)
    except ValueError as e:  # the command's one-line error
        raise AssertionError(str(e)) from None
    assert not extra, f"unrecognized arguments: {' '.join(extra)}"


BASH_BLOCKS = [b for b in [*ALL_BLOCKS, *blocks(ROOT / "README.md")] if b.lang == "bash"]


@pytest.mark.parametrize("block", BASH_BLOCKS, ids=Block.where)
def test_bash_commands_parse(block: Block) -> None:
    for argv in commands(block.code):
        try:
            if argv[0] == "metarl":
                check_metarl_command(argv[1:])
            elif argv[0] == "python" and len(argv) > 1 and argv[1].startswith("scripts/"):
                assert (ROOT / argv[1]).is_file(), f"{argv[1]} does not exist"
        except AssertionError as e:
            raise AssertionError(f"{block.where()}: `{shlex.join(argv)}`: {e}") from None


def test_commands_splits_like_bash() -> None:
    code = "a --x 1 && b 'c d' # comment\nVAR=1 metarl train \\\n  --agent rl2; e | f"
    assert commands(code) == [
        ["a", "--x", "1"], ["b", "c d"], ["metarl", "train", "--agent", "rl2"], ["e"], ["f"]
    ]  # fmt: skip
    with pytest.raises(AssertionError, match="unrecognized"):
        check_metarl_command(["train", "--agent", "maml-trpo", "--no-such-option", "1"])
    with pytest.raises(AssertionError, match="has no preset nav2d-paper"):
        check_metarl_command(["train", "--agent", "rl2", "--preset", "nav2d-paper"])
    with pytest.raises(AssertionError, match="no task family registered as"):
        check_metarl_command(["train", "--agent", "rl2", "--env", "metarl/Nav2D-v0"])
    with pytest.raises(AssertionError, match="no command 'trian'"):
        check_metarl_command(["trian", "--agent", "rl2"])


# --------------------------------------------------------------------------------------------
# links and wording

LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_relative_links_exist(page: Path) -> None:
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        rel = os.path.relpath(path, ROOT)
        assert path.exists() or rel in PENDING_PAGES, f"{page.name} links to missing {target}"


#: how the project's text must not speak: of the people and the history behind a figure
HISTORY = re.compile(
    r"other jobs|other engineers|another engineer|shared machine|no GPU was (available|lent)|"
    r"this project's machines|share the machine|\bsessions?\b",
    re.I,
)


def _texts() -> list[Path]:
    files = [ROOT / "README.md", *PAGES, *sorted((ROOT / "benchmarks").rglob("*.md"))]
    return files + sorted((ROOT / "scripts").glob("*.py"))


def test_no_text_speaks_of_the_people_behind_it() -> None:
    found = []
    for f in _texts():
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if HISTORY.search(line) and "session_wall_clock" not in line:
                found.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


def test_readme_is_a_front_page() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in text and "run_pytest" in ci  # the README's test command
    for needed in ("metarl benchmark", "docs/your-env.md", "docs/results.md", "mkdocs"):
        assert needed in text, needed


def test_options_and_presets_tables_expand() -> None:
    """The markers of the pages become tables from the config classes (scripts/docs_hooks.py,
    which mkdocs runs), and a table lists every option of its class."""
    import importlib.util

    from metarl.agents import get_agent

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    markers = 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        markers += len(hooks.MARKER.findall(text))
        assert not hooks.MARKER.search(hooks.expand(text)), page
    assert markers >= 15
    table = hooks.options_table(get_agent("maml-trpo").CONFIG)
    for flag in ("--inner-lr", "--learn-inner-lr", "--curvature", "--cg-subsample"):
        assert f"`{flag}`" in table, flag
    with pytest.raises(ValueError, match="no preset"):
        hooks.presets_table(get_agent("rl2").CONFIG, ["no-such-learner"])
