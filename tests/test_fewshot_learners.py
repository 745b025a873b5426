"""Few-shot: one config per learner, MetaNet, and mini-ImageNet's standard protocol."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from metarl.cli import main
from metarl.fewshot.configs import (
    LEARNER_CONFIGS,
    LEARNERS,
    FewShotConfig,
    all_presets,
    config_class,
)
from metarl.fewshot.data import EpisodeSampler, ImageClasses
from metarl.fewshot.evaluate import evaluate
from metarl.fewshot.metanet import MetaNet, preprocess_gradient
from metarl.fewshot.miniimagenet import mini_imagenet, read_split_file
from metarl.fewshot.models import MLP

# ---------------------------------------------------------------------------- configs


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def test_every_learner_has_its_own_config_with_only_its_options() -> None:
    assert set(LEARNER_CONFIGS) == set(LEARNERS)
    shared = _names(FewShotConfig)
    for learner, cls in LEARNER_CONFIGS.items():
        assert issubclass(cls, FewShotConfig) and cls.learner_name() == learner
        assert shared <= _names(cls)
    assert {"meta_step", "inner_batch_size", "transductive"} <= _names(LEARNER_CONFIGS["reptile"])
    assert "meta_step" not in _names(LEARNER_CONFIGS["maml"])
    assert "full_context" in _names(LEARNER_CONFIGS["matching"])
    assert not {"full_context", "inner_lr", "vectorize"} & _names(LEARNER_CONFIGS["protonet"])
    assert "pool" not in _names(LEARNER_CONFIGS["mann"])
    with pytest.raises(ValueError, match="holds only the shared options"):
        FewShotConfig()


def test_every_preset_builds_its_learners_config() -> None:
    for name, (learner, _) in all_presets().items():
        cfg = FewShotConfig.from_preset(name)
        assert type(cfg) is config_class(learner) and cfg.learner == learner, name
        assert name.startswith(learner + "-")
    with pytest.raises(ValueError, match="is protonet's, not maml's"):
        FewShotConfig.from_preset("protonet-omniglot-5w1s", learner="maml")


#: What a run directory's config.json held when one flat config had every learner's options.
LEGACY_MAML_SINUSOID = {
    "learner": "maml", "dataset": "sinusoid", "data_path": "../shared/data/omniglot",
    "omniglot_split": "vinyals", "num_ways": 5, "num_shots": 10, "train_ways": None,
    "num_query": 10, "eval_query": 10, "meta_batch_size": 4, "num_iterations": 2,
    "meta_lr": 0.001, "inner_lr": 0.01, "num_inner_steps": 1, "num_eval_steps": 1,
    "meta_step": 1.0, "meta_step_final": 0.0, "inner_batch_size": 10, "transductive": True,
    "full_context": False, "pool": None, "image_size": 28, "vectorize": True, "seed": 0,
    "device": "cpu", "checkpoint_every": 500, "log_every": 50, "tensorboard": False,
}  # fmt: skip


def test_a_legacy_flat_config_still_evaluates_and_resumes(tmp_path: Path) -> None:
    from metarl.runs import load_checkpoint_file, save_checkpoint_file

    cfg = FewShotConfig.from_dict(LEGACY_MAML_SINUSOID)
    assert type(cfg).__name__ == "MAMLConfig" and cfg.pool == "stride"  # None meant stride
    run = tmp_path / "run"
    args = ["fewshot", "train", "--preset", "maml-sinusoid", "--num-iterations", "2",
            "--meta-batch-size", "4", "--device", "cpu", "--no-tensorboard",
            "--num-eval-episodes", "2", "--run-dir", str(run)]  # fmt: skip
    assert main(args) == 0
    # rewrite the run as the flat config wrote it: config.json and the checkpoint's copy
    record = json.loads((run / "config.json").read_text())
    record.update(config=LEGACY_MAML_SINUSOID, config_class="FewShotConfig")
    (run / "config.json").write_text(json.dumps(record))
    payload = load_checkpoint_file(run / "checkpoint.pt", agent="fewshot")
    payload["config"] = LEGACY_MAML_SINUSOID
    save_checkpoint_file(run / "checkpoint.pt", payload, agent="fewshot", task_family="sinusoid")
    assert main(["fewshot", "evaluate", str(run), "--num-episodes", "2", "--device", "cpu"]) == 0
    more = ["--num-iterations", "3", "--num-eval-episodes", "2"]
    assert main(["fewshot", "train", "--resume", "--run-dir", str(run), *more]) == 0
    assert json.loads((run / "eval.json").read_text())["iterations"] == 3


def test_cli_builds_the_learners_config_and_names_the_owner_of_a_foreign_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fewshot", "train", "--learner", "reptile", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--meta-step" in out and "--full-context" not in out and "--vectorize" not in out
    run = ["--run-dir", str(tmp_path / "r")]
    for argv, message in [
        (["--learner", "maml", "--meta-step", "0.5"], "--meta-step is an option of reptile"),
        (["--learner", "protonet", "--no-transductive"], "--no-transductive is an option of "
         "reptile, not of protonet"),
        (["--learner", "maml", "--preset", "protonet-omniglot-5w1s"], "is protonet's, not "
         "maml's"),
        (["--learner", "metanet", "--bogus", "1"], "unrecognized option(s) for metanet: --bogus"),
    ]:  # fmt: skip
        assert main(["fewshot", "train", *argv, *run]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- MetaNet


def test_gradient_preprocessing_closed_form() -> None:
    g = torch.tensor([1.0, -(math.e**-2), 0.0, 1e-6])
    out = preprocess_gradient(g, p=10.0)
    assert torch.allclose(out[0], torch.tensor([0.0, 1.0]))
    assert torch.allclose(out[1], torch.tensor([-0.2, -1.0]))
    assert torch.allclose(out[2], torch.tensor([-1.0, 0.0]))
    assert torch.allclose(out[3], torch.tensor([-1.0, 1e-6 * math.e**10]))


def _clustered_classes(num_classes: int, seed: int, per_class: int = 10) -> ImageClasses:
    """Classes of 8×8 images: a random pattern per class plus pixel noise."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(num_classes):
        pattern = rng.integers(0, 256, (1, 1, 8, 8))
        noisy = pattern + rng.normal(0, 40, (per_class, 1, 8, 8))
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return ImageClasses(images, [str(i) for i in range(num_classes)])


def _metanet(fast_weights: bool) -> MetaNet:
    torch.manual_seed(0)

    def trunk() -> nn.Module:
        return nn.Sequential(nn.Flatten(), MLP((64, 32, 32)))

    return MetaNet(trunk(), trunk(), feature_dim=32, num_ways=5, fc_size=32, key_size=32,
                   generator_size=16, fast_weights=fast_weights)  # fmt: skip


def test_metanet_meta_learns_new_classes_from_one_shot() -> None:
    """Episode labels are shuffled, so without fast weights the same networks stay at chance
    (20%); MetaNet's fast weights, made from the support set's gradients, must carry the
    labels of classes never seen in training to the queries."""
    train = EpisodeSampler(_clustered_classes(40, seed=0), 5, 1, 5)
    test = EpisodeSampler(_clustered_classes(20, seed=1), 5, 1, 5)
    scores = {}
    for fast in (True, False):
        net = _metanet(fast)
        rng = np.random.default_rng(0)
        for _ in range(200):
            net.meta_train_step(train.sample(4, rng))
        scores[fast] = evaluate(net, test, 100, seed=1)["mean"]
    assert scores[True] > 0.6, scores
    assert scores[False] < 0.3 and scores[True] > scores[False] + 0.3, scores


def test_metanet_trains_and_evaluates_from_the_cli(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "data")
    run = tmp_path / "run"
    args = ["fewshot", "train", "--learner", "metanet", "--dataset", "folder", "--data-path",
            str(root), "--image-size", "16", "--num-ways", "3", "--num-query", "1",
            "--eval-query", "2", "--meta-batch-size", "2", "--num-iterations", "2",
            "--hidden", "8", "--device", "cpu", "--no-tensorboard", "--run-dir", str(run),
            "--num-eval-episodes", "3"]  # fmt: skip
    assert main(args) == 0
    assert main(["fewshot", "evaluate", str(run), "--num-episodes", "3", "--device", "cpu"]) == 0
    assert json.loads((run / "eval.json").read_text())["learner"] == "metanet"


# ---------------------------------------------------------------------------- mini-ImageNet


def _image_folder(root: Path, num_classes: int = 4, per_class: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c in range(num_classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _mini_imagenet(root: Path, classes: dict[str, int] | None = None, per_class: int = 4) -> Path:
    """A dataset laid out exactly as mini-ImageNet: three CSVs of ``filename,label`` naming
    JPEGs of ``images/`` (few classes, few tiny images)."""
    from PIL import Image

    classes = classes or {"train": 4, "val": 3, "test": 3}
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    wnid = 1532829
    for split, n in classes.items():
        lines = ["filename,label"]
        for _ in range(n):
            label = f"n{wnid:08d}"
            wnid += 1
            for i in range(per_class):
                name = f"{label}{i + 1:08d}.jpg"
                pixels = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "images" / name)
                lines.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_mini_imagenet_reads_the_split_files(tmp_path: Path) -> None:
    root = _mini_imagenet(tmp_path / "mini")
    split = read_split_file(root / "val.csv")
    assert list(split) == ["n01532833", "n01532834", "n01532835"]
    assert split["n01532833"][0] == "n0153283300000001.jpg"
    data = mini_imagenet(root, "train", image_size=6, cache_dir="")
    assert data.num_classes == 4 and data.image_shape == (3, 6, 6)
    assert data.names == ["n01532829", "n01532830", "n01532831", "n01532832"]
    cached = mini_imagenet(root, "test", image_size=6, cache_dir=tmp_path / "cache")
    again = mini_imagenet(root, "test", image_size=6, cache_dir=tmp_path / "cache")
    assert all(np.array_equal(a, b) for a, b in zip(cached.images, again.images, strict=True))


def test_mini_imagenet_protocol_end_to_end_with_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preset's protocol through the CLI on a generated copy: train on train.csv, evaluate
    on val.csv every 2 iterations keeping best.pt, test the best on test.csv."""
    from metarl.runs import Run

    monkeypatch.setenv("METARL_CACHE", str(tmp_path / "cache"))
    root = _mini_imagenet(tmp_path / "mini")
    run = tmp_path / "run"
    args = ["fewshot", "train", "--preset", "protonet-miniimagenet-5w1s", "--data-path",
            str(root), "--image-size", "16", "--num-ways", "3", "--train-ways", "3",
            "--num-query", "1", "--eval-query", "2", "--num-iterations", "4", "--val-every",
            "2", "--num-val-episodes", "3", "--hidden", "8", "--device", "cpu",
            "--no-tensorboard", "--run-dir", str(run), "--num-eval-episodes", "3"]  # fmt: skip
    assert main(args) == 0
    rows = Run.read_record(run)["config"]
    assert rows["dataset"] == "miniimagenet" and rows["val_every"] == 2
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert "val_accuracy" in metrics[0] and "val_score" in metrics[0]
    assert (run / "best.pt").is_file()
    assert json.loads((run / "eval.json").read_text())["checkpoint"] == "best"
    ev = ["fewshot", "evaluate", str(run), "--num-episodes", "3", "--device", "cpu"]
    assert main([*ev, "--checkpoint", "best", "--out", str(tmp_path / "best.json")]) == 0
    assert main([*ev, "--checkpoint", "latest", "--out", str(tmp_path / "last.json")]) == 0
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["checkpoint"] == "best" and best["num_ways"] == 3
    for learner in ("maml", "matching"):  # the other presets' learners run the protocol too
        other = [f"{learner}-miniimagenet-5w5s" if a == "protonet-miniimagenet-5w1s" else a
                 for a in args]  # fmt: skip
        other[other.index(str(run))] = str(tmp_path / learner)
        other[other.index("--num-iterations") + 1] = "2"
        assert main([*other, "--num-shots", "1"]) == 0, learner


def test_mini_imagenet_bad_input_gets_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"

    def train(root: Path, *extra: str) -> str:
        args = ["fewshot", "train", "--learner", "protonet", "--dataset", "miniimagenet",
                "--data-path", str(root), "--image-size", "16", "--num-ways", "3",
                "--num-query", "1", "--eval-query", "1", "--device", "cpu",
                "--no-tensorboard", "--run-dir", str(run), *extra]  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not run.exists()
        return err

    err = train(tmp_path / "nowhere")
    assert "was not found; metarl never downloads it: bring your own copy" in err
    root = _mini_imagenet(tmp_path / "mini")
    (root / "images" / "n0153283000000002.jpg").unlink()
    err = train(root)
    assert "train.csv names n0153283000000002.jpg (class n01532830), which is not in" in err
    root = _mini_imagenet(tmp_path / "header")
    (root / "train.csv").write_text("image,class\nx.jpg,n1\n")
    assert "not the header 'filename,label'" in train(root)
    root = _mini_imagenet(tmp_path / "noval")
    (root / "val.csv").unlink()
    err = train(root, "--val-every", "2")
    assert "val.csv was not found" in err and "train.csv, val.csv and test.csv" in err
    folder = _image_folder(tmp_path / "folder")
    for f in (folder / "val").rglob("*.png"):
        f.unlink()
    for d in sorted((folder / "val").iterdir()):
        d.rmdir()
    (folder / "val").rmdir()
    err = train(folder, "--dataset", "folder", "--val-every", "2")
    assert "has no val/ sub-folder, which --val-every evaluates on" in err
