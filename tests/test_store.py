"""ser.adapters.store against a real S3 server (SeaweedFS on 127.0.0.1), plus its offline checks."""

from __future__ import annotations


import pytest

from ser.ops.services import free_port
from ser.adapters.store import S3Store, StoreError, parse_uri
from tests.helpers import count_connections
from tests.servers import TEST_BUCKET, s3_env, s3_server  # noqa: F401  (fixtures)


def test_parse_uri_accepts_s3_and_kfp_minio():
    assert parse_uri("s3://bucket/a/b.pt") == ("bucket", "a/b.pt")
    assert parse_uri("minio://mlpipeline/v2/artifacts") == ("mlpipeline", "v2/artifacts")
    with pytest.raises(StoreError, match="not an S3 URI"):
        parse_uri("/local/path")


def test_from_env_names_what_is_missing():
    with pytest.raises(StoreError, match="S3_ENDPOINT_URL.*AWS_SECRET_ACCESS_KEY"):
        S3Store.from_env({"AWS_ACCESS_KEY_ID": "k"})
    store = S3Store.from_env({"MLFLOW_S3_ENDPOINT_URL": "minio-service.kubeflow:9000", "AWS_ACCESS_KEY_ID": "k",
                              "AWS_SECRET_ACCESS_KEY": "hush-hush"})
    assert store.endpoint == "http://minio-service.kubeflow:9000"  # KFP's host:port form
    assert "hush-hush" not in repr(store)


@pytest.mark.integration
def test_round_trip_files_and_folders(s3_env, tmp_path):
    store = S3Store.from_env()
    assert store.endpoint == s3_env["S3_ENDPOINT_URL"]
    assert store.ensure_bucket("ser-roundtrip") is True
    assert store.ensure_bucket("ser-roundtrip") is False

    src = tmp_path / "run"
    (src / "plots").mkdir(parents=True)
    files = {"metrics.json": b'{"macro_f1": 0.5}', "model.pt": bytes(range(256)) * 4000, "plots/cm.png": b"\x89PNG..."}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    keys = store.upload_dir(src, "ser-roundtrip", "runs/r1", progress=False)
    assert sorted(keys) == sorted(f"runs/r1/{rel}" for rel in files)
    assert store.exists("ser-roundtrip", "runs/r1/model.pt")
    assert not store.exists("ser-roundtrip", "runs/r1/missing.pt")
    # a prefix is a folder: runs/r1 does not match runs/r10
    store.put_file("ser-roundtrip", "runs/r10/other.txt", src / "metrics.json")
    assert {k for k, _ in store.list("ser-roundtrip", "runs/r1")} == set(keys)

    dst = tmp_path / "back"
    paths = store.download_prefix("ser-roundtrip", "runs/r1/", dst, progress=True)
    assert len(paths) == len(files)
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data

    uri = store.put_file(TEST_BUCKET, "single/model.pt", src / "model.pt", progress=True)
    assert uri == f"s3://{TEST_BUCKET}/single/model.pt"
    got = store.get_file(*parse_uri(uri), tmp_path / "one" / "model.pt", progress=True)
    assert got.read_bytes() == files["model.pt"]


@pytest.mark.integration
def test_wrong_secret_key_names_endpoint_and_bucket(s3_server, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    store = S3Store(s3_server.url, s3_server.access_key, "not-the-secret")
    with pytest.raises(StoreError) as err:
        store.put_file(TEST_BUCKET, "k/f.txt", tmp_path / "f.txt")
    message = str(err.value)
    assert s3_server.url in message and f"s3://{TEST_BUCKET}/k/f.txt" in message
    assert "secret key does not match" in message and "AWS_SECRET_ACCESS_KEY" in message


@pytest.mark.integration
def test_unknown_access_key_is_named(s3_server, tmp_path):
    store = S3Store(s3_server.url, "nobody", "whatever")
    with pytest.raises(StoreError, match=r"access key 'nobody' is not known.*AWS_ACCESS_KEY_ID") as err:
        store.download_prefix(TEST_BUCKET, "anything", tmp_path)
    assert s3_server.url in str(err.value) and TEST_BUCKET in str(err.value)


@pytest.mark.integration
def test_missing_bucket_gives_a_clear_message(s3_env, tmp_path):
    store = S3Store.from_env()
    (tmp_path / "f.txt").write_text("x")
    for call in (lambda: store.put_file("no-such-bucket", "a/f.txt", tmp_path / "f.txt"),
                 lambda: store.get_file("no-such-bucket", "a/f.txt", tmp_path / "g.txt"),
                 lambda: store.exists("no-such-bucket", "a/f.txt"),
                 lambda: store.download_prefix("no-such-bucket", "a", tmp_path / "d")):
        with pytest.raises(StoreError) as err:
            call()
        message = str(err.value)
        assert "bucket 'no-such-bucket' does not exist" in message and store.endpoint in message
    with pytest.raises(StoreError, match="no objects under this prefix"):
        store.download_prefix(TEST_BUCKET, "nothing/here", tmp_path / "e")
    with pytest.raises(StoreError, match="no such object"):
        store.get_file(TEST_BUCKET, "nothing/here.pt", tmp_path / "h.pt")


@pytest.mark.integration
def test_unreachable_endpoint_fails_fast_and_says_so(tmp_path, monkeypatch):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    store = S3Store(endpoint, "k", "s")
    attempts = count_connections(monkeypatch, port)
    with pytest.raises(StoreError, match="cannot reach the endpoint") as err:
        store.ensure_bucket("ser-artifacts")
    assert 1 <= len(attempts) <= 2, f"{len(attempts)} connection attempts: the store retries an unreachable endpoint"
    assert endpoint in str(err.value) and "ser-artifacts" in str(err.value)
