"""Publishing to object storage: the commit protocol of klrank.io.buckets against real servers.

Every run is the real CLI in a subprocess, with the variables a user sets (``AWS_*``,
``AZURE_STORAGE_*``), against moto's S3 server and Azure's emulator Azurite on loopback, each
test against each (``object_server``, tests/conftest.py). The oracles: the report of the same inputs
published to the local disk, the objects' bytes and e-tags before a run, and the readers' rule
(``_SUCCESS`` and the manifest's ``run_id`` agree, and the files are those the manifest lists).
"""

import io
import json
import random
import signal
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from cli_helpers import klrank, start
from polars.testing import assert_frame_equal
from s3_helpers import AzuriteServer, GcsServer, ObjectServer

EXAMPLES = Path(__file__).parents[2] / "examples" / "data"
NIGHT = "2026-03-01"
FAST = ("--bootstrap", "0")
ROOT_FILES = {
    "_SUCCESS",
    "class_contributions.parquet",
    "quantiles.parquet",
    "manifest.json",
    "report.html",
    "report.parquet",
    "rows.parquet",
    "summary.md",
    "worst_rows.parquet",
}


def _inputs(labels: Path | str = EXAMPLES / "labels.parquet") -> list[str | Path]:
    return ["--labels", labels, "--predictions", EXAMPLES / "predictions", "--slice-by", "region"]


def _complete_night(s3: ObjectServer, bucket: str, night: str) -> str:
    """Check the readers' rule on a night that has ``_SUCCESS``; the run id it names."""
    keys = s3.objects(bucket, f"{night}/")
    run_id = s3.get(bucket, f"{night}/_SUCCESS").decode()
    manifest = json.loads(s3.get(bucket, f"{night}/manifest.json"))
    assert manifest["run_id"] == run_id
    assert {k.removeprefix(f"{night}/") for k in keys} == {*manifest["outputs"], "_SUCCESS"}
    for name in manifest["outputs"]:
        if name.endswith(".parquet"):
            assert pl.read_parquet(s3.get(bucket, f"{night}/{name}")).height > 0
    return run_id


def _no_leftovers(s3: ObjectServer, bucket: str) -> None:
    """No staging prefix and no lease object is left in the bucket."""
    left = [k for k in s3.objects(bucket) if ".klrank-staging-" in k or k.endswith(".lock")]
    assert left == []


def _secrets_absent(server: ObjectServer, *texts: str) -> None:
    for text in texts:
        for secret in server.secrets:
            assert secret not in text


@pytest.fixture(scope="module")
def big_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str | Path]:
    """Inputs that take a few seconds to rank: 300,000 rows, 8 classes, 2 models."""
    folder = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(15)
    n, classes = 300_000, [f"c{k}" for k in range(8)]

    def distributions() -> dict[str, np.ndarray]:
        values = rng.dirichlet(np.ones(len(classes)), size=n)
        return {f"prob_{c}": values[:, k] for k, c in enumerate(classes)}

    pl.DataFrame({"id": np.arange(n), **distributions()}).write_parquet(folder / "labels.parquet")
    (folder / "predictions").mkdir()
    for model in ("a", "b"):
        frame = pl.DataFrame({"id": np.arange(n), "model": model, **distributions()})
        frame.write_parquet(folder / "predictions" / f"{model}.parquet")
    return ["--labels", folder / "labels.parquet", "--predictions", folder / "predictions"]


@pytest.fixture(scope="module")
def local_night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The night published to the local disk: the oracle of the bucket's."""
    out = tmp_path_factory.mktemp("local") / "reports"
    result = klrank("run", *_inputs(), *FAST, "--run-date", NIGHT, "--out", out)
    assert result.returncode == 0, str(result)
    return out / f"run_date={NIGHT}"


def test_a_night_published_to_a_bucket_is_the_night_published_on_disk(
    object_server: ObjectServer, local_night: Path
) -> None:
    bucket = object_server.new_bucket()
    url = f"{object_server.scheme}://{bucket}/reports"
    result = klrank(
        "run", *_inputs(), *FAST, "--run-date", NIGHT, "--out", url, "--json", env=object_server.env
    )
    assert result.returncode == 0, str(result)
    night = f"reports/run_date={NIGHT}"
    assert json.loads(result.stdout)["target"] == f"{url}/run_date={NIGHT}"
    assert {k.removeprefix(f"{night}/") for k in object_server.objects(bucket)} == ROOT_FILES
    _complete_night(object_server, bucket, night)
    _no_leftovers(object_server, bucket)
    for name in ("report.parquet", "class_contributions.parquet", "worst_rows.parquet"):
        published = pl.read_parquet(object_server.get(bucket, f"{night}/{name}"))
        assert_frame_equal(published, pl.read_parquet(local_night / name))
    rows = pl.read_parquet(object_server.get(bucket, f"{night}/rows.parquet"))
    assert_frame_equal(rows, pl.read_parquet(local_night / "rows.parquet"))
    summary = object_server.get(bucket, f"{night}/summary.md").decode()
    assert summary == (local_night / "summary.md").read_text()
    # Readers of the usual glob read it straight from the bucket, with the same variables.
    text = "\n".join(
        object_server.get(bucket, k).decode("utf-8", "replace")
        for k in object_server.objects(bucket)
    )
    _secrets_absent(object_server, result.stdout, result.stderr, text)


def test_polars_reads_the_nights_of_a_bucket_with_the_usual_glob(
    object_server: ObjectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = object_server.new_bucket()
    url = f"{object_server.scheme}://{bucket}/reports"
    for night in ("2026-03-01", "2026-03-02"):
        result = klrank(
            "run", *_inputs(), *FAST, "--run-date", night, "--out", url, env=object_server.env
        )
        assert result.returncode == 0, str(result)
    for key, value in object_server.env.items():
        monkeypatch.setenv(key, value)
    both = pl.read_parquet(
        f"{url}/*/report.parquet",
        hive_partitioning=True,
        storage_options=object_server.polars_options(),  # a GCS emulator's endpoint
    )
    assert both.get_column("run_date").cast(pl.String).unique().sort().to_list() == [
        "2026-03-01",
        "2026-03-02",
    ]


def test_invalid_data_publishes_nothing_and_keeps_the_previous_night(
    object_server: ObjectServer, tmp_path: Path
) -> None:
    bucket = object_server.new_bucket()
    url = f"{object_server.scheme}://{bucket}/reports"
    first = klrank(
        "run", *_inputs(), *FAST, "--run-date", NIGHT, "--out", url, env=object_server.env
    )
    assert first.returncode == 0, str(first)
    before = object_server.objects(bucket)
    first_id = _complete_night(object_server, bucket, f"reports/run_date={NIGHT}")
    labels = pl.read_parquet(EXAMPLES / "labels.parquet")
    bad = labels.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("id")).alias("id")
    )
    bad.write_parquet(tmp_path / "bad.parquet")
    failed = klrank(
        "run",
        *_inputs(tmp_path / "bad.parquet"),
        *FAST,
        "--run-date",
        NIGHT,
        "--out",
        url,
        env=object_server.env,
    )
    assert failed.returncode == 1, str(failed)
    failures_key = f"reports/_failures/run_date={NIGHT}/failures.parquet"
    after = object_server.objects(bucket)
    assert {k: v for k, v in after.items() if k != failures_key} == before  # byte for byte
    assert f"{object_server.scheme}://{bucket}/{failures_key}" in failed.stderr
    cases = pl.read_parquet(object_server.get(bucket, failures_key))
    assert "not_nullable" in cases.get_column("check").to_list()
    # The next good run replaces the night and deletes the failure cases it no longer needs.
    again = klrank(
        "run", *_inputs(), *FAST, "--run-date", NIGHT, "--out", url, env=object_server.env
    )
    assert again.returncode == 0, str(again)
    assert failures_key not in object_server.objects(bucket)
    assert _complete_night(object_server, bucket, f"reports/run_date={NIGHT}") != first_id
    _no_leftovers(object_server, bucket)


@pytest.mark.slow
def test_a_rerun_killed_at_random_moments_never_breaks_the_night(
    object_server: ObjectServer, big_inputs: list[str | Path]
) -> None:
    bucket = object_server.new_bucket()
    url = f"{object_server.scheme}://{bucket}/reports"
    night = f"reports/run_date={NIGHT}"
    args = ("run", *big_inputs, *FAST, "--run-date", NIGHT, "--out", url, "--lease-ttl", "1")
    clock = time.monotonic()
    first = klrank(*args, env=object_server.env)
    duration = time.monotonic() - clock
    assert first.returncode == 0, str(first)
    chance = random.Random(15)
    outcomes = []
    for _ in range(6):
        before = object_server.objects(bucket, f"{night}/")
        previous = _complete_night(object_server, bucket, night)
        running = start(*args, env=object_server.env)
        time.sleep(chance.uniform(0.3, duration))
        running.process.send_signal(signal.SIGKILL)
        running.wait()
        now = object_server.objects(bucket, f"{night}/")
        if (
            f"{night}/_SUCCESS" in now
            and object_server.get(bucket, f"{night}/_SUCCESS").decode() == previous
        ):
            assert now == before  # killed before its commit: the night untouched
            outcomes.append("untouched")
        elif f"{night}/_SUCCESS" in now:
            _complete_night(object_server, bucket, night)  # killed after its last step
            outcomes.append("published")
        else:  # killed in its commit: each file whole, and the commit record left to finish it
            for key in now:
                if key.endswith(".parquet"):
                    assert pl.read_parquet(object_server.get(bucket, key)).height > 0
            committed = [k for k in object_server.objects(bucket) if k.endswith("/_COMMITTED")]
            assert len(committed) == 1
            outcomes.append("committing")
        # The next run takes the dead run's lease once it expires, and publishes a whole night.
        after = klrank(*args, env=object_server.env)
        assert after.returncode == 0, str(after)
        assert _complete_night(object_server, bucket, night) not in (previous,)
        _no_leftovers(object_server, bucket)
    print("kill outcomes:", outcomes)  # shown with -s
    assert "untouched" in outcomes, outcomes


def _events(stderr: str) -> dict[str, dict[str, str]]:
    """A JSON log's events by name (the last of each)."""
    return {e["event"]: e for e in map(json.loads, stderr.splitlines())}


def test_two_runs_of_one_night_never_interleave(
    object_server: ObjectServer, big_inputs: list[str | Path]
) -> None:
    bucket = object_server.new_bucket()
    url = f"{object_server.scheme}://{bucket}/reports"
    args = ("run", *big_inputs, "--run-date", NIGHT, "--out", url, "--log-format", "json")
    both = [start(*args, env=object_server.env) for _ in range(2)]
    results = [running.wait() for running in both]
    assert [r.returncode for r in results] == [0, 0], [str(r) for r in results]
    held = sorted(
        (events["lock.acquired"]["timestamp"], events["commit.done"]["timestamp"], events)
        for events in (_events(r.stderr) for r in results)
    )
    (_, first_done, _), (second_took, _, second) = held
    assert first_done <= second_took  # the second took the lease after the first committed
    # The night left is the later run's, whole.
    run_id = _complete_night(object_server, bucket, f"reports/run_date={NIGHT}")
    assert run_id == second["run.started"]["run_id"]
    _no_leftovers(object_server, bucket)


def test_a_live_lease_is_never_taken_over(object_server: ObjectServer) -> None:
    bucket = object_server.new_bucket()
    url = f"{object_server.scheme}://{bucket}/reports"
    key = f"reports/.run_date={NIGHT}.klrank.lock"
    body = {"run_id": "0" * 32, "host": "elsewhere", "pid": 4242, "ttl_s": 1.0, "taken_at": ""}
    stop = threading.Event()

    def renew() -> None:  # as a live run renews its lease, faster than its time to live
        while not stop.is_set():
            body["taken_at"] = str(time.monotonic())
            object_server.put(bucket, key, json.dumps(body).encode())
            stop.wait(0.2)

    renewer = threading.Thread(target=renew)
    renewer.start()
    try:
        args = ("run", *_inputs(), *FAST, "--run-date", NIGHT, "--out", url, "--lease-ttl", "1")
        busy = klrank(*args, "--lock-timeout", "4", env=object_server.env)
    finally:
        stop.set()
        renewer.join()
    assert busy.returncode == 75, str(busy)
    assert "another run (pid 4242 on elsewhere)" in busy.stderr and "--lock-timeout" in busy.stderr
    assert [k for k in object_server.objects(bucket) if "run_date=" in k and "lock" not in k] == []
    # Its holder gone (no more renewals), the lease expires and the next run takes it.
    taken = klrank(*args, "--log-format", "json", env=object_server.env)
    assert taken.returncode == 0, str(taken)
    assert "lease.expired" in _events(taken.stderr)
    _complete_night(object_server, bucket, f"reports/run_date={NIGHT}")
    _no_leftovers(object_server, bucket)


def _dead_lease(s3: ObjectServer, bucket: str) -> None:
    body = {"run_id": "0" * 32, "host": "elsewhere", "pid": 4242, "ttl_s": 1.0, "taken_at": ""}
    s3.put(bucket, f"reports/.run_date={NIGHT}.klrank.lock", json.dumps(body).encode())


def test_the_lease_is_created_only_if_absent_and_renewed_only_if_unchanged(
    object_server: ObjectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The two conditional writes the protocol stands on, in-process, at the lowest level:
    # each store's own (If-None-Match/If-Match; GCS's ifGenerationMatch through its JSON API).
    from klrank.io import buckets
    from klrank.pipeline.errors import LockBusyError

    for key, value in object_server.env.items():
        monkeypatch.setenv(key, value)
    bucket = object_server.new_bucket()
    target = buckets.place(f"{object_server.scheme}://{bucket}/reports/run_date={NIGHT}")
    with buckets.lease(target, ttl=600, timeout=60) as held:
        with pytest.raises(LockBusyError, match="still held"):
            with buckets.lease(target, ttl=600, timeout=0):
                pass
        held.renew()  # conditional on its own last version: renewed
        held.renew()
        object_server.put(bucket, held.where.key, b"another run's lease")
        with pytest.raises(LockBusyError, match="taken over"):
            held.renew()
    # Released without deleting the other run's lease.
    assert object_server.get(bucket, held.where.key) == b"another run's lease"


def test_a_dead_runs_lease_expires_and_the_next_run_takes_it(object_server: ObjectServer) -> None:
    bucket = object_server.new_bucket()
    url = f"{object_server.scheme}://{bucket}/reports"
    _dead_lease(object_server, bucket)
    args = ("run", *_inputs(), *FAST, "--run-date", NIGHT, "--out", url)
    busy = klrank(*args, "--lease-ttl", "5", "--lock-timeout", "1", env=object_server.env)
    assert busy.returncode == 75, str(busy)
    assert "(pid 4242 on elsewhere)" in busy.stderr
    taken = klrank(*args, "--lease-ttl", "1", "--log-format", "json", env=object_server.env)
    assert taken.returncode == 0, str(taken)
    assert '"event": "lease.expired"' in taken.stderr
    _complete_night(object_server, bucket, f"reports/run_date={NIGHT}")
    _no_leftovers(object_server, bucket)


def test_a_killed_runs_staging_is_removed_and_a_committed_one_is_finished(
    object_server: ObjectServer,
) -> None:
    bucket = object_server.new_bucket()
    url = f"{object_server.scheme}://{bucket}/reports"
    args = ("run", *_inputs(), *FAST, "--run-date", NIGHT, "--out", url)
    assert klrank(*args, env=object_server.env).returncode == 0
    night = f"reports/run_date={NIGHT}"
    published = {k: object_server.get(bucket, k) for k in object_server.objects(bucket)}
    from klrank.io.buckets import place, staging_key

    key = staging_key(place(f"{url}/run_date={NIGHT}"), place(url))
    # An uncommitted staging prefix (a run killed while uploading) and a committed one (killed
    # after _COMMITTED, before its copies): as a dead run leaves them.
    stale = f".klrank-staging-{key}-{'a' * 32}"
    object_server.put(bucket, f"{stale}/report.parquet", b"half")
    done = f".klrank-staging-{key}-{'b' * 32}"
    for name, data in published.items():
        if name.startswith(f"{night}/") and not name.endswith("_SUCCESS"):
            object_server.put(bucket, f"{done}/{name.removeprefix(night + '/')}", data)
    manifest = json.loads(published[f"{night}/manifest.json"]) | {"run_id": "b" * 32}
    object_server.put(bucket, f"{done}/manifest.json", json.dumps(manifest).encode())
    files = sorted(k.removeprefix(f"{done}/") for k in object_server.objects(bucket, f"{done}/"))
    record = {
        "target": f"{url}/run_date={NIGHT}",
        "target_key": night,
        "run_id": "b" * 32,
        "files": files,
    }
    object_server.put(bucket, f"{done}/_COMMITTED", json.dumps(record).encode())
    # A run with invalid data still finishes the committed run first, then fails.
    labels = pl.read_parquet(EXAMPLES / "labels.parquet").with_columns(
        pl.lit(None, pl.Int64).alias("id")
    )
    buf = io.BytesIO()
    labels.write_parquet(buf)
    object_server.put(bucket, "bad/labels.parquet", buf.getvalue())
    failed = klrank(
        "run",
        *_inputs(f"{object_server.scheme}://{bucket}/bad/labels.parquet"),
        *FAST,
        "--run-date",
        NIGHT,
        "--out",
        url,
        env=object_server.env,
    )
    assert failed.returncode == 1, str(failed)
    assert object_server.get(bucket, f"{night}/_SUCCESS") == b"b" * 32
    assert json.loads(object_server.get(bucket, f"{night}/manifest.json"))["run_id"] == "b" * 32
    assert [k for k in object_server.objects(bucket) if ".klrank-staging-" in k] == []


def test_a_rerun_without_rows_deletes_the_rows_the_night_had(object_server: ObjectServer) -> None:
    bucket = object_server.new_bucket()
    url = f"{object_server.scheme}://{bucket}/reports"
    args = ("run", *_inputs(), *FAST, "--run-date", NIGHT, "--out", url)
    assert klrank(*args, env=object_server.env).returncode == 0
    result = klrank(*args, "--no-rows", "--no-html", "--worst", "0", env=object_server.env)
    assert result.returncode == 0, str(result)
    night = f"reports/run_date={NIGHT}"
    _complete_night(object_server, bucket, night)
    left = {k.removeprefix(f"{night}/") for k in object_server.objects(bucket, f"{night}/")}
    assert left == ROOT_FILES - {"rows.parquet", "report.html", "worst_rows.parquet"}


def test_history_and_baseline_auto_read_the_nights_in_the_bucket(
    object_server: ObjectServer,
) -> None:
    bucket = object_server.new_bucket()
    url = f"{object_server.scheme}://{bucket}/reports"
    for night in ("2026-03-01", "2026-03-02"):
        result = klrank(
            "run",
            *_inputs(),
            *FAST,
            "--run-date",
            night,
            "--out",
            url,
            "--baseline",
            "auto",
            env=object_server.env,
        )
        assert result.returncode == 0, str(result)
    manifest = json.loads(object_server.get(bucket, "reports/run_date=2026-03-02/manifest.json"))
    assert manifest["baseline"]["path"] == f"{url}/run_date=2026-03-01/report.parquet"
    assert manifest["baseline"]["run_date"] == "2026-03-01"
    history = klrank("history", url, "--json", env=object_server.env)
    assert history.returncode == 0, str(history)
    assert json.loads(history.stdout)["nights"] == ["2026-03-01", "2026-03-02"]
    chart = object_server.get(bucket, "reports/history.html").decode()
    assert chart.startswith("<!DOCTYPE html>") and "2026-03-02" in chart
    # The chart is klrank's, beside the nights: not a night, and replaced by the next history.
    assert klrank("history", url, env=object_server.env).returncode == 0


def test_outputs_klrank_cannot_publish_to_are_usage_errors(
    object_server: ObjectServer, tmp_path: Path
) -> None:
    bucket = object_server.new_bucket()
    scheme, secret = object_server.scheme, object_server.secrets[-1]
    whole = "is a whole container" if scheme == "az" else "is a whole bucket"
    cases = {
        f"{scheme}://{bucket}": whole,
        f"{scheme}://{bucket}/": whole,
        "hdfs://bucket/reports": "hdfs:// is not supported yet",
        f"{scheme}://user:{secret}@{bucket}/reports": "must not carry credentials",
    }
    for out, message in cases.items():
        result = klrank("run", *_inputs(), "--out", out, env=object_server.env, cwd=tmp_path)
        assert result.returncode == 2, str(result)
        assert message in result.stderr
        _secrets_absent(object_server, result.stderr)
    object_server.put(bucket, "mine/notes.txt", b"a user's file")
    foreign = klrank(
        "run", *_inputs(), "--out", f"{object_server.scheme}://{bucket}/mine", env=object_server.env
    )
    assert foreign.returncode == 2, str(foreign)
    assert "'notes.txt', which klrank did not publish" in foreign.stderr
    assert object_server.objects(bucket) == {
        "mine/notes.txt": object_server.objects(bucket)["mine/notes.txt"]
    }
    assert list(tmp_path.iterdir()) == []  # no local "s3:" or "az:" folder either


def test_an_unreachable_store_is_a_storage_error(
    object_server: ObjectServer, tmp_path: Path
) -> None:
    out = f"{object_server.scheme}://nowhere/reports"
    result = klrank("run", *_inputs(), *FAST, "--out", out, env=object_server.unreachable_env())
    assert result.returncode == 74, str(result)
    assert out in result.stderr
    _secrets_absent(object_server, result.stderr)


def test_a_storage_table_in_the_config_file_configures_the_store_and_is_never_shown(
    object_server: ObjectServer, tmp_path: Path
) -> None:
    # The file holds the server's variables, but its endpoint is dead: the environment, which
    # sets only the live endpoint, must win over the file, as for klrank's own options.
    endpoint = next(
        k for k, v in object_server.unreachable_env().items() if object_server.env[k] != v
    )
    table = {k.lower(): v for k, v in object_server.unreachable_env().items()}
    config = tmp_path / "klrank.toml"
    config.write_text("[storage]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    bucket = object_server.new_bucket()
    url = f"{object_server.scheme}://{bucket}/reports"
    args = ("run", *_inputs(), *FAST, "--run-date", NIGHT, "--out", url, "--config", config)
    live = {endpoint: object_server.env[endpoint]}
    result = klrank(*args, "--json", env=live)
    assert result.returncode == 0, str(result)
    _complete_night(object_server, bucket, f"reports/run_date={NIGHT}")
    published = "\n".join(
        object_server.get(bucket, k).decode("utf-8", "replace")
        for k in object_server.objects(bucket)
    )
    _secrets_absent(object_server, result.stdout, result.stderr, published)
    # With the file alone, the dead endpoint is used: the file did configure the store.
    dead = klrank(*args)
    assert dead.returncode == 74, str(dead)
    _secrets_absent(object_server, dead.stdout, dead.stderr)
    shown = klrank("config", "show", "run", "--config", config, "--json", env=live)
    assert shown.returncode == 0, str(shown)
    _secrets_absent(object_server, shown.stdout, shown.stderr)
    storage = json.loads(shown.stdout)["storage"]
    for key, value in table.items():
        secret = value in object_server.secrets
        expected = "***" if secret else live.get(key.upper(), value)
        source = f"environment {key.upper()}" if key.upper() in live else "config file"
        assert storage[key] == {"value": expected, "source": source}
    toml = klrank("config", "show", "run", "--config", config, env=live)
    masked = any(value in object_server.secrets for value in table.values())  # none for GCS's
    assert "[storage]" in toml.stdout and ('= "***"' in toml.stdout) == masked
    _secrets_absent(object_server, toml.stdout)


def test_a_storage_key_that_configures_no_store_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "klrank.toml"
    config.write_text('[storage]\nendpoint_url = "http://127.0.0.1:1"\n')
    result = klrank("run", *_inputs(), "--out", tmp_path / "out", "--config", config)
    assert result.returncode == 2, str(result)
    assert "[storage] 'endpoint_url' configures no store" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_sas_token_reads_azure_inputs_and_is_never_shown(
    azurite_server: AzuriteServer, local_night: Path, tmp_path: Path
) -> None:
    # Reading only: Azurite answers a batch delete signed with a SAS token with a 500 (Azure
    # takes it), so publishing with one is not tested here.
    token = azurite_server.sas_token()
    env = {k: v for k, v in azurite_server.env.items() if k != "AZURE_STORAGE_ACCOUNT_KEY"}
    env["AZURE_STORAGE_SAS_KEY"] = token  # instead of the account's key
    bucket = azurite_server.new_bucket()
    azurite_server.upload(EXAMPLES, bucket, "data")
    out = tmp_path / "reports"
    inputs = ["--labels", f"az://{bucket}/data/labels.parquet"]
    inputs += ["--predictions", f"az://{bucket}/data/predictions/", "--slice-by", "region"]
    result = klrank("run", *inputs, *FAST, "--run-date", NIGHT, "--out", out, env=env)
    assert result.returncode == 0, str(result)
    night = out / f"run_date={NIGHT}"
    for name in ("report.parquet", "rows.parquet"):
        assert_frame_equal(pl.read_parquet(night / name), pl.read_parquet(local_night / name))
    signature = urllib.parse.parse_qs(token)["sig"][0]
    texts = [p.read_bytes().decode("utf-8", "replace") for p in night.iterdir()]
    for text in (result.stdout, result.stderr, *texts):
        assert signature not in text and urllib.parse.quote(signature, safe="") not in text


def test_publishing_to_gcs_without_the_gcs_extra_is_a_usage_error_naming_it(
    gcs_server: GcsServer, tmp_path: Path
) -> None:
    # google-cloud-storage hidden from the CLI, as in an install without the extra: a package
    # earlier on the path (google and google.cloud are namespace packages) that fails to import.
    hidden = tmp_path / "hidden" / "google" / "cloud" / "storage"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('no google-cloud-storage here')\n")
    bucket = gcs_server.new_bucket()
    out = f"gs://{bucket}/reports"
    env = gcs_server.env | {"PYTHONPATH": str(tmp_path / "hidden")}
    result = klrank("run", *_inputs(), *FAST, "--run-date", NIGHT, "--out", out, env=env)
    assert result.returncode == 2, str(result)
    assert "pip install 'klrank[gcs]'" in result.stderr
    assert gcs_server.objects(bucket) == {}
    # Reading needs no extra (pyarrow and Polars): a gs:// input into a local folder.
    gcs_server.upload(EXAMPLES, bucket, "data")
    inputs = ["--labels", f"gs://{bucket}/data/labels.parquet"]
    inputs += ["--predictions", f"gs://{bucket}/data/predictions/", "--slice-by", "region"]
    local = tmp_path / "local"
    read = klrank("run", *inputs, *FAST, "--run-date", NIGHT, "--out", local, env=env)
    assert read.returncode == 0, str(read)
    assert (local / f"run_date={NIGHT}" / "_SUCCESS").exists()
