"""Validate sweep files (sweep_config.json, sweep_deploy.json) against W&B's own sweep schema (the
`sweeps` package, W&B's open-source engine): `python .ci/check_sweep_schema.py FILE...`, exit 1 if
any file has a violation.

`sweeps` pins numpy<2, so it runs in an environment of its own; tests/test_sweep_config.py and
tests/test_sweep_deploy.py skip the same check in the product's environment.
"""

import json
import sys
import warnings

warnings.filterwarnings("ignore")  # pydantic v2 warns about the package's v1-style settings

from sweeps.config import schema_violations_from_proposed_config  # noqa: E402

failed = False
for path in sys.argv[1:]:
    errors = schema_violations_from_proposed_config(json.load(open(path)))
    print(
        "\n".join(f"{path}: {error}" for error in errors)
        if errors
        else f"{path} passes W&B's sweep schema"
    )
    failed = failed or bool(errors)
sys.exit(1 if failed or len(sys.argv) < 2 else 0)
