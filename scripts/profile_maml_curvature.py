"""Where one MAML-TRPO curvature product spends its time, against the arithmetic it needs.

On the first meta-iteration of a preset (default: the 2D-navigation paper preset, 20 tasks ×
20 episodes × horizon 100, 2×100 ReLU Gaussian policy), one thread, float32, this times the
parts of one conjugate-gradient product ``v ↦ Σ_i J_iᵀ F_i J_i v`` of each curvature:

* ``gauss-newton`` (autograd): the inner step's forward product ``J v`` (a Hessian-vector
  product by double backward through the retained graph of the inner gradients), the Fisher
  product ``F w`` (``J_netᵀ M J_net w`` by two backward passes) and the transpose ``Jᵀ u``
  (another such Hessian-vector product);
* ``structured``: the same three parts as batched matmuls over tasks with the layer
  activations cached once (:mod:`metarl.adaptation.curvature`);

and counts what the autograd product walks (nodes in the retained graphs) and allocates
(allocations recorded by the profiler during one product). Beside it: the floating-point
operations the matrix products of one product need (counted from the layer shapes: a
Hessian-vector product of an MLP is six matrix products per hidden-to-hidden layer, a
Gauss–Newton Fisher product four) and what one thread delivers for matmuls of those shapes
(``torch.bmm`` and ``torch.mm``, median of repeats), which give the floor.

Results go to ``benchmarks/OUT.{md,json}`` with the command.

Usage: python scripts/profile_maml_curvature.py [--preset nav2d-paper] [--out NAME]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "benchmarks"


def median_s(fn: Callable[[], Any], repeats: int = 7) -> float:
    """Median CPU seconds of ``fn`` (the process's CPU time: one thread, so what a busy CPU's
    other processes do not inflate)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def captured(preset: str) -> dict[str, Any]:
    """The arguments of the first meta-iteration's curvature product, captured."""
    from metarl.agents import maml_trpo
    from metarl.agents.maml_trpo import MAMLTRPOConfig, build, meta_step

    got: dict[str, Any] = {}
    real = maml_trpo.kl_hessian_product

    class Stop(Exception):
        pass

    def capture(policy, steps, valid, valid_adv, adapted, cfg, exact=None, rates=None):  # type: ignore[no-untyped-def]
        got.update(policy=policy, steps=steps, valid=valid, valid_adv=valid_adv,
                   adapted=adapted, cfg=cfg)  # fmt: skip
        raise Stop

    cfg = MAMLTRPOConfig.from_preset(preset, device="cpu", curvature="gauss-newton")
    torch.manual_seed(0)
    policy, sampler = build(cfg, torch.device("cpu"))
    tasks = list(sampler.task_distribution.split("train"))
    tasks = [tasks[i % len(tasks)] for i in range(cfg.meta_batch_size)]
    maml_trpo.kl_hessian_product = capture  # type: ignore[assignment]
    try:
        meta_step(policy, sampler, tasks, 0, cfg)
    except Stop:
        pass
    finally:
        maml_trpo.kl_hessian_product = real  # type: ignore[assignment]
        sampler.close()
    return got


def graph_nodes(roots: list[torch.Tensor]) -> int:
    """Autograd nodes reachable from ``roots`` (what a backward pass through them walks)."""
    seen: set[Any] = set()
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions if f is not None)
    return len(seen)


def allocations(fn: Callable[[], Any]) -> tuple[int, float]:
    """(operators that allocated memory, MB they allocated) while ``fn`` runs, from the
    profiler's per-operator memory accounting."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.events() if e.self_cpu_memory_usage > 0]
    return len(events), sum(e.self_cpu_memory_usage for e in events) / 2**20


def mlp_flops(rows: int, sizes: list[int]) -> dict[str, float]:
    """Matmul FLOPs of one curvature product on ``rows`` rows (inner and validation each),
    an MLP with layer widths ``sizes`` (input, hidden..., output): per layer of ``m × k``
    weights a product ``rows × k × m`` costs ``2·rows·k·m``; a Hessian-vector product
    (Pearlmutter's R-forward and R-backward passes) does six per layer, a Gauss–Newton
    Fisher product four (R-forward two, backward two)."""
    layer = [2.0 * rows * k * m for k, m in itertools.pairwise(sizes)]
    hvp, fisher = 6 * sum(layer), 4 * sum(layer)
    return {"hvp": hvp, "fisher": fisher, "product": 2 * hvp + fisher}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="nav2d-paper")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--out", default="maml_curvature_profile",
                    help="results go to benchmarks/OUT.{md,json}")  # fmt: skip
    args = ap.parse_args()
    from metarl.stepping.allocator import tune_allocator

    tune_allocator()  # as the metarl command does
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]

    from metarl.adaptation.policy_gradient import TaskData, expand_tasks
    from metarl.agents.maml_trpo import _back_to_theta, _fisher_product, kl_hessian_product

    c = captured(args.preset)
    policy, steps, valid, vadv, adapted, cfg = (
        c[k] for k in ("policy", "steps", "valid", "valid_adv", "adapted", "cfg")
    )
    n = valid.num_tasks
    theta = {k: p.detach() for k, p in policy.named_parameters()}
    g = torch.Generator().manual_seed(0)
    v = {k: torch.randn(t.shape, generator=g) for k, t in theta.items()}
    step = steps[0]
    fisher = _fisher_product(policy, adapted, TaskData.of(valid, vadv))
    w = step.jvp(expand_tasks(v, n))
    fw = fisher(w)
    parts = {
        "J v (inner HVP, forward)": median_s(lambda: step.jvp(expand_tasks(v, n))),
        "F w (Gauss–Newton Fisher)": median_s(lambda: fisher(w)),
        "Jᵀ u (inner HVP, transpose)": median_s(lambda: _back_to_theta(fw, steps, False)),
    }
    gn = kl_hessian_product(policy, steps, valid, vadv, adapted, cfg)
    parts["whole product (gauss-newton)"] = median_s(lambda: gn(v))
    structured: dict[str, float] = {}
    from metarl.adaptation.curvature import structured_curvature

    sc = structured_curvature(policy, [(s.start, s.data) for s in steps],
                              TaskData.of(valid, vadv), adapted, cfg.inner_lr, False)  # fmt: skip
    assert sc is not None
    chunks = [(c, ch, {k: x.expand(c.stop - c.start, *x.shape) for k, x in v.items()})
              for c, ch in sc.chunks]  # fmt: skip
    wv = [ch.jvp(vc) for _, ch, vc in chunks]
    fwv = [ch.fisher.product(w_c) for (_, ch, _), w_c in zip(chunks, wv, strict=True)]
    structured: dict[str, float] = {
        "J v (inner HVP, forward)": median_s(lambda: [ch.jvp(vc) for _, ch, vc in chunks]),
        "F w (Gauss–Newton Fisher)": median_s(
            lambda: [ch.fisher.product(w_c) for (_, ch, _), w_c in zip(chunks, wv, strict=True)]
        ),
        "Jᵀ u (inner HVP, transpose)": median_s(
            lambda: [ch.vjp(f) for (_, ch, _), f in zip(chunks, fwv, strict=True)]
        ),
    }
    new = kl_hessian_product(policy, steps, valid, vadv, adapted,
                             cfg.replace(curvature="structured"))  # fmt: skip
    structured["whole product (structured)"] = median_s(lambda: new(v))
    structured["allocations"], structured["allocated_mb"] = allocations(lambda: new(v))
    # Candidate (a): the inner step's Hessian-vector product by forward-over-reverse
    # (torch.func.jvp of torch.func.grad), vmapped over the tasks, against double backward
    # through the retained graph and the structured R-passes.
    from torch.func import grad, jvp, vmap

    from metarl.adaptation.policy_gradient import reinforce_loss

    def task_loss(p: dict[str, Any], *d: torch.Tensor) -> torch.Tensor:
        return reinforce_loss(policy, p, *d)

    def one_hvp(p: dict[str, Any], t: dict[str, Any], *d: torch.Tensor) -> Any:
        return jvp(lambda q: grad(task_loss)(q, *d), (p,), (t,))[1]

    start = {k: x.detach() for k, x in step.start.items()}
    vt = expand_tasks(v, n)
    fwd_rev = vmap(one_hvp)
    inner_data = tuple(step.data)
    hvp_fwd_rev = fwd_rev(start, vt, *inner_data)
    hvp_double = step._hvp(vt)
    err = max(float((hvp_fwd_rev[k] - hvp_double[k]).abs().max()) for k in vt)
    inner_hvp = {
        "double backward (retained graph)": median_s(lambda: step._hvp(vt)),
        "forward-over-reverse (vmap of jvp of grad)": median_s(
            lambda: fwd_rev(start, vt, *inner_data)
        ),
        "structured (R-passes, chunks of tasks)": median_s(
            lambda: [ch.inner[0].hvp(vc) for _, ch, vc in chunks]
        ),
    }
    nodes = {
        "inner step (retained graph of the inner gradients)": graph_nodes(
            [t for gr in step.grads for t in gr.values()]),
    }  # fmt: skip
    allocs, alloc_mb = allocations(lambda: gn(v))

    rows = valid.obs.shape[0] * valid.obs.shape[1]
    sizes = [int(policy.obs_dim), *cfg.hidden_sizes, int(valid.actions.shape[-1])]  # type: ignore[arg-type]
    flops = mlp_flops(rows, sizes)
    per_task = rows // n
    h = cfg.hidden_sizes[-1]
    a, b = torch.randn(n, per_task, h), torch.randn(n, h, h)
    flat = a.reshape(-1, h)
    a1, b1 = a[:1].clone(), b[:1].clone()
    rates = {
        "bmm (1, R, h) @ (1, h, h), × N (one task at a time)": n
        * median_s(lambda: torch.bmm(a1, b1), 21),
        "bmm (N, R, h) @ (N, h, h)": median_s(lambda: torch.bmm(a, b)),
        "bmm (N, h, R) @ (N, R, h)": median_s(lambda: torch.bmm(a.transpose(1, 2), a)),
        "mm (N·R, h) @ (h, h)": median_s(lambda: flat @ b[0]),
    }
    big = 2.0 * n * per_task * h * h
    gflops = {k: big / s / 1e9 for k, s in rates.items()}
    best = max(gflops.values())
    floor_s = flops["product"] / (best * 1e9)
    load_after = os.getloadavg()[0]

    command = "python scripts/profile_maml_curvature.py " + " ".join(sys.argv[1:])
    machine = f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    lines = [
        f"# One MAML-TRPO curvature product ({args.preset}): time, graph, arithmetic",
        "",
        f"`{command.strip()}` — cpu, torch threads 1, {machine} (no GPU; 1-min load "
        f"{load_before:.2f} before, {load_after:.2f} after), torch {torch.__version__}; "
        f"{n} tasks × {per_task} rows, policy {'×'.join(map(str, cfg.hidden_sizes))} "
        f"{cfg.nonlinearity}, float32; CPU seconds (one thread: what a busy CPU's other "
        "processes do not inflate), median of 7.",
        "",
        "| part | autograd (gauss-newton) s | structured s |",
        "| --- | ---: | ---: |",
    ]
    for k, s in parts.items():
        key = k.replace("gauss-newton", "structured")
        st = structured.get(key)
        lines.append(f"| {k.replace(' (gauss-newton)', '')} | {s:.3f} | "
                     f"{'' if st is None else f'{st:.3f}'} |")  # fmt: skip
    lines += [
        "",
        f"Autograd nodes walked by one inner-step Hessian-vector product: "
        f"{nodes['inner step (retained graph of the inner gradients)']} (the structured "
        f"product walks none). Operators that allocated memory during one product: autograd "
        f"{allocs} ({alloc_mb:.0f} MB), structured {structured['allocations']} "
        f"({structured['allocated_mb']:.0f} MB).",
        "",
        "One inner-step Hessian-vector product for all tasks, the three ways (candidates for "
        "the products ``J v`` and ``Jᵀ u``):",
        "",
        "| inner-step HVP | s |",
        "| --- | ---: |",
        *[f"| {k} | {t:.3f} |" for k, t in inner_hvp.items()],
        "",
        f"(forward-over-reverse agrees with double backward to {err:.1e}, max abs.)",
        "",
        f"Arithmetic: one product needs {flops['product'] / 1e9:.1f} GFLOP of matrix products "
        f"(each inner-step Hessian-vector product {flops['hvp'] / 1e9:.1f}, the Fisher "
        f"{flops['fisher'] / 1e9:.1f}), {big / 1e9:.2f} GFLOP per matmul of the {h}×{h} "
        "layer's shape over all rows.",
        "",
        "| matmul of the hidden layer's shape | s | GFLOP/s |",
        "| --- | ---: | ---: |",
    ]
    for k, s in rates.items():
        lines.append(f"| {k}, N={n}, R={per_task}, h={h} | {s:.4f} | {gflops[k]:.1f} |")
    lines += [
        "",
        f"The structured product's {flops['product'] / 1e9:.1f} GFLOP in "
        f"{structured['whole product (structured)']:.3f} s: "
        f"{flops['product'] / structured['whole product (structured)'] / 1e9:.0f} GFLOP/s; "
        f"the autograd one's "
        f"{flops['product'] / parts['whole product (gauss-newton)'] / 1e9:.0f} GFLOP/s "
        "(if it did no more arithmetic).",
    ]
    lines += [
        "",
        f"Floor at the best of those rates ({best:.0f} GFLOP/s): {floor_s:.3f} s per product, "
        f"{10 * floor_s:.2f} s for the 10 products of one conjugate-gradient solve.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        OUT.mkdir(exist_ok=True)
        (OUT / f"{args.out}.md").write_text(text)
        payload = {"command": command.strip(), "threads": 1, "machine": machine,
                   "load_before": load_before, "load_after": load_after,
                   "autograd_s": parts, "structured_s": structured, "graph_nodes": nodes,
                   "inner_hvp_s": inner_hvp, "fwd_rev_max_abs_diff": err,
                   "allocations": allocs, "allocated_mb": alloc_mb, "flops": flops,
                   "matmul_s": rates, "matmul_gflops": gflops,
                   "floor_s_per_product": floor_s}  # fmt: skip
        (OUT / f"{args.out}.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
