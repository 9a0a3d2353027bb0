"""Example databases for fuzz campaigns: a directory, a Redis server, and layers of them.

``vmo fuzz --db`` takes a directory path or a ``redis://HOST:PORT/DB`` URL; `open_database`
turns that (and any ``--db-readonly`` sources) into one hypothesis ``ExampleDatabase``:

- a path: ``DirectoryBasedExampleDatabase(path)``, as before;
- a Redis URL: ``MultiplexedDatabase(local directory, RedisExampleDatabase(url))``. Every
  failing program is written to both; replays read both, so a machine replays its own
  findings from disk and the fleet's from Redis;
- each read-only source (a path or a Redis URL) is added as a ``ReadOnlyDatabase`` layer: its
  programs are replayed, nothing is ever written to it (replaying a fleet's findings from CI
  or a laptop without touching the fleet's database).

A Redis server that cannot be reached is an error at once (`DatabaseUnavailable`, after a
connect timeout of a few seconds): never a hang, and never a silent campaign without the
database the user asked for. Operations time out too, so a server that goes away mid-campaign
fails the campaign rather than hanging it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from urllib.parse import urlsplit

from hypothesis.database import (
    DirectoryBasedExampleDatabase,
    ExampleDatabase,
    MultiplexedDatabase,
    ReadOnlyDatabase,
)

__all__ = [
    "DEFAULT_LOCAL",
    "KEY_PREFIX",
    "DatabaseUnavailable",
    "describe_database",
    "is_redis_url",
    "open_database",
    "open_redis",
]

#: The local directory database (alone, or layered under a Redis database).
DEFAULT_LOCAL = ".hypothesis/vmo-fuzz"
#: Prefix of every key `vmo fuzz` stores in Redis, so that a server can be shared with
#: other users of hypothesis.
KEY_PREFIX = b"vmo-fuzz:"
#: Seconds to wait for a Redis connection (and for each reply) before giving up.
CONNECT_TIMEOUT = 3.0
OPERATION_TIMEOUT = 10.0


class DatabaseUnavailable(RuntimeError):
    """The example database asked for cannot be used (unreachable server, missing client)."""


def is_redis_url(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(("redis://", "rediss://", "unix://"))


def open_redis(url: str, *, connect_timeout: float = CONNECT_TIMEOUT,
               expire_after: timedelta = timedelta(days=8)) -> ExampleDatabase:
    """A ``RedisExampleDatabase`` on ``url`` (``redis://HOST:PORT/DB``), checked with a PING:
    raises `DatabaseUnavailable` within about ``connect_timeout`` seconds if the server cannot
    be reached."""
    try:
        import redis
        from hypothesis.extra.redis import RedisExampleDatabase
    except ImportError as e:
        raise DatabaseUnavailable(
            f"a Redis example database needs the redis client: pip install redis ({e})") from e
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss") and not parts.hostname:
        raise DatabaseUnavailable(f"Redis URL {url!r} names no host (redis://HOST:PORT/DB)")
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=connect_timeout,
                                      socket_timeout=max(connect_timeout, OPERATION_TIMEOUT))
        client.ping()
    except (redis.exceptions.RedisError, OSError, ValueError) as e:
        raise DatabaseUnavailable(
            f"cannot reach the Redis example database at {url}: {e}") from e
    return RedisExampleDatabase(client, expire_after=expire_after, key_prefix=KEY_PREFIX)


def _open_one(spec: str | os.PathLike[str]) -> ExampleDatabase:
    if is_redis_url(spec):
        return open_redis(str(spec))
    return DirectoryBasedExampleDatabase(os.fspath(spec))


def open_database(spec: str | os.PathLike[str] | ExampleDatabase | None, *,
                  local: str | os.PathLike[str] | None = DEFAULT_LOCAL,
                  readonly: Sequence[str | os.PathLike[str]] = ()) -> ExampleDatabase | None:
    """The example database for ``--db SPEC``, ``--local-db LOCAL`` and ``--db-readonly``.

    ``spec`` is a directory, a Redis URL (then layered with the directory ``local``, unless
    ``local`` is None), an ``ExampleDatabase`` (used as is), or None (no writable database).
    Each of ``readonly`` is a directory or Redis URL whose programs are replayed but never
    written. Returns None when there is nothing at all."""
    layers: list[ExampleDatabase] = []
    if isinstance(spec, ExampleDatabase):
        layers.append(spec)
    elif spec is not None:
        if is_redis_url(spec):
            shared = open_redis(str(spec))
            if local is not None:
                layers.append(DirectoryBasedExampleDatabase(os.fspath(local)))
            layers.append(shared)
        else:
            layers.append(DirectoryBasedExampleDatabase(os.fspath(spec)))
    for ro in readonly:
        layers.append(ReadOnlyDatabase(_open_one(ro)))
    if not layers:
        return None
    if len(layers) == 1:
        return layers[0]
    return MultiplexedDatabase(*layers)


def describe_database(spec: object, *, local: object = DEFAULT_LOCAL,
                      readonly: Sequence[object] = ()) -> str:
    """One line for the campaign's header: what is read and written."""
    parts = []
    if spec is None:
        parts.append("none")
    elif is_redis_url(spec):
        parts.append(f"{spec} + {local}" if local is not None else str(spec))
    else:
        parts.append(str(spec))
    parts += [f"{ro} (read-only)" for ro in readonly]
    return ", ".join(parts)
