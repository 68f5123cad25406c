"""``import venncell`` stays light: the training and analysis libraries load when they are first used."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("lightning", "sklearn", "scanpy", "matplotlib", "hydra")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {name.split(".")[0] for name in out.split()}


def test_import_loads_no_training_or_analysis_library():
    loaded = _modules_after("import venncell")
    assert not loaded & set(HEAVY), f"import venncell loaded {sorted(loaded & set(HEAVY))}"


def test_training_names_still_resolve_from_the_train_package():
    loaded = _modules_after(
        "from venncell.train import Stage1Plan, run_two_stage, NonFiniteLossError; "
        "from venncell.train.plans import NonFiniteLossError as again; "
        "assert again is NonFiniteLossError and Stage1Plan.__module__ == 'venncell.train.plans'"
    )
    assert "lightning" in loaded
