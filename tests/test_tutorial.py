"""docs/tutorial.md runs as written: its Python blocks, in order, on the built-in synthetic data.

Training is shortened (the tutorial's claims about quality are the recovery tests'); everything else, the file
writes included, runs as a user would run it. A block about the user's own data (``your_mdata``) is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from venncell import VennCell

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)


def test_the_tutorial_blocks_are_found():
    blocks = _blocks()
    assert len(blocks) >= 8 and any("model.train()" in b for b in blocks)


@pytest.mark.slow
def test_the_tutorial_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tutorial writes attribution/ and my_model/ where it runs
    train = VennCell.train

    def short(self, **kwargs):
        kwargs = {"stage1_epochs": 4, "stage2_epochs": 2, "progress_bar": "none", **kwargs}
        return train(self, run_dir=kwargs.pop("run_dir", tmp_path / "run"), **kwargs)

    monkeypatch.setattr(VennCell, "train", short)
    namespace: dict = {}
    ran = 0
    for block in _blocks():
        if "your_mdata" in block:
            continue
        exec(compile(block, str(TUTORIAL), "exec"), namespace)
        ran += 1
    assert ran >= 8
    # what the blocks promise exists: latents of new cells, a plan, a saved and reloaded model
    assert namespace["z_new"].shape[0] == 300 and namespace["z"].shape == namespace["z_new"].shape
    assert set(namespace["plan"].summary["target"]) == set(namespace["model"].specs)
    assert (tmp_path / "my_model").is_dir() and (tmp_path / "attribution").is_dir()
