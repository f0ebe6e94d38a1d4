"""summary.md and report.html say which models cannot be told apart from the best, and show
P(best) and the rank interval: on the clustered data set of docs/uncertainty.md, whose naive
p-value (0.040) says "worse" and whose clustered one (0.479) does not."""

import html
import re
from pathlib import Path

import klrank
import numpy as np
import polars as pl
import pytest


def _documents() -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(7)
    documents, tokens, classes = 150, 20, 4
    document = np.repeat(np.arange(documents), tokens)
    p = rng.dirichlet(np.ones(classes), size=documents * tokens)

    def model(name: str, spread: float) -> pl.DataFrame:
        scale = rng.gamma(2.0, spread / 2.0, size=documents)[document]
        logits = np.log(p) + scale[:, None] * rng.normal(size=p.shape)
        columns = {f"logit_{k}": logits[:, k] for k in range(classes)}
        return pl.DataFrame({"id": np.arange(p.shape[0]), "model": name, **columns})

    labels = pl.DataFrame(
        {"id": np.arange(p.shape[0]), "document": document}
        | {f"prob_{k}": p[:, k] for k in range(classes)}
    )
    return labels, pl.concat([model("a", 0.50), model("b", 0.53)])


def _summary_line(summary: str, model: str) -> str:
    return next(line for line in summary.splitlines() if line.startswith(f"| 2 | {model} |"))


# Treated as independent rows, the bootstrap also finds b second in 95 % of replicates; by
# document, it may be first.
@pytest.mark.parametrize(
    ("cluster_by", "p_text", "marked", "ranks"),
    [(None, "0.04", False, "2"), ("document", "0.48", True, "1–2")],
)
def test_a_model_that_cannot_be_told_apart_from_the_best_is_marked(
    cluster_by: str | None, p_text: str, marked: bool, ranks: str
) -> None:
    labels, predictions = _documents()
    evaluation = klrank.evaluate(labels, predictions, cluster_by=cluster_by, bootstrap=100)
    line = _summary_line(evaluation.summary(), "b")
    assert f"(p={p_text})" in line
    assert ("≈ best" in line) is marked
    b = evaluation.report.filter(pl.col("slice") == "ALL", pl.col("model") == "b").row(
        0, named=True
    )
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[-2] == f"{b['p_best']:.3f}"
    assert cells[-1] == ranks and b["rank_high"] == 2


def test_the_page_shows_the_holm_p_value_p_best_and_the_rank_interval(tmp_path: Path) -> None:
    labels, predictions = _documents()
    evaluation = klrank.evaluate(labels, predictions, cluster_by="document", bootstrap=100)
    folder = evaluation.publish(tmp_path / "out")
    page = html.unescape((folder / "report.html").read_text())
    assert "<th>Δ vs best (Holm p)</th><th>P(best)</th><th>rank 95%</th>" in page
    b = evaluation.report.filter(pl.col("slice") == "ALL", pl.col("model") == "b").row(
        0, named=True
    )
    row = re.search(r"<tr><td>2</td><td class='model'>b</td>.*?</tr>", page)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(0))
    assert cells[11].endswith(" (p=0.48) ≈ best")
    assert cells[12] == f"{b['p_best']:.3f}" and cells[13] == "1–2"
