"""klrank ranks models by how well they predict the true distribution: which of ours is best.

Ranks models by the Kullback–Leibler divergence D(P‖Q) of their predicted distributions Q from
the true ones P, with cross-entropy, entropy, reverse KL, Jensen–Shannon and top-1 agreement,
paired tests against the best model, slices and class contributions.

>>> import klrank  # doctest: +SKIP
>>> evaluation = klrank.evaluate("labels.parquet", "predictions/")  # doctest: +SKIP
>>> evaluation.report  # doctest: +SKIP
>>> evaluation.publish("reports/", run_date="2026-12-03")  # doctest: +SKIP

``klrank.expr`` holds the measures as Polars expressions. Everything else under ``klrank`` is
internal: its names may change between releases.
"""

from typing import TYPE_CHECKING, Any

from klrank import expr
from klrank._version import __version__
from klrank.pipeline.errors import (
    EngineError,
    ExitCode,
    InvalidDataError,
    KlrankError,
    LockBusyError,
    StorageError,
    UsageError,
)

__all__ = [
    "EngineError",
    "Evaluation",
    "ExitCode",
    "InvalidDataError",
    "KlrankError",
    "LockBusyError",
    "Source",
    "StorageError",
    "UsageError",
    "__version__",
    "evaluate",
    "expr",
]

if TYPE_CHECKING:
    from klrank.evaluation import Evaluation, Source, evaluate

_EVALUATION = ("Evaluation", "Source", "evaluate")


def __getattr__(name: str) -> Any:
    # klrank.evaluation is imported on first use, so that ``import klrank.cli`` by the console
    # script (klrank.__main__) can first import pandera its own way (klrank.runtime.imports).
    if name in _EVALUATION:
        from klrank import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'klrank' has no attribute {name!r}")
