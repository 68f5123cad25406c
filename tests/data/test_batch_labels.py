"""Batch labels: what counts as one batch, in training data and in new cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from venncell import VennCellInputError
from venncell.data.registry import DataRegistry, setup_options
from venncell.data.validate import check_batch_labels


def test_a_few_new_cells_from_many_training_batches_are_not_an_identifier():
    registry = DataRegistry({}, "batch", ["b1", "b2", "b3"])
    obs = pd.DataFrame({"batch": ["b1", "b1", "b2", "b3"]})
    assert registry.batch_codes(obs).tolist() == [0, 0, 1, 2]
    # the training data's check still refuses one label per cell
    with pytest.raises(VennCellInputError, match="identifier"):
        check_batch_labels("batch", ["a", "b", "c", "d"])


@pytest.mark.parametrize("saved", [["0", "1"], ["0.0", "1.0"]])
@pytest.mark.parametrize("new", [np.array([1, 0, 1]), np.array([1.0, 0.0, 1.0]), ["1", "0", "1"]])
def test_whole_number_batch_codes_match_as_floats_or_integers(saved, new):
    """Codes read back as floats (1.0) match the integers a user types (1), and models saved with "1.0" too."""
    registry = DataRegistry({}, "batch", saved)
    assert registry.batch_codes(pd.DataFrame({"batch": new})).tolist() == [1, 0, 1]
    assert sorted(set(check_batch_labels("batch", np.repeat([0.0, 1.0], 5)))) == ["0", "1"]


def test_saved_labels_match_exactly_before_any_alias():
    registry = DataRegistry({}, "batch", ["1", "1.0", "1_000"])
    codes = registry.batch_codes(pd.DataFrame({"batch": ["1", "1.0", "1_000"]}))
    assert codes.tolist() == [0, 1, 2]
    with pytest.raises(VennCellInputError, match="not seen in training"):
        registry.batch_codes(pd.DataFrame({"batch": ["1000"]}))


def test_distinct_numbers_stay_distinct_batches_and_float_categories_read_as_integers():
    assert len(set(check_batch_labels("b", np.repeat([1e6, 1e6 + 0.5], 5)))) == 2
    assert len(set(check_batch_labels("b", np.repeat([1e19, 2e19], 5)))) == 2
    as_category = pd.Series(np.repeat([1.0, 2.0], 5)).astype("category")
    assert sorted(set(check_batch_labels("b", as_category))) == ["1", "2"]
    assert sorted(set(check_batch_labels("b", np.repeat([1.0, 2.0], 5).astype(object)))) == [
        "1",
        "2",
    ]


def test_a_batch_column_only_in_a_modality_says_how_to_pull_it_up(tiny_mdata):
    """The fix the message gives works, run as written, whether one modality or all hold the column (the
    ``mdata.pull_obs`` it once gave left a column every modality holds prefixed, and the error repeated)."""
    import re

    for holders in (1, None):
        mdata = tiny_mdata.copy()
        for m in list(mdata.mod)[:holders]:
            mdata.mod[m].obs["donor"] = "d1"
        mdata.update()
        assert "donor" not in mdata.obs
        with pytest.raises(
            VennCellInputError, match=r"copy it up with `mdata\.obs\['donor'\]"
        ) as err:
            setup_options(mdata, batch_key="donor")
        fix = re.search(r"copy it up with `([^`]+)`", str(err.value)).group(1)
        exec(fix, {"mdata": mdata})
        assert setup_options(mdata, batch_key="donor")["batch_key"] == "donor"
