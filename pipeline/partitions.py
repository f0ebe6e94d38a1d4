"""Co-partitioning by id: rows of the labels and of every model with the same id meet in one part.

A distributed engine splits each input into ``n`` parts by a hash of the id, so that each part
can be validated and measured on its own, duplicate ids and coverage included: all rows of an id,
in every input, land in the same part.
"""

import polars as pl

PART = "__klrank_part"


def split(frame: pl.DataFrame, id_col: str, n_parts: int) -> list[pl.DataFrame]:
    """``frame``'s rows in ``n_parts`` frames by a hash of the id (some may be empty), order kept.

    Integer ids of any width hash as Int128, so an Int32 id in the labels and the same UInt64 id
    in the predictions meet; null ids all go to one part, where validation reports them. The
    hash is polars', the same on every worker that runs the same polars version.
    """
    key = pl.col(id_col)
    if frame.schema[id_col].is_integer():
        key = key.cast(pl.Int128)
    parts = frame.with_columns((key.hash(seed=0) % n_parts).cast(pl.Int64).alias(PART))
    by_part = parts.partition_by(PART, as_dict=True, include_key=False, maintain_order=True)
    empty = frame.clear()
    return [by_part.get((i,), empty) for i in range(n_parts)]
