"""Validate sweep_config.json against W&B's own sweep schema (the `sweeps` package, W&B's open-source engine).

`sweeps` pins numpy<2, so it runs in an environment of its own; tests/test_sweep_config.py skips the same check
in the product's environment.
"""

import json
import sys
import warnings

warnings.filterwarnings("ignore")  # pydantic v2 warns about the package's v1-style settings

from sweeps.config import schema_violations_from_proposed_config  # noqa: E402

errors = schema_violations_from_proposed_config(json.load(open(sys.argv[1])))
print("\n".join(errors) if errors else f"{sys.argv[1]} passes W&B's sweep schema")
sys.exit(1 if errors else 0)
