"""``jobs.config_file``: which parameter each key of a TOML document sets, per command."""

import datetime as dt

import pytest
from klrank.config_file import default_maps, normalise
from klrank.pipeline.errors import UsageError

OPTIONS = {
    "run": {"labels": "labels", "out": "out", "run_date": "run_date", "slice_by": "slice_by"},
    "validate": {"labels": "labels", "slice_by": "slice_by"},
}


def test_top_level_keys_apply_to_every_command_that_has_the_option() -> None:
    maps = default_maps({"labels": "l", "out": "o"}, OPTIONS, "f.toml")
    assert maps == {"run": {"labels": "l", "out": "o"}, "validate": {"labels": "l"}}


def test_a_command_table_beats_the_top_level_whatever_the_order() -> None:
    document = {"run": {"labels": "r"}, "labels": "top"}
    maps = default_maps(document, OPTIONS, "f.toml")
    assert maps == {"run": {"labels": "r"}, "validate": {"labels": "top"}}


def test_keys_with_dashes_or_underscores_and_toml_values() -> None:
    document = {"run": {"run-date": dt.date(2026, 1, 2), "slice_by": ["a", "b"]}}
    maps = default_maps(document, OPTIONS, "f.toml")
    assert maps["run"] == {"run_date": "2026-01-02", "slice_by": ["a", "b"]}
    assert normalise("--id-col") == normalise("id_col") == "id_col"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"colour": "red"}, "unknown option 'colour'"),
        ({"validate": {"out": "o"}}, "unknown option 'out' in [validate]"),
        ({"deploy": {"x": 1}}, "unknown table [deploy]"),
        ({"run": {"out": {"x": 1}}}, "a table is not an option value"),
    ],
)
def test_unknown_keys_and_tables_are_usage_errors(
    document: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError, match="f.toml") as error:
        default_maps(document, OPTIONS, "f.toml")
    assert message in str(error.value)
