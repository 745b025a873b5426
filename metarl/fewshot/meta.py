"""Meta-learn your own ``nn.Module``: MAML, first-order MAML, Meta-SGD and ANIL in a few lines.

A wrapper owns the meta-parameters (the model's, plus Meta-SGD's learned rates);
:meth:`MAML.clone` gives a :class:`TaskModel` -- the model for one task, with its own
parameters -- that :meth:`~TaskModel.adapt` moves by one gradient step on a loss and that is
called like the model. The meta-model is never mutated: a clone's parameters are tensors
computed from the meta-parameters (through :func:`torch.func.functional_call`, no patching of
the module), so the query loss of an adapted clone backpropagates into the meta-parameters,
through the inner steps unless first-order. The inner step is the project's functional core
(:func:`metarl.learning.functional.gradient_step`,
:func:`metarl.learning.functional.adapt_func`), the same one the few-shot learners and MAML-RL
use.

Which parameters adapt: all of them (MAML), or only those named (``adapt=["head"]``: a
parameter name or a sub-module's name), which with the last layer is ANIL (:class:`ANIL`
picks the model's last layer by default). The other parameters are still meta-learned by the
outer loop, and stay fixed in the inner loop.

Batch normalisation (any module with ``running_mean``/``running_var`` buffers, e.g.
``nn.BatchNorm2d``), per task, chosen by ``batch_norm``:

- ``"batch"`` (default): every forward pass of a clone normalises with the statistics of the
  batch it is given, in training and in eval mode alike, and running statistics are neither
  read nor written. This is MAML's own setting (Finn et al. 2017 normalise the query set by
  its own statistics at test time too) and the only one in which tasks stay independent.
- ``"task"``: each clone has its own copy of the running statistics, starting from the
  meta-model's; in training mode a clone's forward passes update its copy, in eval mode they
  normalise with it. The meta-model's buffers never change.

The meta-batch can run as one vectorised call (:meth:`MAML.vmap`): the per-task function
gets a clone and one task's tensors, and inside it ``adapt`` takes the loss as a function of
the clone (``learner.adapt(lambda m: loss_fn(m(xs), ys))``), since a vectorised map cannot
differentiate a tensor computed outside its gradient transform. A model that does not
vectorise (data-dependent control flow, ``.item()``, in-place updates of captured state) runs
the tasks in a loop instead, with a warning (``fallback=False`` raises).

References:
    Finn, Abbeel, Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
    Networks" (MAML, first-order MAML).
    Li, Zhou, Chen, Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning".
    Raghu, Raghu, Bengio, Vinyals 2020, "Rapid Learning or Feature Reuse? Towards
    Understanding the Effectiveness of MAML" (ANIL: adapt the head only).
    Arnold, Mahajan, Datta, Bunner, Zarkias 2020, "learn2learn: A Library for
    Meta-Learning Research" (the ``clone`` / ``adapt`` interface).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 1))
    >>> maml = MAML(model, lr=0.01)
    >>> opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    >>> xs, ys, xq, yq = (torch.randn(10, 1) for _ in range(4))
    >>> learner = maml.clone()
    >>> learner.adapt(nn.functional.mse_loss(learner(xs), ys))
    >>> nn.functional.mse_loss(learner(xq), yq).backward()
    >>> opt.step()
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metarl.learning.functional import Params, adapt_func, gradient_step

__all__ = ["ANIL", "FOMAML", "MAML", "MetaError", "MetaSGD", "TaskModel"]

BATCH_NORM_MODES = ("batch", "task")


class MetaError(ValueError):
    """Bad input to the wrapper: a model it cannot make functional, an unknown parameter
    name, a loss that is not a scalar of the clone's output."""


def _norm_buffer_names(model: nn.Module) -> list[str]:
    """The running-statistics buffers of the model's normalisation layers."""
    names = []
    for prefix, module in model.named_modules():
        if hasattr(module, "running_mean") and hasattr(module, "running_var"):
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                if getattr(module, b, None) is not None:
                    names.append(f"{prefix}.{b}" if prefix else b)
    return names


def _resolve_names(model: nn.Module, adapt: str | Sequence[str] | None) -> list[str]:
    """Parameter names selected by exact names or sub-module names (None: all)."""
    all_names = [n for n, _ in model.named_parameters()]
    if adapt is None:
        return all_names
    wanted = [adapt] if isinstance(adapt, str) else list(adapt)
    if not wanted:
        raise MetaError("adapt=[] names no parameter; pass None to adapt them all")
    chosen: list[str] = []
    for w in wanted:
        hits = [n for n in all_names if n == w or n.startswith(f"{w}.")]
        if not hits:
            shown = ", ".join(all_names[:8]) + (", ..." if len(all_names) > 8 else "")
            raise MetaError(
                f"{type(model).__name__} has no parameter or sub-module named {w!r} to adapt; "
                f"its parameters are: {shown}"
            )
        chosen += [n for n in hits if n not in chosen]
    return [n for n in all_names if n in chosen]


def _last_layer(model: nn.Module) -> str:
    """The name of the last sub-module (in registration order) owning parameters itself."""
    last = None
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = name
    assert last is not None  # MAML.__init__ refused a model without parameters
    return last


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


class TaskModel:
    """The model for one task: the wrapped module called with this task's parameters.

    Made by :meth:`MAML.clone`; call it like the model (``learner(x)``), move it with
    :meth:`adapt`. ``params`` are this task's parameters by name (the adapted ones are
    differentiable functions of the meta-parameters); ``buffers`` its buffers (see the
    module docstring on batch normalisation).
    """

    def __init__(
        self,
        owner: MAML,
        params: Params,
        buffers: dict[str, Tensor | None],
        first_order: bool,
        vectorized: bool = False,
    ) -> None:
        self.owner = owner
        self.params = params
        self.buffers = buffers
        self.first_order = first_order
        self._vectorized = vectorized

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.owner._call(self.params, self.buffers, args, kwargs)

    def adapt(
        self, loss: Tensor | Callable[[TaskModel], Tensor], first_order: bool | None = None
    ) -> None:
        """One inner gradient step on ``loss``: ``θ ← θ − α ∇_θ loss`` for the adapted θ.

        Args:
            loss: a scalar computed from this clone's output (``loss_fn(learner(x), y)``),
                or a function of a clone returning one (``lambda m: loss_fn(m(x), y)``):
                the only form accepted inside :meth:`MAML.vmap`.
            first_order: override the wrapper's setting for this step (e.g. ``True`` when
                adapting at test time, where no meta-gradient is needed).
        """
        fo = self.first_order if first_order is None else first_order
        owner = self.owner
        names = owner.adapted_names
        lr = owner.inner_rates()
        if callable(loss) and not isinstance(loss, Tensor):
            fn = loss
            fixed = {n: p for n, p in self.params.items() if n not in names}

            def loss_of(sub: Params, buffers: dict[str, Tensor | None]) -> Tensor:
                value = fn(TaskModel(owner, {**fixed, **sub}, buffers, fo, self._vectorized))
                return owner._check_loss(value)

            sub = {n: self.params[n] for n in names}
            new = adapt_func(loss_of, sub, self.buffers, num_steps=1, lr=lr, first_order=fo)
            self.params = {**self.params, **new}
            return
        if self._vectorized:
            raise MetaError(
                "inside MAML.vmap adapt needs the loss as a function of the clone: "
                "learner.adapt(lambda m: loss_fn(m(x), y)), not a computed tensor"
            )
        owner._check_loss(loss)
        if loss.grad_fn is None:
            raise MetaError(
                "the loss has no gradient: compute it from this clone's output "
                "(learner(x)) with gradients enabled, not under torch.no_grad()"
            )
        live = [n for n in names if self.params[n].requires_grad]
        grads = torch.autograd.grad(
            loss, [self.params[n] for n in live], create_graph=not fo, allow_unused=True
        )
        if all(g is None for g in grads):
            raise MetaError(
                "the loss does not depend on any adapted parameter: compute it from this "
                "clone's output (learner(x)), not from the wrapped model's"
            )
        self.params = gradient_step(self.params, dict(zip(live, grads, strict=True)), lr)


class MAML(nn.Module):
    """MAML over any ``nn.Module``: ``clone()`` a task model, ``adapt`` it, score it.

    Args:
        model: the network to meta-learn; its parameters are the meta-parameters.
        lr: the inner step size α.
        first_order: drop the second-order terms (first-order MAML, Finn et al. Sec. 5.2).
        adapt: the parameters adapted in the inner loop: names of parameters or of
            sub-modules (``"head"`` adapts ``head.weight`` and ``head.bias``); None: all.
        batch_norm: ``"batch"`` or ``"task"`` (see the module docstring).

    ``maml(x)`` is the meta-model itself (no adaptation); ``maml.parameters()`` is what the
    outer optimiser updates.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        first_order: bool = False,
        adapt: str | Sequence[str] | None = None,
        batch_norm: str = "batch",
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise MetaError(f"MAML wraps an nn.Module, got {type(model).__name__}")
        if not any(True for _ in model.parameters()):
            raise MetaError(
                f"{type(model).__name__} has no parameters to meta-learn: register its "
                "weights as nn.Parameter (or sub-modules) so the wrapper can see them"
            )
        if not lr > 0:
            raise MetaError(f"the inner step size lr must be positive, got {lr}")
        if batch_norm not in BATCH_NORM_MODES:
            raise MetaError(f"batch_norm must be 'batch' or 'task', got {batch_norm!r}")
        self.module = model
        self.lr = lr
        self.first_order = first_order
        self.adapted_names = _resolve_names(model, adapt)
        self.batch_norm = batch_norm
        self._norm_buffers = _norm_buffer_names(model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def inner_rates(self) -> float | Mapping[str, Tensor]:
        """The inner step size(s) :func:`~metarl.learning.functional.gradient_step` takes."""
        return self.lr

    def _task_buffers(self, num_tasks: int | None = None) -> dict[str, Tensor | None]:
        buffers = dict(self.module.named_buffers())
        if self.batch_norm == "batch":
            out: dict[str, Tensor | None] = dict(buffers)
            out.update({n: None for n in self._norm_buffers})
            return out
        if num_tasks is None:
            return {n: b.clone() for n, b in buffers.items()}
        return {n: b.unsqueeze(0).expand(num_tasks, *b.shape).clone() for n, b in buffers.items()}

    def clone(self, first_order: bool | None = None) -> TaskModel:
        """A task model starting at the meta-parameters (``first_order`` overrides)."""
        fo = self.first_order if first_order is None else first_order
        return TaskModel(self, dict(self.module.named_parameters()), self._task_buffers(), fo)

    def _check_loss(self, loss: object) -> Tensor:
        if not isinstance(loss, Tensor):
            raise MetaError(f"the inner loss must be a tensor, got {type(loss).__name__}")
        if loss.dim() != 0:
            raise MetaError(
                f"the inner loss must be a scalar, got shape {tuple(loss.shape)}; reduce it "
                "(e.g. .mean()) before adapt"
            )
        return loss

    def _call(
        self,
        params: Mapping[str, Tensor],
        buffers: Mapping[str, Tensor | None],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        before = _versions(params)
        try:
            state: dict[str, Any] = {**params, **buffers}
            out = functional_call(self.module, state, args, kwargs)
        except RuntimeError as e:
            if "in-place" in str(e) and "leaf" in str(e):
                raise MetaError(_INPLACE.format(type(self.module).__name__)) from e
            raise
        if before is not None and _versions(params) != before:
            raise MetaError(_INPLACE.format(type(self.module).__name__))
        return out

    def vmap(self, fn: Callable[..., Any], fallback: bool = True) -> Callable[..., Any]:
        """``fn(learner, *task_tensors)`` over a batch of tasks in one vectorised call.

        The returned function takes the tasks' tensors stacked on a leading task dimension
        ``B`` and returns ``fn``'s outputs (a tensor or a tuple of tensors) stacked the same
        way. Inside ``fn``, pass the inner loss to ``learner.adapt`` as a function of the
        clone. Random operations (dropout) draw differently per task.

        Example:
            >>> def task_loss(learner, xs, ys, xq, yq):
            ...     learner.adapt(lambda m: F.mse_loss(m(xs), ys))
            ...     return F.mse_loss(learner(xq), yq)
            >>> maml.vmap(task_loss)(xs, ys, xq, yq).mean().backward()  # doctest: +SKIP
        """

        def batched(*tasks: Tensor) -> Any:
            if not tasks or not all(isinstance(t, Tensor) and t.dim() > 0 for t in tasks):
                raise MetaError(
                    "MAML.vmap's function takes the tasks' tensors, each with a leading "
                    "task dimension"
                )
            b = int(tasks[0].shape[0])
            params: Params = dict(self.module.named_parameters())
            fo = self.first_order

            def one(buffers: dict[str, Tensor | None], *task: Tensor) -> Any:
                return fn(TaskModel(self, params, buffers, fo, vectorized=True), *task)

            per_task = self.batch_norm == "task"
            buffers = self._task_buffers(b if per_task else None)
            in_dims = (0 if per_task else None, *(0 for _ in tasks))
            try:
                return torch.func.vmap(one, in_dims, randomness="different")(buffers, *tasks)
            except MetaError:
                raise  # bad input: a loop over the tasks would refuse it too
            except (RuntimeError, TypeError, NotImplementedError, ValueError) as e:
                why = (
                    f"{type(self.module).__name__} does not vectorise over tasks ({_first_line(e)})"
                )
                if not fallback:
                    raise MetaError(f"{why}; pass fallback=True to run the tasks in a loop") from e
                warnings.warn(
                    f"{why}; running the {b} tasks in a loop", RuntimeWarning, stacklevel=2
                )
            outs = []
            for i in range(b):
                learner = self.clone()
                learner._vectorized = True  # the same code path as under vmap
                outs.append(fn(learner, *(t[i] for t in tasks)))
            return _stack(outs)

        return batched


class FOMAML(MAML):
    """First-order MAML: :class:`MAML` with ``first_order=True``."""

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        adapt: str | Sequence[str] | None = None,
        batch_norm: str = "batch",
    ) -> None:
        super().__init__(model, lr, first_order=True, adapt=adapt, batch_norm=batch_norm)


class MetaSGD(MAML):
    """Meta-SGD: :class:`MAML` with a learned step size per parameter entry (Li et al. 2017).

    ``lr`` is the initial value of every rate; the rates (``self.lrs``) are parameters of the
    wrapper, so ``MetaSGD(...).parameters()`` gives the outer optimiser both.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        first_order: bool = False,
        adapt: str | Sequence[str] | None = None,
        batch_norm: str = "batch",
    ) -> None:
        super().__init__(model, lr, first_order, adapt, batch_norm)
        own = dict(model.named_parameters())
        # ParameterDict keys cannot hold '.', so parameter names are stored with '/'.
        self.lrs = nn.ParameterDict(
            {
                n.replace(".", "/"): nn.Parameter(torch.full_like(own[n], lr))
                for n in self.adapted_names
            }
        )

    def inner_rates(self) -> float | Mapping[str, Tensor]:
        return {k.replace("/", "."): v for k, v in self.lrs.items()}


class ANIL(MAML):
    """ANIL: :class:`MAML` adapting only the head (Raghu et al. 2020).

    ``head`` names the adapted parameters or sub-modules; None (the default) picks the
    model's last layer, the last sub-module that owns parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        first_order: bool = False,
        head: str | Sequence[str] | None = None,
        batch_norm: str = "batch",
    ) -> None:
        if head is None and isinstance(model, nn.Module) and any(True for _ in model.parameters()):
            head = _last_layer(model)
        super().__init__(model, lr, first_order, head, batch_norm)


_INPLACE = (
    "{} changes its parameters in place in forward; the wrapper calls the model with each "
    "task's own parameters and cannot follow in-place changes: compute new tensors instead "
    "(e.g. w = self.weight.clamp(...), not self.weight.data.clamp_(...))"
)


def _versions(params: Mapping[str, Tensor]) -> tuple[int, ...] | None:
    try:
        return tuple(p._version for p in params.values())
    except (RuntimeError, AttributeError):  # tensors inside a functorch transform
        return None


def _stack(outs: list[Any]) -> Any:
    first = outs[0]
    if isinstance(first, Tensor):
        return torch.stack(outs)
    if isinstance(first, tuple | list):
        return type(first)(_stack([o[i] for o in outs]) for i in range(len(first)))
    raise MetaError(
        f"MAML.vmap's function must return a tensor or a tuple of tensors, got "
        f"{type(first).__name__}"
    )
