from __future__ import annotations

import pytest

from flask_modelguard.exc import MalformedKey
from flask_modelguard.keys import generate_key, hash_secret, key_hint, parse_key, verify_secret


def test_generated_key_round_trips_and_verifies():
    new = generate_key()
    parsed = parse_key(new.token)
    assert new.token == f"mg_{parsed.prefix}_{parsed.secret}"
    assert parsed.prefix == new.prefix and new.secret_hash == hash_secret(parsed.prefix, parsed.secret)
    assert len(new.secret_hash) == 64 and int(new.secret_hash, 16) >= 0  # a SHA-256 hex digest
    assert verify_secret(parsed, new.secret_hash)
    assert not verify_secret(parsed._replace(secret=parsed.secret[::-1]), new.secret_hash)


def test_keys_are_unique_and_secret_is_bound_to_prefix():
    a, b = generate_key(), generate_key()
    assert a.token != b.token
    pa, pb = parse_key(a.token), parse_key(b.token)
    assert not verify_secret(pa, b.secret_hash)
    assert not verify_secret(pa._replace(prefix=pb.prefix), hash_secret(pa.prefix, pa.secret))


@pytest.mark.parametrize(
    "token",
    ["", "mg_", "xx_abcdefghij_" + "a" * 32, "mg_abcdefghij_" + "a" * 31, "mg_ABCDEFGHIJ_" + "a" * 32,
     "mg_abcdefghij_" + "a" * 31 + "!", "mg_abc_def_ghi"],
)
def test_malformed_keys_are_rejected(token):
    with pytest.raises(MalformedKey):
        parse_key(token)


def test_hint_shows_only_the_prefix():
    new = generate_key()
    assert key_hint(new.prefix) == f"mg_{new.prefix}_…"
