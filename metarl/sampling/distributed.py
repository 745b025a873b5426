"""Distributed sampling on Ray: the tasks of a meta-batch spread over Ray actors.

:class:`RaySampler` has the interface of :class:`metarl.sampling.native.BatchedSampler` (``collect``
returns the same :class:`~metarl.sampling.native.Episodes`) and gives the **same episodes** for the
same seeds: the ``N`` tasks are cut into contiguous shards, one per worker (a Ray actor),
and each worker steps its shard's ``tasks × episodes`` rows with the family's native batched
backend (``mujoco.rollout`` for the MuJoCo families). A worker is a :class:`ShardSampler`:
an in-process sampler over rows ``[lo, hi)`` of the whole meta-batch that seeds row ``i``'s
env with ``seed + i`` and draws its action noise as the in-process sampler draws it for the
whole batch, keeping its own rows — so sharding changes where rows are stepped, not what
they see. (Transitions after a row's episode ended are masked; the in-process sampler keeps
stepping the policy there while another row runs, a shard that has finished does not, so
``obs`` and ``actions`` at masked steps are 0 here and arbitrary there. Nothing reads them.)

Per ``collect`` the learner sends each worker its tasks and the policy parameters — one
object for shared parameters, read by every worker from Ray's object store, or each worker's
slice of per-task parameters — and the policy's architecture once (the module, pickled, at
the first ``collect`` or when the policy object changes). Workers send back their episodes
as NumPy arrays. :attr:`RaySampler.last_stats` counts the bytes each way.

Failures are reported, never waited on forever: a worker that died (its process or node
was lost) is replaced and its shard collected again when the collect was seeded (the
result is then the same), at most ``restarts`` times per worker, else a
:class:`SamplerWorkerError` names the worker and why; a collect that does not finish within
``timeout_s`` raises :class:`TimeoutError` and its workers are replaced before the next one;
workers that cannot be placed within ``start_timeout_s`` (a cluster without the CPUs) raise
an error that says what was asked for.

Ray is an optional extra (``pip install "metarl[ray]"``). On a laptop, ``RaySampler(...)``
starts a local Ray instance (``ray.init()``) and shuts it down on :meth:`RaySampler.close`;
on a cluster call ``ray.init(address="auto")`` (or pass ``address=``) first: every node
needs the same ``metarl`` installed. A family registered by ``--import my_families.py`` (or
:func:`metarl.stepping.registry.import_plugin`) is imported by every worker before it builds
its envs (``imports=``).

Example:
    >>> sampler = RaySampler("metarl/HalfCheetahVel-v0", num_tasks=40, episodes_per_task=20,
    ...                      num_workers=2)  # doctest: +SKIP
    >>> eps = sampler.collect(policy, params, tasks, seed=0)  # as BatchedSampler.collect
"""

from __future__ import annotations

import itertools
import pickle
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metarl.learning.policies import Policy
from metarl.sampling.native import BatchedSampler, Episodes
from metarl.stepping.registry import family

__all__ = [
    "RaySampler",
    "SamplerWorkerError",
    "ShardSampler",
    "native_backend",
    "shard_bounds",
]


class SamplerWorkerError(RuntimeError):
    """A Ray sampler worker died or failed, and its shard could not be collected again."""


def native_backend(env_id: str) -> str:
    """The family's fastest host backend: ``"mujoco"``, ``"numpy"`` or ``"generic"``."""
    return next(iter(family(env_id).batched), "generic")


def shard_bounds(num_tasks: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` task ranges, as even as possible, none empty."""
    if num_tasks < 1 or num_shards < 1:
        raise ValueError(f"need >= 1 task and >= 1 shard, got {num_tasks} and {num_shards}")
    cuts = np.linspace(0, num_tasks, min(num_shards, num_tasks) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(cuts)]


class _RowOffsetSeeds:
    """A batched env whose row ``i`` is row ``offset + i`` of a larger batch, for seeding:
    ``reset(rows, seeds=s)`` seeds it with ``s + offset + i``, as the whole batch would."""

    def __init__(self, env: Any, offset: int) -> None:
        self.env, self.offset = env, offset

    def reset(self, tasks: Sequence[Any], seeds: Any = None) -> Any:
        if isinstance(seeds, int | np.integer):
            seeds = [int(seeds) + self.offset + i for i in range(len(tasks))]
        return self.env.reset(tasks, seeds=seeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


def _pad_rows(x: Tensor, rows: slice, total: int) -> Tensor:
    """``x`` (this shard's rows first) placed at ``rows`` of a ``total``-row tensor, the
    other rows copies of its first row (valid values, never used)."""
    full = x[:1].expand(total, *x.shape[1:]).clone()
    full[rows] = x
    return full


class ShardSampler(BatchedSampler):
    """The rows of tasks ``[first, last)`` of a meta-batch of ``total_tasks`` tasks, sampled
    exactly as :class:`BatchedSampler` samples them within the whole batch.

    Row ``i`` of the shard is row ``first·E + i`` of the batch, and is seeded as such. The
    policy runs at the whole batch's width (the other rows filled with copies of the shard's
    first row or task), and the action noise is drawn at that width from the same generator,
    the shard's rows kept: floating-point results then match the in-process sampler's to
    the bit, which chaotic physics needs (a last-bit difference in one action changes when
    an Ant falls). That costs the policy's forward pass over all rows, small beside the
    physics. A shard that finishes before the whole batch draws what the whole batch drew
    meanwhile at the start of the next unseeded collect (``catch_up``), so unseeded
    collects continue the same streams.

    Args:
        env_id, episodes_per_task, env_kwargs: as for :class:`BatchedSampler`.
        task_range: ``(first, last)``, the tasks of the meta-batch this shard samples.
        total_tasks: tasks in the whole meta-batch.
        backend: a NumPy backend (default the family's fastest, see :func:`native_backend`).
        nthread: native threads of the MuJoCo backend (None: its default).
    """

    def __init__(
        self,
        env_id: str,
        task_range: tuple[int, int],
        total_tasks: int,
        episodes_per_task: int,
        *,
        backend: str | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        nthread: int | None = None,
    ) -> None:
        first, last = task_range
        if not 0 <= first < last <= total_tasks:
            raise ValueError(f"task_range {task_range} is not inside [0, {total_tasks}]")
        backend = native_backend(env_id) if backend is None else backend
        if backend == "torch":
            raise ValueError("a shard steps a NumPy backend; 'torch' envs stay in one process")
        super().__init__(
            env_id,
            last - first,
            episodes_per_task,
            backend=backend,
            device="cpu",
            env_kwargs=env_kwargs,
        )
        if nthread is not None and backend == "mujoco":
            from metarl.stepping.registry import make_batched

            self.env.close()
            self.env.batched = make_batched(
                env_id, self.num_envs, backend="mujoco", nthread=nthread, **dict(env_kwargs or {})
            )
        self.tasks = slice(first, last)
        self.total_tasks = total_tasks
        self.rows = slice(first * episodes_per_task, last * episodes_per_task)
        self.total_rows = total_tasks * episodes_per_task
        self.env.batched = _RowOffsetSeeds(self.env.batched, self.rows.start)
        self._full_dist: tuple[Tensor, ...] | None = None
        self._draws = 0

    def _policy_dist(
        self, policy: Policy, params: Mapping[str, Tensor], obs: Tensor, per_task_params: bool
    ) -> tuple[Tensor, ...]:
        if per_task_params:
            params = {k: _pad_rows(v, self.tasks, self.total_tasks) for k, v in params.items()}
        return super()._policy_dist(
            policy, params, _pad_rows(obs, self.rows, self.total_rows), per_task_params
        )

    def _act(self, policy: Policy, dist: tuple[Tensor, ...], deterministic: bool) -> Tensor:
        if not deterministic:
            self._full_dist = dist
            self._draws += 1
        return super()._act(policy, dist, deterministic)[self.rows]

    def collect(
        self,
        policy: Policy,
        params: Mapping[str, Tensor],
        tasks: Sequence[Any],
        *,
        seed: int | None = None,
        per_task_params: bool = False,
        deterministic: bool = False,
        catch_up: int = 0,
    ) -> Episodes:
        """As :meth:`BatchedSampler.collect` for this shard's tasks (and their parameters).

        ``catch_up``: noise draws the whole batch made after this shard's last step in the
        previous collect; made here first when ``seed`` is None.
        """
        if seed is None and catch_up > 0 and self._full_dist is not None:
            for _ in range(catch_up):
                policy.sample(self._full_dist, self.generator)
        self._draws = 0
        return super().collect(
            policy,
            params,
            tasks,
            seed=seed,
            per_task_params=per_task_params,
            deterministic=deterministic,
        )

    @property
    def noise_draws(self) -> int:
        """Noise draws of the last collect (its number of steps unless deterministic)."""
        return self._draws


class _Worker:
    """The Ray actor: one :class:`ShardSampler`, the policy's architecture, timing."""

    def __init__(self, imports: Sequence[str], *args: Any, **kwargs: Any) -> None:
        from metarl.stepping.allocator import tune_allocator
        from metarl.stepping.registry import import_plugin

        torch.set_num_threads(1)
        tune_allocator()  # the actor's process (METARL_MALLOC_TUNING=0 in its env: off)
        for spec in imports:  # the learner's --import families, before any env is built
            import_plugin(spec)
        self.shard = ShardSampler(*args, **kwargs)
        self.policy: Policy | None = None

    def ready(self) -> bool:
        return True

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy.cpu()

    def collect(
        self, params: Mapping[str, np.ndarray], tasks: list[Any], options: dict[str, Any]
    ) -> dict[str, Any]:
        if self.policy is None:
            raise RuntimeError("set_policy was not called before collect")
        t0 = time.perf_counter()
        torch_params = {k: torch.tensor(v) for k, v in params.items()}
        eps = self.shard.collect(self.policy, torch_params, tasks, **options)
        return {
            "obs": eps.obs.numpy(),
            "actions": eps.actions.numpy(),
            "rewards": eps.rewards.numpy(),
            "mask": eps.mask.numpy(),
            "success": None if eps.success is None else eps.success.numpy(),
            "draws": self.shard.noise_draws,
            "seconds": time.perf_counter() - t0,
        }

    def close(self) -> None:
        self.shard.close()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the Ray sampler needs Ray, an optional extra: pip install 'metarl[ray]' "
            "(or use --sampler native)"
        ) from err
    return ray


def _nbytes(obj: Any) -> int:
    return len(pickle.dumps(obj, protocol=5))


class RaySampler:
    """:class:`BatchedSampler`'s interface over Ray actors; see the module docstring.

    Args:
        env_id, num_tasks, episodes_per_task, env_kwargs: as for :class:`BatchedSampler`.
        num_workers: Ray actors (at most ``num_tasks`` are used).
        backend: the workers' NumPy backend (default the family's fastest).
        device: where the returned episodes live (the learner's device).
        address: Ray cluster to join when Ray is not initialised yet (None: start a local
            instance with ``num_workers`` CPUs, shut down by :meth:`close`).
        cpus_per_worker: CPUs each actor reserves; also the MuJoCo backend's native threads.
        timeout_s: the longest a collect may take before :class:`TimeoutError`.
        start_timeout_s: the longest the workers may take to start.
        restarts: how many times each worker is replaced after dying before a collect fails.
        imports: modules or ``.py`` files (as ``--import`` takes them) each worker imports
            before it builds its envs, so that a family registered by one exists there too
            (None: the ones that registered ``env_id`` in this process, as a run directory
            records them; on a cluster, every node needs them at the same path).
    """

    def __init__(
        self,
        env_id: str,
        num_tasks: int,
        episodes_per_task: int,
        *,
        num_workers: int = 2,
        backend: str | None = None,
        device: str | torch.device = "cpu",
        env_kwargs: Mapping[str, Any] | None = None,
        address: str | None = None,
        cpus_per_worker: int = 1,
        timeout_s: float = 600.0,
        start_timeout_s: float = 120.0,
        restarts: int = 1,
        imports: Sequence[str] | None = None,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if cpus_per_worker < 1:
            raise ValueError(f"cpus_per_worker must be >= 1, got {cpus_per_worker}")
        if not timeout_s > 0 or not start_timeout_s > 0:
            raise ValueError("timeout_s and start_timeout_s must be > 0")
        if restarts < 0:
            raise ValueError(f"restarts must be >= 0, got {restarts}")
        backend = native_backend(env_id) if backend is None else backend
        if backend == "torch":
            raise ValueError(
                "the Ray sampler steps each shard with a NumPy backend (native MuJoCo, NumPy or "
                "generic); for on-device torch envs use --sampler torch"
            )
        self.ray = _import_ray()
        self._owns_ray = False
        if not self.ray.is_initialized():
            if address is None:
                self.ray.init(
                    num_cpus=num_workers * cpus_per_worker,
                    include_dashboard=False,
                    log_to_driver=False,
                )
            else:
                self.ray.init(address=address, log_to_driver=False)
            self._owns_ray = True
        # The learner's view: spaces, task distribution, horizon (one cheap local env).
        from metarl.stepping.registry import make

        probe = make(env_id, **dict(env_kwargs or {}))
        self.observation_space = probe.observation_space
        self.action_space = probe.action_space
        self.task_distribution = probe.unwrapped.task_distribution  # type: ignore[attr-defined]
        steps = probe.spec.max_episode_steps if probe.spec is not None else None
        self.horizon = int(steps) if steps else 0  # the episodes' length limit
        probe.close()
        self.env_id = env_id
        self.num_tasks, self.episodes_per_task = int(num_tasks), int(episodes_per_task)
        self.num_envs = self.num_tasks * self.episodes_per_task
        self.device = torch.device(device)
        self.backend = backend
        self.env_kwargs = dict(env_kwargs or {})
        self.cpus_per_worker = cpus_per_worker
        self.timeout_s, self.start_timeout_s = float(timeout_s), float(start_timeout_s)
        self.restarts = restarts
        if imports is None:
            from metarl.stepping.registry import run_record

            imports = run_record(env_id)["imports"]
        self.imports = list(imports)
        self.shards = shard_bounds(self.num_tasks, num_workers)
        self.num_workers = len(self.shards)
        self._restarts_used = [0] * self.num_workers
        self._actor_cls = self.ray.remote(_Worker)
        self.workers: list[Any] = [None] * self.num_workers
        self._policy: Policy | None = None
        self._policy_ref: Any = None
        self._catch_up = [0] * self.num_workers
        self.last_stats: dict[str, float] = {}
        self._start(range(self.num_workers))

    # -- workers ------------------------------------------------------------------------------
    def _start(self, which: Sequence[int] | range) -> None:
        ray = self.ray
        for k in which:
            self.workers[k] = self._actor_cls.options(
                num_cpus=self.cpus_per_worker, max_restarts=0
            ).remote(
                self.imports,
                self.env_id,
                self.shards[k],
                self.num_tasks,
                self.episodes_per_task,
                backend=self.backend,
                env_kwargs=self.env_kwargs,
                nthread=self.cpus_per_worker,
            )
            if self._policy_ref is not None:
                self.workers[k].set_policy.remote(self._policy_ref)
        refs = [self.workers[k].ready.remote() for k in which]
        try:
            ray.get(refs, timeout=self.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self._kill(which)
            raise TimeoutError(
                f"{len(refs)} Ray sampler worker(s) of {self.cpus_per_worker} CPU each did not "
                f"start within {self.start_timeout_s:g} s; the cluster has "
                f"{ray.available_resources().get('CPU', 0):g} free CPUs. Use fewer workers "
                "(--ray-workers), a bigger cluster, or a longer start_timeout_s"
            ) from None
        except ray.exceptions.RayError as err:
            self._kill(which)
            raise SamplerWorkerError(
                f"a Ray sampler worker for {self.env_id} failed to start: {err}"
            ) from err

    def _kill(self, which: Sequence[int] | range) -> None:
        for k in which:
            if self.workers[k] is not None:
                self.ray.kill(self.workers[k])
                self.workers[k] = None

    def _send_policy(self, policy: Policy) -> int:
        if policy is self._policy:
            return 0
        module = pickle.loads(pickle.dumps(policy)).cpu()  # a CPU copy to ship
        self._policy, self._policy_ref = policy, self.ray.put(module)
        for w in self.workers:
            if w is not None:
                w.set_policy.remote(self._policy_ref)
        return _nbytes(module)

    # -- sampling -----------------------------------------------------------------------------
    def collect(
        self,
        policy: Policy,
        params: Mapping[str, Tensor],
        tasks: Sequence[Any],
        *,
        seed: int | None = None,
        per_task_params: bool = False,
        deterministic: bool = False,
    ) -> Episodes:
        """As :meth:`BatchedSampler.collect`, the tasks spread over the workers."""
        ray = self.ray
        if len(tasks) != self.num_tasks:
            raise ValueError(f"collect needs {self.num_tasks} tasks, got {len(tasks)}")
        if any(w is None for w in self.workers):  # replaced after a timeout
            self._start([k for k, w in enumerate(self.workers) if w is None])
        t0 = time.perf_counter()
        sent_policy = self._send_policy(policy)
        sent = 0
        host = {k: v.detach().cpu().numpy() for k, v in params.items()}
        if per_task_params:
            bad = [k for k, v in host.items() if v.shape[0] != self.num_tasks]
            if bad:
                raise ValueError(
                    f"per-task parameters need a leading dimension {self.num_tasks}: {bad}"
                )
            shard_params = [{k: v[lo:hi] for k, v in host.items()} for lo, hi in self.shards]
            params_refs = [ray.put(p) for p in shard_params]
            sent += sum(_nbytes(p) for p in shard_params)
        else:
            shared = ray.put(host)
            params_refs = [shared] * self.num_workers
            sent += _nbytes(host)
        options = {"seed": seed, "per_task_params": per_task_params, "deterministic": deterministic}

        def submit(k: int) -> Any:
            lo, hi = self.shards[k]
            opts = {**options, "catch_up": self._catch_up[k]}
            return self.workers[k].collect.remote(params_refs[k], list(tasks[lo:hi]), opts)

        sent += sum(_nbytes(list(tasks[lo:hi])) + _nbytes(options) for lo, hi in self.shards)
        pending = {k: submit(k) for k in range(self.num_workers)}
        results: dict[int, dict[str, Any]] = {}
        deadline = t0 + self.timeout_s
        while pending:
            ready, _ = ray.wait(
                list(pending.values()),
                num_returns=1,
                timeout=max(0.0, deadline - time.perf_counter()),
            )
            if not ready:
                stuck = sorted(pending)
                self._kill(stuck)
                raise TimeoutError(
                    f"Ray sampler worker(s) {stuck} did not return within {self.timeout_s:g} s "
                    "(a stuck env or a lost node); they were stopped and are replaced at the "
                    "next collect. Raise timeout_s if the meta-batch is that slow"
                )
            k = next(k for k, ref in pending.items() if ref == ready[0])
            del pending[k]
            try:
                results[k] = ray.get(ready[0])
            except ray.exceptions.RayActorError as err:
                self._replace_dead(k, seed, err)
                pending[k] = submit(k)
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
                    # What the in-process sampler would raise (a TaskError for a bad task, a
                    # NonFiniteError...), with the worker named: the caller handles it alike.
                    where = f"(in Ray sampler worker {k}, tasks {self.shards[k]})"
                    first = f"{cause.args[0]} {where}" if cause.args else where
                    cause.args = (first, *cause.args[1:])
                    raise cause from err
                raise SamplerWorkerError(
                    f"Ray sampler worker {k} (tasks {self.shards[k]}) failed: {err}"
                ) from err
        episodes = self._gather(results, t0)
        self.last_stats["bytes_sent"] = float(sent)
        self.last_stats["bytes_sent_policy"] = float(sent_policy)
        return episodes

    def _replace_dead(self, k: int, seed: int | None, err: Exception) -> None:
        self.workers[k] = None
        if seed is None:
            self._start([k])
            raise SamplerWorkerError(
                f"Ray sampler worker {k} (tasks {self.shards[k]}) died during an unseeded "
                f"collect, so its streams cannot be replayed; it was replaced. Cause: {err}"
            ) from err
        if self._restarts_used[k] >= self.restarts:
            raise SamplerWorkerError(
                f"Ray sampler worker {k} (tasks {self.shards[k]}) died and was already "
                f"replaced {self._restarts_used[k]} time(s) (restarts={self.restarts}). "
                f"Cause: {err}"
            ) from err
        self._restarts_used[k] += 1
        self._start([k])

    def _gather(self, results: dict[int, dict[str, Any]], t0: float) -> Episodes:
        parts = [results[k] for k in range(self.num_workers)]
        steps = max(p["rewards"].shape[0] for p in parts)

        def cat(key: str) -> Tensor:
            padded = []
            for p in parts:
                x = p[key]
                if x.shape[0] < steps:
                    x = np.concatenate([x, np.zeros((steps - x.shape[0], *x.shape[1:]), x.dtype)])
                padded.append(x)
            return torch.from_numpy(np.concatenate(padded, axis=1)).to(self.device)

        success = None
        if all(p.get("success") is not None for p in parts):  # (B,): no time axis to pad
            success = torch.from_numpy(np.concatenate([p["success"] for p in parts]))
            success = success.to(self.device)
        episodes = Episodes(cat("obs"), cat("actions"), cat("rewards"), cat("mask"), self.num_tasks,
                            success)  # fmt: skip
        self._catch_up = [steps - p["draws"] if p["draws"] else 0 for p in parts]
        received = sum(
            p[key].nbytes for p in parts for key in ("obs", "actions", "rewards", "mask")
        )
        worker_s = [p["seconds"] for p in parts]
        total = time.perf_counter() - t0
        self.last_stats = {
            "seconds": total,
            "slowest_worker_s": max(worker_s),
            "overhead_s": total - max(worker_s),
            "bytes_received": float(received),
            "env_steps": float(episodes.num_steps()),
        }
        return episodes

    def close(self) -> None:
        """Stop the workers (and the local Ray instance this sampler started)."""
        if getattr(self, "workers", None) is not None:
            self._kill(range(len(self.workers)))
        if getattr(self, "_owns_ray", False) and self.ray.is_initialized():
            self.ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RaySampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
