"""One Lua script call on Redis, with as little Python around it as it takes.
Framework-free.

The request path makes one round trip to Redis per request (every limit of
the account in one script). Through redis-py's client a call costs about
90 µs of CPU in a hot loop (pool checkout and release, the retry wrapper,
argument encoding), three times that between requests; the round trip itself
(two system calls and the reply's parse) costs about 35 µs. :class:`LeanScript`
keeps the parts that matter: redis-py's own connections (the URL's host,
password, database, TLS and timeouts, its reply parser), the script's SHA1
(``EVALSHA``, loaded again after a ``SCRIPT FLUSH`` or a restart), and its
errors; it skips the rest by sending one pre-encoded command on an idle
connection of its own.

Connections are taken from a free list and given back after the reply, so
threads share a few of them; a forked child starts with none (a connection
is never shared with the parent). An idle connection is polled before use,
as redis-py's pool does, and one the server closed while it was idle (a
restart, its idle ``timeout``, a proxy) is replaced, the call tried once
more on a new one; a connection that failed is dropped. Clients whose pool is not redis-py's plain
:class:`~redis.ConnectionPool` (Sentinel, client-side caching) are called the
usual way.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis import ConnectionPool, Redis
from redis.exceptions import ConnectionError, NoScriptError, TimeoutError

#: Idle connections kept per script (more are closed when given back).
MAX_IDLE = 16


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return b"%d" % value
    raise TypeError(f"a Redis argument must be bytes, str or int, not {type(value).__name__}")


def pack_command(*parts: Any) -> bytes:
    """A command in the Redis protocol (RESP): an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = _encode(part)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class LeanScript:
    """A Lua script of ``client``, called as redis-py's ``Script`` is:
    ``script(keys=[...], args=[...])`` returns the reply and raises redis-py's
    errors."""

    def __init__(self, client: Any, source: bytes) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source).hexdigest().encode()
        pool = client.connection_pool
        #: Whether calls take the short path (a plain pool without client-side caching).
        self.lean = isinstance(client, Redis) and type(pool) is ConnectionPool and getattr(pool, "cache", None) is None
        self._pool = pool
        self._slow = client.register_script(source)
        self._idle: deque[Any] = deque()
        self._pid = os.getpid()

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        if not self.lean:
            return self._slow(keys=keys, args=args)
        command = pack_command(b"EVALSHA", self.sha, len(keys), *keys, *args)
        connection, reused = self._take()
        try:
            try:
                reply = self._call(connection, command)
            except ConnectionError:  # (not a timeout: the script may have run, counted once is enough)
                if not reused:
                    raise
                # An idle connection the server dropped between two calls (a restart, its idle
                # timeout, a proxy) that the poll in _take could not see yet: once more, on a new one.
                connection.disconnect()
                connection = self._new()
                reply = self._call(connection, command)
        except BaseException:
            connection.disconnect()  # a half-read reply must not meet the next command
            raise
        self._give(connection)
        return reply

    def _call(self, connection: Any, command: bytes) -> Any:
        try:
            return self._send(connection, command)
        except NoScriptError:  # flushed, or a restarted server: load it and call again
            self._send(connection, pack_command(b"SCRIPT", b"LOAD", self.source))
            return self._send(connection, command)

    @staticmethod
    def _send(connection: Any, command: bytes) -> Any:
        connection.send_packed_command([command], check_health=False)
        return connection.read_response()

    def _take(self) -> tuple[Any, bool]:
        """A connection, and whether it was idle here (it may have been dropped since)."""
        if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours
            self._idle, self._pid = deque(), os.getpid()
        try:
            connection = self._idle.pop()
        except IndexError:
            return self._new(), False
        try:  # as the pool checks an idle connection: anything to read means it was closed
            readable = connection.can_read()
        except (ConnectionError, TimeoutError, OSError):
            readable = True
        if readable:
            connection.disconnect()
            return self._new(), False
        return connection, True

    def _new(self) -> Any:
        pool = self._pool
        return pool.connection_class(**pool.connection_kwargs)

    def _give(self, connection: Any) -> None:
        if len(self._idle) < MAX_IDLE and connection.pid == self._pid:
            self._idle.append(connection)
        else:
            connection.disconnect()

    def close(self) -> None:
        """Close the idle connections (the next call opens one again)."""
        while self._idle:
            self._idle.pop().disconnect()
