"""Transcript framing and the hash helpers."""

from __future__ import annotations

import hashlib

import pytest

from shardguard.crypto.hashing import expand_message_xmd_sha256, tagged_hash
from shardguard.crypto.transcript import Transcript


def test_transcript_framing_is_unambiguous() -> None:
    a = Transcript(b"d").append(b"x", b"ab").append(b"y", b"c").digest()
    b = Transcript(b"d").append(b"x", b"a").append(b"y", b"bc").digest()
    c = Transcript(b"d").append(b"xy", b"").append(b"", b"abc").digest()
    d = Transcript(b"e").append(b"x", b"ab").append(b"y", b"c").digest()
    assert len({a, b, c, d}) == 4
    t = Transcript(b"d").append(b"x", b"ab")
    assert t.copy().append(b"y", b"c").digest() == a
    with pytest.raises(ValueError):
        Transcript(b"d").append_int(b"n", -1)


def test_tagged_hash_matches_bip340_definition() -> None:
    tag = b"BIP0340/challenge"
    th = hashlib.sha256(tag).digest()
    assert tagged_hash(tag, b"m") == hashlib.sha256(th + th + b"m").digest()


def test_expand_message_xmd_rfc9380_vector() -> None:
    """RFC 9380 Appendix K.1 (expand_message_xmd, SHA-256), msg = "" and "abc", len 0x20."""
    dst = b"QUUX-V01-CS02-with-expander-SHA256-128"
    assert expand_message_xmd_sha256(b"", dst, 0x20).hex() == "68a985b87eb6b46952128911f2a4412bbc302a9d759667f87f7a21d803f07235"
    assert (
        expand_message_xmd_sha256(b"abc", dst, 0x20).hex() == "d8ccab23b5985ccea865c6c97b6e5b8350e794e603b4b97902f53a8a0d605615"
    )
    with pytest.raises(ValueError):
        expand_message_xmd_sha256(b"", b"x" * 256, 32)
