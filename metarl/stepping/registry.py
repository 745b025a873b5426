"""The registry of task families: Gymnasium ids plus what metarl needs beside them.

``register_family`` registers a Gymnasium id (``gymnasium.make`` works as usual) and records
the family's batched backends. ``metarl envs`` lists what is here.

A user's families come in three ways, all loaded here and nowhere else:

* ``MODULE:ENV_ID`` (Gymnasium's convention): :func:`family` imports ``MODULE`` first;
* :func:`import_plugin` (``--import MODULE_OR_FILE.py`` on every ``metarl`` command);
* the entry-point group ``metarl.envs`` of an installed package (each entry a module to
  import or a ``module:function`` to call), loaded the first time an id is not found and by
  ``metarl envs``.

Every family remembers what registered it (:func:`family_source`), so a run directory can
record the ``--import`` its family needs; nothing read from a run directory is ever imported.

Example:
    >>> import gymnasium as gym
    >>> import metarl
    >>> env = gym.make("metarl/Navigation2D-v0")
    >>> dist = metarl.task_distribution("metarl/Navigation2D-v0")
    >>> obs, info = env.reset(seed=0, options={"task": dist.split("test")[0]})
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym

from metarl.stepping.batched import BatchedTaskEnv, GenericBatchedEnv
from metarl.stepping.torch_batched import TorchBatchedTaskEnv
from metarl.tasks import TaskDistribution

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "TaskFamily",
    "family",
    "family_ids",
    "family_source",
    "import_hint",
    "import_plugin",
    "is_registered",
    "load_entry_points",
    "load_plugins",
    "make",
    "make_batched",
    "make_torch_batched",
    "register_family",
    "register_lazy",
    "resolve_env_id",
    "run_record",
    "task_distribution",
]

#: The entry-point group an installed package names its task families in.
ENTRY_POINT_GROUP = "metarl.envs"


class PluginError(ValueError):
    """A user's module (``--import``, ``MODULE:ENV_ID``, an entry point) cannot be loaded,
    or does not register what it was asked for."""


@dataclass(frozen=True)
class TaskFamily:
    """A registered task family.

    Attributes:
        env_id: the Gymnasium id, ``"metarl/Name-vN"``.
        batched: backend name -> ``factory(num_envs, **env_kwargs)`` returning a
            :class:`~metarl.stepping.batched.BatchedTaskEnv`. ``"generic"`` is always available.
        torch: ``factory(num_envs, device=..., **env_kwargs)`` returning a
            :class:`~metarl.stepping.torch_batched.TorchBatchedTaskEnv` that lives on a torch
            device, or None.
        on_device: other named on-device backends, ``name -> factory`` as ``torch`` (the
            MuJoCo families' ``"mjx"``: physics on JAX's device, handed to torch).
        paper: where the family comes from.
        approximate: the names among ``batched`` whose rows equal the single env only within
            a stated tolerance, not to the bit (another physics engine: ``"mjx"``).
        listing: what ``metarl envs`` shows without building the env (``varies``,
            ``num_train``, ``num_test``, ``splits_disjoint``), for families slow to build;
            None: built and asked.
    """

    env_id: str
    batched: dict[str, Callable[..., BatchedTaskEnv]] = field(default_factory=dict)
    torch: Callable[..., TorchBatchedTaskEnv] | None = None
    paper: str = ""
    approximate: frozenset[str] = frozenset()
    listing: Mapping[str, Any] | None = None
    on_device: dict[str, Callable[..., TorchBatchedTaskEnv]] = field(default_factory=dict)

    @property
    def backends(self) -> list[str]:
        """Names of the NumPy-API batched backends (``make_batched(backend=...)``)."""
        return [*self.batched, "generic"]

    @property
    def exact_backends(self) -> list[str]:
        """The backends whose rows equal the single env to the bit (same task, seed, actions)."""
        return [b for b in self.backends if b not in self.approximate]


_FAMILIES: dict[str, TaskFamily] = {}
#: env id -> what registered it: {} (metarl), {"import": spec}, {"entry_point": ...,
#: "distribution": ...} or {"script": path}
_SOURCES: dict[str, dict[str, str]] = {}
#: the plugin being loaded now (innermost last); its families remember it
_LOADING: list[dict[str, str]] = []
#: families registered on first use: id prefix -> (loader "module:function", module it
#: needs, what to do when that module is absent)
_LAZY: dict[str, tuple[str, str, str]] = {}
_entry_points_loaded = False
#: module name -> the module imported from a file by import_plugin
_FILE_MODULES: dict[str, ModuleType] = {}


def register_family(
    env_id: str,
    entry_point: str | Callable[..., gym.Env[Any, Any]],
    *,
    max_episode_steps: int,
    kwargs: dict[str, Any] | None = None,
    batched: dict[str, Callable[..., BatchedTaskEnv]] | None = None,
    torch: Callable[..., TorchBatchedTaskEnv] | None = None,
    paper: str = "",
    approximate: tuple[str, ...] = (),
    listing: Mapping[str, Any] | None = None,
    on_device: dict[str, Callable[..., TorchBatchedTaskEnv]] | None = None,
) -> TaskFamily:
    """Register a task family under ``env_id`` with Gymnasium and with metarl.

    The time limit lives in the registration (``max_episode_steps``), not the env.
    ``approximate`` names the ``batched`` backends that equal the single env only within a
    tolerance (they are left out of the bit-exact checks). ``listing`` is what ``metarl
    envs`` shows without building the env (see :class:`TaskFamily`).
    """
    if ":" in env_id:
        raise ValueError(f"a family id may not contain ':' (got {env_id!r}): it marks MODULE:ID")
    gym.register(
        id=env_id,
        entry_point=entry_point,
        max_episode_steps=max_episode_steps,
        kwargs=kwargs or {},
    )
    fam = TaskFamily(
        env_id=env_id,
        batched=dict(batched or {}),
        torch=torch,
        paper=paper,
        approximate=frozenset(approximate),
        listing=None if listing is None else dict(listing),
        on_device=dict(on_device or {}),
    )
    _FAMILIES[env_id] = fam
    caller = _caller_source()
    # metarl's own families stay metarl's even when a plugin's import registers them.
    _SOURCES[env_id] = dict(_LOADING[-1]) if _LOADING and caller else caller
    return fam


def _caller_source() -> dict[str, str]:
    """What called :func:`register_family`, when no plugin is being loaded: metarl itself,
    a module (imported by the user's own code) or a script run as ``__main__``."""
    frame = sys._getframe(2)
    name = str(frame.f_globals.get("__name__", ""))
    if name == "metarl" or name.startswith("metarl."):
        return {}
    if name == "__main__":
        return {"script": str(frame.f_globals.get("__file__", "__main__"))}
    return {"import": name} if name else {}


def register_lazy(prefix: str, loader: str, *, requires: str, install: str) -> None:
    """Register the families whose ids start with ``prefix`` on first use.

    Args:
        loader: ``"module:function"`` that registers them (imported only when needed).
        requires: the module they need; when it is absent, naming one of the ids says
            ``install`` instead.
    """
    _LAZY[prefix] = (loader, requires, install)


def family_ids() -> list[str]:
    """Every registered task-family id, sorted (:func:`load_plugins` adds the plugins')."""
    return sorted(_FAMILIES)


def family(env_id: str) -> TaskFamily:
    """The family registered as ``env_id``; a clear error listing the ids if there is none.

    ``MODULE:ENV_ID`` imports ``MODULE`` first, as ``gymnasium.make`` does.
    """
    return _FAMILIES[resolve_env_id(env_id)]


def family_source(env_id: str) -> dict[str, str]:
    """What registered ``env_id``: ``{}`` for metarl's own families, ``{"import": spec}``
    (the module or file to ``--import``), ``{"entry_point": ..., "distribution": ...}`` or
    ``{"script": path}``."""
    return dict(_SOURCES.get(family(env_id).env_id, {}))


def resolve_env_id(env_id: str) -> str:
    """The registered id that ``env_id`` names, registering it first if it can.

    ``MODULE:ENV_ID`` (or ``path/to/file.py:ENV_ID``) imports the module; an id not
    registered yet loads the entry points of group ``metarl.envs`` and metarl's own
    optional families (Meta-World). Unknown ids raise a ``KeyError`` that says how to
    register one.
    """
    module, sep, bare = env_id.rpartition(":")
    if sep:
        import_plugin(module)
        if bare not in _FAMILIES:
            mine = [i for i, src in _SOURCES.items() if src.get("import") == _plugin_key(module)]
            raise PluginError(
                f"{module} was imported but registers no task family {bare!r}"
                + (f"; it registers: {', '.join(sorted(mine))}" if mine else "")
            )
        return bare
    if env_id not in _FAMILIES:
        _load_missing(env_id)
    if env_id not in _FAMILIES:
        close = difflib.get_close_matches(env_id, list(_FAMILIES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        # The optional families (52 of Meta-World's) are counted, not listed.
        shown = [i for i in family_ids() if not any(i.startswith(p) for p in _LAZY)]
        more = len(_FAMILIES) - len(shown)
        raise KeyError(
            f"no task family registered as {env_id!r}.{hint} Registered: {', '.join(shown)}"
            + (f" and {more} more" if more else "")
            + ". (`metarl envs` lists them.) A family of your own is found through "
            "MODULE:ENV_ID, --import MODULE_OR_FILE.py, or an entry point of group "
            f"{ENTRY_POINT_GROUP!r} in its package."
        )
    return env_id


def is_registered(env_id: str) -> bool:
    """Whether ``env_id`` is (or can be made) registered without importing anything a
    caller names: installed entry points and metarl's optional families only. For ids read
    from a run directory, which must never make metarl import a module."""
    if not isinstance(env_id, str) or ":" in env_id:
        return False
    if env_id not in _FAMILIES:
        try:
            _load_missing(env_id)
        except KeyError:
            return False
    return env_id in _FAMILIES


def _load_missing(env_id: str) -> None:
    """Entry points, then the lazily registered family ``env_id`` belongs to, if any."""
    load_entry_points()
    if env_id in _FAMILIES:
        return
    for prefix, (loader, requires, install) in _LAZY.items():
        if env_id.startswith(prefix):
            if importlib.util.find_spec(requires) is None:
                raise KeyError(f"{env_id} needs {requires!r}, which is not installed: {install}")
            _call(loader)
            return


def _call(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)()


def load_plugins(*, optional: bool = False) -> list[str]:
    """Load every entry point of group ``metarl.envs`` and, with ``optional``, metarl's
    optional families whose package is installed (Meta-World); returns the family ids."""
    load_entry_points()
    if optional:
        for loader, requires, _ in _LAZY.values():
            if importlib.util.find_spec(requires) is not None:
                _call(loader)
    return family_ids()


def load_entry_points() -> None:
    """Load the entry points of group ``metarl.envs`` (once): an entry that names a module
    imports it, one that names ``module:function`` calls the function. One that fails is an
    error naming it, never skipped."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep.dist, "name", None) or "?"
        source = {"entry_point": f"{ep.name} = {ep.value}", "distribution": dist}
        _LOADING.append(source)
        try:
            loaded = ep.load()
            if ep.attr:
                loaded()
        except Exception as e:
            raise PluginError(
                f"entry point {ep.name!r} ({ep.value}) of package {dist}, group "
                f"{ENTRY_POINT_GROUP}: {type(e).__name__}: {e}"
            ) from e
        finally:
            _LOADING.pop()


def _plugin_key(spec: str) -> str:
    """How a plugin is remembered: a module name as given, a file by its absolute path."""
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        return str(Path(spec).resolve())
    return spec


def import_plugin(spec: str) -> ModuleType:
    """Import ``spec``, a module name (``my_pkg.families``) or a file (``path/to/fam.py``),
    as ``--import`` does; the families it registers remember it (:func:`family_source`).

    A file is imported as running it would see its neighbours: its folder goes on the
    import path. A module name is looked up from the current directory too, as with
    ``python -m``. Any error becomes a :class:`PluginError` of one line naming the module.
    """
    key = _plugin_key(spec)
    _LOADING.append({"import": key})
    try:
        if key != spec or spec.endswith(".py"):
            return _import_file(Path(key), spec)
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            return importlib.import_module(spec)
        except Exception as e:
            raise PluginError(f"cannot import {spec}: {type(e).__name__}: {e}") from e
    finally:
        _LOADING.pop()


def _import_file(path: Path, spec: str) -> ModuleType:
    if not path.is_file():
        raise PluginError(f"cannot import {spec}: no such file {path}")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        where = getattr(loaded, "__file__", None)
        if where and Path(where).resolve() == path:
            return loaded
        if _FILE_MODULES.get(name) is loaded:
            pass  # another file of that name, also imported as a plugin: it replaces it
        else:
            raise PluginError(
                f"cannot import {spec}: a module named {name!r} is already imported (from "
                f"{where or 'a built-in'}); rename the file"
            )
    folder = str(path.parent)
    if folder not in sys.path:  # as running the file would: its neighbours import
        sys.path.insert(0, folder)
    mod_spec = importlib.util.spec_from_file_location(name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise PluginError(f"cannot import {spec}: not a Python file")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise PluginError(f"cannot import {spec}: {type(e).__name__}: {e}") from e
    _FILE_MODULES[name] = module
    return module


def import_hint(env_id: str, imports: Any = None, source: Any = None) -> str:
    """How to make ``env_id`` known to a ``metarl`` command: the exact ``--import`` options
    recorded for it (``imports``, e.g. from a run directory; shown, never imported), or the
    three ways of registering a family."""
    specs = [i for i in imports or [] if isinstance(i, str) and i]
    if specs:
        return "pass " + " ".join(f"--import {shlex.quote(i)}" for i in specs)
    if isinstance(source, Mapping) and isinstance(source.get("distribution"), str):
        return (
            f"install the package {source['distribution']!r}, whose entry point "
            f"({ENTRY_POINT_GROUP}) registers it"
        )
    if isinstance(source, Mapping) and isinstance(source.get("script"), str):
        return (
            f"it was registered by the script {source['script']} when it ran; move the "
            "registration into a module and pass --import MODULE_OR_FILE.py"
        )
    return (
        "pass --import MODULE_OR_FILE.py naming the module that registers it (or give the "
        f"id as MODULE:{env_id})"
    )


def run_record(env_id: str) -> dict[str, Any]:
    """What a run directory records about its family: the ``--import`` options it needs
    (``imports``) and, for a family from an entry point or a script, where it came from."""
    try:
        source = family_source(env_id)
    except KeyError:
        return {"imports": []}
    spec = source.get("import")
    if spec is not None and "." not in spec and os.sep not in spec:
        # A top-level module found in the current directory: its file works from anywhere.
        file = getattr(sys.modules.get(spec), "__file__", None)
        if file and Path(file).resolve().parent == Path.cwd().resolve():
            spec = str(Path(file).resolve())
    out: dict[str, Any] = {"imports": [spec] if spec is not None else []}
    if spec is None and source:
        out["env_source"] = source
    return out


def make(env_id: str, **kwargs: Any) -> gym.Env[Any, Any]:
    """``gymnasium.make`` for a registered task family, with a clear error for unknown ids."""
    family(env_id)
    return gym.make(env_id, **kwargs)


def task_distribution(env_id: str, **kwargs: Any) -> TaskDistribution[Any]:
    """The task distribution of ``env_id`` (built with the env's keyword arguments)."""
    env = make(env_id, **kwargs)
    try:
        return env.unwrapped.task_distribution  # type: ignore[attr-defined]
    finally:
        env.close()


def make_batched(
    env_id: str, num_envs: int, *, backend: str = "auto", **kwargs: Any
) -> BatchedTaskEnv:
    """A batched env of ``num_envs`` rows for ``env_id``.

    Args:
        backend: ``"auto"`` (the fastest registered one), ``"generic"`` (a loop over single
            envs; any family), ``"subprocess"`` (rows in worker processes with a timeout on
            every answer: an env that crashes or hangs becomes an error, see
            :mod:`metarl.stepping.workers`; takes ``num_workers``, ``timeout`` and
            ``worker_backend``)
            or a family-specific name (``metarl envs`` lists them).
        kwargs: passed to the env, as to ``gymnasium.make``; ``max_episode_steps`` sets the
            horizon.
    """
    fam = family(env_id)
    if backend == "subprocess":
        return _subprocess_batched(env_id, num_envs, **kwargs)
    if backend == "auto":
        backend = next(iter(fam.batched), "generic")
    env: BatchedTaskEnv
    if backend == "generic":
        horizon = kwargs.get("max_episode_steps")
        env = GenericBatchedEnv(lambda: gym.make(env_id, **kwargs), num_envs, horizon)
    elif backend not in fam.batched:
        raise ValueError(
            f"{env_id} has no batched backend {backend!r}; available: "
            f"{', '.join(fam.backends)}, subprocess"
        )
    else:
        env = fam.batched[backend](num_envs, **kwargs)
    env.env_id = env_id
    return env


def make_torch_batched(
    env_id: str, num_envs: int, *, device: str = "cpu", backend: str = "torch", **kwargs: Any
) -> TorchBatchedTaskEnv:
    """A batched env of ``num_envs`` rows for ``env_id`` whose tensors live on ``device``.

    Available for the families registered with a ``torch`` factory (``metarl envs`` shows
    ``torch`` among the backends); ``device`` may be ``"auto"``. ``backend`` names another
    on-device backend the family registered (``"mjx"`` for the MuJoCo families).
    """
    fam = family(env_id)
    if backend != "torch":
        if backend not in fam.on_device:
            have = [i for i in family_ids() if backend in _FAMILIES[i].on_device]
            raise ValueError(
                f"{env_id} has no {backend!r} backend (on-device); families that do: "
                f"{', '.join(have) or 'none'}"
            )
        return fam.on_device[backend](num_envs, device=device, **kwargs)
    if fam.torch is None:
        have = [i for i in family_ids() if _FAMILIES[i].torch is not None]
        raise ValueError(
            f"{env_id} has no torch (on-device) backend; families that do: {', '.join(have)}. "
            "Use metarl.make_batched for the others."
        )
    return fam.torch(num_envs, device=device, **kwargs)


def _subprocess_batched(
    env_id: str,
    num_envs: int,
    *,
    num_workers: int = 2,
    timeout: float = 60.0,
    worker_backend: str = "auto",
    **kwargs: Any,
) -> BatchedTaskEnv:
    from metarl.stepping.workers import SubprocessBatchedEnv

    if worker_backend == "subprocess":
        raise ValueError("worker_backend must be an in-process backend, not 'subprocess'")
    probe = make(env_id, **kwargs)
    try:
        horizon = kwargs.get("max_episode_steps") or (probe.spec and probe.spec.max_episode_steps)
        if not horizon:
            raise ValueError(f"{env_id} has no max_episode_steps; pass max_episode_steps=")
        return SubprocessBatchedEnv(
            env_id,
            num_envs,
            functools.partial(_rows, env_id, worker_backend, kwargs),
            probe,
            int(horizon),
            num_workers=num_workers,
            timeout=timeout,
        )
    finally:
        probe.close()


def _rows(env_id: str, backend: str, kwargs: dict[str, Any], n: int) -> BatchedTaskEnv:
    return make_batched(env_id, n, backend=backend, **kwargs)
