"""Speed scripts, each run from the repository root as a module: `python -m
benchmarks.train_throughput --help`."""
