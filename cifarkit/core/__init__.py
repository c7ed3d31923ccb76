"""The shared kit every command imports.

cli.py            exit codes, the error model (one line per error, one boundary per command),
                  the parser kit, stop signals, worker processes, atomic writes
settings.py       typed settings: parsing, checks, options, the README's table
run_files.py      what a run folder holds: checkpoints and their writing, the summary, the data
                  identity, the resume rules
choice.py         which checkpoint to export: selection.json, else the best single run
cifar_files.py    where CIFAR-100 is on disk: find, download, extract, read
wandb_connect.py  the W&B connection and `wandb agent`'s protocol
folders.py        one process per folder (owner.lock), whether a folder can be written
machine.py        the device, its name, the versions, bf16 autocast
timing.py         the one way a latency is measured (trtexec's)
cost.py           a model's parameters, FLOPs and latency
figures.py        figures written whole; a run's learning curves
"""
