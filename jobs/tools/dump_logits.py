r"""Dump a causal language model's logits into the Parquet layout klrank reads.

The base model's file is klrank's labels, one row per scored token: ``id`` (Int64, the token's
number in the dump), ``doc`` (Int64, its document, for ``--cluster-by doc``), ``label`` (Int32,
the token that came next) and ``logit`` (Array(Float32, K), the base model's logits before it).
A candidate's file is predictions: ``id``, ``model`` (String) and ``logit``. The same input and
the same ``--context`` and ``--stride`` give the same ids, so the files match row for row.

The rows are written in row groups of at most ``--row-group-bytes`` (at least one row), so that
memory holds one pass's logits and a few row groups, never the whole N × K. The file is written
under a hidden name beside its target (``.NAME.partial``, which klrank skips in a folder) and
renamed when complete.

Usage (``--help`` for every option)::

    python -m klrank.tools.dump_logits labels /models/base base.parquet --text wiki.test.raw
    python -m klrank.tools.dump_logits predictions /models/base-q4 cands/q4.parquet \
        --name q4 --text wiki.test.raw --check-labels base.parquet

torch and transformers (4.56 or newer) are imported only when a model is run: klrank does not
depend on them.
"""

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "DEFAULT_CONTEXT",
    "DEFAULT_ROW_GROUP_BYTES",
    "Scored",
    "Window",
    "dump",
    "labels_schema",
    "main",
    "predictions_schema",
    "rows_per_group",
    "score",
    "windows",
]

DEFAULT_CONTEXT = 512
DEFAULT_ROW_GROUP_BYTES = 64 * 2**20
Kind = Literal["labels", "predictions"]
Split = Literal["paragraphs", "lines", "none"]
# The logits of a window's tokens: row j is the distribution of the token after position j.
LogitsOf = Callable[[Sequence[int]], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Window:
    """One forward pass over tokens ``[start, end)`` of a document, scoring tokens ``[first, end)``."""

    start: int
    end: int
    first: int


@dataclass(frozen=True)
class Scored:
    """The scored tokens of one window: their document, the tokens, and the logits before each."""

    doc: int
    labels: npt.NDArray[np.int32]
    logits: npt.NDArray[np.float32]


def windows(length: int, context: int, stride: int) -> Iterator[Window]:
    """The windows that score each token of a document once.

    Parameters
    ----------
    length
        Tokens in the document.
    context
        The most tokens one window holds (at most the model's context length).
    stride
        How many tokens each window starts after the previous one: ``1 <= stride < context``.

    Notes
    -----
    Token t is predicted from the tokens before it in its window. Token 0 has nothing before it
    and is never scored, so a document of fewer than 2 tokens gives no window. The first window
    scores tokens 1 to ``min(context, length) - 1``; each later one scores the tokens past the
    previous window's end, each of which sees at least ``context - stride`` tokens before it.
    With ``stride = context // 2`` (the default of the command) every token after the first
    window has at least half a context, as in llama.cpp's ``--kl-divergence``, which scores the
    second half of disjoint chunks instead (and so skips the first half of each).

    Examples
    --------
    >>> [(w.start, w.end, w.first) for w in windows(10, 4, 2)]
    [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    """
    if not 1 <= stride < context:
        raise ValueError(
            f"the stride must be at least 1 and below the context ({context}): {stride}"
        )
    if length < 2:
        return
    start, first = 0, 1
    while True:
        end = min(start + context, length)
        yield Window(start, end, first)
        if end == length:
            return
        start, first = start + stride, end


def score(
    documents: Iterable[Sequence[int]], logits_of: LogitsOf, *, context: int, stride: int
) -> Iterator[Scored]:
    """The scored tokens of each document, window by window (:func:`windows`).

    ``logits_of`` runs the model on a window's tokens and returns one row of logits per token;
    the row of position j is the model's distribution of the token at j + 1.
    """
    for doc, tokens in enumerate(documents):
        for window in windows(len(tokens), context, stride):
            logits = logits_of(tokens[window.start : window.end])
            # The logits at position t - 1 (counted from the window's start) predict token t.
            before = slice(window.first - 1 - window.start, window.end - 1 - window.start)
            labels = np.asarray(tokens[window.first : window.end], dtype=np.int32)
            yield Scored(doc, labels, np.asarray(logits[before], dtype=np.float32))


def labels_schema(width: int) -> pa.Schema:
    """The base model's file: klrank's labels, the next token and the logits before it."""
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("doc", pa.int64(), nullable=False),
            pa.field("label", pa.int32(), nullable=False),
            pa.field("logit", pa.list_(pa.float32(), width), nullable=False),
        ]
    )


def predictions_schema(width: int) -> pa.Schema:
    """A candidate model's file: klrank's predictions, the logits before each token."""
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("logit", pa.list_(pa.float32(), width), nullable=False),
        ]
    )


def rows_per_group(width: int, row_group_bytes: int, *, name: str | None = None) -> int:
    """How many rows of ``width`` logits fill at most ``row_group_bytes`` (at least one).

    A row counts the bytes of its values as Arrow holds them: 4 per logit, 8 for ``id``, and 12
    for ``doc`` and ``label`` (labels) or the name and its 4-byte offset (predictions, ``name``
    given); validity bitmaps aside, as the columns have no nulls.
    """
    row = 4 * width + 8 + (12 if name is None else len(name.encode()) + 4)
    return max(1, row_group_bytes // row)


class _GroupWriter:
    """Rows appended in any number, written to Parquet in row groups of ``rows`` rows."""

    def __init__(self, path: Path, schema: pa.Schema, rows: int) -> None:
        self.schema = schema
        self.rows = rows
        self.appended = 0
        self.written = 0
        self.groups = 0
        self._pending: list[dict[str, npt.NDArray[Any]]] = []
        self._pending_rows = 0
        self._writer = pq.ParquetWriter(
            path,
            schema,
            # A dictionary of logits is never smaller; the model's name is one value.
            use_dictionary=[n for n in ("model",) if n in schema.names],
            write_statistics=[n for n in schema.names if n != "logit"],
        )

    def append(self, columns: dict[str, npt.NDArray[Any]]) -> None:
        self._pending.append(columns)
        self._pending_rows += len(columns["id"])
        self.appended += len(columns["id"])
        while self._pending_rows >= self.rows:
            self._write(self.rows)

    def close(self) -> None:
        if self._pending_rows:
            self._write(self._pending_rows)
        self._writer.close()

    def abort(self) -> None:
        self._writer.close()

    def _write(self, rows: int) -> None:
        # Only the group's rows are copied (and none when one part holds them): the rest of a
        # pass stays where it is, as views, until its own groups are written.
        parts: list[dict[str, npt.NDArray[Any]]] = []
        taken = 0
        while taken < rows:
            part = self._pending[0]
            need = rows - taken
            if len(part["id"]) <= need:
                parts.append(self._pending.pop(0))
            else:
                parts.append({name: values[:need] for name, values in part.items()})
                self._pending[0] = {name: values[need:] for name, values in part.items()}
            taken += len(parts[-1]["id"])
        if len(parts) == 1:
            head = parts[0]
        else:
            head = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        self._pending_rows -= rows
        self._writer.write_table(self._table(head), row_group_size=rows)
        self.written += rows
        self.groups += 1

    def _table(self, columns: dict[str, npt.NDArray[Any]]) -> pa.Table:
        arrays = []
        for field in self.schema:
            values = columns[field.name]
            if pa.types.is_fixed_size_list(field.type):
                flat = pa.array(values.reshape(-1), type=pa.float32())
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, field.type.list_size))
            else:
                arrays.append(pa.array(values, type=field.type))
        return pa.Table.from_arrays(arrays, schema=self.schema)


def dump(
    scored: Iterable[Scored],
    out: Path,
    *,
    width: int,
    name: str | None = None,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
    expected_labels: npt.NDArray[np.int32] | None = None,
) -> tuple[int, int]:
    """Write scored tokens to ``out`` as labels (``name`` None) or as ``name``'s predictions.

    ``expected_labels``, the ``label`` column of the base model's file, makes a candidate's dump
    stop at the first token that differs (another tokenizer, input, context or stride).
    Returns the rows and the row groups written.
    """
    schema = labels_schema(width) if name is None else predictions_schema(width)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    writer = _GroupWriter(partial, schema, rows_per_group(width, row_group_bytes, name=name))
    try:
        for part in scored:
            n = len(part.labels)
            if part.logits.shape != (n, width):
                raise ValueError(
                    f"the model gave logits of shape {part.logits.shape}, not ({n}, {width})"
                )
            first = writer.appended
            if expected_labels is not None:
                _check(expected_labels, first, part.labels)
            columns: dict[str, npt.NDArray[Any]] = {
                "id": np.arange(first, first + n, dtype=np.int64)
            }
            if name is None:
                columns |= {"doc": np.full(n, part.doc, dtype=np.int64), "label": part.labels}
            else:
                columns["model"] = np.full(n, name, dtype=object)
            writer.append(columns | {"logit": part.logits})
        if expected_labels is not None and len(expected_labels) != writer.appended:
            raise ValueError(
                f"the base model's file has {len(expected_labels)} tokens, this dump "
                f"{writer.appended}: use the same input, tokenizer, --context and --stride"
            )
    except BaseException:
        writer.abort()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial, out)
    return writer.written, writer.groups


def _check(expected: npt.NDArray[np.int32], first: int, labels: npt.NDArray[np.int32]) -> None:
    """Stop where the candidate's tokens leave the base model's."""
    there = expected[first : first + len(labels)]
    if len(there) < len(labels) or not np.array_equal(there, labels):
        n = min(len(there), len(labels))
        unequal = np.flatnonzero(there[:n] != labels[:n])
        at = first + (int(unequal[0]) if len(unequal) else n)
        raise ValueError(
            f"token {at} differs from the base model's file (or is not in it): use the same "
            "input, tokenizer, --context and --stride"
        )


def split_text(text: str, split: Split) -> list[str]:
    """The documents of a text: paragraphs (blank lines between), lines, or the whole text.

    Documents of white space only are dropped.
    """
    if split == "none":
        parts = [text]
    elif split == "lines":
        parts = text.splitlines()
    else:
        parts, paragraph = [], []
        for line in text.splitlines():
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                parts.append("\n".join(paragraph))
                paragraph = []
        parts.append("\n".join(paragraph))
    return [part for part in parts if part.strip()]


def token_documents(path: Path, column: str) -> Iterator[list[int]]:
    """One document per row of a Parquet file's list column of token ids (``input_ids``)."""
    for batch in pq.ParquetFile(path).iter_batches(columns=[column]):
        for row, tokens in enumerate(batch.column(0).to_pylist()):
            if tokens is None:
                raise ValueError(f"{path}: a null in {column!r} (row {row} of a batch)")
            yield [int(token) for token in tokens]


def _model(path: str, device: str, dtype: str) -> tuple[Any, LogitsOf, int]:
    """The model, a function from a window's tokens to their Float32 logits, and the vocab width."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()

    def logits_of(tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0]
        return np.asarray(logits.to(torch.float32).cpu().numpy())

    width = int(model.get_output_embeddings().weight.shape[0])
    return model, logits_of, width


def _documents(args: argparse.Namespace) -> Iterable[Sequence[int]]:
    if args.tokens is not None:
        return token_documents(args.tokens, args.tokens_column)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    text = args.text.read_text(encoding="utf-8")
    return (tokenizer(doc)["input_ids"] for doc in split_text(text, args.split))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m klrank.tools.dump_logits",
        description=(
            "Run a causal language model (transformers) over a text or token ids and write its "
            "logits in the layout klrank reads: the base model's as labels, a candidate's as "
            "predictions."
        ),
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="{labels,predictions}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", help="folder of the model (AutoModelForCausalLM.from_pretrained)")
    common.add_argument("out", type=Path, help="Parquet file to write")
    source = common.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", type=Path, help="UTF-8 text, tokenized by the model's tokenizer")
    source.add_argument(
        "--tokens", type=Path, help="Parquet file of token ids, one document per row"
    )
    common.add_argument(
        "--tokens-column", default="input_ids", help="its list column (default: input_ids)"
    )
    common.add_argument(
        "--split",
        choices=["paragraphs", "lines", "none"],
        default="paragraphs",
        help="the documents of --text: paragraphs between blank lines (default), lines, or one",
    )
    common.add_argument("--tokenizer", help="folder of the tokenizer (default: the model's)")
    common.add_argument(
        "--context",
        type=int,
        default=DEFAULT_CONTEXT,
        help=f"tokens per forward pass (default: {DEFAULT_CONTEXT})",
    )
    common.add_argument(
        "--stride",
        type=int,
        help="tokens between the starts of two passes, below --context (default: context // 2)",
    )
    common.add_argument(
        "--row-group-bytes",
        type=int,
        default=DEFAULT_ROW_GROUP_BYTES,
        help=f"most bytes of one row group, at least one row (default: {DEFAULT_ROW_GROUP_BYTES})",
    )
    common.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    common.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="the model's weights (default: auto, as saved); logits are written as Float32",
    )
    kinds.add_parser(
        "labels",
        parents=[common],
        help="the base model's logits and the next tokens (klrank --labels)",
        description="Write the base model's logits and the next tokens (klrank --labels).",
    )
    predictions = kinds.add_parser(
        "predictions",
        parents=[common],
        help="a candidate model's logits (a file of klrank --predictions)",
        description="Write a candidate model's logits (a file of klrank --predictions).",
    )
    predictions.add_argument("--name", required=True, help="the model column's value")
    predictions.add_argument(
        "--check-labels",
        type=Path,
        help="the base model's file: stop at the first token that differs from its labels",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns its exit code (2 for bad options, as argparse does)."""
    parser = _parser()
    args = parser.parse_args(argv)
    stride = args.context // 2 if args.stride is None else args.stride
    if args.context < 2 or not 1 <= stride < args.context:
        parser.error(f"--stride must be at least 1 and below --context: {stride}, {args.context}")
    if args.row_group_bytes < 1:
        parser.error("--row-group-bytes must be positive")
    name = args.name if args.kind == "predictions" else None
    expected = None
    if name is not None and args.check_labels is not None:
        table = pq.read_table(args.check_labels, columns=["label"])
        expected = table.column("label").to_numpy().astype(np.int32)
    try:
        _, logits_of, width = _model(args.model, args.device, args.dtype)
        scored = score(_documents(args), logits_of, context=args.context, stride=stride)
        rows, groups = dump(
            scored,
            args.out,
            width=width,
            name=name,
            row_group_bytes=args.row_group_bytes,
            expected_labels=expected,
        )
    except ValueError as error:
        print(f"dump_logits: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: {rows} tokens × {width} logits in {groups} row groups", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
