"""Inputs in object storage: ``s3://`` and ``az://`` URLs against real servers on loopback.

Each test runs against moto's S3 server and against Azurite, Azure's Blob emulator, in turn
(``object_server``, tests/conftest.py).

The oracle of every listing is the local one of the same tree (os.scandir and glob, tested on
their own in test_io.py); the oracle of every report is the report of the same files read
from the local disk.
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from cli_helpers import (
    FAILURE_COLUMNS,
    corrupt_first_page,
    klrank,
    prob_predictions,
    set_value,
    soft_labels,
    write,
)
from klrank.io import reading
from klrank.pipeline.errors import UsageError
from polars.testing import assert_frame_equal
from s3_helpers import ObjectServer

EXAMPLES = Path(__file__).parents[2] / "examples" / "data"
JUNK = b"not parquet: reading this file would fail"


def _tree(root: Path) -> Path:
    """Parquet files in hive folders among every kind of file a reader must skip.

    Each skipped file that is named ``*.parquet`` holds no Parquet, so reading it would fail.
    """
    for name in [
        "model=a/part-0.parquet",
        "model=a/part-1.parquet",
        "model=a/nested/part-2.parquet",
        "model=b/part-0.parquet",
        "model=a b/part-0.parquet",
        "model=x[1]/part-0.parquet",
        # Path order, part by part: "z/a/..." before "z/a b" and "z/a-c".
        "z/a-c/p.parquet",
        "z/a b/p.parquet",
        "z/a/b/p.parquet",
        "z/a/0.parquet",
    ]:
        write(pl.DataFrame({"id": [len(name)]}), root / name)
    for name in [
        "model=b/_SUCCESS",
        "model=b/.part-0.parquet.crc",
        "model=b/_temporary/part-9.parquet",
        "model=c/.hidden.parquet",
        "model=c/notes.txt",
        "model=c/part-0.csv",
        "_staging/model=d/part-0.parquet",
        ".cache/x.parquet",
        "README.md",
    ]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(JUNK)
    return root


@pytest.fixture(scope="module")
def layouts(
    object_server: ObjectServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The tree of :func:`_tree` on disk and in a bucket: (the local root, the bucket's URL)."""
    root = _tree(tmp_path_factory.mktemp("layouts") / "root")
    bucket = object_server.new_bucket()
    object_server.upload(root, bucket, "root")
    return root, f"{object_server.scheme}://{bucket}/root"


def _relative(listed: list[tuple[str, tuple[str, ...]]], root: str) -> list[tuple[str, ...]]:
    return [(file.removeprefix(root), *folders) for file, folders in listed]


@pytest.mark.parametrize(
    "suffix",
    [
        "",
        "/",
        "/model=a",
        "/model=c",  # only skipped files: nothing
        "/model=a/part-0.parquet",
        "/model=x[1]/part-0.parquet",  # a name that looks like a pattern
        "/*/*.parquet",
        "/**/*.parquet",
        "/**",
        "/model=?/*",
        "/model=[ab]/part-*.parquet",
        "/model=a/**/part-[0-9].parquet",
        "/z/**/p.parquet",
        "/*/_temporary/*.parquet",  # a pattern does not reach skipped folders either
    ],
)
def test_a_bucket_is_listed_as_the_same_tree_on_disk(
    layouts: tuple[Path, str],
    object_server: ObjectServer,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
) -> None:
    local, url = layouts
    for key, value in object_server.env.items():
        monkeypatch.setenv(key, value)
    remote = _relative(reading._list_files(url + suffix), url)
    assert remote == _relative(reading._list_files(str(local) + suffix), str(local))


def test_a_bucket_folder_lists_its_visible_parquet_files_in_path_order(
    layouts: tuple[Path, str], object_server: ObjectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = layouts
    for key, value in object_server.env.items():
        monkeypatch.setenv(key, value)
    assert _relative(reading._list_files(url), url) == [
        ("/model=a/nested/part-2.parquet", "model=a", "nested"),
        ("/model=a/part-0.parquet", "model=a"),
        ("/model=a/part-1.parquet", "model=a"),
        ("/model=a b/part-0.parquet", "model=a b"),
        ("/model=b/part-0.parquet", "model=b"),
        ("/model=x[1]/part-0.parquet", "model=x[1]"),
        ("/z/a/0.parquet", "z", "a"),
        ("/z/a/b/p.parquet", "z", "a", "b"),
        ("/z/a b/p.parquet", "z", "a b"),
        ("/z/a-c/p.parquet", "z", "a-c"),
    ]
    scanned = reading.scan_parquet(f"{url}/model=*/**/*.parquet")
    models = scanned.frame.collect().get_column("model").to_list()
    # Hive keys; a glob's matches in the order of their names (" " sorts before "/"), as glob's.
    assert models == ["a b", "a", "a", "a", "b", "x[1]"]


@pytest.mark.parametrize(
    ("suffix", "message"),
    [("/missing", "does not exist"), ("/model=c", "matches no .parquet files")],
)
def test_an_input_that_is_not_there_is_a_usage_error_as_on_disk(
    layouts: tuple[Path, str],
    object_server: ObjectServer,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
    message: str,
) -> None:
    local, url = layouts
    for key, value in object_server.env.items():
        monkeypatch.setenv(key, value)
    for path in (str(local) + suffix, url + suffix):
        with pytest.raises(UsageError, match=re.escape(f"input path {path!r} {message}")):
            reading.scan_parquet(path)


# The CLI end to end, in a subprocess with the variables a user sets.


def _secrets_absent(server: ObjectServer, *texts: str) -> None:
    for text in texts:
        for secret in server.secrets:
            assert secret not in text


def _published_text(out: Path) -> str:
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in sorted(out.rglob("*")) if p.is_file()
    )


@pytest.fixture(scope="module")
def example_bucket(object_server: ObjectServer) -> str:
    """examples/data in a bucket, under ``data/``; the bucket's name."""
    bucket = object_server.new_bucket()
    object_server.upload(EXAMPLES, bucket, "data")
    return bucket


@pytest.fixture(scope="module")
def local_report(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """The report of examples/data read from the local disk."""
    out = tmp_path_factory.mktemp("local") / "out"
    result = klrank(
        "run",
        "--labels",
        EXAMPLES / "labels.parquet",
        "--predictions",
        EXAMPLES / "predictions",
        "--slice-by",
        "region",
        "--run-date",
        "2026-02-05",
        "--out",
        out,
    )
    assert result.returncode == 0, str(result)
    return pl.read_parquet(out / "run_date=2026-02-05" / "report.parquet")


@pytest.mark.parametrize(
    "predictions",
    [
        "{scheme}://{bucket}/data/predictions/",
        "{scheme}://{bucket}/data/predictions",
        "{scheme}://{bucket}/data/predictions/model=*/*.parquet",
        "{scheme}://{bucket}/data/**/part-*.parquet",
        "file://{examples}/predictions",
    ],
    ids=["folder", "prefix", "glob", "recursive-glob", "file-url"],
)
def test_a_report_from_a_bucket_is_the_report_from_the_same_files_on_disk(
    object_server: ObjectServer,
    example_bucket: str,
    local_report: pl.DataFrame,
    tmp_path: Path,
    predictions: str,
) -> None:
    labels = f"{object_server.scheme}://{example_bucket}/data/labels.parquet"
    predictions = predictions.format(
        scheme=object_server.scheme, bucket=example_bucket, examples=EXAMPLES
    )
    out = tmp_path / "out"
    args = ["--labels", labels, "--predictions", predictions, "--slice-by", "region"]
    result = klrank(
        "run", *args, "--run-date", "2026-02-05", "--out", out, "--json", env=object_server.env
    )
    assert result.returncode == 0, str(result)
    published = out / "run_date=2026-02-05"
    assert_frame_equal(pl.read_parquet(published / "report.parquet"), local_report)
    manifest = json.loads((published / "manifest.json").read_text())
    assert manifest["inputs"]["labels"]["path"] == labels  # the URL, as given
    assert manifest["inputs"]["predictions"]["path"] == predictions
    assert manifest["inputs"]["predictions"]["rows"] == 900
    _secrets_absent(object_server, result.stdout, result.stderr, _published_text(out))


def test_a_missing_prefix_is_the_same_usage_error_as_a_missing_folder(
    object_server: ObjectServer, example_bucket: str, tmp_path: Path
) -> None:
    predictions = ["--predictions", EXAMPLES / "predictions", "--out", tmp_path / "out"]
    for missing in (
        f"{object_server.scheme}://{example_bucket}/data/no-such-labels/",
        f"{object_server.scheme}://klrank-no-such-bucket/labels.parquet",
        str(tmp_path / "no-such-labels"),
    ):
        result = klrank("run", "--labels", missing, *predictions, env=object_server.env)
        assert result.returncode == 2, str(result)
        assert result.stderr.splitlines()[-1] == f"klrank: input path {missing!r} does not exist"
        _secrets_absent(object_server, result.stdout, result.stderr)
    assert not (tmp_path / "out").exists()


def test_bad_data_in_a_bucket_fails_validation_with_its_cases_as_on_disk(
    object_server: ObjectServer, tmp_path: Path
) -> None:
    # Row 2's label probabilities sum to 1.5; model n's row 3 has a negative one (and so does
    # not sum to 1 either): three checks fail.
    labels = set_value(soft_labels(), "prob_a", 1.0, id=2)
    predictions = set_value(prob_predictions(), "prob_b", -0.1, id=3, model="n")
    write(labels, tmp_path / "local" / "labels.parquet")
    write(predictions, tmp_path / "local" / "predictions" / "part-0.parquet")
    bucket = object_server.new_bucket()
    object_server.upload(tmp_path / "local", bucket, "night")
    found = {}
    for where, root in [
        ("disk", str(tmp_path / "local")),
        ("bucket", f"{object_server.scheme}://{bucket}/night"),
    ]:
        out = tmp_path / f"out-{where}"
        result = klrank(
            "run",
            "--labels",
            f"{root}/labels.parquet",
            "--predictions",
            f"{root}/predictions",
            "--out",
            out,
            env=object_server.env,
        )
        assert result.returncode == 1, str(result)
        assert "validation failed: 3 failed checks" in result.stderr, str(result)
        assert not (out / "report.parquet").exists()
        found[where] = pl.read_parquet(out / "_failures" / "failures.parquet")
        _secrets_absent(object_server, result.stdout, result.stderr, _published_text(out))
    assert found["bucket"].columns == FAILURE_COLUMNS
    assert_frame_equal(found["bucket"], found["disk"])
    assert sorted(found["bucket"].get_column("id").cast(pl.Int64).to_list()) == [2, 3, 3]


def test_a_damaged_file_in_a_bucket_is_a_usage_error_naming_the_input(
    object_server: ObjectServer, tmp_path: Path
) -> None:
    write(soft_labels(), tmp_path / "labels.parquet")
    write(prob_predictions(), tmp_path / "predictions" / "part-0.parquet")
    corrupt_first_page(tmp_path / "predictions" / "part-0.parquet")  # its footer is fine
    bucket = object_server.new_bucket()
    object_server.upload(tmp_path, bucket, "")
    result = klrank(
        "run",
        "--labels",
        f"{object_server.scheme}://{bucket}/labels.parquet",
        "--predictions",
        f"{object_server.scheme}://{bucket}/predictions/",
        "--out",
        tmp_path / "out",
        env=object_server.env,
    )
    assert result.returncode == 2, str(result)
    url = f"{object_server.scheme}://{bucket}/predictions/"
    assert f"cannot read the Parquet data of {url!r}" in result.stderr


def test_a_file_rewritten_in_a_bucket_since_the_scan_is_a_usage_error(
    object_server: ObjectServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Its footer is read again before a batch reads it (no size and time to compare there).
    for key, value in object_server.env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "part-0.parquet"
    pl.DataFrame({"id": range(10), "prob_0": [0.25] * 10}).write_parquet(path)
    bucket = object_server.new_bucket()
    object_server.upload(tmp_path, bucket, "")
    url = f"{object_server.scheme}://{bucket}/"
    scanned = reading.scan_parquet(url)
    shorter = pl.DataFrame({"id": range(4), "prob_0": [0.5] * 4})
    shorter.write_parquet(path)
    object_server.put(bucket, "part-0.parquet", path.read_bytes())
    with pytest.raises(UsageError) as raised:
        list(reading.batches(scanned.windows(["id", "prob_0"]), scanned, 3))
    assert str(raised.value).startswith(f"cannot read the Parquet data of {url!r}: ")
    assert "has changed since the input was scanned (other columns, types or row groups)" in str(
        raised.value
    )


def test_credentials_in_a_url_are_refused_before_anything_logs_them(
    object_server: ObjectServer, example_bucket: str, tmp_path: Path
) -> None:
    scheme, secret = object_server.scheme, object_server.secrets[-1]
    for labels in (
        f"{scheme}://user:{secret}@{example_bucket}/data/labels.parquet",
        f"{scheme}://{example_bucket}/data/labels.parquet?secret_key={secret}",
    ):
        result = klrank(
            "run",
            "--labels",
            labels,
            "--predictions",
            EXAMPLES / "predictions",
            "--out",
            tmp_path / "out",
            env=object_server.env,
        )
        assert result.returncode == 2, str(result)
        assert "must not carry credentials" in result.stderr
        _secrets_absent(object_server, result.stdout, result.stderr)
    assert not (tmp_path / "out").exists()


def test_a_scheme_klrank_does_not_read_is_a_usage_error(tmp_path: Path) -> None:
    inputs = ["--predictions", EXAMPLES / "predictions", "--out", tmp_path / "out"]
    result = klrank("run", "--labels", "hdfs://bucket/labels.parquet", *inputs)
    assert result.returncode == 2, str(result)
    assert "hdfs:// is not supported yet" in result.stderr


def test_evaluate_reads_urls_as_it_reads_paths(
    object_server: ObjectServer,
    example_bucket: str,
    local_report: pl.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import klrank

    for key, value in object_server.env.items():
        monkeypatch.setenv(key, value)
    evaluation = klrank.evaluate(
        f"{object_server.scheme}://{example_bucket}/data/labels.parquet",
        f"{object_server.scheme}://{example_bucket}/data/predictions/",
        slice_by=["region"],
    )
    assert_frame_equal(evaluation.report, local_report)
    published = evaluation.publish(tmp_path / "out", run_date="2026-02-05")
    assert isinstance(published, Path)
    assert_frame_equal(pl.read_parquet(published / "report.parquet"), local_report)
    url = evaluation.publish(
        f"{object_server.scheme}://{example_bucket}/out", run_date="2026-02-05"
    )
    assert url == f"{object_server.scheme}://{example_bucket}/out/run_date=2026-02-05"
    published = pl.read_parquet(
        f"{url}/report.parquet", storage_options=object_server.polars_options()
    )
    assert_frame_equal(published, local_report)


# Earlier nights in a bucket: --baseline and klrank history.

NIGHTS = ("2026-02-04", "2026-02-05")


@pytest.fixture(scope="module")
def nights(
    object_server: ObjectServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """Two nights published on disk and copied to a bucket: (the local root, its URL)."""
    root = tmp_path_factory.mktemp("nights") / "reports"
    for night, predictions in zip(
        NIGHTS, ["predictions", "predictions/model=[bs]*/*.parquet"], strict=True
    ):
        result = klrank(
            "run",
            "--labels",
            EXAMPLES / "labels.parquet",
            "--predictions",
            EXAMPLES / predictions,
            "--run-date",
            night,
            "--out",
            root,
            "--bootstrap",
            "0",
        )
        assert result.returncode == 0, str(result)
    bucket = object_server.new_bucket()
    object_server.upload(root, bucket, "reports")
    return root, f"{object_server.scheme}://{bucket}/reports"


def test_history_of_nights_in_a_bucket_is_that_of_the_same_nights_on_disk(
    object_server: ObjectServer, nights: tuple[Path, str], tmp_path: Path
) -> None:
    local, url = nights
    documents = {}
    for where, root in [("disk", str(local)), ("bucket", url)]:
        chart = tmp_path / f"{where}.html"
        result = klrank("history", root, "--chart", chart, "--json", env=object_server.env)
        assert result.returncode == 0, str(result)
        documents[where] = json.loads(result.stdout)
        assert documents[where]["root"] == root and chart.is_file()
        _secrets_absent(object_server, result.stdout, result.stderr, chart.read_text())
    assert documents["bucket"]["nights"] == list(NIGHTS)
    for key in ("unit", "nights", "rows"):
        assert documents["bucket"][key] == documents["disk"][key]
    assert (tmp_path / "bucket.html").read_bytes() == (tmp_path / "disk.html").read_bytes()


def test_history_of_a_bucket_writes_its_chart_into_the_bucket_but_not_over_other_files(
    object_server: ObjectServer, nights: tuple[Path, str], tmp_path: Path
) -> None:
    local, url = nights
    assert klrank("history", str(local), "--chart", tmp_path / "disk.html").returncode == 0
    result = klrank("history", url, env=object_server.env)
    assert result.returncode == 0, str(result)
    bucket, key = url.removeprefix(f"{object_server.scheme}://").split("/", 1)
    chart = object_server.get(bucket, f"{key}/history.html")
    assert chart == (tmp_path / "disk.html").read_bytes()
    object_server.put(bucket, "notes.html", b"a user's page")
    other = klrank(
        "history",
        url,
        "--chart",
        f"{object_server.scheme}://{bucket}/notes.html",
        env=object_server.env,
    )
    assert other.returncode == 2, str(other)
    assert "is not a chart klrank wrote" in other.stderr


@pytest.mark.parametrize("name", ["run_date=2026-02-04", "run_date=2026-02-04/report.parquet"])
def test_a_baseline_in_a_bucket_is_the_same_baseline_on_disk(
    object_server: ObjectServer, nights: tuple[Path, str], tmp_path: Path, name: str
) -> None:
    local, url = nights
    reports = {}
    for where, baseline in [("disk", str(local / name)), ("bucket", f"{url}/{name}")]:
        out = tmp_path / where
        result = klrank(
            "run",
            "--labels",
            EXAMPLES / "labels.parquet",
            "--predictions",
            EXAMPLES / "predictions",
            "--baseline",
            baseline,
            "--bootstrap",
            "0",
            "--out",
            out,
            env=object_server.env,
        )
        assert result.returncode == 0, str(result)
        reports[where] = pl.read_parquet(out / "report.parquet")
        manifest = json.loads((out / "manifest.json").read_text())
        root = url if where == "bucket" else str(local)
        assert manifest["baseline"]["path"] == f"{root}/run_date=2026-02-04/report.parquet"
        assert manifest["baseline"]["run_date"] == "2026-02-04"
        _secrets_absent(object_server, result.stdout, result.stderr, _published_text(out))
    assert_frame_equal(reports["bucket"], reports["disk"])
    assert reports["bucket"].get_column("change_mean_kl").null_count() == 0


def test_a_missing_baseline_in_a_bucket_is_a_usage_error(
    object_server: ObjectServer, nights: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = nights
    for missing in (f"{url}/run_date=2026-01-01/", f"{url}/run_date=2026-02-04/other.parquet"):
        result = klrank(
            "run",
            "--labels",
            EXAMPLES / "labels.parquet",
            "--predictions",
            EXAMPLES / "predictions",
            "--baseline",
            missing,
            "--out",
            tmp_path / "out",
            env=object_server.env,
        )
        assert result.returncode == 2, str(result)
        assert f"--baseline: {missing!r} is neither a report.parquet nor a run folder" in (
            result.stderr
        )


def test_an_unreachable_server_is_a_storage_error_to_retry(
    object_server: ObjectServer, tmp_path: Path
) -> None:
    labels = f"{object_server.scheme}://klrank-any/labels.parquet"
    result = klrank(
        "run",
        "--labels",
        labels,
        "--predictions",
        EXAMPLES / "predictions",
        "--out",
        tmp_path / "out",
        env=object_server.unreachable_env(),  # no one there
    )
    assert result.returncode == 74, str(result)  # EX_IOERR: the machine, not the data
    assert f"cannot list {labels!r}" in result.stderr
    _secrets_absent(object_server, result.stdout, result.stderr)


def test_a_file_that_is_not_parquet_in_a_bucket_is_a_usage_error_as_on_disk(
    object_server: ObjectServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "part-0.parquet").write_bytes(JUNK)
    bucket = object_server.new_bucket()
    object_server.upload(tmp_path / "input", bucket, "input")
    for key, value in object_server.env.items():
        monkeypatch.setenv(key, value)
    for root in (str(tmp_path / "input"), f"{object_server.scheme}://{bucket}/input"):
        message = f"cannot read {root + '/part-0.parquet'!r} as Parquet: Parquet magic bytes"
        with pytest.raises(UsageError, match=re.escape(message)):
            reading.scan_parquet(root)


def _logit_files(root: Path) -> Path:
    """Logits as a language model's evaluation writes them: an Array column, row groups of 5."""
    rng = np.random.default_rng(11)
    n, k = 23, 6
    truth = rng.normal(size=(n, k))
    frames = {"labels.parquet": pl.DataFrame({"id": np.arange(n), "logit": truth})}
    for i, model in enumerate(("a", "b")):
        logits = truth + rng.normal(scale=0.3 * (i + 1), size=(n, k))
        logits[3, 2] = -math.inf  # a class the model rules out
        frames[f"predictions/model={model}/part-0.parquet"] = pl.DataFrame(
            {"id": np.arange(n), "logit": logits}
        )
    for name, frame in frames.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(root / name, row_group_size=5)
    return root


def test_logits_in_a_bucket_give_the_report_of_the_same_files_on_disk(
    object_server: ObjectServer, tmp_path: Path
) -> None:
    # An Array column is read with pyarrow's streaming reader from a bucket too: batches of 2
    # rows (--batch-bytes 96: 2 rows of 6 Float64) start and end inside row groups of 5.
    root = _logit_files(tmp_path / "data")
    bucket = object_server.new_bucket()
    object_server.upload(root, bucket, "data")
    reports = {}
    for place, base in (("disk", str(root)), ("bucket", f"{object_server.scheme}://{bucket}/data")):
        out = tmp_path / f"out-{place}"
        args = ["--labels", f"{base}/labels.parquet", "--predictions", f"{base}/predictions"]
        result = klrank("run", *args, "--batch-bytes", "96", "--out", out, env=object_server.env)
        assert result.returncode == 0, str(result)
        reports[place] = pl.read_parquet(out / "report.parquet")
        reports[place + " rows"] = pl.read_parquet(out / "rows.parquet")
    assert_frame_equal(reports["bucket"], reports["disk"])
    assert_frame_equal(reports["bucket rows"], reports["disk rows"])
    assert reports["disk rows"].height == 46
