"""klrank.tools.dump_logits without a model: the windows, the files and the options.

A stand-in for the model (``_echo``) returns, for each position of a window, the token there and
how many tokens the window holds up to it, so every written row says which window scored it. The
real model's logits are checked by test_dump_logits_model.py (``make test-lm``).
"""

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from klrank.tools.dump_logits import dump, score, split_text, token_documents, windows

WIDTH = 8


def _echo(tokens: Sequence[int]) -> npt.NDArray[np.float32]:
    logits = np.zeros((len(tokens), WIDTH), dtype=np.float32)
    logits[:, 0] = tokens
    logits[:, 1] = np.arange(1, len(tokens) + 1)
    return logits


@pytest.mark.parametrize("context", range(2, 9))
def test_the_windows_score_each_token_once_with_enough_context(context: int) -> None:
    for stride in range(1, context):
        for length in range(0, 30):
            scored: list[int] = []
            for w in windows(length, context, stride):
                assert 0 <= w.start < w.first < w.end <= length
                assert w.end - w.start <= context
                scored.extend(range(w.first, w.end))
                for token in range(w.first, w.end):
                    seen = token - w.start
                    assert seen == token if token < context else seen >= context - stride
            assert scored == list(range(1, length)), (length, context, stride)


@pytest.mark.parametrize(("context", "stride"), [(4, 0), (4, 4), (1, 1), (3, -1)])
def test_a_stride_outside_one_to_the_context_is_refused(context: int, stride: int) -> None:
    with pytest.raises(ValueError, match="stride"):
        list(windows(10, context, stride))


DOCS = [[5, 1, 7, 2, 2, 6, 3, 0, 4, 1, 1], [3], [2, 4], list(range(8)) * 3]


def _labels(tmp_path: Path, row_group_bytes: int) -> Path:
    out = tmp_path / "base.parquet"
    scored = score(DOCS, _echo, context=5, stride=2)
    rows, groups = dump(scored, out, width=WIDTH, row_group_bytes=row_group_bytes)
    expected_rows = sum(max(len(d) - 1, 0) for d in DOCS)
    assert rows == expected_rows
    assert groups == pq.ParquetFile(out).num_row_groups
    return out


def test_the_labels_file_has_the_next_tokens_and_the_logits_before_them(tmp_path: Path) -> None:
    frame = pl.read_parquet(_labels(tmp_path, 10_000))
    assert frame.schema == pl.Schema(
        {"id": pl.Int64, "doc": pl.Int64, "label": pl.Int32, "logit": pl.Array(pl.Float32, WIDTH)}
    )
    expected = [(doc, t) for doc, tokens in enumerate(DOCS) for t in range(1, len(tokens))]
    assert frame["id"].to_list() == list(range(len(expected)))
    assert frame["doc"].to_list() == [doc for doc, _ in expected]
    assert frame["label"].to_list() == [DOCS[doc][t] for doc, t in expected]
    logits = frame["logit"].to_numpy()
    for (doc, t), row in zip(expected, logits, strict=True):
        assert row[0] == DOCS[doc][t - 1]  # the logits of the position before the label
        seen = int(row[1])
        assert seen == t if t < 5 else 3 <= seen <= 4  # context 5, stride 2
        assert not row[2:].any()


@pytest.mark.parametrize("budget", [1, 100, 4 * WIDTH + 20, 3 * (4 * WIDTH + 20) + 1, 1000])
def test_row_groups_hold_at_most_the_budget_and_at_least_one_row(
    tmp_path: Path, budget: int
) -> None:
    out = _labels(tmp_path, budget)
    row = 4 * WIDTH + 8 + 8 + 4  # logits, id, doc, label
    per_group = max(1, budget // row)
    parquet = pq.ParquetFile(out)
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    total = parquet.metadata.num_rows
    assert sizes == [per_group] * (total // per_group) + (
        [total % per_group] if total % per_group else []
    )
    for i in range(parquet.num_row_groups):
        assert sizes[i] * row <= max(budget, row)
        # Read back, Arrow adds validity bitmaps (a bit per value) to the values counted.
        assert parquet.read_row_group(i).nbytes <= max(budget, row) * (1 + 1 / 32) + 8


def test_a_candidate_file_has_the_same_ids_and_its_name(tmp_path: Path) -> None:
    labels = pl.read_parquet(_labels(tmp_path, 500))
    out = tmp_path / "cands" / "q4.parquet"
    scored = score(DOCS, _echo, context=5, stride=2)
    expected = labels["label"].to_numpy()
    dump(scored, out, width=WIDTH, name="q4", row_group_bytes=500, expected_labels=expected)
    frame = pl.read_parquet(out)
    assert frame.schema == pl.Schema(
        {"id": pl.Int64, "model": pl.String, "logit": pl.Array(pl.Float32, WIDTH)}
    )
    assert frame["id"].to_list() == labels["id"].to_list()
    assert frame["model"].unique().to_list() == ["q4"]
    assert frame["logit"].to_list() == labels["logit"].to_list()
    assert sorted(p.name for p in out.parent.iterdir()) == ["q4.parquet"]


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        ([[5, 1, 7, 2, 9]], "token 3 differs"),
        ([[5, 1, 7]], "has 4 tokens, this dump 2"),
        ([[5, 1, 7, 2, 2, 6]], "token 4 differs"),
    ],
)
def test_a_candidate_on_other_tokens_stops_and_leaves_no_file(
    tmp_path: Path, docs: list[list[int]], message: str
) -> None:
    out = tmp_path / "cands" / "q4.parquet"
    base = np.array([1, 7, 2, 2], dtype=np.int32)
    with pytest.raises(ValueError, match=message):
        dump(
            score(docs, _echo, context=5, stride=2),
            out,
            width=WIDTH,
            name="q4",
            expected_labels=base,
        )
    assert list(out.parent.iterdir()) == []


def test_the_documents_of_a_text() -> None:
    text = "a b\nc\n\n\n  \nd\n\ne f\n"
    assert split_text(text, "paragraphs") == ["a b\nc", "d", "e f"]
    assert split_text(text, "lines") == ["a b", "c", "d", "e f"]
    assert split_text(text, "none") == [text]
    assert split_text(" \n\n", "paragraphs") == []


def test_token_documents_are_the_rows_of_a_list_column(tmp_path: Path) -> None:
    path = tmp_path / "tokens.parquet"
    table = pa.table({"input_ids": pa.array(DOCS, type=pa.list_(pa.int64()))})
    pq.write_table(table, path, row_group_size=2)
    assert list(token_documents(path, "input_ids")) == DOCS


def _command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "klrank.tools.dump_logits", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_help_needs_no_torch() -> None:
    done = _command("labels", "--help")
    assert done.returncode == 0, done.stderr
    assert "--row-group-bytes" in done.stdout


def test_a_stride_not_below_the_context_is_a_usage_error(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("a", encoding="utf-8")
    done = _command(
        "labels",
        "m",
        str(tmp_path / "o.parquet"),
        "--text",
        str(text),
        "--context",
        "8",
        "--stride",
        "8",
    )
    assert done.returncode == 2
    assert "--stride must be at least 1 and below --context" in done.stderr
