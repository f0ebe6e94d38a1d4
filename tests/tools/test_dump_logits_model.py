"""klrank.tools.dump_logits on a real transformers model: tiny, random, built here.

The test builds a Llama of vocabulary 64 with random weights (and a word-level tokenizer) and
saves them to a temporary folder; the command runs on them in a subprocess, offline
(``HF_HUB_OFFLINE=1``), so nothing is downloaded. Each row's logits are checked against the
model called directly, on the tokens before the row's label alone (from the start of its window,
found here by its own arithmetic), which by causality are what the window's pass gives.

Needs torch and transformers, which only .venv-lm has: ``make test-lm`` runs this module;
the default run deselects it (``-m "not ... lm"``). torch is imported inside the fixtures, so
that collecting the module needs neither.
"""

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.lm

VOCAB = 64
CONTEXT, STRIDE = 8, 3
BUDGET = 2_000  # bytes: 7 rows of 64 logits (276 bytes with id, doc and label) per row group
# Five documents: long ones that take several windows, and ones of 1 and 2 tokens.
DOCS = [
    [int(t) for t in np.random.default_rng(seed).integers(0, VOCAB, size)]
    for seed, size in enumerate([30, 1, 2, 17, 9])
]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}  # the same sums in another order (shorter passes)


def _model(folder: Path, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    LlamaForCausalLM(config).save_pretrained(folder)


def _tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1} | {f"w{i}": i for i in range(2, VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", unk_token="<unk>")
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base model with its tokenizer, and a candidate: another random model."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("base", "candidate")}
    _model(folders["base"], seed=0)
    _tokenizer(folders["base"])
    _model(folders["candidate"], seed=1)
    return folders


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(DOCS, type=pa.list_(pa.int32()))}), path)
    return path


def _dump(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "klrank.tools.dump_logits", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


def _window_start(token: int) -> int:
    """Where the pass that scores ``token`` starts: windows start every STRIDE tokens and the
    k-th (from 0) ends at k·STRIDE + CONTEXT, scoring the tokens from the previous end."""
    if token < CONTEXT:
        return 0
    return ((token - CONTEXT) // STRIDE + 1) * STRIDE


def _expected(folder: Path, docs: Sequence[Sequence[int]]) -> tuple[list[Any], npt.NDArray[Any]]:
    """(doc, label) of each scored token and its logits, from the model called directly."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    keys, rows = [], []
    with torch.no_grad():
        for doc, tokens in enumerate(docs):
            for t in range(1, len(tokens)):
                ids = torch.tensor([tokens[_window_start(t) : t]])
                rows.append(model(input_ids=ids).logits[0, -1].numpy())
                keys.append((doc, tokens[t]))
    return keys, np.stack(rows)


def _row_group_sizes(path: Path) -> list[int]:
    parquet = pq.ParquetFile(path)
    return [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]


@pytest.fixture(scope="module")
def base(
    models: dict[str, Path], tokens: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The base model's file, dumped from the token ids, and what the command printed."""
    out = tmp_path_factory.mktemp("dump") / "base.parquet"
    done = _dump(
        "labels", models["base"], out, "--tokens", tokens,
        "--context", CONTEXT, "--stride", STRIDE, "--row-group-bytes", BUDGET,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out, done.stderr


def test_the_base_file_is_the_labels_and_the_models_logits(
    models: dict[str, Path], base: tuple[Path, str]
) -> None:
    out, printed = base
    frame = pl.read_parquet(out)
    assert frame.schema == pl.Schema(
        {"id": pl.Int64, "doc": pl.Int64, "label": pl.Int32, "logit": pl.Array(pl.Float32, VOCAB)}
    )
    keys, logits = _expected(models["base"], DOCS)
    assert frame["id"].to_list() == list(range(len(keys)))
    assert list(zip(frame["doc"], frame["label"], strict=True)) == keys
    np.testing.assert_allclose(frame["logit"].to_numpy(), logits, **TOLERANCE)
    assert _row_group_sizes(out) == [7] * (len(keys) // 7) + [len(keys) % 7]
    assert f"{len(keys)} tokens × {VOCAB} logits" in printed


def test_a_candidate_file_matches_the_base_file_row_for_row(
    models: dict[str, Path], tokens: Path, base: tuple[Path, str], tmp_path: Path
) -> None:
    labels, _ = base
    out = tmp_path / "cands" / "other.parquet"
    done = _dump(
        "predictions", models["candidate"], out, "--name", "other", "--tokens", tokens,
        "--context", CONTEXT, "--stride", STRIDE, "--check-labels", labels,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    frame = pl.read_parquet(out)
    assert frame.schema == pl.Schema(
        {"id": pl.Int64, "model": pl.String, "logit": pl.Array(pl.Float32, VOCAB)}
    )
    keys, logits = _expected(models["candidate"], DOCS)
    assert frame["id"].to_list() == pl.read_parquet(labels)["id"].to_list()
    assert frame["model"].to_list() == ["other"] * len(keys)
    np.testing.assert_allclose(frame["logit"].to_numpy(), logits, **TOLERANCE)
    # A model of its own, not the base model's logits again.
    assert not np.allclose(logits, _expected(models["base"], DOCS)[1], atol=1e-3)


def test_a_candidate_on_other_tokens_stops_at_the_first_that_differs(
    models: dict[str, Path], tokens: Path, base: tuple[Path, str], tmp_path: Path
) -> None:
    labels, _ = base
    out = tmp_path / "cands" / "other.parquet"
    done = _dump(
        "predictions", models["candidate"], out, "--name", "other", "--tokens", tokens,
        "--context", CONTEXT, "--stride", STRIDE, "--check-labels", labels,
        "--split", "lines",  # ignored with --tokens
        "--row-group-bytes", 1,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # the same tokens in other row groups: fine
    assert _row_group_sizes(out) == [1] * pl.read_parquet(labels).height
    # The tokens in another order: the dump stops, and leaves no file.
    reordered = tmp_path / "reordered.parquet"
    table = pa.table({"input_ids": pa.array(DOCS[::-1], type=pa.list_(pa.int32()))})
    pq.write_table(table, reordered)
    out.unlink()
    done = _dump(
        "predictions", models["candidate"], out, "--name", "other", "--tokens", reordered,
        "--context", CONTEXT, "--stride", STRIDE, "--check-labels", labels,
    )  # fmt: skip
    assert done.returncode == 1
    assert "differs from the base model's file" in done.stderr
    assert list(out.parent.iterdir()) == []


def test_a_text_is_tokenized_by_the_models_tokenizer_paragraph_by_paragraph(
    models: dict[str, Path], tmp_path: Path
) -> None:
    # The tokenizer puts <s> (1) first; w<i> is token i.
    paragraphs = [DOCS[0], DOCS[3][:5]]
    text = tmp_path / "text.txt"
    words = [[f"w{max(t, 2)}" for t in doc] for doc in paragraphs]
    # Blank lines end a paragraph; a single line break does not.
    lines = [" ".join(words[0]), "", "", " ".join(words[1][:2]), " ".join(words[1][2:])]
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs = [[1, *(max(t, 2) for t in doc)] for doc in paragraphs]
    out = tmp_path / "base.parquet"
    done = _dump(
        "labels", models["base"], out, "--text", text, "--context", CONTEXT, "--stride", STRIDE
    )
    assert done.returncode == 0, done.stderr
    frame = pl.read_parquet(out)
    keys, logits = _expected(models["base"], docs)
    assert list(zip(frame["doc"], frame["label"], strict=True)) == keys
    np.testing.assert_allclose(frame["logit"].to_numpy(), logits, **TOLERANCE)
