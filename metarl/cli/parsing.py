"""Command lines into typed dataclasses, through tyro (as CleanRL does), with metarl's errors.

A config's fields are declared with :func:`metarl.runs.config.option` (help text, default,
bounds); tyro reads the help text from the field's metadata and the type from its
annotation, so ``--help`` shows every option with its doc and default, and values arrive
typed. What this module adds to tyro:

* **defaults < preset < command line**: the preset is applied to the defaults first and the
  result is tyro's ``default``, so options given here override it (and ``--help`` shows the
  preset's values as the defaults);
* **one line for bad input**: tyro draws a panel for a parse error; a parse-error hook turns
  every such error into a :class:`CommandLineError` (a ``ValueError``) whose message says
  what was wrong and where to look, which ``metarl`` prints as one line with exit code 2. A
  value a config refuses (``--inner-lr -1``) raises the config's own
  :class:`~metarl.runs.config.ConfigError` message;
* **aliases** declared with ``option(..., aliases=("--env",))``.

Example:
    >>> from metarl.agents.maml_trpo import MAMLTRPOConfig
    >>> cfg, rest = parse(MAMLTRPOConfig, ["--num-iterations", "3"], prog="x", preset="quick")
    >>> cfg.num_iterations, cfg.meta_batch_size, rest
    (3, 10, [])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NoReturn, TypeVar

from metarl.runs.config import ConfigError

__all__ = [
    "CommandLineError",
    "flags_given",
    "parse",
    "parse_option",
    "print_help",
    "spelled_out",
]

T = TypeVar("T")


class CommandLineError(ValueError):
    """A command line tyro could not read: one line, exit code 2."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _optional_bools(cls: type) -> set[str]:
    """The flags of ``cls``'s ``bool | None`` fields (None: decided at run time, e.g.
    ``tensorboard``)."""
    import typing

    hints = typing.get_type_hints(cls)
    return {_flag(f.name) for f in dataclasses.fields(cls) if hints.get(f.name) == bool | None}


def spelled_out(cls: type, argv: Sequence[str]) -> list[str]:
    """``argv`` with the aliases of ``cls``'s fields (``--env`` → ``--env-id``) spelled out,
    and a ``bool | None`` field's flags ``--x``/``--no-x`` as tyro reads them (``--x=True``,
    ``--x=False``; ``--x None`` asks for the default)."""
    names = {}
    for f in dataclasses.fields(cls):
        for alias in f.metadata.get("aliases", ()):
            names[alias] = _flag(f.name)
    flags = _optional_bools(cls)
    out: list[str] = []
    for i, token in enumerate(argv):
        head, eq, value = token.partition("=")
        if head in names:
            token = names[head] + eq + value
        following = argv[i + 1] if i + 1 < len(argv) else None
        if token in flags and following not in ("True", "False", "None"):
            token += "=True"
        elif token.startswith("--no-") and "--" + token[5:] in flags:
            token = "--" + token[5:] + "=False"
        out.append(token)
    return out


def flags_given(cls: type, argv: Sequence[str]) -> set[str]:
    """The fields of ``cls`` that ``argv`` sets (``--name``, ``--no-name``, ``--name=v`` or
    an alias), e.g. to tell an explicit value from a default."""
    argv = spelled_out(cls, argv)
    given = set()
    for f in dataclasses.fields(cls):
        flag = _flag(f.name)
        spelled = (flag, "--no-" + flag[2:])
        if any(t in spelled or t.startswith(flag + "=") for t in argv):
            given.add(f.name)
    return given


def _argument(arg: Any) -> str:
    """How the user spells an argument tyro names: ``--meta-batch-size`` or ``RUN_DIR``."""
    lowered = getattr(arg, "lowered", None)
    flags = list(getattr(lowered, "name_or_flags", ()) or ())
    if flags and all(str(f).startswith("-") for f in flags):
        return "/".join(map(str, flags))
    return str(getattr(lowered, "metavar", None) or (flags[0] if flags else "an argument"))


def _raise_one_line(event: Any, prog: str) -> NoReturn:
    """tyro's parse-error hook: the error as one :class:`CommandLineError` line."""
    from tyro import _errors as e

    see = f" (`{prog} --help` lists the options)"
    if isinstance(event, e.InstantiationFailure):
        if event.argument is None:  # the config refused the values: its message says it all
            raise ConfigError(event.message)
        metavar = getattr(event.argument.lowered, "metavar", None)
        takes = f" takes {metavar}" if metavar else ""
        # a union's message lists each type's failure on lines of its own: the first says it
        message = str(event.message).strip().splitlines()[0].rstrip(".")
        raise CommandLineError(f"{_argument(event.argument)}{takes}: {message}{see}")
    if isinstance(event, e.BadValue):
        if event.offending_value is None:
            raise CommandLineError(f"{_argument(event.argument)} needs a value{see}")
        raise CommandLineError(
            f"{_argument(event.argument)} takes no value, got {event.offending_value!r}{see}"
        )
    if isinstance(event, e.InvalidChoice):
        raise CommandLineError(
            f"{_argument(event.argument)} must be one of {', '.join(event.choices)}; got "
            f"{event.value!r}"
        )
    if isinstance(event, e.MissingArgs):
        missing = ", ".join(_argument(a.arg) for a in event.missing_arguments)
        raise CommandLineError(f"missing {missing}{see}")
    if isinstance(event, e.UnrecognizedArgs):
        raise CommandLineError(f"unrecognized argument(s): {' '.join(event.tokens)}{see}")
    raise CommandLineError(f"the command line could not be read ({type(event).__name__}){see}")


def parse(
    cls: type[T],
    argv: Sequence[str],
    *,
    prog: str,
    preset: str | None = None,
    default: T | None = None,
    description: str | None = None,
    flags_only: bool = False,
) -> tuple[T, list[str]]:
    """``cls`` from ``argv``: the defaults, then ``preset`` (``cls.presets``), then ``argv``;
    and the tokens that are not ``cls``'s options, in order.

    Args:
        default: the values beneath the command line instead of the defaults and preset
            (a resumed run's config).
        flags_only: booleans are plain flags (``--json``), not ``--x/--no-x`` pairs.

    Raises:
        CommandLineError: a value of the wrong type, a missing value or argument.
        ConfigError: a value the config refuses (out of range, unknown preset).
    """
    import tyro
    from tyro import _errors

    if default is None and preset is not None:
        from_preset = getattr(cls, "from_preset", None)
        if from_preset is None:
            raise ConfigError(f"{cls.__name__} has no presets")
        default = from_preset(preset)
    markers = (tyro.conf.FlagCreatePairsOff,) if flags_only else ()
    kwargs: dict[str, Any] = {} if default is None else {"default": default}
    with _errors.on_parse_error(lambda event: _raise_one_line(event, prog)):
        out, rest = tyro.cli(
            cls, args=spelled_out(cls, argv), prog=prog, description=description,
            return_unknown_args=True, config=markers, **kwargs,
        )  # fmt: skip
    for name in flags_given(cls, argv):  # argparse's nargs="+": a given list is not empty
        if getattr(out, name, None) in ((), []):
            raise CommandLineError(f"{_flag(name)} needs at least one value (`{prog} --help`)")
    return out, list(rest)


def print_help(
    cls: type, *, prog: str, default: Any = None, description: str | None = None,
    flags_only: bool = False,
) -> None:  # fmt: skip
    """``--help`` of ``cls``: every option with its doc and default (``default``'s values)."""
    try:
        parse(cls, ["--help"], prog=prog, default=default, description=description,
              flags_only=flags_only)  # fmt: skip
    except SystemExit as e:  # tyro exits after printing the help
        if e.code not in (0, None):
            raise


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_option(cls: type, name: str, value: str, *, prog: str) -> Any:
    """One option of ``cls`` from its text, parsed as tyro parses ``--name`` for ``cls`` on
    the command line (``metarl benchmark --set AGENT.OPTION=VALUE``). A sequence takes its
    items separated by commas or spaces (``32,32``, ``"32 32"``, ``[32, 32]``); a boolean takes
    true or false (and none where the field may be None). The value is checked against the
    type only: the config checks ranges when it is built.

    Example:
        >>> from metarl.agents.maml_trpo import MAMLTRPOConfig
        >>> parse_option(MAMLTRPOConfig, "hidden_sizes", "32,32", prog="x")
        (32, 32)

    Raises:
        CommandLineError: ``cls`` has no option ``name``, or ``value`` is not of its type
            (the line names the option and its type).
    """
    import re
    import types
    import typing

    name = name.replace("-", "_")
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    if name not in by_name:
        raise CommandLineError(f"no option {_flag(name)} (`{prog} --help` lists them)")
    tp = typing.get_type_hints(cls)[name]
    flag = _flag(name)
    if tp in (bool, bool | None):
        word = value.strip().lower()
        if tp is not bool and word == "none":
            return None
        if word not in _TRUE + _FALSE:
            also = "" if tp is bool else " or none"
            raise CommandLineError(f"{flag} takes a boolean (true or false{also}), got {value!r}")
        return word in _TRUE
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
    base = typing.get_args(tp)[0] if optional else tp
    if typing.get_origin(base) in (tuple, list) or typing.get_origin(tp) in (tuple, list):
        tokens = [t for t in re.split(r"[,\s]+", value.strip().strip("[]()")) if t]
    else:
        tokens = [value]
    one = dataclasses.make_dataclass(cls.__name__, [(name, tp, dataclasses.field())])
    out: Any
    out, rest = parse(one, [flag, *tokens], prog=prog, flags_only=True)
    if rest:
        raise CommandLineError(f"{flag} takes one value, got {value!r} (`{prog} --help`)")
    return getattr(out, name)
