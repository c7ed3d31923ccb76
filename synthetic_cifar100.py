"""Write a small, learnable stand-in for CIFAR-100 in the real on-disk layout
(cifar-100-python/{train,test,meta}).

    python synthetic_cifar100.py data-synthetic             # 10,000 training and 1,000 test images
    python part_2_cifar.py --data-dir data-synthetic --epochs 1 --wandb-mode offline

For tests, benchmarks and trying the workflow without the 160 MB download. Each class is a fixed
random 4x4 colour pattern blown up to 32x32, and each image is its class pattern plus pixel noise,
so a model can learn it in a few epochs. Accuracy on it says nothing about CIFAR-100.
"""

from __future__ import annotations

# Run as a program, a stop signal while the imports below run (torch takes a second) is one line
# and exit 128 + n, as from main on (cli.StopWhileImporting)
if __name__ == "__main__":
    from cifarkit.core.cli import stop_while_importing

    stop_while_importing()

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

from cifarkit.core.cli import (
    EXIT_DONE,
    FileFailed,
    InterruptOnSignal,
    OneLineErrorParser,
    boundary,
    write_atomic,
)

NUM_CLASSES = 100


def _images(
    templates: np.ndarray, labels: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """(N, 3072) uint8 rows in CIFAR's order: 1024 red, 1024 green, then 1024 blue values of each
    image."""
    pixels = templates[labels] + rng.normal(0, noise, (labels.size, 3, 32, 32))
    return np.clip(pixels, 0, 255).astype(np.uint8).reshape(labels.size, 3 * 32 * 32)


def write_synthetic_cifar100(
    data_dir: Path,
    train_per_class: int = 20,
    test_per_class: int = 5,
    num_classes: int = NUM_CLASSES,
    noise: float = 40.0,
    seed: int = 0,
    bytes_keys: bool = False,
) -> Path:
    """Write the three pickles under data_dir/cifar-100-python and return that folder.

    Labels use the first `num_classes` of the 100 classes (the meta file always names 100). With
    bytes_keys the dicts have b'data'-style keys, as the official files read under Python 3 without
    an encoding; otherwise str keys. Each file is written whole or not at all
    (cli.write_atomic); cli.FileFailed names the one that cannot be.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (num_classes, 3, 4, 4)).astype(np.float64)
    # (classes, 3, 32, 32) blocks of 8x8 pixels
    templates = coarse.repeat(8, axis=2).repeat(8, axis=3)
    root = Path(data_dir) / "cifar-100-python"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileFailed(e, "make the folder", root) from None

    def key(name: str) -> str | bytes:
        return name.encode() if bytes_keys else name

    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
        batch = {
            key("data"): _images(templates, labels, noise, rng),
            key("fine_labels"): labels.tolist(),
            key("coarse_labels"): (labels // 5).tolist(),
            key("batch_label"): f"{split} synthetic",
            key("filenames"): [f"synthetic_{split}_{i}.png" for i in range(labels.size)],
        }
        write_atomic(root / split, pickle.dumps(batch, protocol=2))
    meta = {
        key("fine_label_names"): [f"class_{i:02d}" for i in range(NUM_CLASSES)],
        key("coarse_label_names"): [f"superclass_{i:02d}" for i in range(20)],
    }
    write_atomic(root / "meta", pickle.dumps(meta, protocol=2))
    return root


def main(argv: list[str] | None = None) -> int:
    """The command: exit 0, or one line and its code in cli.EXIT_CODES (cli.boundary). A stop
    signal ends it at once, as the export: each file is written whole or not at all."""
    with InterruptOnSignal():
        try:
            return write_from_args(parse_args(argv))
        except BaseException as e:
            return boundary(
                e, kept="the files written before stay whole; run the same command again"
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineErrorParser(__doc__)
    parser.add_argument("data_dir", type=Path, help="the folder to create cifar-100-python/ in")
    parser.add_argument(
        "--train-per-class",
        type=int,
        default=100,
        help="default 100: 10,000 images in all, enough for the trainer's default --val-size 5000",
    )
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument(
        "--classes", type=int, default=NUM_CLASSES, help="how many of the 100 classes to use"
    )
    parser.add_argument(
        "--noise", type=float, default=40.0, help="pixel noise standard deviation (0..255 scale)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def write_from_args(args: argparse.Namespace) -> int:
    root = write_synthetic_cifar100(
        args.data_dir,
        args.train_per_class,
        args.test_per_class,
        args.classes,
        args.noise,
        args.seed,
    )
    print(f"wrote {root}")
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
