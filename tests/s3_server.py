"""A real S3-compatible server for the bucket tests: moto's standalone server on 127.0.0.1,
credentials and endpoint in the standard AWS environment variables."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_moto(port: int) -> bool:
    """True when the S3 API answers on ``port`` (not just anything listening: a Ray worker
    may take a port between our pick and moto's bind)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return b"ListAllMyBucketsResult" in response.read()
    except OSError:
        return False


def start_moto(log) -> tuple[subprocess.Popen, int]:
    binary = os.path.join(os.path.dirname(sys.executable), "moto_server")
    for _ in range(5):  # another process may take the port first: try another
        port = free_port()
        server = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 120  # moto imports a lot: on a busy machine it takes a while to listen
        while server.poll() is None and time.time() < deadline:
            if _is_moto(port):
                return server, port
            time.sleep(0.2)
        server.kill()
    log.seek(0)
    pytest.fail(f"moto_server did not serve S3 on 127.0.0.1: {log.read().decode(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto on 127.0.0.1 for the tests of one module; yields the AWS_* variables it set."""
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w+b")  # a file, not a pipe: moto logs every request
    server, port = start_moto(log)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _forget_s3_clients()  # fsspec caches filesystems: one made for an earlier module's server has its port
    yield env
    _forget_s3_clients()
    server.kill()
    server.wait()
    log.close()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _forget_s3_clients() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
