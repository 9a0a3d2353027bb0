"""`vmo fuzz --db redis://...`: campaigns on several machines sharing one Redis database.

A real ``redis-server`` is started on a loopback port for the module (Debian's package;
``.ci/run`` installs it). The fleet test runs two campaign processes against a mutant, each
with its own local directory database, sharing only Redis: what the first finds, the second
replays as its very first program.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis client is not installed (pip install redis)")
    import redis

    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _vmo(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "vmo", "fuzz", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _result(proc: subprocess.CompletedProcess[str]) -> dict:
    for line in proc.stdout.splitlines():
        event = json.loads(line)
        if event.get("event") == "result":
            return event
    raise AssertionError(f"no result event: {proc.stdout}\n{proc.stderr}")


def test_a_failure_found_by_one_campaign_is_replayed_first_by_another(
        redis_url: str, tmp_path: Path) -> None:
    import redis

    common = ["--mutant", "fork_without_copy", "--mutants-dir", str(ROOT / "fuzz" / "mutants"),
              "--db", redis_url, "--time", "60", "--json",
              "--failures-dir", str(tmp_path / "failures")]
    first = _vmo(*common, "--local-db", str(tmp_path / "a"), "--seed", "1", cwd=tmp_path)
    found = _result(first)
    assert found["killed"], found
    client = redis.Redis.from_url(redis_url)
    try:
        keys = client.keys(b"vmo-fuzz:*")
    finally:
        client.close()
    assert keys, "the first campaign stored nothing in Redis"
    # The second process shares nothing but Redis: another local directory, another seed.
    assert not (tmp_path / "b").exists()
    second = _vmo(*common, "--local-db", str(tmp_path / "b"), "--seed", "2", cwd=tmp_path)
    replayed = _result(second)
    assert replayed["killed"], replayed
    assert replayed["programs_before"] == 0, replayed  # its very first program
    assert replayed["steps"] <= found["steps"]


def test_a_campaign_writes_to_redis_and_the_local_directory(redis_url: str,
                                                             tmp_path: Path) -> None:
    from vmo.testing.databases import open_database

    db = open_database(redis_url, local=tmp_path / "local")
    db.save(b"key", b"value")
    assert list(db.fetch(b"key")) == [b"value"]
    assert any((tmp_path / "local").rglob("*")), "nothing written to the local directory"
    ro = open_database(None, readonly=[redis_url])
    ro.save(b"key", b"other")  # read-only: dropped
    assert list(ro.fetch(b"key")) == [b"value"]
    db.delete(b"key", b"value")


def test_read_only_replays_without_writing(redis_url: str, tmp_path: Path) -> None:
    proc = _vmo("--steps", "30", "--seed", "3", "--no-db", "--db-readonly", redis_url,
                "--plain", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{redis_url} (read-only)" in proc.stdout


def test_unreachable_redis_is_a_clear_error_at_once(tmp_path: Path) -> None:
    pytest.importorskip("redis", reason="the redis client is not installed (pip install redis)")
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    proc = _vmo("--time", "30", "--db", f"redis://127.0.0.1:{port}/0", "--plain",
                cwd=tmp_path, timeout=60)
    assert time.monotonic() - t0 < 15
    assert proc.returncode != 0
    assert "cannot reach the Redis example database" in proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr
    assert "steps" not in proc.stdout  # no campaign ran without its database
