"""S3 artifacts through the minio SDK, against whatever endpoint the environment names.

The endpoint and keys come from the environment only, the way Kubeflow hands them
to a step (the secret ``mlpipeline-minio-artifact`` mapped to env vars):

    S3_ENDPOINT_URL        http://host:port (MLFLOW_S3_ENDPOINT_URL is read too)
    AWS_ACCESS_KEY_ID      access key
    AWS_SECRET_ACCESS_KEY  secret key

Every failure (unknown key, wrong secret, missing bucket, unreachable endpoint)
raises :class:`StoreError` with a message naming the endpoint and the bucket.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Mapping
from urllib.parse import urlsplit

ENDPOINT_VARS = ("S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class StoreError(RuntimeError):
    """An S3 operation that failed, with the endpoint, the bucket and what to check."""


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` (or KFP's ``minio://bucket/key``) -> (bucket, key)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("s3", "minio") or not parts.netloc:
        raise StoreError(f"not an S3 URI: {uri!r} (expected s3://BUCKET/KEY)")
    return parts.netloc, parts.path.lstrip("/")


def _join(prefix: str, rel: str) -> str:
    return f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel


class _Progress:
    """minio's progress protocol (set_meta, update) feeding one tqdm bar over many objects."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                        disable=not enabled, file=sys.stderr, leave=False)

    def set_meta(self, object_name: str, total_length: int) -> None:
        if not self.bar.total:  # a single download learns its size from the response
            self.bar.total = total_length
        self.bar.set_postfix_str(PurePosixPath(object_name).name, refresh=False)

    def update(self, length: int) -> None:
        self.bar.update(length)

    def close(self) -> None:
        self.bar.close()


@dataclass
class S3Store:
    """A minio client bound to one endpoint; methods take (bucket, key) pairs."""

    endpoint: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    region: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 300.0

    def __post_init__(self) -> None:
        import certifi
        import urllib3
        from minio import Minio

        url = self.endpoint if "://" in self.endpoint else f"http://{self.endpoint}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StoreError(f"S3 endpoint {self.endpoint!r} is not an http(s) URL")
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        # Few, fast retries: an unreachable endpoint should fail in about a second,
        # not after minio's default five retries of a five-minute connect timeout.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.connect_timeout, read=self.read_timeout),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(total=2, connect=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self.client = Minio(parts.netloc, access_key=self.access_key, secret_key=self.secret_key,
                            secure=parts.scheme == "https", region=self.region, http_client=http)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "S3Store":
        """The store the environment names (see the module doc); StoreError if incomplete."""
        env = os.environ if env is None else env
        endpoint = next((env[v] for v in ENDPOINT_VARS if env.get(v)), None)
        missing = ([] if endpoint else ["S3_ENDPOINT_URL (or MLFLOW_S3_ENDPOINT_URL)"]) + [v for v in KEY_VARS if not env.get(v)]
        if missing:
            raise StoreError(
                "S3 is not configured: set " + ", ".join(missing)
                + " (in Kubeflow they come from the secret mlpipeline-minio-artifact; locally `ser services up` prints them)"
            )
        return cls(endpoint, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"))

    # -- errors -------------------------------------------------------------------

    def _reason(self, exc: Exception, bucket: str | None) -> str:
        from minio.error import S3Error

        if isinstance(exc, S3Error):
            code = exc.code
            if code == "InvalidAccessKeyId":
                return f"access key {self.access_key!r} is not known to the server (check AWS_ACCESS_KEY_ID)"
            if code == "SignatureDoesNotMatch":
                return f"the secret key does not match access key {self.access_key!r} (check AWS_SECRET_ACCESS_KEY)"
            if code == "AccessDenied":
                return f"access denied to access key {self.access_key!r}"
            if code == "NoSuchBucket":
                return f"bucket {bucket!r} does not exist (create it first: S3Store.ensure_bucket)"
            if code in ("NoSuchKey", "ResourceNotFound"):
                return "no such object"
            return f"{code}: {exc.message}"
        text = str(exc)
        if "Connection refused" in text or "Max retries" in text or "NameResolution" in text or "timed out" in text.lower():
            return "cannot reach the endpoint (is the S3 server running? check S3_ENDPOINT_URL)"
        return f"{type(exc).__name__}: {text}"

    @contextmanager
    def _op(self, what: str, bucket: str | None, key: str | None = None) -> Iterator[None]:
        """Turn any client failure into a StoreError naming endpoint, bucket and key."""
        from minio.error import MinioException
        from urllib3.exceptions import HTTPError

        try:
            yield
        except StoreError:
            raise
        except (MinioException, HTTPError, OSError, ValueError) as exc:
            where = f"s3://{bucket}/{key or ''}" if bucket else "the store"
            raise StoreError(f"{what} {where} at {self.endpoint}: {self._reason(exc, bucket)}") from exc

    # -- buckets and objects ------------------------------------------------------

    def check(self) -> None:
        """Fail with StoreError unless the endpoint answers and accepts the keys."""
        with self._op("list buckets of", None):
            self.client.list_buckets()

    def ensure_bucket(self, bucket: str) -> bool:
        """Create ``bucket`` if it is missing; True when it was created."""
        from minio.error import S3Error

        with self._op("create bucket", bucket):
            if self.client.bucket_exists(bucket):
                return False
            try:
                self.client.make_bucket(bucket)
            except S3Error as exc:
                if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    return False
                raise
            return True

    def exists(self, bucket: str, key: str) -> bool:
        """Whether the object exists; a missing bucket is an error, not False."""
        from minio.error import S3Error

        with self._op("look up", bucket, key):
            try:
                self.client.stat_object(bucket, key)
                return True
            except S3Error as exc:
                if exc.code not in ("NoSuchKey", "ResourceNotFound", "NoSuchObject"):
                    raise
            if not self.client.bucket_exists(bucket):
                raise StoreError(f"look up s3://{bucket}/{key} at {self.endpoint}: bucket {bucket!r} does not exist")
            return False

    def list(self, bucket: str, prefix: str = "") -> list[tuple[str, int]]:
        """(key, size) of every object under ``prefix`` (a folder: 'a/b' means 'a/b/...')."""
        folder = prefix.strip("/") + "/" if prefix.strip("/") else ""
        with self._op("list", bucket, folder):
            return [(o.object_name, int(o.size or 0)) for o in self.client.list_objects(bucket, prefix=folder, recursive=True)
                    if not o.is_dir]

    def put_file(self, bucket: str, key: str, path: str | Path, progress: bool = False) -> str:
        """Upload one file; returns its s3:// URI."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"upload to s3://{bucket}/{key} at {self.endpoint}: {path} is not a file")
        bar = _Progress(path.stat().st_size, f"upload {path.name}", progress)
        try:
            with self._op("upload to", bucket, key):
                self.client.fput_object(bucket, key, str(path), progress=bar)
        finally:
            bar.close()
        return f"s3://{bucket}/{key}"

    def get_file(self, bucket: str, key: str, path: str | Path, progress: bool = False) -> Path:
        """Download one object to ``path`` (parents created); returns the path."""
        path = Path(path)
        bar = _Progress(0, f"download {PurePosixPath(key).name}", progress)
        try:
            with self._op("download", bucket, key):
                self.client.fget_object(bucket, key, str(path), progress=bar)
        finally:
            bar.close()
        return path

    def upload_dir(self, local_dir: str | Path, bucket: str, prefix: str = "", progress: bool = True) -> list[str]:
        """Upload every file under ``local_dir`` to ``prefix/relative/path``; returns the keys."""
        root = Path(local_dir)
        if not root.is_dir():
            raise StoreError(f"upload to s3://{bucket}/{prefix} at {self.endpoint}: {root} is not a directory")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        bar = _Progress(sum(p.stat().st_size for p in files), f"upload {root.name}", progress)
        keys = []
        try:
            for path in files:
                key = _join(prefix, path.relative_to(root).as_posix())
                with self._op("upload to", bucket, key):
                    self.client.fput_object(bucket, key, str(path), progress=bar)
                keys.append(key)
        finally:
            bar.close()
        return keys

    def download_prefix(self, bucket: str, prefix: str, local_dir: str | Path, progress: bool = True) -> list[Path]:
        """Download every object under ``prefix`` into ``local_dir``, keeping relative paths."""
        root = Path(local_dir).resolve()
        objects = self.list(bucket, prefix)
        if not objects:
            raise StoreError(f"download s3://{bucket}/{prefix} at {self.endpoint}: no objects under this prefix")
        folder = prefix.strip("/") + "/" if prefix.strip("/") else ""
        bar = _Progress(sum(size for _, size in objects), f"download {prefix or bucket}", progress)
        paths = []
        try:
            for key, _ in objects:
                target = (root / key[len(folder):]).resolve()
                if root not in target.parents:
                    raise StoreError(f"download s3://{bucket}/{key} at {self.endpoint}: key escapes {root}")
                with self._op("download", bucket, key):
                    self.client.fget_object(bucket, key, str(target), progress=bar)
                paths.append(target)
        finally:
            bar.close()
        return paths
