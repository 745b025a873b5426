"""Few-shot learning and pretrain + fine-tune on scikit-learn's 8×8 digits, a stand-in for MNIST.

scikit-learn ships its digits (1797 images, no download), so this runs anywhere; with the
MNIST IDX files at hand, ``--mnist DIR`` runs the same on MNIST. The split is by class
(``metarl.fewshot.digits``): training on the digits 0–4, testing 5-way 1-shot on the unseen
digits 5–9. Two learners from ``metarl.fewshot``, each on a small Conv4 (stride-2 blocks):

- Prototypical Networks (few-shot: meta-trained on 5-way 1-shot episodes);
- pretrain + fine-tune (a 5-class classifier trained on the training digits, then a fresh
  5-way head fine-tuned on each test episode's support set).

For each it prints the accuracy on episodes of the unseen digits and on episodes of the
training digits, each before and after training.

Usage: python scripts/example_digits.py [--iterations 500] [--episodes 600] [--mnist DIR]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from metarl.fewshot.baseline import PretrainFinetune
from metarl.fewshot.data import EpisodeSampler, ImageClasses
from metarl.fewshot.digits import mnist, sklearn_digits
from metarl.fewshot.evaluate import evaluate
from metarl.fewshot.learner import Learner
from metarl.fewshot.models import Conv4
from metarl.fewshot.protonet import ProtoNet


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500, help="training updates")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes")
    parser.add_argument("--image-size", type=int, default=16, help="side of the images")
    parser.add_argument("--hidden", type=int, default=32, help="Conv4 filters per block")
    parser.add_argument("--mnist", metavar="DIR", help="MNIST's IDX files instead of digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.episodes < 1 or args.image_size < 8:
        parser.error("--iterations and --episodes must be >= 1 and --image-size >= 8")
    torch.set_num_threads(args.num_threads)

    def load(split: str) -> ImageClasses:
        if args.mnist:
            return mnist(args.mnist, split, image_size=args.image_size)
        return sklearn_digits(split, image_size=args.image_size)

    try:
        train_data, test_data = load("train"), load("test")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    shape = train_data.image_shape
    train_episodes = EpisodeSampler(train_data, num_ways=5, num_shots=1, num_query=5)
    test_episodes = EpisodeSampler(test_data, num_ways=5, num_shots=1, num_query=15)
    seen_episodes = EpisodeSampler(train_data, num_ways=5, num_shots=1, num_query=15)

    def conv4(outputs: int | None) -> Conv4:
        return Conv4(shape, outputs, hidden=args.hidden, pool="stride")

    def make(name: str) -> Learner:
        torch.manual_seed(args.seed)
        if name == "protonet":
            return ProtoNet(conv4(None), lr=1e-3)
        return PretrainFinetune(conv4(train_data.num_classes), lr=1e-3, finetune_lr=0.1)

    results: dict[str, dict[str, float]] = {}
    for name in ("protonet", "baseline"):
        learner = make(name)
        seed = args.seed + 10_000
        before = evaluate(learner, seen_episodes, args.episodes, 100, seed=seed)["mean"]
        unseen_before = evaluate(learner, test_episodes, args.episodes, 100, seed=seed)["mean"]
        rng = np.random.default_rng(args.seed)
        for _ in range(args.iterations):
            learner.meta_train_step(train_episodes.sample(4, rng))
        seen = evaluate(learner, seen_episodes, args.episodes, 100, seed=seed)
        unseen = evaluate(learner, test_episodes, args.episodes, 100, seed=seed)
        results[name] = {
            "test_digits": unseen["mean"],
            "test_digits_ci95": unseen["ci95"],
            "test_digits_untrained": unseen_before,
            "train_digits": seen["mean"],
            "train_digits_untrained": before,
        }
        print(
            f"{name}: {100 * unseen['mean']:.1f} ± {100 * unseen['ci95']:.1f}% on 5-way 1-shot "
            f"episodes of the unseen digits 5-9 (chance 20%; untrained "
            f"{100 * unseen_before:.1f}%); on the training digits "
            f"{100 * before:.1f}% untrained, {100 * seen['mean']:.1f}% trained"
        )
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
