"""The library of the commands at the top of the repository (part_2_cifar.py, local_sweep.py,
select_model.py, trt_export.py, synthetic_cifar100.py), in three wings:

    core/     the shared kit: the command line and error model, settings, the run folder and which
              checkpoint to export, CIFAR-100 on disk, the W&B connection, figures, the machine,
              timing and a model's cost, folder locks
    sweeps/   a W&B sweep file run without a W&B server: its translation to Optuna, the study's
              storage and folders, warm starts, the journal file, the report
    export/   the export's backends (PyTorch, ONNX Runtime, TensorRT), its benchmark and reports,
              the TensorRT runtime

Nothing here imports a command: the trainer's settings reach the sweep wing through the Sweep.
"""
