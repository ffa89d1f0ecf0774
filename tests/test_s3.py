"""The warehouse on S3: moto's S3 server on 127.0.0.1 (a real HTTP endpoint, conditional writes
included), reached through the standard AWS variables as a user's cluster would."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pipeline.warehouse import Warehouse
from pipeline.warehouse.fs import Store, StoreError

import test_manifest as protocol

moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint() -> str:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch) -> dict:
    env = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return env


@pytest.fixture
def bucket(s3_env: dict) -> str:
    import boto3

    name = f"wh-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_warehouse(bucket: str) -> Warehouse:
    return Warehouse(f"s3://{bucket}/wh")


def test_store_conditional_writes(s3_warehouse: Warehouse) -> None:
    store = s3_warehouse.store
    assert store.create("x/a.json", b"1") and not store.create("x/a.json", b"2")
    data, tag = store.read_tagged("x/a.json")
    assert data == b"1"
    assert store.replace("x/a.json", b"3", tag) and not store.replace("x/a.json", b"4", tag)
    assert store.read_bytes("x/a.json") == b"3" and store.listdir("x") == ["x/a.json"]


def test_an_aborted_upload_leaves_nothing(s3_warehouse: Warehouse) -> None:
    with pytest.raises(KeyError), s3_warehouse.open_writer("toy", "a", 0, protocol.TOY) as writer:
        writer.write(protocol.toy(10))
        raise KeyError("model failed")
    assert s3_warehouse.store.listdir("toy") == []


def test_commit_race_s3(s3_warehouse: Warehouse) -> None:
    protocol.check_race(s3_warehouse)


def test_commit_race_threads_s3(s3_warehouse: Warehouse) -> None:
    protocol.check_threads_race(s3_warehouse)


def test_generations_and_manifest_s3(s3_warehouse: Warehouse) -> None:
    protocol.check_generations_and_manifest(s3_warehouse)


def test_lease_takeover_s3(s3_warehouse: Warehouse, tmp_path: Path, monkeypatch) -> None:
    protocol.check_object_lease(tmp_path, monkeypatch, s3_warehouse)


def test_lock_and_commit_through_the_warehouse_s3(s3_warehouse: Warehouse) -> None:
    from pipeline.jobs import writing_job
    from pipeline.warehouse import lock as runlock

    with writing_job(s3_warehouse, "ingest", ["a"], check=False) as wh:
        token, holder = runlock._remote_try_acquire(wh.store, "a", "another job", "job:other")
        assert token is None and holder["token"] == 1  # another job is refused while the lease is fresh
        rec = wh.commit("a", "toy", 0, [wh.write("toy", protocol.toy(4), "a", 0)])
    assert rec["token"] == 1
    assert wh.store.read_bytes("_manifests/run=a.json") is not None
    assert Warehouse(wh.url).connect().execute("select count(*) from toy").fetchone()[0] == 4


def test_missing_bucket_is_one_clear_error(s3_env: dict) -> None:
    with pytest.raises(StoreError, match=r"s3://no-such-bucket-x/wh: the bucket does not exist"):
        Store("s3://no-such-bucket-x/wh").check_usable()


def test_unreachable_endpoint_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with pytest.raises(StoreError, match="s3://somebucket/wh: the endpoint cannot be reached"):
        Store("s3://somebucket/wh").check_usable()


READ_ONLY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadObject"], "Resource": "*"}]}


def test_a_bucket_without_write_permission_is_one_clear_error_and_nothing_is_written(bucket, s3_env, tmp_path,
                                                                                      capsys, monkeypatch) -> None:
    """moto's IAM mode: a user allowed to read only. The command fails with one line naming the URL and
    the credentials to check, before writing anything."""
    import json

    import boto3
    from moto.core.authorization import enable_iam_authentication

    from pipeline.cli import main
    from pipeline.testing import make_timit

    iam = boto3.client("iam", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(READ_ONLY))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    corpus = make_timit(tmp_path / "timit")
    with enable_iam_authentication():
        code = main(["ingest", "--format", "timit", "--corpus", str(corpus), "--run", "r",
                     "--warehouse", f"s3://{bucket}/wh"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert err.startswith(f"error: warehouse s3://{bucket}/wh: access denied") and "AWS_ACCESS_KEY_ID" in err
    assert boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).list_objects_v2(
        Bucket=bucket).get("KeyCount", 0) == 0  # nothing half-committed, not even the probe


def test_a_missing_bucket_fails_the_command_in_one_line(s3_env, tmp_path, capsys) -> None:
    from pipeline.cli import main
    from pipeline.testing import make_timit

    corpus = make_timit(tmp_path / "timit")
    code = main(["ingest", "--format", "timit", "--corpus", str(corpus), "--run", "r",
                 "--warehouse", "s3://no-such-bucket-y/wh"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "s3://no-such-bucket-y/wh: the bucket does not exist" in err
    assert main(["sql", "select 1", "--warehouse", "s3://no-such-bucket-y/wh"]) == 1
    assert "s3://no-such-bucket-y/wh" in capsys.readouterr().err


def _numbers(csv: str) -> list[float]:
    import re

    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", csv)]


def _words(csv: str) -> list[str]:
    import re

    return re.findall(r"[A-Za-z_]+", csv)


@pytest.mark.slow
def test_extract_then_sql_analyze_report_on_s3(bucket, s3_env, tmp_path, capsys) -> None:
    """The whole flow against the S3 endpoint, through the CLI as a user runs it: the same rows as the same
    commands on a local folder."""
    from pipeline.cli import main
    from pipeline.testing import make_timit

    corpus = make_timit(tmp_path / "timit")
    url, local = f"s3://{bucket}/wh", str(tmp_path / "local")
    rows = {}
    for wh in (url, local):
        assert main(["extract", "--format", "timit", "--corpus", str(corpus), "--run", "r", "--warehouse", wh,
                     "--shard-size", "2", "--layers", "0,1", "--no-progress"]) == 0, capsys.readouterr().err
        assert main(["analyze", "--run", "r", "--warehouse", wh, "--k", "3", "--layers", "0"]) == 0, \
            capsys.readouterr().err
        capsys.readouterr()
        assert main(["sql", "select layer, count(*) as n, sum(list_sum(vector)) as s from frames where run = 'r' "
                     "group by layer order by layer", "--format", "csv", "--warehouse", wh]) == 0
        rows[wh] = capsys.readouterr().out
        assert main(["sql", "layer_summary", "--param", "run=r", "--format", "csv", "--warehouse", wh]) == 0
        rows[wh] += capsys.readouterr().out
    assert _numbers(rows[url]) == pytest.approx(_numbers(rows[local]), rel=1e-9)  # sums: DuckDB's thread order
    assert "0," in rows[url] and _words(rows[url]) == _words(rows[local])
    out = tmp_path / "report"
    assert main(["report", "--runs", "r", "--warehouse", url, "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "index.html").stat().st_size > 10_000
    assert main(["check", "--warehouse", url]) == 0, capsys.readouterr().out
    # the warehouse holds only committed files, commit objects, manifests, facts, the lease and views.sql
    names = Warehouse(url).store.listdir("")
    assert not [n for n in names if n.startswith(("_tmp", "_probe"))]
    assert any(n.startswith("_manifests/run=r") for n in names) and "views.sql" in names


def test_missing_credentials_are_one_clear_error(s3_env, monkeypatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StoreError, match="s3://somebucket/wh: no credentials: set AWS_ACCESS_KEY_ID"):
        Store("s3://somebucket/wh").check_usable()


def test_a_prefix_holding_something_else_is_refused(bucket, s3_env, tmp_path, capsys) -> None:
    import boto3

    from pipeline.cli import main
    from pipeline.testing import make_timit

    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).put_object(Bucket=bucket, Key="data/photos/a.jpg",
                                                                           Body=b"x")
    corpus = make_timit(tmp_path / "timit")
    code = main(["ingest", "--format", "timit", "--corpus", str(corpus), "--run", "r",
                 "--warehouse", f"s3://{bucket}/data"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert f"s3://{bucket}/data: the prefix holds other objects (photos), not a warehouse" in err
    assert Warehouse(f"s3://{bucket}/data").store.listdir("") == ["photos/a.jpg"]  # nothing written
