"""docs/errors.md is generated from the tests; this fails when a test expecting an error is missing from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _builder():
    spec = importlib.util.spec_from_file_location(
        "build_error_table", ROOT / "docs" / "build_error_table.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_error_test_is_in_the_table():
    b = _builder()
    table = (ROOT / "docs" / "errors.md").read_text()
    assert (
        len(b.error_test_files()) >= 5
    )  # the search finds the test files (a wrong root once found none)
    missing = [
        f"{p.name}::{name}"
        for p in sorted((ROOT / "tests").rglob("test_*.py"))
        for name in b.tests_expecting_errors(p)
        if f"{p.name}::{name}" not in table
    ]
    assert not missing, (
        f"docs/errors.md is stale; run `python docs/build_error_table.py` (missing: {missing})"
    )


def test_render_dedupes_and_caps_variants():
    b = _builder()
    recs = [
        {
            "test": f"tests/test_x.py::test_a[{i}]",
            "doc": "",
            "type": "VennCellInputError",
            "message": f"m{i}",
        }
        for i in range(10)
    ] + [
        {"test": "tests/test_x.py::test_b", "doc": "Bad thing", "type": "T", "message": "a|b"}
    ] * 2
    md = b.render(recs)
    assert (
        md.count("test_x.py::test_a") == b.MAX_PER_TEST
        and md.count("Bad thing") == 1
        and "a\\|b" in md
    )


def test_render_hides_pytest_temporary_folders():
    b = _builder()
    md = b.render(
        [
            {
                "test": "tests/test_x.py::test_c",
                "doc": "",
                "type": "E",
                "message": "no file /tmp/pytest-of-root/pytest-105/test_c0/x.h5mu",
            }
        ]
    )
    assert "<tmp>/test_c0/x.h5mu" in md and "pytest-105" not in md
