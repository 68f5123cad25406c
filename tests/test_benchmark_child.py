"""The benchmarks' child-process helpers: a record comes back, a failure is named."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from child import run_child, run_each  # noqa: E402

SCRIPT = """
import os, sys
sys.path.insert(0, {bench!r})
from child import emit
item = sys.argv[sys.argv.index("--one") + 1] if "--one" in sys.argv else "record"
if item == "bad":
    raise SystemExit(3)
if item == "record":
    emit({{"threads": os.environ["OMP_NUM_THREADS"]}})
open(os.path.join({out!r}, item), "w").write(os.environ["OMP_NUM_THREADS"])
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "child_script.py"
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    path.write_text(SCRIPT.format(bench=bench, out=str(tmp_path)))
    return path


def test_run_child_reads_the_record_with_pinned_threads(script):
    assert run_child([str(script)], threads=3) == {"threads": "3"}


def test_run_child_names_a_failure(script):
    with pytest.raises(RuntimeError, match="exit 3"):
        run_child([str(script), "--one", "bad"])


def test_run_each_runs_every_item_on_one_thread(script, tmp_path):
    run_each(str(script), ["a", "b", "c"], jobs=2)
    assert [(tmp_path / i).read_text() for i in "abc"] == ["1", "1", "1"]


def test_run_each_exits_naming_the_failed_items(script):
    with pytest.raises(SystemExit, match=r"failed: \['bad'\]"):
        run_each(str(script), ["a", "bad"], jobs=2)


PER_DATASET = """
import os, sys
from pathlib import Path
sys.path.insert(0, {bench!r})
from child import per_dataset_main
OUT = Path({out!r})

def one(name):
    (OUT / "run" / name).write_text(os.environ["OMP_NUM_THREADS"])

def page(names):
    (OUT / "page.md").write_text(",".join(names))

per_dataset_main(__file__, "doc", "x,y", one, page, OUT / "run")
"""


def test_per_dataset_main_fits_each_dataset_in_a_child_then_writes_the_page(tmp_path):
    import subprocess

    path = tmp_path / "experiment.py"
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    path.write_text(PER_DATASET.format(bench=bench, out=str(tmp_path)))
    subprocess.run([sys.executable, str(path), "--datasets", "a,b"], check=True)
    assert [(tmp_path / "run" / n).read_text() for n in "ab"] == ["1", "1"]
    assert (tmp_path / "page.md").read_text() == "a,b"
