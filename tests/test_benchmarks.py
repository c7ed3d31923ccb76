"""The benchmarks measure the trainer's own loop: benchmarks/ablation.py builds its epoch from the
trainer's parts, and with no change it gives the trainer's numbers exactly."""

from __future__ import annotations

import torch
from conftest import FAST_CONFIG

import part_2_cifar as trainer
from benchmarks import ablation

CPU = torch.device("cpu")


def test_the_ablation_epoch_with_no_change_is_the_trainers_epoch(tiny_data_dir):
    config = trainer.validate_config({**FAST_CONFIG, "epochs": 2, "val_size": 200})
    data = trainer.prepare_data(tiny_data_dir, 200, CPU)
    results = []
    for train_epoch in (trainer.train_epoch, ablation.train_epoch):
        model, optimizer = trainer.new_model_and_optimizer(config, CPU)
        metrics = [train_epoch(model, optimizer, data, config, epoch, None) for epoch in (1, 2)]
        results.append((metrics, model.state_dict()))
    (trainer_metrics, trainer_weights), (ablation_metrics, ablation_weights) = results
    assert ablation_metrics == trainer_metrics
    assert all(
        torch.equal(trainer_weights[name], ablation_weights[name]) for name in trainer_weights
    )


def test_the_ablation_hooks_change_only_what_they_name(tiny_data_dir):
    config = trainer.validate_config({**FAST_CONFIG, "epochs": 1, "val_size": 200})
    data = trainer.prepare_data(tiny_data_dir, 200, CPU)
    model, optimizer = trainer.new_model_and_optimizer(config, CPU)
    plain = ablation.train_epoch(model, optimizer, data, config, 1, None)
    model, optimizer = trainer.new_model_and_optimizer(config, CPU)
    calls, losses = [], []
    hooked = ablation.train_epoch(
        model,
        optimizer,
        data,
        config,
        1,
        None,
        forward=lambda x: calls.append(len(x)) or model(x),
        after_step=lambda loss: losses.append(loss.item()),
    )
    # a forward that is the model, and a host sync per step, change no number
    assert hooked == plain
    steps = trainer.steps_per_epoch(data.train_labels.numel(), config["batch_size"])
    assert calls == [config["batch_size"]] * steps and len(losses) == steps
