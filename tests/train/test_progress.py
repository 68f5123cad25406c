"""Progress where output goes to a file or pipe, and the dependency log lines the commands keep out of their logs."""

from __future__ import annotations

import logging
import re

import pytest


def test_output_to_a_pipe_gets_a_line_per_epoch(tiny_mdata, capsys):
    """A rich bar written to a log file left a frame per epoch, wrapped at 80 columns over several lines."""
    from venncell import VennCell

    VennCell.setup_mudata(tiny_mdata)
    model = VennCell(tiny_mdata, seed=0)
    model.train(stage1_epochs=3, stage2_epochs=2, batch_size=64, num_threads=1)
    out = capsys.readouterr().out  # pytest's capture is not a terminal
    lines = [line for line in out.splitlines() if line.startswith("Stage")]
    number = r"\d[\d.e+-]*"
    # every stage-1 epoch scores its held-out cells; stage 2 validates its last epoch at least
    assert len(lines) == 5, out
    for i, line in enumerate(lines[:3]):
        assert re.fullmatch(
            rf"Stage 1 epoch {i + 1}/3  {number} s  loss {number}  held-out {number}", line
        ), line
    assert re.fullmatch(rf"Stage 2 epoch 1/2  {number} s  loss {number}", lines[3]), lines[3]
    assert re.fullmatch(
        rf"Stage 2 epoch 2/2  {number} s  loss {number}  held-out {number}", lines[4]
    ), lines[4]
    assert "━" not in out  # no bar frames


@pytest.mark.parametrize(
    "name, path, level, kept",
    [
        ("root", "/site-packages/mudata/_core/config.py", logging.INFO, False),
        ("anndata", "/site-packages/anndata/_core/anndata.py", logging.INFO, False),
        ("anndata", "/site-packages/anndata/_core/anndata.py", logging.WARNING, True),
        ("root", "/site-packages/mudata/_core/config.py", logging.WARNING, True),
        ("root", "/home/me/pipeline.py", logging.INFO, True),
        ("venncell", "/venncell/cli/train.py", logging.INFO, True),
    ],
)
def test_dependency_chatter_is_dropped_and_nothing_else(name, path, level, kept):
    import os

    from venncell.cli.common import _routine

    record = logging.LogRecord(name, level, path.replace("/", os.sep), 1, "m", None, None)
    assert _routine(record) is kept


def test_quiet_dependency_logs_filters_each_handler_once():
    from venncell.cli.common import _routine, quiet_dependency_logs

    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        quiet_dependency_logs()
        quiet_dependency_logs()
        assert handler.filters.count(_routine) == 1
        assert all(_routine in h.filters for h in logging.getLogger("anndata").handlers)
    finally:
        root.removeHandler(handler)
        for h in logging.getLogger("anndata").handlers:
            h.removeFilter(_routine)


@pytest.mark.parametrize(
    "terminal, jupyter, widgets, bar",
    [
        (True, False, False, "_RichBar"),
        (False, False, False, "EpochLines"),
        (False, True, True, "_RichBar"),
        (False, True, False, "_TQDMBar"),  # rich drew nothing there, and warned at every bar
    ],
)
def test_the_bar_suits_where_output_goes(monkeypatch, terminal, jupyter, widgets, bar):
    import importlib.util

    import rich.console

    from venncell.train.progress import progress_bars

    class Console:
        is_terminal, is_jupyter = terminal, jupyter

    monkeypatch.setattr(rich.console, "Console", Console)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            (object() if widgets else None) if name == "ipywidgets" else real(name, *a)
        ),
    )
    assert [type(c).__name__ for c in progress_bars("rich")] == [bar]
    assert progress_bars("none") == []


def test_make_synthetic_leaves_the_root_logger_and_mudatas_options_alone():
    """mudata's set_options context logs through the root logger, which installed a stderr handler there
    (logging.basicConfig): from then on every library's warnings printed as WARNING:name:message. A fresh
    interpreter: under pytest the root logger has handlers already, and basicConfig adds none."""
    import subprocess
    import sys

    code = (
        "import logging, mudata\n"
        "from venncell import make_synthetic\n"
        "before = dict(mudata._core.config.OPTIONS)\n"
        "make_synthetic(n_cells=60, modalities={'rna': 10, 'protein': 5})\n"
        "print(len(logging.getLogger().handlers), mudata._core.config.OPTIONS == before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "True"], out.stderr[-2000:]


def test_an_epoch_stopped_before_its_means_shows_no_stale_losses(tiny_mdata, capsys, tmp_path):
    """A callback failing at an epoch's end (a full disk) printed that epoch's line with the epoch before's losses."""
    from lightning.pytorch.callbacks import Callback

    from venncell import VennCell

    class Fail(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise OSError("disk full")

    VennCell.setup_mudata(tiny_mdata)
    with pytest.raises(OSError, match="disk full"):
        VennCell(tiny_mdata, seed=0).train(
            run_dir=tmp_path,  # not a temporary folder, which a failed run keeps
            stage1_epochs=4,
            stage2_epochs=1,
            batch_size=64,
            num_threads=1,
            trainer_kwargs={"callbacks": [Fail()]},
        )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Stage")]
    assert len(lines) == 2 and "loss" in lines[0], lines
    assert re.fullmatch(r"Stage 1 epoch 2/4  [\d.]+ s", lines[1]), lines
