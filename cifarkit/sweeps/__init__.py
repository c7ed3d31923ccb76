"""A W&B sweep file run without a W&B server (local_sweep.py).

space.py       the sweep file as W&B reads it, translated to Optuna (no torch)
storage.py     the study's storage and how processes take turns on it (journal, PostgreSQL)
folders.py     the study's folder and its trial folders
warm_start.py  prior runs, starting points, a seeded sampler, a time budget; a run as a trial
journal.py     Optuna's journal file, safe against cut records
report.py      the report: the table, trials.csv and the plots
"""
