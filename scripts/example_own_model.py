"""Meta-train your own network with MAML in a plain PyTorch loop (``metarl.fewshot.meta``).

Everything here is the user's: the network (any ``nn.Module``), the data (sinusoid
regression tasks ``y = A sin(x - phase)``, Finn et al. 2017, Sec. 5.1, drawn with numpy) and
the training loop. ``metarl.fewshot.meta`` adds three lines per task::

    learner = maml.clone()                                   # the model for this task
    learner.adapt(F.mse_loss(learner(x_support), y_support))   # one inner gradient step
    F.mse_loss(learner(x_query), y_query).backward()           # meta-gradient

``--algorithm`` picks MAML, first-order MAML, Meta-SGD or ANIL (only the last layer adapts);
``--vmap`` runs the meta-batch as one vectorised call instead of the loop. At the end the
query MSE on new tasks is printed before adaptation, after one inner step, and after one
inner step from an untrained network of the same shape.

Usage: python scripts/example_own_model.py [--iterations 2000] [--algorithm maml] [--vmap]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarl.fewshot import meta


class SineNet(nn.Module):
    """The user's network: 1 -> 40 -> 40 -> 1 with ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU())
        self.head = nn.Linear(40, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def sample_tasks(
    rng: np.random.Generator, num_tasks: int, num_points: int = 10
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``num_tasks`` sinusoids, ``num_points`` support and query points each: ``(B, K, 1)``."""
    amplitude = rng.uniform(0.1, 5.0, (num_tasks, 1, 1))
    phase = rng.uniform(0.0, np.pi, (num_tasks, 1, 1))
    x = rng.uniform(-5.0, 5.0, (num_tasks, 2 * num_points, 1))
    y = amplitude * np.sin(x - phase)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    return xt[:, :num_points], yt[:, :num_points], xt[:, num_points:], yt[:, num_points:]


WRAPPERS = {"maml": meta.MAML, "fomaml": meta.FOMAML, "metasgd": meta.MetaSGD, "anil": meta.ANIL}


def query_mse(wrapper: meta.MAML, tasks: tuple[Tensor, ...], steps: int) -> float:
    """Mean query MSE over the tasks after ``steps`` inner steps (first-order: no meta-grad)."""
    xs, ys, xq, yq = tasks
    total = 0.0
    for i in range(len(xs)):
        learner = wrapper.clone(first_order=True)
        for _ in range(steps):
            learner.adapt(F.mse_loss(learner(xs[i]), ys[i]))
        total += F.mse_loss(learner(xq[i]), yq[i]).item()
    return total / len(xs)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000, help="outer updates")
    parser.add_argument("--meta-batch-size", type=int, default=10, help="tasks per update")
    parser.add_argument("--inner-lr", type=float, default=0.05, help="inner step size")
    parser.add_argument("--meta-lr", type=float, default=1e-2, help="Adam's step size")
    parser.add_argument("--algorithm", choices=sorted(WRAPPERS), default="maml")
    parser.add_argument("--vmap", action="store_true", help="one vectorised call per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.meta_batch_size < 1:
        parser.error("--iterations and --meta-batch-size must be at least 1")
    torch.set_num_threads(args.num_threads)
    rng = np.random.default_rng(args.seed)

    torch.manual_seed(args.seed)
    maml = WRAPPERS[args.algorithm](SineNet(), lr=args.inner_lr)
    opt = torch.optim.Adam(maml.parameters(), lr=args.meta_lr)

    def task_loss(
        learner: meta.TaskModel, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor
    ) -> Tensor:
        learner.adapt(lambda m: F.mse_loss(m(xs), ys))  # under vmap: the loss as a function
        return F.mse_loss(learner(xq), yq)

    for it in range(args.iterations):
        xs, ys, xq, yq = sample_tasks(rng, args.meta_batch_size)
        opt.zero_grad()
        if args.vmap:
            loss = maml.vmap(task_loss)(xs, ys, xq, yq).mean()
        else:
            losses = []
            for i in range(args.meta_batch_size):
                learner = maml.clone()
                learner.adapt(F.mse_loss(learner(xs[i]), ys[i]))
                losses.append(F.mse_loss(learner(xq[i]), yq[i]))
            loss = torch.stack(losses).mean()
        loss.backward()
        opt.step()
        if (it + 1) % max(1, args.iterations // 10) == 0:
            print(f"iteration {it + 1}: query MSE after one step {loss.item():.3f}")

    test = sample_tasks(np.random.default_rng(args.seed + 10_000), 200)
    torch.manual_seed(args.seed)
    untrained = WRAPPERS[args.algorithm](SineNet(), lr=args.inner_lr)
    result = {
        "before_adaptation": query_mse(maml, test, 0),
        "after_one_step": query_mse(maml, test, 1),
        "untrained_after_one_step": query_mse(untrained, test, 1),
    }
    print(
        f"{args.algorithm}, 200 new tasks, query MSE: {result['before_adaptation']:.3f} before "
        f"adaptation, {result['after_one_step']:.3f} after one step "
        f"(an untrained network after one step: {result['untrained_after_one_step']:.3f})"
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
