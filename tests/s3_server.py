"""A real S3-compatible server for the remote-storage tests: moto's server on 127.0.0.1.

``s3_bucket`` (a pytest fixture; import it into a test module or a conftest)
starts ``python -m moto.server`` on a free port in a subprocess, creates a
bucket and yields an :class:`S3Bucket`: a pyarrow ``S3FileSystem`` on it, the
``s3://`` URI of a fresh prefix, and the environment (``AWS_ENDPOINT_URL``,
dummy credentials, region) under which pyarrow and Ray in other processes
reach the same server. The environment is set in ``os.environ`` for the
test's duration (Ray workers started then inherit it) and restored after.
No mock of our own: our code talks HTTP to a server, as it would to S3.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "avatar3d-test"


@dataclass
class S3Bucket:
    endpoint: str            # http://127.0.0.1:<port>
    bucket: str
    filesystem: object       # pyarrow.fs.S3FileSystem on the server
    env: dict[str, str]      # what another process needs to reach it

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *parts])

    def upload_folder(self, local: str | Path, prefix: str) -> str:
        """Copy a local folder into the bucket under ``prefix`` -> its s3:// URI."""
        import pyarrow.fs as pafs

        pafs.copy_files(str(local), f"{self.bucket}/{prefix}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.filesystem)
        return self.uri(prefix)

    def keys(self, prefix: str) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.filesystem.get_file_info(pafs.FileSelector(f"{self.bucket}/{prefix}", recursive=True,
                                                                 allow_not_found=True))
        return sorted(i.path[len(self.bucket) + len(prefix) + 2:] for i in infos if i.type == pafs.FileType.File)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(endpoint: str, proc: subprocess.Popen, log, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"moto server exited with {proc.returncode}: {log.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto server did not answer at {endpoint} within {timeout_s:.0f} s")


@pytest.fixture(scope="session")
def s3_server():
    """(endpoint, env) of one moto S3 server for the whole session."""
    pytest.importorskip("moto.server", reason="moto[server] (the dev extra) is not installed")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # The server logs every request: to a file, not a pipe nobody reads (a full pipe stalls the server).
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(endpoint, proc, log)
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint,
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}
        yield endpoint, env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """An :class:`S3Bucket` on the session's server, with its environment set for this test."""
    import pyarrow.fs as pafs

    endpoint, env = s3_server
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="testing",
                           secret_key="testing", region="us-east-1", allow_bucket_creation=True)
    if fs.get_file_info(BUCKET).type == pafs.FileType.NotFound:
        fs.create_dir(BUCKET)
    return S3Bucket(endpoint=endpoint, bucket=BUCKET, filesystem=fs, env=env)


@pytest.fixture(scope="module")
def ray_with_s3(s3_server):
    """A local Ray started with the server's environment, which its worker processes inherit."""
    import ray

    _, env = s3_server
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    ray.init(num_cpus=3, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def fresh_prefix(name: str = "t") -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"
