"""Few-shot learning: data, episodes, closed-form consistency, bad input, a learning test."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import vmap

from metarl.fewshot.data import (
    EpisodeBatch,
    EpisodeSampler,
    ImageClasses,
    SinusoidTasks,
    image_folder,
    lake_one_shot_runs,
    omniglot,
    omniglot_split,
)
from metarl.fewshot.maml import MAML
from metarl.fewshot.metasgd import MetaSGD
from metarl.fewshot.models import MLP, BatchStatNorm2d, Conv4
from metarl.fewshot.protonet import ProtoNet, prototype_logits
from metarl.fewshot.reptile import Reptile

# METARL_OMNIGLOT points the tests (and `metarl fewshot`) at a copy; else ../shared beside the
# repository.
OMNIGLOT = Path(
    os.environ.get("METARL_OMNIGLOT")
    or Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "omniglot"
)
needs_omniglot = pytest.mark.skipif(
    not (OMNIGLOT / "images_background.zip").is_file(),
    reason=f"Omniglot is not at {OMNIGLOT}: to run this test, set "
    "METARL_OMNIGLOT=/path/to/omniglot (the folder with images_background.zip and "
    "images_evaluation.zip)",
)


def _random_classes(num_classes: int = 6, per_class: int = 8, size: int = 28) -> ImageClasses:
    rng = np.random.default_rng(0)
    imgs = [
        rng.integers(0, 256, (per_class, 1, size, size), dtype=np.uint8) for _ in range(num_classes)
    ]
    return ImageClasses(imgs, [f"c{i}" for i in range(num_classes)])


# ---------------------------------------------------------------------------- data


def test_sinusoid_ranges_and_shapes() -> None:
    b = SinusoidTasks(num_shots=5, num_query=7).sample(50, np.random.default_rng(0))
    assert b.support_x.shape == (50, 5, 1) and b.query_y.shape == (50, 7, 1)
    x = torch.cat([b.support_x, b.query_x], 1)
    assert x.min() >= -5 and x.max() <= 5
    assert torch.cat([b.support_y, b.query_y], 1).abs().max() <= 5


def test_episode_sampler_disjoint_and_seeded() -> None:
    data = _random_classes()
    sampler = EpisodeSampler(data, num_ways=3, num_shots=2, num_query=3)
    a = sampler.sample(4, np.random.default_rng(1))
    b = sampler.sample(4, np.random.default_rng(1))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.classes, b.classes)
    assert a.support_x.shape == (4, 6, 1, 28, 28) and a.query_x.shape == (4, 9, 1, 28, 28)
    assert a.support_y.tolist()[0] == [0, 0, 1, 1, 2, 2]
    for t in range(4):
        assert len(set(a.classes[t].tolist())) == 3
        for j in range(3):
            # every image of label j comes from class classes[t, j], support ∩ query = ∅
            pool = {img.tobytes() for img in data.images[int(a.classes[t, j])]}
            sup = {
                (x.numpy() * 255).round().astype(np.uint8).tobytes()
                for x in a.support_x[t][a.support_y[t] == j]
            }
            qry = {
                (x.numpy() * 255).round().astype(np.uint8).tobytes()
                for x in a.query_x[t][a.query_y[t] == j]
            }
            assert sup <= pool and qry <= pool and not sup & qry
            assert len(sup) == 2 and len(qry) == 3


def test_rotations_are_new_classes() -> None:
    data = ImageClasses(_random_classes(2).images, ["a", "b"], rotations=(0, 1, 2, 3))
    assert data.num_classes == 8
    idx = np.arange(3)
    assert np.allclose(data.get(5, idx), np.rot90(data.get(4, idx), 1, axes=(2, 3)))
    assert np.allclose(data.get(7, idx), np.rot90(data.get(4, idx), 3, axes=(2, 3)))


def test_bad_episode_requests_say_what_to_do() -> None:
    data = _random_classes(num_classes=4, per_class=5)
    with pytest.raises(ValueError, match="5-way episodes need at least 5 classes"):
        EpisodeSampler(data, num_ways=5)
    with pytest.raises(ValueError, match=r"need 6 images per class.*smallest class has 5"):
        EpisodeSampler(data, num_ways=2, num_shots=1, num_query=5)


def test_missing_and_wrong_layout_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        omniglot(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    with pytest.raises(FileNotFoundError, match=r"images_background/<alphabet>/<character>"):
        omniglot(tmp_path / "junk")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="<root>/<class>/<image>"):
        image_folder(tmp_path / "flat")
    with pytest.raises(FileNotFoundError, match=r"all_runs\.zip"):
        lake_one_shot_runs(tmp_path)


def test_image_folder_reads_class_folders(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "data" / c / f"{i}.png")
    data = image_folder(tmp_path / "data", image_size=8, cache_dir=tmp_path / "cache")
    assert data.names == ["cat", "dog"] and data.image_shape == (3, 8, 8)
    again = image_folder(tmp_path / "data", image_size=8, cache_dir=tmp_path / "cache")
    assert all(np.array_equal(a, b) for a, b in zip(data.images, again.images, strict=True))
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_omniglot_split_fixed_and_disjoint() -> None:
    keys = [f"images_background/A{i // 20}/character{i % 20:02d}" for i in range(1623)]
    train, test = omniglot_split(keys, "train"), omniglot_split(reversed(keys), "test")
    assert len(train) == 1200 and len(test) == 423 and not set(train) & set(test)
    assert train == omniglot_split(sorted(keys, reverse=True), "train")  # order-free
    with pytest.raises(ValueError, match="needs all 1623"):
        omniglot_split(keys[:100], "train")


@needs_omniglot
def test_omniglot_real_copy(tmp_path: Path) -> None:
    data = omniglot(OMNIGLOT, "test", max_characters=3, cache_dir=tmp_path)
    assert data.num_classes == 12 and data.image_shape == (1, 28, 28)
    assert data.min_class_size == 20
    # strokes bright on a dark background after inversion
    assert data.images[0].mean() < 80
    # The versioned split: these are pinned so that a change of the split is noticed.
    with (
        zipfile.ZipFile(OMNIGLOT / "images_background.zip") as zb,
        zipfile.ZipFile(OMNIGLOT / "images_evaluation.zip") as ze,
    ):
        keys = {
            "/".join(n.split("/")[:3]) for z in (zb, ze) for n in z.namelist() if n.endswith(".png")
        }
    test = omniglot_split(keys, "test")
    assert data.names == test[:3]
    assert sum(k.startswith("images_evaluation") for k in test) == 183
    assert test[:3] == [
        "images_background/Alphabet_of_the_Magi/character03",
        "images_background/Alphabet_of_the_Magi/character10",
        "images_background/Alphabet_of_the_Magi/character13",
    ]


@needs_omniglot
def test_lake_runs() -> None:
    runs = lake_one_shot_runs(OMNIGLOT)
    assert len(runs) == 20
    assert runs[0].support_x.shape == (1, 20, 1, 28, 28)
    assert sorted(runs[0].query_y[0].tolist()) == list(range(20))


@needs_omniglot
def test_omniglot_lake_protocol_halves(tmp_path: Path) -> None:
    """Lake et al.'s protocol: train on images_background, test on images_evaluation (the
    half the 20 one-shot runs come from); the few-shot split pools both halves."""
    bg = omniglot(OMNIGLOT, "background", max_characters=2, cache_dir=tmp_path)
    ev = omniglot(OMNIGLOT, "evaluation", max_characters=2, cache_dir=tmp_path)
    assert all(n.startswith("images_background/") for n in bg.names)
    assert all(n.startswith("images_evaluation/") for n in ev.names)
    from metarl.fewshot.configs import config_class
    from metarl.runs.config import ConfigError

    with pytest.raises(ConfigError, match="omniglot_split"):
        config_class("maml")(omniglot_split="lakes")


# ---------------------------------------------------------------------------- models and maths


def test_batch_stat_norm_matches_batchnorm_and_vmaps() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 5)
    ours = BatchStatNorm2d(4)
    ref = torch.nn.BatchNorm2d(4, track_running_stats=False)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)
    per_task = vmap(ours)(x.view(2, 3, 4, 5, 5))
    assert torch.allclose(per_task[1], ref(x[3:]), atol=1e-5)


def test_prototype_logits_closed_form() -> None:
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    sy = torch.tensor([0, 0, 1])
    query = torch.tensor([[1.0, 1.0]])
    # prototypes (1, 0) and (0, 4): squared distances 1 and 10
    assert torch.allclose(prototype_logits(support, sy, query, 2), torch.tensor([[-1.0, -10.0]]))


def _tiny_batch(seed: int = 0) -> EpisodeBatch:
    data = _random_classes(num_classes=5, per_class=4, size=12)
    return EpisodeSampler(data, num_ways=3, num_shots=1, num_query=2).sample(
        3, np.random.default_rng(seed)
    )


@pytest.mark.parametrize("learner", ["maml", "metasgd"])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_vmap_and_folded_tasks_equal_loop(first_order: bool, learner: str) -> None:
    """The three ways of running a meta-batch (a loop over tasks, vmap, the tasks folded into
    grouped convolutions) give the same query predictions and the same meta-gradients,
    second-order and first-order, for MAML and for Meta-SGD's learned rates. In float64:
    float32 round-off of the three summation orders reaches the tolerance (1e-5) on some
    CPUs' kernels, which would hide nothing but fail at random."""
    batch = _tiny_batch()
    batch = dataclasses.replace(batch, support_x=batch.support_x.double(),
                                query_x=batch.query_x.double())  # fmt: skip
    preds, grads = [], []
    for mode in ("loop", "vmap", "fold"):
        torch.manual_seed(0)
        net = Conv4((1, 12, 12), 3, hidden=8, pool="stride").double()
        kwargs = {"first_order": first_order, "vectorize": mode != "loop"}
        cls = MetaSGD if learner == "metasgd" else MAML
        maml = cls(net, inner_lr=0.4, num_inner_steps=2, fold_tasks=mode == "fold", **kwargs)  # type: ignore[arg-type]
        pred = maml.adapt_and_query(batch, 2, first_order)
        torch.nn.functional.cross_entropy(pred.reshape(-1, 3), batch.query_y.reshape(-1)).backward()
        preds.append(pred.detach())
        grads.append({n: p.grad.clone() for n, p in maml.named_parameters()})
    for other in (1, 2):
        torch.testing.assert_close(preds[other], preds[0], atol=1e-5, rtol=1e-4)
        for n in grads[0]:
            # conv biases before a normalisation have ~0 gradient: absolute tolerance
            torch.testing.assert_close(grads[other][n], grads[0][n], atol=1e-5, rtol=1e-4)
    # the steps differ from 0 (the comparison above is not of zeros)
    assert grads[0]["model.head.weight"].abs().max() > 1e-3


@pytest.mark.parametrize("pool", ["stride", "max"])
@pytest.mark.parametrize("num_classes", [4, None])
def test_conv4_forward_tasks_equals_vmap(pool: str, num_classes: int | None) -> None:
    """Conv4.forward_tasks (tasks folded into channels) == vmap of the plain forward over
    per-task parameters, with per-task batch statistics, for the classifier and embedding."""
    torch.manual_seed(0)
    net = Conv4((1, 16, 16), num_classes, hidden=8, pool=pool)
    b = 3
    params = {n: p.detach() + 0.1 * torch.randn(b, *p.shape) for n, p in net.named_parameters()}
    x = torch.randn(b, 5, 1, 16, 16)
    ref = vmap(lambda p, x: torch.func.functional_call(net, p, (x,)))(params, x)
    torch.testing.assert_close(net.forward_tasks(params, x), ref, atol=1e-5, rtol=1e-4)
    # one task's output depends on its own images only (no mixing through the folding)
    x2 = x.clone()
    x2[1] += 1.0
    out, out2 = net.forward_tasks(params, x), net.forward_tasks(params, x2)
    torch.testing.assert_close(out[[0, 2]], out2[[0, 2]])
    assert not torch.allclose(out[1], out2[1])


def test_maml_fold_tasks_needs_forward_tasks() -> None:
    with pytest.raises(ValueError, match="forward_tasks"):
        MAML(MLP(), inner_lr=0.01, fold_tasks=True)
    assert MAML(MLP(), inner_lr=0.01).fold_tasks is False  # vmap for models that cannot fold
    assert MAML(Conv4((1, 16, 16), 3, hidden=8), inner_lr=0.4).fold_tasks is True


def test_maml_second_order_differs_from_first_order() -> None:
    batch = _tiny_batch()
    out = []
    for fo in (False, True):
        torch.manual_seed(0)
        maml = MAML(Conv4((1, 12, 12), 3, hidden=8, pool="stride"), 0.4, 1, first_order=fo)
        pred = maml.adapt_and_query(batch, 1, fo)
        torch.nn.functional.cross_entropy(pred.reshape(-1, 3), batch.query_y.reshape(-1)).backward()
        out.append(maml.model.features[0][0].weight.grad.clone())
    assert not torch.allclose(out[0], out[1], atol=1e-6)


def test_metasgd_rates_get_gradients_and_match_manual_step() -> None:
    torch.manual_seed(0)
    model = MLP((1, 3, 1))
    learner = MetaSGD(model, inner_lr=0.1)
    b = SinusoidTasks(4, 4).sample(1, np.random.default_rng(0))
    pred = learner.adapt_and_query(b, 1, first_order=False)
    loss = ((pred - b.query_y) ** 2).mean()
    loss.backward()
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in learner.rates.values())
    # one manual Meta-SGD step: θ' = θ − α ∘ ∇θ L_support (Li et al. 2017, Alg. 1)
    w = dict(model.named_parameters())
    inner = ((model(b.support_x[0]) - b.support_y[0]) ** 2).mean()
    one = dict(w)
    for n, p in w.items():
        gp = torch.autograd.grad(inner, p, retain_graph=True)[0]
        one[n] = p - learner.rates[n.replace(".", "/")] * gp
    assert torch.allclose(
        pred[0], torch.func.functional_call(model, one, (b.query_x[0],)), atol=1e-5
    )


def test_reptile_meta_step_interpolates() -> None:
    torch.manual_seed(0)
    model = MLP((1, 4, 1))
    learner = Reptile(model, inner_lr=0.01, num_inner_steps=3, meta_step=0.5, meta_step_final=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    b = SinusoidTasks(5, 5).sample(2, np.random.default_rng(0))
    x = torch.cat([b.support_x, b.query_x], 1)
    y = torch.cat([b.support_y, b.query_y], 1)
    torch.manual_seed(1)
    adapted = learner.inner_loop(x, y, 3)
    torch.manual_seed(1)
    learner.meta_train_step(b)
    for n, p in model.named_parameters():
        expected = before[n] + 0.5 * (adapted[n].mean(0) - before[n])
        assert torch.allclose(p, expected, atol=1e-6), n


def test_reptile_nontransductive_sees_one_query_at_a_time() -> None:
    torch.manual_seed(0)
    learner = Reptile(
        Conv4((1, 12, 12), 3, hidden=8, pool="stride"), num_eval_steps=2, transductive=False
    )
    batch = _tiny_batch()
    full = learner.predict(batch)
    one = EpisodeBatch(batch.support_x, batch.support_y, batch.query_x[:, :1], batch.query_y[:, :1])
    torch.manual_seed(0)
    learner2 = Reptile(
        Conv4((1, 12, 12), 3, hidden=8, pool="stride"), num_eval_steps=2, transductive=False
    )
    assert torch.allclose(full[:, :1], learner2.predict(one), atol=1e-5)


# ---------------------------------------------------------------------------- learning


def test_maml_sinusoid_learns_to_adapt() -> None:
    """A few hundred meta-iterations: one inner step must cut the query MSE by a margin."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tasks = SinusoidTasks(num_shots=10)
    maml = MAML(MLP(), inner_lr=0.05, num_inner_steps=1, meta_lr=1e-2)
    for _ in range(300):
        maml.meta_train_step(tasks.sample(10, rng))
    b = tasks.sample(200, np.random.default_rng(1))
    pre = ((maml.predict(b, num_steps=0) - b.query_y) ** 2).mean().item()
    post = ((maml.predict(b) - b.query_y) ** 2).mean().item()
    assert post < 0.6 * pre, (pre, post)


def test_protonet_learns_shifted_patterns() -> None:
    """Each class is a random dot pattern at a random cyclic shift over noise: random
    embeddings sit near chance, a learnt shift-tolerant one gets most episodes right."""
    from metarl.fewshot.evaluate import evaluate

    rng = np.random.default_rng(0)
    imgs = []
    for _ in range(20):
        pattern = rng.random((16, 16)) < 0.15
        a = np.zeros((10, 1, 16, 16), np.uint8)
        for i in range(10):
            shifted = np.roll(pattern, tuple(rng.integers(0, 16, 2)), (0, 1)) * 200.0
            a[i, 0] = np.clip(shifted + rng.integers(0, 120, (16, 16)), 0, 255)
        imgs.append(a)
    sampler = EpisodeSampler(ImageClasses(imgs, [str(c) for c in range(20)]), 5, 1, 3)
    torch.manual_seed(0)
    learner = ProtoNet(Conv4((1, 16, 16), None, hidden=16))
    before = evaluate(learner, sampler, 100, 25, seed=1)["mean"]
    for _ in range(100):
        learner.meta_train_step(sampler.sample(4, rng))
    after = evaluate(learner, sampler, 100, 25, seed=1)["mean"]
    assert before < 0.4 and after > 0.8, (before, after)


# ---------------------------------------------------------------------------- other learners


def test_matching_attention_closed_form() -> None:
    """With an identity embedding, P(y|x̂) is the softmax of cosine similarities summed per
    class (Vinyals et al. Eq. 1–2)."""
    from metarl.fewshot.matching import MatchingNet

    learner = MatchingNet(torch.nn.Flatten(), 2)
    sx = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])[None]  # (1, 3, 1, 2)
    qx = torch.tensor([[[1.0, 0.0]]])[None]
    batch = EpisodeBatch(sx, torch.tensor([[0, 1, 1]]), qx, torch.tensor([[0]]))
    cos = torch.tensor([1.0, 0.0, 2**-0.5])
    a = torch.softmax(cos, 0)
    expected = torch.log(torch.stack([a[0], a[1] + a[2]]))
    assert torch.allclose(learner.predict(batch)[0, 0], expected, atol=1e-6)


@pytest.mark.parametrize("full_context", [False, True])
def test_matching_trains_and_predicts(full_context: bool) -> None:
    from metarl.fewshot.matching import MatchingNet

    torch.manual_seed(0)
    net = Conv4((1, 12, 12), None, hidden=8, pool="stride")
    learner = MatchingNet(net, net.embedding_dim, full_context=full_context)
    batch = _tiny_batch()
    before = [p.detach().clone() for p in learner.parameters()]
    metrics = learner.meta_train_step(batch)
    assert np.isfinite(metrics["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.parameters(), strict=True))
    probs = learner.predict(batch).exp()
    assert probs.shape == (3, 6, 3) and torch.allclose(probs.sum(-1), torch.ones(3, 6), atol=1e-5)


def test_mann_lrua_memory_and_shapes() -> None:
    from metarl.fewshot.mann import MANN

    torch.manual_seed(0)
    mann = MANN(input_dim=144, num_classes=3, hidden=16, memory_size=8, memory_dim=4, num_reads=2)
    state = mann.initial_state(2, torch.device("cpu"))
    x, y0 = torch.randn(2, 144), torch.zeros(2, 3)
    logits, s1 = mann.step(state, x, y0)
    assert logits.shape == (2, 3) and s1.memory.shape == (2, 8, 4)
    # read weights are distributions over the memory; usage decays by γ and adds the weights
    assert torch.allclose(s1.w_read.sum(-1), torch.ones(2, 2), atol=1e-5)
    _, s2 = mann.step(s1, x, y0)
    grown = s2.usage - mann.gamma * s1.usage
    assert torch.all(grown >= 0) and torch.allclose(grown.sum(-1), torch.full((2,), 4.0), atol=1e-4)
    batch = _tiny_batch()
    assert np.isfinite(mann.meta_train_step(batch)["loss"])
    assert mann.predict(batch).shape == (3, 6, 3)


def test_baseline_pretrains_on_global_classes_and_finetunes_head() -> None:
    from metarl.fewshot.baseline import PretrainFinetune

    data = _random_classes(num_classes=5, per_class=4, size=12)
    sampler = EpisodeSampler(data, num_ways=3, num_shots=1, num_query=2)
    torch.manual_seed(0)
    learner = PretrainFinetune(Conv4((1, 12, 12), 5, hidden=8, pool="stride"), num_finetune_steps=3)
    batch = sampler.sample(2, np.random.default_rng(0))
    assert np.isfinite(learner.meta_train_step(batch)["loss"])
    logits = learner.predict(batch)
    assert logits.shape == (2, 6, 3)
    # zero steps: a zero head gives uniform logits
    assert torch.allclose(learner.predict(batch, num_steps=0), torch.zeros(2, 6, 3))
    with pytest.raises(ValueError, match="one output per training class"):
        PretrainFinetune(Conv4((1, 12, 12), 2, hidden=8, pool="stride")).meta_train_step(batch)


def test_maml_beats_pretrained_baseline_on_sinusoid() -> None:
    """Finn et al. Fig. 2 in miniature: after the same number of iterations, MAML's one-step
    adapted MSE is below the pretrained network's fine-tuned MSE."""
    from metarl.fewshot.baseline import PretrainFinetune
    from metarl.fewshot.evaluate import evaluate

    tasks = SinusoidTasks(num_shots=10)
    torch.manual_seed(0)
    maml = MAML(MLP(), inner_lr=0.05, num_inner_steps=1, meta_lr=1e-2)
    base = PretrainFinetune(MLP(), lr=1e-2, finetune="all", finetune_lr=0.05, num_finetune_steps=1)
    rng = np.random.default_rng(0)
    for _ in range(300):
        batch = tasks.sample(10, rng)
        maml.meta_train_step(batch)
        base.meta_train_step(batch)
    ours = evaluate(maml, tasks, 200, 100, seed=1)["mean"]
    pretrained = evaluate(base, tasks, 200, 100, seed=1)["mean"]
    assert ours < 0.7 * pretrained, (ours, pretrained)


# ---------------------------------------------------------------------------- runs and CLI


def test_train_resume_is_exact(tmp_path: Path) -> None:
    from metarl.fewshot.train import FewShotConfig, load_run, train

    cfg = FewShotConfig.from_preset(
        "maml-sinusoid", num_iterations=6, checkpoint_every=3, log_every=1, tensorboard=False
    )
    cfg = cfg.replace(device="cpu")
    straight = train(cfg, tmp_path / "a", num_eval_episodes=20)
    train(cfg.replace(num_iterations=3), tmp_path / "b", num_eval_episodes=5)
    resumed = train(cfg, tmp_path / "b", resume=True, num_eval_episodes=20)
    assert straight["per_episode"] == resumed["per_episode"]
    _, a = load_run(tmp_path / "a", "cpu")
    _, b = load_run(tmp_path / "b", "cpu")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_resumed_wall_clock_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed run's wall_clock_s goes on from the last logged row, not from zero (the
    results table reports it as the training time)."""
    import itertools

    import metarl.fewshot.train as ft
    from metarl.runs import Run

    ticks = itertools.count(0.0, 100.0)  # a clock that moves 100 s per reading
    monkeypatch.setattr(ft.time, "perf_counter", lambda: next(ticks))
    cfg = ft.FewShotConfig.from_preset(
        "maml-sinusoid", num_iterations=4, checkpoint_every=2, log_every=1, tensorboard=False
    ).replace(device="cpu")
    ft.train(cfg.replace(num_iterations=2), tmp_path / "r", num_eval_episodes=2)
    ft.train(cfg, tmp_path / "r", resume=True, num_eval_episodes=2)
    wall = [float(r["wall_clock_s"]) for r in Run(tmp_path / "r", "fewshot", cfg).metrics()]
    assert len(wall) == 4 and wall == sorted(wall) and wall[2] > wall[1] > 0


def test_cli_fewshot_train_evaluate_and_bad_input(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from metarl.cli import main

    run = tmp_path / "run"
    common = ["--num-iterations", "2", "--device", "cpu", "--no-tensorboard"]
    args = ["fewshot", "train", "--preset", "maml-sinusoid", "--run-dir", str(run), *common]
    assert main([*args, "--num-eval-episodes", "10"]) == 0
    assert "MSE" in capsys.readouterr().out
    assert main(["fewshot", "evaluate", str(run), "--num-episodes", "10", "--device", "cpu"]) == 0
    assert json.loads((run / "eval.json").read_text())["num_episodes"] == 10
    # --resume continues the saved config (no --preset needed) with more iterations
    more = ["--num-iterations", "4", "--num-eval-episodes", "5"]
    assert main(["fewshot", "train", "--resume", "--run-dir", str(run), *more]) == 0
    assert json.loads((run / "eval.json").read_text())["iterations"] == 4
    capsys.readouterr()
    # bad input: one clear line each, exit code 2
    missing = ["fewshot", "train", "--learner", "protonet", "--data-path", str(tmp_path / "no")]
    assert main([*missing, "--run-dir", str(tmp_path / "r2"), *common]) == 2
    assert "does not exist" in capsys.readouterr().err
    sin_proto = ["fewshot", "train", "--dataset", "sinusoid", "--learner", "protonet"]
    assert main([*sin_proto, "--run-dir", str(tmp_path / "r3"), *common]) == 2
    assert "is a classifier" in capsys.readouterr().err


@needs_omniglot
def test_cli_fewshot_omniglot_too_many_ways(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from metarl.cli import main

    args = ["fewshot", "train", "--learner", "protonet", "--num-ways", "5000", "--device", "cpu"]
    args += ["--data-path", str(OMNIGLOT), "--run-dir", str(tmp_path / "r"), "--no-tensorboard"]
    assert main(args) == 2
    assert "5000-way episodes need at least 5000 classes" in capsys.readouterr().err


def test_cli_fewshot_bad_data_paths_and_layouts(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The issue's bad-input list from the command line: one line each, exit code 2, and no
    run directory left behind."""
    from metarl.cli import main

    common = ["fewshot", "train", "--learner", "protonet", "--device", "cpu", "--no-tensorboard"]
    run = tmp_path / "run"
    # an Omniglot path that does not exist
    assert main([*common, "--data-path", str(tmp_path / "nowhere"), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "images_background/" in err and len(err.splitlines()) == 1
    # an Omniglot folder in the wrong layout (a flat folder of PNGs)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(b"")
    assert main([*common, "--data-path", str(flat), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "images_background/<alphabet>/<character>/*.png" in err and "zip" in err
    # an image folder without train/ and test/
    folder = ["--dataset", "folder", "--data-path", str(flat), "--run-dir", str(run)]
    assert main([*common, *folder]) == 2
    assert "<root>/train/<class>/<image>" in capsys.readouterr().err
    # Lake et al.'s protocol with only one half of the release
    half = tmp_path / "half"
    (half / "images_evaluation" / "A" / "character01").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (8, 8)).save(half / "images_evaluation" / "A" / "character01" / "1.png")
    lake = ["--omniglot-split", "lake", "--data-path", str(half), "--run-dir", str(run)]
    assert main([*common, *lake]) == 2
    assert "no images_background/ characters" in capsys.readouterr().err
    assert not run.exists()


def test_cli_fewshot_more_shots_than_images(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from metarl.cli import main

    root = _tiny_image_folder(tmp_path / "data")  # 4 images per class
    run = tmp_path / "run"
    args = ["fewshot", "train", "--learner", "protonet", "--dataset", "folder", "--data-path"]
    args += [str(root), "--num-ways", "3", "--num-shots", "3", "--num-query", "2"]
    args += ["--device", "cpu", "--no-tensorboard", "--run-dir", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "3-shot episodes with 2 queries need 5 images per class" in err
    assert "the smallest class has 4; lower num_shots or num_query" in err
    assert not run.exists()
    # N above the number of classes of an image folder
    args[args.index("--num-ways") + 1] = "5"
    args[args.index("--num-shots") + 1] = "1"
    assert main(args) == 2
    assert "5-way episodes need at least 5 classes, but the dataset has 4" in (
        capsys.readouterr().err
    )


@needs_omniglot
def test_cli_fewshot_omniglot_more_shots_than_drawings(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from metarl.cli import main

    args = ["fewshot", "train", "--learner", "protonet", "--num-shots", "20", "--device", "cpu"]
    args += ["--data-path", str(OMNIGLOT), "--run-dir", str(tmp_path / "r"), "--no-tensorboard"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "20-shot episodes with 15 queries need 35 images per class" in err
    assert "the smallest class has 20" in err
    assert not (tmp_path / "r").exists()


def test_cli_fewshot_evaluate_at_another_way(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A prototype learner is tested at another N (Snell et al.: 5- and 20-way from one
    model); a learner with an N-way output layer refuses, saying why."""
    from metarl.cli import main

    root = _tiny_image_folder(tmp_path / "data", num_classes=5)
    for learner in ("protonet", "maml"):
        run = tmp_path / learner
        args = ["fewshot", "train", "--learner", learner, "--dataset", "folder"]
        args += ["--data-path", str(root), "--image-size", "16", "--num-ways", "3"]
        args += ["--num-query", "1", "--eval-query", "2", "--meta-batch-size", "2"]
        args += ["--num-iterations", "1", "--device", "cpu", "--no-tensorboard"]
        assert main([*args, "--run-dir", str(run), "--num-eval-episodes", "2"]) == 0
    capsys.readouterr()
    ev = ["fewshot", "evaluate", "--num-episodes", "3", "--device", "cpu", "--num-ways", "5"]
    assert main([*ev, str(tmp_path / "protonet"), "--eval-query", "1"]) == 0
    assert "3 held-out 5-way 1-shot episodes" in capsys.readouterr().out
    result = json.loads((tmp_path / "protonet" / "eval.json").read_text())
    assert result["num_ways"] == 5 and result["num_query"] == 1
    assert main([*ev, str(tmp_path / "maml")]) == 2
    assert "a maml run has a 3-way output layer; it evaluates only 3-way episodes" in (
        capsys.readouterr().err
    )


def _tiny_image_folder(root: Path, num_classes: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(num_classes):
            d = root / split / f"{split}-class{c}"
            d.mkdir(parents=True)
            for i in range(4):
                arr = rng.integers(0, 256, (20, 20), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "learner",
    ["maml", "fomaml", "metasgd", "reptile", "protonet", "matching", "mann", "metanet", "baseline"],
)
def test_every_learner_trains_and_evaluates_from_the_cli(
    learner: str,
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    from metarl.cli import main
    from metarl.fewshot.configs import learner_of_option
    from metarl.fewshot.train import LEARNERS

    assert learner in LEARNERS
    root = _tiny_image_folder(tmp_path / "data")
    run = tmp_path / "run"
    args = ["fewshot", "train", "--learner", learner, "--dataset", "folder"]
    args += ["--data-path", str(root), "--image-size", "16", "--num-ways", "3"]
    args += ["--num-query", "1", "--eval-query", "2", "--meta-batch-size", "2"]
    args += ["--num-iterations", "2", "--device", "cpu", "--no-tensorboard", "--run-dir", str(run)]
    for option, value in (("num_eval_steps", "2"), ("inner_batch_size", "3")):
        if learner in learner_of_option(option):  # each learner takes only its own options
            args += ["--" + option.replace("_", "-"), value]
    assert main([*args, "--num-eval-episodes", "4"]) == 0, capsys.readouterr().err
    assert "accuracy over 4 held-out 3-way 1-shot episodes" in capsys.readouterr().out
    assert main(["fewshot", "evaluate", str(run), "--num-episodes", "3", "--device", "cpu"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["num_episodes"] == 3 and result["iterations"] == 2
    assert 0.0 <= result["mean"] <= 1.0


def test_a_run_gets_a_model_card_with_its_held_out_result(tmp_path: Path) -> None:
    """Training ends with the evaluation and the card that shows it; evaluating again rewrites
    the card from the new eval.json; an evaluation written elsewhere leaves it alone."""
    from metarl.fewshot.train import FewShotConfig, evaluate_run, train

    cfg = FewShotConfig.from_preset(
        "maml-sinusoid", num_iterations=2, checkpoint_every=1, log_every=1, tensorboard=False
    ).replace(device="cpu")
    result = train(cfg, tmp_path / "run", num_eval_episodes=5)
    card = (tmp_path / "run" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: metarl\n")
    assert '- "few-shot-learning"' in card and '- "maml"' in card
    assert "# maml on sinusoid, 10-shot regression" in card
    assert f"| query mse | {result['mean']:.4f} | ± {result['ci95']:.4f} | 5 |" in card
    again = evaluate_run(tmp_path / "run", 7, device="cpu")
    card = (tmp_path / "run" / "README.md").read_text()
    assert f"| query mse | {again['mean']:.4f} | ± {again['ci95']:.4f} | 7 |" in card
    evaluate_run(tmp_path / "run", 3, device="cpu", out=tmp_path / "elsewhere.json")
    assert (tmp_path / "run" / "README.md").read_text() == card
