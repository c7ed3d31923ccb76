"""Typed settings: a table with one row per key (default, allowed values, help), from which a
command's `--key=value` options, the check of a config and the README's table are made.

The trainer's table is part_2_cifar.SETTINGS, whose keys are the parameters a W&B sweep names.
A value is parsed by the type of its default (an int: integer, a float: real, a str: text) and
checked against `allowed`; a bad one is ConfigError, one line naming the key and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cifarkit.core.cli import EXIT_BAD_INPUT, CommandError, setting_value


class ConfigError(CommandError, ValueError):
    """A hyperparameter or option with a value the program cannot use; the message is one line
    for people."""

    exit_code = EXIT_BAD_INPUT


def integer(value: object) -> int:
    """An int from an int, an integral float (W&B's q_uniform gives 35.0) or a string of either."""
    number = float(value) if isinstance(value, str) else value
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"not an integer: {value!r}")
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"not an integer: {value!r}")
    return int(number)


def real(value: object) -> float:
    """A finite float from a number or a string of one."""
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    number = float(value)  # raises ValueError for text that is not a number
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def shown(value: object, quote_text: bool = False) -> str:
    """A value as a one-line message shows it: text as is (`quote_text`: in quotes), anything else
    as JSON, cut to 40 characters; an integer past 20 digits by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"<an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits>"
    text = value if isinstance(value, str) and not quote_text else json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Setting:
    default: int | float | str  # its type is the setting's: integer, real or text
    allowed: str  # an interval such as "[0, 1)" or "(0, inf)", or the choices as "{a, b}"
    help: str

    @property
    def parse(self) -> Callable[[object], object]:
        return {int: integer, float: real}.get(type(self.default), str)

    def accepts(self, value: object) -> bool:
        if self.allowed.startswith("{"):
            return value in self.allowed[1:-1].split(", ")
        low, high = (float(bound) for bound in self.allowed[1:-1].split(","))
        above = value >= low if self.allowed[0] == "[" else value > low
        below = value <= high if self.allowed[-1] == "]" else value < high
        return above and below


class Settings(dict):
    """A table of settings: key -> Setting."""

    @property
    def defaults(self) -> dict:
        return {key: setting.default for key, setting in self.items()}

    def with_defaults(self, config: dict) -> dict:
        """`config` with each setting that is absent or None set to its default: a sweep's `null`
        (which `wandb agent` writes as `--key=None`) means the default, under `wandb agent` and
        local_sweep.py alike."""
        return config | {key: s.default for key, s in self.items() if config.get(key) is None}

    def validate(self, config: dict) -> dict:
        """The config with every key parsed to its type (None or absent: the default); extra keys
        are kept. Raises ConfigError naming the first bad key and what is allowed."""
        clean = self.with_defaults(config)
        for key, setting in self.items():
            value = clean[key]
            try:
                clean[key] = setting.parse(value)
                ok = setting.accepts(clean[key])
            except (TypeError, ValueError, OverflowError):  # Overflow: an int past float's range
                ok = False
            if not ok:
                raise ConfigError(
                    f"{key}={shown(value)} is not allowed: use a value in {setting.allowed}"
                )
        return clean

    def table(self) -> str:
        """The settings as a markdown table (the README's, which a test keeps in step)."""
        rows = [f"| `{key}` | {s.default} | {s.allowed} | {s.help} |" for key, s in self.items()]
        return "\n".join(["| key | default | allowed | what |", "| --- | --- | --- | --- |", *rows])

    def add_options(self, parser: argparse.ArgumentParser, but: Iterable[str] = ()) -> None:
        """A `--key=value` (or `--key value`, as `wandb agent` passes them) option per key, but
        those in `but`; `None` is the default (cli.setting_value)."""
        for key, setting in self.items():
            if key not in but:
                parser.add_argument(
                    f"--{key}",
                    type=setting_value,
                    metavar=setting.parse.__name__.upper(),
                    help=f"default {setting.default}; {setting.allowed}; {setting.help}",
                )
