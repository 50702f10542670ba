"""LeanScript: one script call on Redis without the client's per-call layers."""

from __future__ import annotations

import multiprocessing
import threading
import uuid

import pytest

from flask_modelguard.quotas import QuotaEnforcer
from flask_modelguard.redis_script import LeanScript, pack_command

redis = pytest.importorskip("redis")

_COUNT = b"return {redis.call('incrby', KEYS[1], ARGV[1]), ARGV[2]}"


@pytest.fixture
def client(redis_uri):
    client = redis.Redis.from_url(redis_uri)
    yield client
    client.close()


@pytest.fixture
def key():
    return f"test-lean:{uuid.uuid4().hex}"


def test_pack_command_is_the_redis_protocol():
    assert pack_command(b"GET", "k", 12) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    assert pack_command("SET", "ключ", b"") == "*3\r\n$3\r\nSET\r\n$8\r\nключ\r\n$0\r\n\r\n".encode()
    with pytest.raises(TypeError):
        pack_command(1.5)


def test_calls_return_what_the_script_returns(client, key):
    script = LeanScript(client, _COUNT)
    assert script.lean
    assert script(keys=[key], args=[3, "x"]) == [3, b"x"]
    assert script(keys=[key], args=[4, "y"]) == [7, b"y"]
    assert int(client.get(key)) == 7
    assert script.sha == client.script_load(_COUNT).encode()


def test_a_flushed_script_is_loaded_again(client, key):
    script = LeanScript(client, _COUNT)
    script(keys=[key], args=[1, "a"])
    client.script_flush()
    assert script(keys=[key], args=[1, "b"]) == [2, b"b"]


def test_a_script_error_is_redis_pys_error_and_the_connection_stays_usable(client, key):
    client.set(key, "not a number")
    script = LeanScript(client, _COUNT)
    with pytest.raises(redis.exceptions.ResponseError):
        script(keys=[key], args=[1, "a"])
    client.delete(key)
    assert script(keys=[key], args=[1, "a"]) == [1, b"a"]


def test_an_idle_connection_the_server_closed_is_replaced_before_use(client, key):
    script = LeanScript(client, _COUNT)
    script(keys=[key], args=[1, "a"])
    killed = script._idle[0]
    client.client_kill_filter(_id=_client_id(client, killed))
    assert script(keys=[key], args=[1, "a"]) == [2, b"a"]  # no error: the poll saw it closed
    assert script._idle[0] is not killed and int(client.get(key)) == 2


def test_a_dropped_connection_the_poll_missed_is_tried_once_more_on_a_new_one(client, key, monkeypatch):
    script = LeanScript(client, _COUNT)
    script(keys=[key], args=[1, "a"])
    killed = script._idle[0]
    client.client_kill_filter(_id=_client_id(client, killed))
    monkeypatch.setattr(type(killed), "can_read", lambda self, timeout=0: False)  # it looks alive
    assert script(keys=[key], args=[1, "a"]) == [2, b"a"]
    assert int(client.get(key)) == 2  # counted once


def test_a_new_connection_that_fails_raises_redis_pys_error(redis_uri, key):
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with pytest.raises(redis.exceptions.ConnectionError):
        LeanScript(unreachable, _COUNT)(keys=[key], args=[1, "a"])


def _client_id(client, connection) -> int:
    connection.send_command("CLIENT", "ID")
    return int(connection.read_response())


def test_threads_share_a_few_connections(client, key):
    script = LeanScript(client, _COUNT)
    barrier = threading.Barrier(8)

    def run():
        barrier.wait()
        for _ in range(50):
            script(keys=[key], args=[1, "t"])

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(client.get(key)) == 400
    assert 1 <= len(script._idle) <= 8


def _count_in_child(uri: str, key: str, queue) -> None:
    import redis as child_redis  # noqa: F401

    queue.put(_SCRIPT_IN_PARENT(keys=[key], args=[1, "c"]))


_SCRIPT_IN_PARENT: LeanScript


def test_a_forked_child_opens_its_own_connection(client, key, redis_uri):
    global _SCRIPT_IN_PARENT
    script = _SCRIPT_IN_PARENT = LeanScript(client, _COUNT)
    script(keys=[key], args=[1, "p"])
    parent_socket = script._idle[0]._sock
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_count_in_child, args=(redis_uri, key, queue))
    child.start()
    assert queue.get(timeout=20) == [2, b"c"]
    child.join(20)
    assert child.exitcode == 0
    assert script._idle[0]._sock is parent_socket  # the parent's connection is still its own, and works
    assert script(keys=[key], args=[1, "p"]) == [3, b"p"]


def test_a_sentinel_style_pool_is_called_through_the_client(redis_uri, key):
    class OtherPool(redis.ConnectionPool):
        pass

    other = redis.Redis(connection_pool=OtherPool.from_url(redis_uri))
    script = LeanScript(other, _COUNT)
    assert not script.lean
    assert script(keys=[key], args=[5, "s"]) == [5, b"s"]
    other.close()


def test_the_enforcer_counts_every_limit_in_one_round_trip(redis_uri, monkeypatch):
    enforcer = QuotaEnforcer(redis_uri, namespace=f"lean-{uuid.uuid4().hex}")
    limits = enforcer.limits_for("free", "3/minute;10/hour")
    sent = []
    send = LeanScript._send

    def counted(connection, command):
        reply = send(connection, command)  # (not counted when it raised: a NOSCRIPT after another run's flush)
        if command.startswith(b"*10\r\n$7\r\nEVALSHA"):  # 2 keys, 5 arguments
            sent.append(command)
        return reply

    monkeypatch.setattr(LeanScript, "_send", staticmethod(counted))
    verdicts = [enforcer.hit(1, limits) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts[:3]] == [2, 1, 0]
    assert len(sent) == 4  # one round trip per request
    assert [count for _, count in enforcer.usage(1, limits)] == [3, 3]  # usage reads the same keys
