"""Shared fixtures: tiny CIFAR-100 stand-ins in the real on-disk layout, and a fast config for short runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthetic_cifar100 import write_synthetic_cifar100  # noqa: E402

# Small filters keep a CPU epoch near a second; the architecture is the same.
FAST_CONFIG = {"num_filters_1": 8, "num_filters_2": 16, "num_filters_3": 32, "batch_size": 64, "epochs": 2,
               "learning_rate": 0.01}


def trainer_command(*args: str) -> list[str]:
    """The trainer as a real process, with this interpreter."""
    return [sys.executable, str(ROOT / "part_2_cifar.py"), *args]


def cli_args(config: dict) -> list[str]:
    """--key=value arguments, the form `wandb agent` passes."""
    return [f"--{key}={value}" for key, value in config.items()]


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """100 classes x 10 training images, 3 test images each: 1,000 + 300 images, str keys."""
    root = tmp_path_factory.mktemp("tiny_cifar")
    write_synthetic_cifar100(root, train_per_class=10, test_per_class=3, seed=1)
    return root


@pytest.fixture(scope="session")
def learnable_data_dir(tmp_path_factory) -> Path:
    """10 well-separated classes x 60 images: a model that learns anything ends far above 10% chance."""
    root = tmp_path_factory.mktemp("learnable_cifar")
    write_synthetic_cifar100(root, train_per_class=60, test_per_class=20, num_classes=10, noise=30.0, seed=2)
    return root


@pytest.fixture()
def offline_env(tmp_path) -> dict:
    """Environment for a subprocess: no W&B key, no netrc, W&B files under tmp_path, never a login prompt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir()
    # One thread: tiny models gain nothing from two, and a busy machine oversubscribed is many times slower.
    env.update(HOME=str(home), WANDB_DIR=str(tmp_path), WANDB_SILENT="true", PYTHONPATH=str(ROOT),
               NETRC=str(home / ".netrc"), OMP_NUM_THREADS="1")
    return env
