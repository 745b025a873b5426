"""metarl.fewshot.meta: MAML / FOMAML / Meta-SGD / ANIL over a user's own nn.Module.

Meta-gradients equal the project's few-shot learners' on the same model and batch; batch
normalisation stays per task; the vectorised meta-batch equals the loop; bad input gets one
line; and a user-defined network meta-trained with the wrapper learns to adapt.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarl.fewshot import meta
from metarl.fewshot.data import EpisodeBatch, SinusoidTasks
from metarl.fewshot.learner import task_loss
from metarl.fewshot.maml import MAML as ProjectMAML
from metarl.fewshot.metasgd import MetaSGD as ProjectMetaSGD
from metarl.fewshot.models import MLP, Conv4
from metarl.learning.functional import adapt, forward, named_params


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    # Small nets on a shared machine: more threads only spin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image_batch(num_tasks: int = 2, ways: int = 3, size: int = 8) -> EpisodeBatch:
    g = torch.Generator().manual_seed(0)
    sx = torch.rand(num_tasks, ways * 2, 1, size, size, generator=g)
    qx = torch.rand(num_tasks, ways * 3, 1, size, size, generator=g)
    sy = torch.arange(ways).repeat_interleave(2).expand(num_tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(3).expand(num_tasks, -1).contiguous()
    return EpisodeBatch(sx, sy, qx, qy)


def _sine_batch(num_tasks: int = 4) -> EpisodeBatch:
    return SinusoidTasks(num_shots=5, num_query=6).sample(num_tasks, np.random.default_rng(0))


def _model_and_batch(kind: str) -> tuple[nn.Module, EpisodeBatch]:
    torch.manual_seed(0)
    if kind == "conv4":
        return Conv4((1, 8, 8), 3, hidden=4, pool="stride"), _image_batch()
    return MLP((1, 16, 16, 1)), _sine_batch()


def _wrapper_loss(wrapper: meta.MAML, batch: EpisodeBatch, steps: int) -> Tensor:
    """The mean over tasks of the query loss after ``steps`` inner steps (the user's loop)."""
    losses = []
    for i in range(batch.num_tasks):
        learner = wrapper.clone()
        for _ in range(steps):
            learner.adapt(task_loss(learner(batch.support_x[i]), batch.support_y[i]))
        losses.append(task_loss(learner(batch.query_x[i]), batch.query_y[i]))
    return torch.stack(losses).mean()


def _grads(loss: Tensor, params: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, params))


# ---------------------------------------------------------------------- gradient equality


@pytest.mark.parametrize("kind", ["mlp", "conv4"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_equals_project_maml(kind: str, first_order: bool, steps: int) -> None:
    model, batch = _model_and_batch(kind)
    lr = 0.3
    project = ProjectMAML(model, inner_lr=lr, first_order=first_order, vectorize=False)
    pred = project.adapt_and_query(batch, steps, first_order)
    params = list(model.parameters())
    want = _grads(task_loss(pred, batch.query_y), params)
    wrapper = meta.FOMAML(model, lr) if first_order else meta.MAML(model, lr)
    got = _grads(_wrapper_loss(wrapper, batch, steps), params)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    # the orders differ, so the comparison above can tell them apart
    other = meta.MAML(model, lr, first_order=not first_order)
    diff = _grads(_wrapper_loss(other, batch, steps), params)
    assert any(not torch.allclose(d, w, atol=1e-6) for d, w in zip(diff, want, strict=True))


@pytest.mark.parametrize("kind", ["mlp", "conv4"])
def test_meta_sgd_gradients_equal_project_metasgd(kind: str) -> None:
    model, batch = _model_and_batch(kind)
    project = ProjectMetaSGD(model, inner_lr=0.2, vectorize=False)
    wrapper = meta.MetaSGD(model, lr=0.2)
    with torch.no_grad():  # distinct rates per entry, the same in both
        for key, rate in project.rates.items():
            rate.uniform_(0.05, 0.4)
            wrapper.lrs[key].copy_(rate)
    pred = project.adapt_and_query(batch, 1, first_order=False)
    p_params = list(model.parameters()) + list(project.rates.values())
    want = _grads(task_loss(pred, batch.query_y), p_params)
    w_params = list(model.parameters()) + [wrapper.lrs[k] for k in project.rates]
    got = _grads(_wrapper_loss(wrapper, batch, 1), w_params)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert set(dict(wrapper.named_parameters())) >= {f"lrs.{k}" for k in project.rates}


def test_anil_adapts_only_the_head_and_equals_the_functional_core() -> None:
    model, batch = _model_and_batch("mlp")
    anil = meta.ANIL(model, lr=0.3)
    assert anil.adapted_names == ["net.4.weight", "net.4.bias"]
    assert meta.MAML(model, adapt="net.4").adapted_names == anil.adapted_names
    assert meta.MAML(model, adapt=["net.0.bias"]).adapted_names == ["net.0.bias"]
    params = named_params(model)
    head = {n: params[n] for n in anil.adapted_names}
    losses = []
    for i in range(batch.num_tasks):
        sx, sy = batch.support_x[i], batch.support_y[i]

        def loss_fn(h: dict[str, Tensor], sx: Tensor = sx, sy: Tensor = sy) -> Tensor:
            return task_loss(forward(model, {**params, **h}, sx), sy)

        adapted = adapt(loss_fn, head, num_steps=1, lr=0.3)
        losses.append(task_loss(forward(model, {**params, **adapted}, batch.query_x[i]),
                                batch.query_y[i]))  # fmt: skip
    want = _grads(torch.stack(losses).mean(), list(model.parameters()))
    got = _grads(_wrapper_loss(anil, batch, 1), list(model.parameters()))
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    learner = anil.clone()
    learner.adapt(task_loss(learner(batch.support_x[0]), batch.support_y[0]))
    assert learner.params["net.0.weight"] is params["net.0.weight"]  # the body is not adapted
    assert not torch.equal(learner.params["net.4.weight"], params["net.4.weight"])
    assert want[0].abs().sum() > 0  # ...but it is meta-learned


# ---------------------------------------------------------------------- batch norm


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def test_batch_norm_batch_mode_uses_batch_statistics_and_leaves_running_stats() -> None:
    torch.manual_seed(0)
    net = _BNNet().eval()
    before = {n: b.clone() for n, b in net.named_buffers()}
    maml = meta.MAML(net, lr=0.1)
    x, y = torch.randn(8, 1) * 3 + 2, torch.randn(8, 1)
    learner = maml.clone()
    out = learner(x)
    # eval mode, yet the batch's own statistics: what a fresh copy in training mode computes
    torch.testing.assert_close(out, copy.deepcopy(net).train()(x))
    assert not torch.allclose(out, net(x))  # eval with running stats is something else
    learner.adapt(F.mse_loss(out, y))
    F.mse_loss(learner(x), y).backward()
    net.train()
    learner = maml.clone()
    learner.adapt(F.mse_loss(learner(x), y))
    for n, b in net.named_buffers():
        assert torch.equal(b, before[n]), n


def test_batch_norm_task_mode_keeps_running_stats_per_task() -> None:
    torch.manual_seed(0)
    net = _BNNet().train()
    maml = meta.MAML(net, lr=0.1, batch_norm="task")
    xa, xb = torch.randn(8, 1), torch.randn(8, 1) * 4 + 3
    a, b = maml.clone(), maml.clone()
    a.adapt(F.mse_loss(a(xa), torch.zeros(8, 1)))
    b.adapt(F.mse_loss(b(xb), torch.zeros(8, 1)))
    mean = "body.1.running_mean"
    assert torch.equal(net.body[1].running_mean, torch.zeros(16))  # the meta-model's: untouched
    assert not torch.allclose(a.buffers[mean], b.buffers[mean])
    assert int(a.buffers["body.1.num_batches_tracked"]) == 1
    # in eval mode a clone normalises with its own task's running statistics
    net.eval()
    reference = copy.deepcopy(net)
    reference.load_state_dict({**reference.state_dict(), **a.buffers, **a.params})
    torch.testing.assert_close(a(xb), reference(xb))


@pytest.mark.parametrize("batch_norm", ["batch", "task"])
def test_batch_norm_vmap_equals_loop_per_task(batch_norm: str) -> None:
    torch.manual_seed(0)
    net = _BNNet().train()
    maml = meta.MAML(net, lr=0.1, batch_norm=batch_norm)
    batch = _sine_batch(5)

    def task(learner: meta.TaskModel, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        learner.adapt(lambda m: F.mse_loss(m(sx), sy))
        return F.mse_loss(learner(qx), qy)

    args = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the loop
        vm = maml.vmap(task)(*args)
    loop = torch.stack([task(maml.clone(), *(t[i] for t in args)) for i in range(5)])
    torch.testing.assert_close(vm, loop)
    # task 0's loss does not depend on the other tasks in the batch
    torch.testing.assert_close(maml.vmap(task)(*(t[:1] for t in args))[0], loop[0])


# ---------------------------------------------------------------------- vmap


@pytest.mark.parametrize("kind", ["mlp", "conv4"])
@pytest.mark.parametrize("wrapper_cls", [meta.MAML, meta.FOMAML, meta.MetaSGD, meta.ANIL])
def test_vmap_equals_loop(kind: str, wrapper_cls: type[meta.MAML]) -> None:
    model, batch = _model_and_batch(kind)
    wrapper = wrapper_cls(model, 0.3)

    def task(learner: meta.TaskModel, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        for _ in range(2):
            learner.adapt(lambda m: task_loss(m(sx), sy))
        return task_loss(learner(qx), qy)

    params = list(wrapper.parameters())
    args = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vm = wrapper.vmap(task)(*args)
    got = _grads(vm.mean(), params)
    want = _grads(_wrapper_loss(wrapper, batch, 2), params)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


class _Branchy(nn.Module):
    """Data-dependent control flow: fine in a loop, not under vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.lin(x)
        return y * 2 if y.sum() > 0 else y


def test_vmap_falls_back_to_a_loop_with_a_warning_or_refuses_in_one_line() -> None:
    torch.manual_seed(0)
    maml = meta.MAML(_Branchy(), lr=0.1)
    batch = _sine_batch(3)

    def task(learner: meta.TaskModel, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        learner.adapt(lambda m: F.mse_loss(m(sx), sy))
        return F.mse_loss(learner(qx), qy)

    args = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    with pytest.warns(RuntimeWarning, match="does not vectorise over tasks.*in a loop"):
        got = maml.vmap(task)(*args)
    want = torch.stack([task(maml.clone(), *(t[i] for t in args)) for i in range(3)])
    torch.testing.assert_close(got, want)
    with pytest.raises(meta.MetaError, match="fallback=True") as e:
        maml.vmap(task, fallback=False)(*args)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------- bad input


class _NoParams(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 2


class _InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            self.lin.weight.clamp_(-1, 1)  # mutates whatever tensor is the weight now
        return self.lin(x)


class _InPlaceGrad(_InPlace):
    def forward(self, x: Tensor) -> Tensor:
        self.lin.weight.mul_(1.0)
        return self.lin(x)


def test_bad_input_gets_one_line() -> None:
    x, y = torch.randn(4, 1), torch.randn(4, 1)
    cases: list[tuple[str, object]] = []
    with pytest.raises(meta.MetaError, match="no parameters to meta-learn") as e:
        meta.MAML(_NoParams())
    cases.append(("no params", e.value))
    with pytest.raises(meta.MetaError, match="no parameter or sub-module named 'hed'") as e:
        meta.MAML(MLP(), adapt="hed")
    cases.append(("head", e.value))
    with pytest.raises(meta.MetaError, match="no parameter or sub-module named 'x'") as e:
        meta.ANIL(MLP(), head=["net.4", "x"])
    for model in (_InPlace(), _InPlaceGrad()):
        learner = meta.MAML(model).clone()
        with pytest.raises(meta.MetaError, match="changes its parameters in place") as e:
            learner(x)
        cases.append(("in place", e.value))
    learner = meta.MAML(MLP()).clone()
    with pytest.raises(meta.MetaError, match="must be a scalar") as e:
        learner.adapt((learner(x) - y) ** 2)
    cases.append(("scalar", e.value))
    with pytest.raises(meta.MetaError, match="must be a scalar"):
        learner.adapt(lambda m: (m(x) - y) ** 2)
    model = MLP()
    maml = meta.MAML(model)
    learner = maml.clone()
    learner.adapt(F.mse_loss(learner(x), y))
    with pytest.raises(meta.MetaError, match="does not depend on any adapted parameter") as e:
        learner.adapt(F.mse_loss(model(x), y))  # the meta-model's output, not the clone's
    cases.append(("unused", e.value))
    with torch.no_grad():
        loss = F.mse_loss(learner(x), y)
    with pytest.raises(meta.MetaError, match="no gradient") as e:
        learner.adapt(loss)
    cases.append(("no grad", e.value))
    with pytest.raises(meta.MetaError, match="as a function of the clone") as e:
        maml.vmap(lambda m, a, b: m.adapt(F.mse_loss(m(a), b)))(x[None], y[None])
    cases.append(("vmap tensor", e.value))
    with pytest.raises(meta.MetaError, match="batch_norm must be"):
        meta.MAML(MLP(), batch_norm="running")
    for what, err in cases:
        assert "\n" not in str(err), what


# ---------------------------------------------------------------------- learning


class _SineNet(nn.Module):
    """A user's own network: nothing of metarl in it."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU())
        self.out = nn.Linear(40, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.hidden(x))


def _adapted_mse(wrapper: meta.MAML, batch: EpisodeBatch, steps: int) -> float:
    total = 0.0
    for i in range(batch.num_tasks):
        learner = wrapper.clone(first_order=True)
        for _ in range(steps):
            learner.adapt(F.mse_loss(learner(batch.support_x[i]), batch.support_y[i]))
        total += float(F.mse_loss(learner(batch.query_x[i]), batch.query_y[i]).detach())
    return total / batch.num_tasks


def test_wrapper_meta_trains_a_users_network_on_sinusoids() -> None:
    """Meta-trained with the wrapper in a plain loop, one inner step must cut the query MSE
    well below both the meta-trained net unadapted and an untrained net adapted."""
    tasks = SinusoidTasks(num_shots=10)
    torch.manual_seed(0)
    untrained = meta.MAML(_SineNet(), lr=0.05)
    torch.manual_seed(0)
    maml = meta.MAML(_SineNet(), lr=0.05)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(300):
        b = tasks.sample(10, rng)

        def task(learner: meta.TaskModel, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
            learner.adapt(lambda m: F.mse_loss(m(sx), sy))
            return F.mse_loss(learner(qx), qy)

        opt.zero_grad()
        maml.vmap(task)(b.support_x, b.support_y, b.query_x, b.query_y).mean().backward()
        opt.step()
    test = tasks.sample(200, np.random.default_rng(1))
    pre = _adapted_mse(maml, test, 0)
    post = _adapted_mse(maml, test, 1)
    baseline = _adapted_mse(untrained, test, 1)
    assert post < 0.6 * pre and post < 0.5 * baseline, (pre, post, baseline)


def test_example_script_meta_trains_its_own_network() -> None:
    """scripts/example_own_model.py, shortened: the user's loop learns to adapt."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "example_own_model.py"
    spec = importlib.util.spec_from_file_location("example_own_model", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--iterations", "300", "--algorithm", "metasgd", "--vmap"])
    assert out["after_one_step"] < 0.6 * out["before_adaptation"], out
    assert out["after_one_step"] < 0.5 * out["untrained_after_one_step"], out
    with pytest.raises(SystemExit) as e:
        example.main(["--iterations", "0"])
    assert e.value.code == 2
