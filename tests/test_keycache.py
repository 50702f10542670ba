"""The key cache: bounded, indexed by account, fresh beyond its TTL only while
the change feed is read without a gap."""

from __future__ import annotations

from flask_modelguard.keycache import FEED_LAG, FeedWatch, KeyCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_least_recently_used_entries_go_first() -> None:
    cache: KeyCache[str] = KeyCache(maxsize=3, ttl=60, clock=Clock())
    for n in range(3):
        cache.put(f"p{n}", f"v{n}", account_id=n)
    assert cache.get("p0") == "v0"  # p0 is now the most recent
    cache.put("p3", "v3", account_id=3)
    assert len(cache) == 3 and cache.get("p1") is None and cache.get("p0") == "v0" and cache.get("p3") == "v3"


def test_dropping_an_account_drops_only_its_keys() -> None:
    cache: KeyCache[str] = KeyCache(maxsize=10, ttl=60, clock=Clock())
    cache.put("a1", "x", account_id=1)
    cache.put("a2", "y", account_id=1)
    cache.put("b1", "z", account_id=2)
    cache.pop_account(1)
    assert (cache.get("a1"), cache.get("a2"), cache.get("b1")) == (None, None, "z")
    cache.put("a1", "x2", account_id=1)  # the index follows re-insertions
    assert cache.get("a1") == "x2"


def test_without_a_feed_the_ttl_bounds_an_entry() -> None:
    clock = Clock()
    cache: KeyCache[str] = KeyCache(maxsize=10, ttl=30, clock=clock)
    cache.put("p", "v", account_id=1)
    clock.now += 29
    assert cache.get("p") == "v"
    clock.now += 2
    assert cache.get("p") is None and len(cache) == 0


def test_an_entry_outlives_the_ttl_while_the_feed_is_read_without_a_gap() -> None:
    clock = Clock()
    feed = FeedWatch(clock)
    cache: KeyCache[str] = KeyCache(maxsize=10, ttl=30, feed=feed, clock=clock)
    feed.read(True)
    cache.put("p", "v", account_id=1)
    for _ in range(600):  # five minutes of reads twice a second
        clock.now += 0.5
        feed.read(True)
    assert cache.get("p") == "v"
    feed.read(False)  # the feed cannot be read: the TTL is the bound again
    assert cache.get("p") is None


def test_entries_answer_to_the_ttl_while_the_feed_is_not_read_and_are_covered_again_after() -> None:
    """A late read loses no change (it starts after the last id read): once
    the feed is read again, entries older than the TTL are fresh again."""
    clock = Clock()
    feed = FeedWatch(clock)
    cache: KeyCache[str] = KeyCache(maxsize=10, ttl=30, feed=feed, clock=clock)
    feed.read(True)
    cache.put("old", "v", account_id=1)
    clock.now += 31  # no read meanwhile
    assert not feed.covers(clock.now - 31, clock.now)
    cache.put("new", "w", account_id=2)
    assert cache.get("old") is None  # past its TTL with no read to vouch for it
    feed.read(True)
    clock.now += 31
    feed.read(True)
    assert cache.get("new") == "w"


def test_a_feed_not_read_lately_covers_nothing() -> None:
    clock = Clock()
    feed = FeedWatch(clock)
    assert not feed.covers(clock.now, clock.now)  # never read: nothing vouched for
    feed.read(True)
    assert feed.covers(clock.now, clock.now)
    assert not feed.covers(clock.now - 1, clock.now)  # cached before the first read: not vouched for
    clock.now += FEED_LAG + 0.1
    assert not feed.covers(clock.now, clock.now)
    feed.read(True)
    feed.read(False)
    assert not feed.covers(clock.now, clock.now)
