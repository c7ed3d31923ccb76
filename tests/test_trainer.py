"""The trainer's specification: model, data files, split, augmentation, learning, CLI, W&B offline,
files."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import pty
import subprocess
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST_CONFIG, FINISHED_RUN, cli_args, trainer_command

import part_2_cifar as trainer
from cifarkit.core import cifar_files, cost, machine, run_files, settings
from cifarkit.core.cost import model_cost
from synthetic_cifar100 import write_synthetic_cifar100

CPU = torch.device("cpu")


def run_trainer(
    args: list[str], env: dict, cwd: Path, timeout: float = 240, **kwargs
) -> subprocess.CompletedProcess:
    return subprocess.run(
        trainer_command(*args),
        env=env,
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=timeout,
        **kwargs,
    )


# -------------------------------------------------------------------------------------------- model


def test_default_model_has_the_seed_architecture_and_parameter_count():
    model = trainer.SimpleCNN()
    assert sum(p.numel() for p in model.parameters()) == 2_626_404
    assert (
        model.fc1.in_features == 4096
        and model.fc2.in_features == 512
        and model.fc3.in_features == 256
    )
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_filter_counts_set_the_conv_widths_and_fc1_inputs():
    model = trainer.model_from_config(
        {"num_filters_1": 8, "num_filters_2": 16, "num_filters_3": 24, "dropout_rate": 0.5}
    )
    assert (model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels) == (
        8,
        16,
        24,
    )
    assert model.fc1.in_features == 24 * 4 * 4
    assert model.dropout.p == 0.5
    assert model(torch.zeros(3, 3, 32, 32).to(memory_format=torch.channels_last)).shape == (3, 100)


# --------------------------------------------------------------------------------------------- data


def test_str_and_bytes_keyed_pickles_load_to_the_same_arrays(tmp_path):
    write_synthetic_cifar100(tmp_path / "str", train_per_class=2, test_per_class=1, seed=5)
    write_synthetic_cifar100(
        tmp_path / "bytes", train_per_class=2, test_per_class=1, seed=5, bytes_keys=True
    )
    with open(tmp_path / "bytes" / "cifar-100-python" / "train", "rb") as f:
        assert b"data" in __import__("pickle").load(f)  # the file really has bytes keys
    from_str = cifar_files.load_cifar100(tmp_path / "str", download=False)
    from_bytes = cifar_files.load_cifar100(tmp_path / "bytes", download=False)
    for a, b in zip(from_str, from_bytes, strict=True):
        np.testing.assert_array_equal(a, b)
    train_images, train_labels, test_images, test_labels = from_str
    assert train_images.shape == (200, 32, 32, 3) and train_images.dtype == np.uint8
    assert test_images.shape == (100, 32, 32, 3) and sorted(set(train_labels)) == list(range(100))


def test_images_are_decoded_from_channel_planes_to_height_width_channel(tmp_path):
    root = write_synthetic_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    import pickle

    with open(root / "train", "rb") as f:
        row = pickle.load(f)["data"][0]
    images = cifar_files.load_cifar100(tmp_path, download=False)[0]
    assert images[0, 5, 7, 0] == row[5 * 32 + 7]  # red plane first
    assert images[0, 5, 7, 2] == row[2 * 1024 + 5 * 32 + 7]  # blue plane last


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(100), 50)
    np.random.default_rng(0).shuffle(labels)
    train_idx, val_idx = trainer.stratified_split(labels, 500)
    assert len(val_idx) == 500 and len(train_idx) == 4500
    assert np.bincount(labels[val_idx], minlength=100).tolist() == [5] * 100
    assert not set(train_idx) & set(val_idx) and len(set(train_idx) | set(val_idx)) == 5000
    again_train, again_val = trainer.stratified_split(labels, 500)
    np.testing.assert_array_equal(val_idx, again_val)
    other_val = trainer.stratified_split(labels, 500, seed=1)[1]
    assert not np.array_equal(val_idx, other_val)


def test_split_rejects_a_validation_size_that_leaves_no_training_images():
    with pytest.raises(settings.ConfigError, match="val-size=100"):
        trainer.stratified_split(np.arange(100) % 100, 100)


def test_train_validation_and_test_images_never_overlap(tiny_data_dir):
    data = trainer.prepare_data(tiny_data_dir, 200, CPU)
    p = trainer.CROP_PADDING
    train = {bytes(img[p:-p, p:-p].numpy()) for img in data.train_images}
    val = {bytes(img.numpy()) for img in data.val_images}
    test = {bytes(img.numpy()) for img in data.test_images}
    assert len(train) == 800 and len(val) == 200 and len(test) == 300
    assert not train & val and not train & test and not val & test


@pytest.fixture()
def served_archive(tmp_path):
    """A CIFAR-100-layout archive served over HTTP on the loopback: (url, md5)."""
    source = tmp_path / "source"
    write_synthetic_cifar100(source, train_per_class=1, test_per_class=1)
    archive = tmp_path / "served" / "cifar-100-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-100-python", arcname="cifar-100-python")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        yield f"http://127.0.0.1:{server.server_address[1]}/{archive.name}", md5
        server.shutdown()


def test_download_fetches_verifies_and_extracts_the_archive(served_archive, tmp_path):
    url, md5 = served_archive
    data_dir = tmp_path / "data"
    source = cifar_files.cifar100_source(data_dir, url=url, md5=md5)
    assert source == cifar_files.CifarSource((data_dir / "cifar-100-python").resolve(), "folder")
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "cifar-100-python",
        "cifar-100-python.tar.gz",
    ]
    assert cifar_files.load_cifar100(data_dir, download=False)[0].shape == (100, 32, 32, 3)


def test_a_download_that_fails_its_checksum_leaves_nothing_where_an_archive_is_looked_for(
    served_archive, tmp_path
):
    url, _ = served_archive
    with pytest.raises(cifar_files.DownloadError, match="could not download CIFAR-100"):
        cifar_files.cifar100_source(tmp_path / "data", url=url, md5="0" * 32)
    assert list((tmp_path / "data").iterdir()) == []


def test_a_failed_download_says_where_to_put_the_archive(tmp_path):
    # the discard port: nothing listens there
    missing = "http://127.0.0.1:9/cifar-100-python.tar.gz"
    with pytest.raises(cifar_files.DownloadError, match=r"put it at .*cifar-100-python\.tar\.gz"):
        cifar_files.download_cifar100(tmp_path, url=missing, md5=cifar_files.CIFAR100_MD5)
    assert list(tmp_path.iterdir()) == []  # no partial file


# ------------------------------------------------------------------------------------- augmentation


def test_augmentation_keeps_shape_dtype_and_pixel_values():
    padded = torch.randint(0, 256, (64, 40, 40, 3), dtype=torch.uint8)
    out = trainer.augment(padded, torch.arange(64), torch.Generator().manual_seed(0))
    assert out.shape == (64, 32, 32, 3) and out.dtype == torch.uint8
    for i in range(64):  # every output pixel comes from its own padded image
        assert set(out[i].flatten().tolist()) <= set(padded[i].flatten().tolist())


def test_augmentation_is_a_real_crop_and_flip_of_each_image():
    images = torch.randint(0, 256, (400, 32, 32, 3), dtype=torch.uint8)
    p = trainer.CROP_PADDING
    padded = (
        torch.nn.functional.pad(images.permute(0, 3, 1, 2), (p, p, p, p))
        .permute(0, 2, 3, 1)
        .contiguous()
    )
    out = trainer.augment(padded, torch.arange(400), torch.Generator().manual_seed(1))
    seen = set()
    for i in range(400):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            for flip in (False, True)
            if torch.equal(
                out[i], (lambda c: c.flip(1) if flip else c)(padded[i, dy : dy + 32, dx : dx + 32])
            )
        ]
        assert len(matches) == 1, (
            f"image {i} is not a single 32x32 crop (flipped or not) of its padded source"
        )
        seen.add(matches[0])
    assert {flip for _, _, flip in seen} == {False, True}
    assert {dy for dy, _, _ in seen} == set(range(2 * p + 1)) and {dx for _, dx, _ in seen} == set(
        range(2 * p + 1)
    )


def test_augmentation_is_deterministic_under_a_seed():
    padded = torch.randint(0, 256, (32, 40, 40, 3), dtype=torch.uint8)
    idx = torch.randperm(32)
    a = trainer.augment(padded, idx, torch.Generator().manual_seed(7))
    b = trainer.augment(padded, idx, torch.Generator().manual_seed(7))
    c = trainer.augment(padded, idx, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalize_uses_the_cifar100_channel_statistics():
    mean_image = torch.tensor(
        [round(255 * m) for m in trainer.CIFAR100_MEAN], dtype=torch.uint8
    ).expand(1, 32, 32, 3)
    x = trainer.normalize(mean_image)
    assert x.shape == (1, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert x.abs().max() < 0.01
    white = trainer.normalize(torch.full((1, 32, 32, 3), 255, dtype=torch.uint8))
    expected = [
        (1 - m) / s for m, s in zip(trainer.CIFAR100_MEAN, trainer.CIFAR100_STD, strict=True)
    ]
    torch.testing.assert_close(white[0, :, 0, 0], torch.tensor(expected))


# ------------------------------------------------------------------------------------- optimisation


def test_learning_rate_warms_up_then_anneals_to_zero_within_the_budget():
    lrs = [trainer.learning_rate_at(s, 100, 10, 0.1, "cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] < 1e-4
    assert trainer.learning_rate_at(99, 100, 10, 0.1, "constant") == 0.1


@pytest.mark.parametrize(
    "total, warmup", [(2, 1), (3, 1), (30, 1), (2, 0), (30, 0), (5880, 196), (100, 10)]
)
def test_the_learning_rate_is_0_at_the_final_step_and_the_peak_right_after_warm_up(total, warmup):
    lrs = [trainer.learning_rate_at(s, total, warmup, 0.1, "cosine") for s in range(total)]
    # warm-up as before
    assert lrs[:warmup] == pytest.approx([0.1 * (s + 1) / warmup for s in range(warmup)])
    if total - warmup > 1:
        assert lrs[warmup] == pytest.approx(0.1)
    assert lrs[-1] == 0.0
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))


def test_a_single_step_trains_at_the_peak_and_a_warm_up_longer_than_the_budget_keeps_its_ramp():
    assert trainer.learning_rate_at(0, 1, 0, 0.1, "cosine") == 0.1
    assert [trainer.learning_rate_at(s, 2, 4, 0.1, "cosine") for s in range(2)] == pytest.approx(
        [0.025, 0.05]
    )


def test_at_one_step_per_epoch_the_last_epoch_trains_at_learning_rate_0(tiny_data_dir, tmp_path):
    # 800 training images in one batch: one step per epoch, where the cosine used to end half-way up
    config = trainer.validate_config(
        {**FAST_CONFIG, "epochs": 3, "batch_size": 800, "val_size": 200}
    )
    summary = trainer.train(config, trainer.prepare_data(tiny_data_dir, 200, CPU), tmp_path / "run")
    assert [m["learning_rate"] for m in summary["history"]] == pytest.approx([0.01, 0.01, 0.0])


def test_a_short_run_learns_far_above_chance(learnable_data_dir, tmp_path):
    config = trainer.validate_config({**FAST_CONFIG, "epochs": 5, "val_size": 100})
    data = trainer.prepare_data(learnable_data_dir, 100, CPU)
    summary = trainer.train(config, data, tmp_path / "run")
    assert summary["status"] == "finished"
    assert summary["best_val_accuracy"] > 50  # ten classes: chance is 10%
    assert summary["test_accuracy"] > 50


def test_cifarkit_no_figures_leaves_out_curves_png_alone(tiny_data_dir, tmp_path, monkeypatch):
    # the suite's own setting (conftest); a run otherwise writes the same files, summary complete
    monkeypatch.setenv("CIFARKIT_NO_FIGURES", "1")
    config = trainer.validate_config({**FAST_CONFIG, "epochs": 1, "val_size": 200})
    summary = trainer.train(config, trainer.prepare_data(tiny_data_dir, 200, CPU), tmp_path / "run")
    assert summary["status"] == "finished" and summary["test_accuracy"] is not None
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best.pt",
        "last.pt",
        "summary.json",
    ]


def test_files_of_a_run_and_checkpoint_reload_to_identical_logits(finished_run, tiny_data_dir):
    config = trainer.validate_config(FINISHED_RUN)
    data = trainer.prepare_data(tiny_data_dir, 200, CPU)
    run_dir = finished_run  # trained by part_2_cifar.train, once per session
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best.pt",
        "curves.png",
        "last.pt",
        "summary.json",
    ]

    on_disk = json.loads((run_dir / "summary.json").read_text())
    for key in (
        "config",
        "best_val_accuracy",
        "best_epoch",
        "test_accuracy",
        "test_loss",
        "train_images_per_second",
        "total_seconds",
        "device",
        "versions",
    ):
        assert on_disk[key] is not None, key
    assert on_disk["config"] == config and on_disk["versions"]["torch"] == torch.__version__
    assert [m["epoch"] for m in on_disk["history"]] == [1]

    best = run_files.load_checkpoint(run_dir / "best.pt")
    last = run_files.load_checkpoint(run_dir / "last.pt", needs=("model", "optimizer", "epoch"))
    assert best["config"] == config and best["epoch"] == 1 and last["epoch"] == 1
    models = []
    for checkpoint in (best, last):
        model = trainer.model_from_config(checkpoint["config"])
        model.load_state_dict(checkpoint["model"])
        models.append(model.eval())
    x = trainer.normalize(data.test_images[:50])
    with torch.inference_mode():
        assert torch.equal(models[0](x), models[1](x))
    test = trainer.evaluate(
        models[0], data.test_images, data.test_labels, machine.autocast_dtype(CPU)
    )
    assert test["accuracy"] == pytest.approx(on_disk["test_accuracy"])


def test_every_summary_records_the_models_cost_counted_by_pytorch(tiny_data_dir, tmp_path):
    config = trainer.validate_config(
        {**FAST_CONFIG, "epochs": 1, "val_size": 200, "num_filters_2": 24}
    )
    summary = trainer.train(config, trainer.prepare_data(tiny_data_dir, 200, CPU), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    model = trainer.model_from_config(config)
    assert (
        on_disk["parameters"] == summary["parameters"] == sum(p.numel() for p in model.parameters())
    )
    # An independent count: 2 FLOPs per multiply-add of the convolutions (32, 16 and 8 pixels
    # square) and layers.
    f1, f2, f3 = 8, 24, 32
    convs = 2 * 9 * (32 * 32 * 3 * f1 + 16 * 16 * f1 * f2 + 8 * 8 * f2 * f3)
    assert on_disk["flops_per_image"] == convs + 2 * (f3 * 16 * 512 + 512 * 256 + 256 * 100)
    assert set(on_disk["latency_ms"]) == {"1", "256"} and all(
        ms > 0 for ms in on_disk["latency_ms"].values()
    )
    assert on_disk["latency_device"].startswith("cpu")


def test_a_run_of_seconds_times_its_latency_with_three_calls_per_batch_size():
    model = trainer.model_from_config({**trainer.DEFAULTS, **FAST_CONFIG})
    batches: list[int] = []
    # not flops_per_image's copy
    model.register_forward_hook(
        lambda module, inputs, _: batches.append(inputs[0].shape[0]) if module is model else None
    )
    cost = model_cost(model, CPU, contextlib.nullcontext, run_seconds=0.0)
    assert batches == [1] * 4 + [256] * 4  # a warm-up and 3 timed calls each
    assert all(ms > 0 for ms in cost["latency_ms"].values())


def test_the_default_model_costs_the_documented_83_5_mflop():
    assert cost.flops_per_image(trainer.SimpleCNN()) == 83_544_064


def test_an_epoch_callback_can_stop_a_run_early_with_a_status(tiny_data_dir, tmp_path):
    config = trainer.validate_config({**FAST_CONFIG, "epochs": 4, "val_size": 200})

    def prune_after_epoch_2(metrics):
        if metrics["epoch"] == 2:
            raise trainer.StopEarly("pruned", "a pruner said so")

    summary = trainer.train(
        config,
        trainer.prepare_data(tiny_data_dir, 200, CPU),
        tmp_path / "run",
        on_epoch=prune_after_epoch_2,
    )
    assert (
        summary["status"] == "pruned"
        and summary["epochs_completed"] == 2
        and "test_accuracy" not in summary
    )
    assert (
        run_files.load_checkpoint(tmp_path / "run" / "last.pt", needs=run_files.RESUME_KEYS)[
            "epoch"
        ]
        == 2
    )


def test_the_readme_table_of_hyperparameters_is_the_settings_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert trainer.SETTINGS.table() in readme


# -------------------------------------------------------------------------------------- CLI and W&B


def test_every_swept_key_is_accepted_as_key_equals_value_and_lands_in_the_run_config(
    tiny_data_dir, tmp_path, offline, capsys
):
    # main() in this process, W&B offline: the parsing and run.config are the point (a real process
    # that `wandb agent` starts is tests/test_sweep_values.py's).
    chosen = {
        **FAST_CONFIG,
        "momentum": 0.85,
        "dropout_rate": 0.125,
        "epochs": 1,
        "weight_decay": 1e-4,
        "label_smoothing": 0.0,
        "warmup_epochs": 0.5,
        "lr_schedule": "constant",
        "seed": 3,
    }
    args = cli_args(chosen) + [
        "--data-dir",
        str(tiny_data_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--val-size",
        "200",
        "--wandb-mode",
        "offline",
        "--no-log-model",
    ]
    assert trainer.main(args) == 0, capsys.readouterr().err
    (run_dir,) = (tmp_path / "runs").iterdir()
    config = json.loads((run_dir / "summary.json").read_text())[
        "config"
    ]  # what the program read from run.config
    assert {key: config[key] for key in chosen} == chosen
    # the W&B run, named alike
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_dir.name}/*.wandb"))


def test_options_also_take_a_separate_value_and_integral_floats():
    args = trainer.parse_args(["--batch_size", "128", "--epochs=35.0", "--learning_rate", "3e-3"])
    config = trainer.validate_config({key: getattr(args, key) for key in trainer.DEFAULTS})
    assert (config["batch_size"], config["epochs"], config["learning_rate"]) == (128, 35, 0.003)


def test_offline_run_without_a_key_never_prompts_and_leaves_its_wandb_run(
    tiny_data_dir, tmp_path, offline_env
):
    # A terminal on stdin is what makes wandb ask for a login; without a key the trainer must go
    # offline instead.
    controller, terminal = pty.openpty()
    try:
        args = cli_args({**FAST_CONFIG, "epochs": 1}) + [
            "--data-dir",
            str(tiny_data_dir),
            "--val-size",
            "200",
        ]
        result = run_trainer(args, offline_env, tmp_path, timeout=180, stdin=terminal)
    finally:
        os.close(controller)
        os.close(terminal)
    assert result.returncode == 0, result.stderr
    assert "wandb sync" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_dir.name}"))
    assert (run_dir / "best.pt").is_file() and (run_dir / "summary.json").is_file()


@pytest.mark.parametrize("filters", [(64, 128, 256), (8, 16, 32), (3, 5, 7)])
def test_flops_per_image_is_what_pytorchs_flop_counter_counts(filters):
    from torch.utils.flop_counter import FlopCounterMode

    from cifarkit.core.cost import flops_per_image

    model = trainer.SimpleCNN(*filters).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert flops_per_image(model) == counter.get_total_flops() > 0
