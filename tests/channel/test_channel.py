"""Attested channels (shardguard.channel): admission, envelopes, and every way to break them.

Two nodes admit each other from ``Verified`` evidence built here (platform "nitro", report data
= ``binding(card, nonce)``) and, end to end, from the simulated platform's real Nitro-format
evidence verified by ``verify_nitro``. Failed admissions must leave nothing to encrypt to (a
spy on the package's one HPKE seal call proves nothing was sealed); every change to an envelope
is the one opaque ``ChannelAuthError``; authentic envelopes out of place get exact reasons.
The HPKE suite identifiers are re-derived by an independent RFC 9180 key schedule written here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import hashlib
import hmac
import os
import pickle
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shardguard.channel.channel as channel_mod
from shardguard.attestation.errors import AttestationError
from shardguard.attestation.errors import AttestationReason as R
from shardguard.attestation.policy import VerificationPolicy
from shardguard.attestation.result import Verified
from shardguard.channel import (
    BINDING_LEN,
    MAX_ENVELOPE,
    MAX_PLAINTEXT,
    AdmittedPeer,
    CardError,
    Channel,
    ChannelAuthError,
    ChannelError,
    ChannelReplayError,
    ChannelUsageError,
    KemId,
    NodeKeys,
    PeerCard,
    ReplayReason,
    admit_peer,
    binding,
)

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
PCR0 = "a0" * 48
PCRS = {"pcr0": PCR0, "pcr1": "a1" * 48, "pcr2": "a2" * 48}
POLICY = VerificationPolicy(allowed_platforms=("nitro",), measurements={"nitro": {"pcr0": (PCR0,)}})
SID = hashlib.sha256(b"session 1").digest()
SID2 = hashlib.sha256(b"session 2").digest()
KEMS = [KemId.X25519, KemId.MLKEM768_X25519]
KEM_PAIRS = [(KemId.X25519, KemId.X25519), (KemId.MLKEM768_X25519, KemId.MLKEM768_X25519), (KemId.X25519, KemId.MLKEM768_X25519)]


def evidence_for(card: PeerCard, nonce: bytes, **change: Any) -> Verified:
    """What verify_nitro would return for a healthy production enclave that bound ``card``."""
    fields: dict[str, Any] = {
        "platform": "nitro",
        "measurements": dict(PCRS),
        "tcb_status": "n/a",
        "debug": False,
        "report_data": binding(card, nonce),
        "signing_time": NOW - dt.timedelta(seconds=5),
    }
    fields.update(change)
    return Verified(**fields)


def admit(card: PeerCard, **change: Any) -> AdmittedPeer:
    nonce = os.urandom(32)
    return admit_peer(card, evidence_for(card, nonce, **change), nonce=nonce, policy=POLICY, now=NOW)


@dataclasses.dataclass
class Pair:
    a: NodeKeys
    b: NodeKeys
    ab: Channel  # A's end
    ba: Channel  # B's end


def make_pair(kem_a: KemId = KemId.X25519, kem_b: KemId = KemId.X25519, session: bytes = SID) -> Pair:
    a, b = NodeKeys.generate("node-a", kem=kem_a), NodeKeys.generate("node-b", kem=kem_b)
    return Pair(a, b, Channel(a, a.card(), admit(b.card()), session), Channel(b, b.card(), admit(a.card()), session))


@pytest.fixture
def seal_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Records every HPKE seal the package performs (it has exactly one call site). No message
    is encrypted without one: a message's AEAD key is a link key, made only next to its seal."""
    calls: list[tuple[Any, ...]] = []
    real = channel_mod._hpke_seal

    def spy(*args: Any, **kwargs: Any) -> bytes:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(channel_mod, "_hpke_seal", spy)
    return calls


def test_the_spy_sees_every_seal() -> None:
    # The spy is meaningful only if the package has no other way to encrypt: one HPKE seal
    # (link keys) and one AEAD seal (messages, under a link key made next to its HPKE seal).
    src = "".join(p.read_text() for p in Path(channel_mod.__file__).parent.glob("*.py"))
    assert src.count(".encrypt(") == 2
    assert "def _hpke_seal(" in src and "def _aead_seal(" in src
    assert src.count("_hpke_seal(") == 2 and src.count("_aead_seal(") == 2  # definition + one call each
    assert src.count("ChaCha20Poly1305(") == 2  # a fresh key (sending) and an unwrapped one (opening)


# -- identity: binding and cards ------------------------------------------------------------


def test_binding_is_64_bytes_and_binds_every_field() -> None:
    a, b = NodeKeys.generate("node-a"), NodeKeys.generate("node-b", kem=KemId.MLKEM768_X25519)
    nonce = bytes(range(32))
    card = a.card()
    base = binding(card, nonce)
    assert len(base) == BINDING_LEN == 64
    assert binding(card, nonce) == base  # deterministic
    variants = [
        binding(card, nonce[:-1] + b"\xff"),
        binding(dataclasses.replace(card, node_id="node-c"), nonce),
        binding(dataclasses.replace(card, identity_public_key=b.card().identity_public_key), nonce),
        binding(dataclasses.replace(card, channel_public_key=NodeKeys.generate("x").card().channel_public_key), nonce),
        binding(b.card(), nonce),
    ]
    assert len({base, *variants}) == 1 + len(variants)


def test_binding_refuses_weak_nonces() -> None:
    card = NodeKeys.generate("node-a").card()
    for bad in (b"", b"x" * 15, b"x" * 1025, "x" * 32):
        with pytest.raises(ChannelUsageError):
            binding(card, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("kem", KEMS)
def test_card_encoding_round_trips_and_is_canonical(kem: KemId) -> None:
    card = NodeKeys.generate("node-a.eu-1", kem=kem).card()
    enc = card.encode()
    assert PeerCard.decode(enc) == card
    assert len(enc) == 1 + 2 + 1 + len("node-a.eu-1") + 32 + 2 + kem.public_key_len
    with pytest.raises(CardError, match="trailing"):
        PeerCard.decode(enc + b"\x00")
    for cut in (0, 1, 3, 10, len(enc) - 1):
        with pytest.raises(CardError):
            PeerCard.decode(enc[:cut])
    with pytest.raises(CardError, match="version"):
        PeerCard.decode(b"\x02" + enc[1:])
    with pytest.raises(CardError, match="KEM"):
        PeerCard.decode(enc[:1] + (0x0010).to_bytes(2, "big") + enc[3:])


def test_an_invalid_card_cannot_exist() -> None:
    good = NodeKeys.generate("node-a").card()
    hybrid = NodeKeys.generate("node-b", kem=KemId.MLKEM768_X25519).card()
    bad: list[tuple[dict[str, Any], str]] = [
        ({"node_id": "Node A"}, "node_id"),
        ({"node_id": ""}, "node_id"),
        ({"node_id": "a" * 65}, "node_id"),
        ({"node_id": "nöde"}, "node_id"),
        ({"node_id": 7}, "node_id"),
        ({"identity_public_key": b"\x01" + bytes(31)}, "identity_public_key"),  # the identity point
        ({"identity_public_key": bytes(32)}, "identity_public_key"),  # small order
        ({"identity_public_key": b"\xff" * 32}, "identity_public_key"),  # not canonical
        ({"identity_public_key": bytearray(good.identity_public_key)}, "identity_public_key"),
        ({"channel_public_key": bytes(32)}, "channel_public_key"),  # X25519 point of small order
        ({"channel_public_key": b"\x01" + bytes(31)}, "channel_public_key"),
        ({"channel_public_key": good.channel_public_key[:31]}, "channel_public_key"),
        ({"kem_id": 0x0010}, "kem_id"),
        ({"kem_id": True}, "kem_id"),
        ({"kem_id": KemId.MLKEM768_X25519}, "channel_public_key"),  # X25519-sized key for the hybrid
    ]
    for change, field in bad:
        with pytest.raises(CardError) as e:
            dataclasses.replace(good, **change)
        assert e.value.field == field, change
    with pytest.raises(CardError, match="ML-KEM"):
        dataclasses.replace(hybrid, channel_public_key=b"\xff" * 1184 + hybrid.channel_public_key[1184:])
    with pytest.raises(CardError, match="small order"):
        dataclasses.replace(hybrid, channel_public_key=hybrid.channel_public_key[:1184] + bytes(32))
    assert dataclasses.replace(good, kem_id=0x0020).kem_id is KemId.X25519  # type: ignore[arg-type]  # ints are normalised


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400))
def test_card_decode_raises_only_card_errors(data: bytes) -> None:
    with contextlib.suppress(CardError):
        PeerCard.decode(data)


def test_identity_signatures_agree_with_openssl() -> None:
    """Signed and verified by libsodium; the same bytes verify under OpenSSL, and a signature
    OpenSSL makes for the same key and message is byte-identical (RFC 8032 is deterministic)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from shardguard.channel.identity import _signed_message, verify_signature

    keys = NodeKeys.generate("node-a")
    pk = keys.card().identity_public_key
    for msg in (b"", b"m", bytes(range(256)) * 9):
        sig = keys.sign(b"ctx", msg)
        ed25519.Ed25519PublicKey.from_public_bytes(pk).verify(sig, _signed_message(b"ctx", msg))
        openssl = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(keys._identity))
        assert openssl.sign(_signed_message(b"ctx", msg)) == sig
        assert verify_signature(pk, b"ctx", msg, sig)
        assert not verify_signature(pk, b"ctx2", msg, sig)
        assert not verify_signature(pk, b"ctx", msg + b"x", sig)
        assert not verify_signature(pk, b"ctx", msg, sig[:-1])
        assert not verify_signature(pk[:-1], b"ctx", msg, sig)
        assert not verify_signature(bytes(32), b"ctx", msg, sig)  # small-order key
        with pytest.raises(InvalidSignature):
            ed25519.Ed25519PublicKey.from_public_bytes(pk).verify(sig, _signed_message(b"ctx", msg + b"x"))


def test_node_keys_never_leak_private_keys() -> None:
    keys = NodeKeys.generate("node-a", kem=KemId.MLKEM768_X25519)
    secret = bytes(keys._identity).hex()  # the Ed25519 seed
    assert "<redacted>" in repr(keys)
    assert secret not in repr(keys) and secret[:16] not in repr(keys)
    for leak in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="cannot be pickled"):
            leak(keys)
    with pytest.raises(TypeError):
        NodeKeys()
    with pytest.raises(AttributeError):
        keys._identity = None  # type: ignore[assignment]
    with pytest.raises(CardError):
        NodeKeys.generate("Bad Id")
    with pytest.raises(ChannelUsageError):
        NodeKeys.generate("node-a", kem=0x0020)  # type: ignore[arg-type]


# -- admission ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "policy", "reason"),
    [
        ({"debug": True}, POLICY, R.DEBUG),
        ({"measurements": {**PCRS, "pcr0": "bb" * 48}}, POLICY, R.MEASUREMENT),
        ({"simulated": True}, POLICY, R.SIMULATED),
        ({"signing_time": NOW - dt.timedelta(minutes=11)}, POLICY, R.STALE),
        ({"signing_time": NOW + dt.timedelta(minutes=5)}, POLICY, R.STALE),  # from the future
        ({"platform": "tdx", "tcb_status": "UpToDate"}, POLICY, R.PLATFORM),
        ({}, VerificationPolicy(allowed_platforms=("nitro",)), R.MEASUREMENT),  # no allow-list: nothing passes
    ],
    ids=["debug", "wrong-measurement", "simulated-refused", "stale", "future", "platform", "empty-allow-list"],
)
def test_a_peer_failing_policy_cannot_be_encrypted_to(
    seal_calls: list[tuple[Any, ...]], change: dict[str, Any], policy: VerificationPolicy, reason: R
) -> None:
    a, b = NodeKeys.generate("node-a"), NodeKeys.generate("node-b")
    nonce = os.urandom(32)
    verified = evidence_for(b.card(), nonce, **change)
    with pytest.raises(AttestationError) as e:
        admit_peer(b.card(), verified, nonce=nonce, policy=policy, now=NOW)
    assert e.value.reason is reason
    # Nothing else opens a channel: not the card, not the evidence, not a hand-made admission.
    for not_admitted in (b.card(), verified, None):
        with pytest.raises(ChannelUsageError, match="AdmittedPeer"):
            Channel(a, a.card(), not_admitted, SID)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="admit_peer"):
        AdmittedPeer(b.card(), verified)
    with pytest.raises(TypeError, match="admit_peer"):
        AdmittedPeer._make(object(), b.card(), verified, NOW)
    assert seal_calls == []


@pytest.mark.parametrize(
    "forge",
    ["other-nonce", "channel-key-swapped", "identity-key-swapped", "keys-of-another-node", "node-id-relabelled"],
)
def test_report_data_not_bound_to_the_card_is_refused(seal_calls: list[tuple[Any, ...]], forge: str) -> None:
    b, mallory = NodeKeys.generate("node-b"), NodeKeys.generate("node-m")
    nonce = os.urandom(32)
    genuine = evidence_for(b.card(), nonce)  # B's enclave attested B's card for our nonce
    card, our_nonce = b.card(), nonce
    if forge == "other-nonce":
        our_nonce = os.urandom(32)
    elif forge == "channel-key-swapped":  # the host staples its own channel key to B's evidence
        card = dataclasses.replace(card, channel_public_key=mallory.card().channel_public_key)
    elif forge == "identity-key-swapped":
        card = dataclasses.replace(card, identity_public_key=mallory.card().identity_public_key)
    elif forge == "keys-of-another-node":
        card = dataclasses.replace(mallory.card(), node_id="node-b")
    else:
        card = dataclasses.replace(card, node_id="node-c")
    with pytest.raises(AttestationError) as e:
        admit_peer(card, genuine, nonce=our_nonce, policy=POLICY, now=NOW)
    assert e.value.reason is R.NONCE
    assert seal_calls == []


def test_admit_peer_usage_errors() -> None:
    b = NodeKeys.generate("node-b")
    nonce = os.urandom(32)
    v = evidence_for(b.card(), nonce)
    with pytest.raises(ChannelUsageError, match="timezone"):
        admit_peer(b.card(), v, nonce=nonce, policy=POLICY, now=NOW.replace(tzinfo=None))
    with pytest.raises(ChannelUsageError):
        admit_peer(b.card(), v, nonce=nonce[:8], policy=POLICY, now=NOW)
    with pytest.raises(ChannelUsageError):
        admit_peer(b.card().encode(), v, nonce=nonce, policy=POLICY, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ChannelUsageError):
        admit_peer(b.card(), v.to_dict(), nonce=nonce, policy=POLICY, now=NOW)  # type: ignore[arg-type]


def test_an_admission_cannot_be_rebuilt_or_altered() -> None:
    peer = admit(NodeKeys.generate("node-b").card())
    assert "node-b" in repr(peer) and peer.admitted_at == NOW and peer.verified.platform == "nitro"
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(peer)
    assert copy.copy(peer) is peer and copy.deepcopy(peer) is peer
    with pytest.raises(AttributeError):
        peer._card = NodeKeys.generate("node-m").card()
    with pytest.raises(TypeError):
        dataclasses.replace(peer, _card=None)  # type: ignore[type-var]


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kem_a", "kem_b"), KEM_PAIRS, ids=["x25519", "hybrid", "mixed"])
def test_round_trip(seal_calls: list[tuple[Any, ...]], kem_a: KemId, kem_b: KemId) -> None:
    p = make_pair(kem_a, kem_b)
    for seq, msg in enumerate([b"", b"round 1", os.urandom(1024), os.urandom(MAX_PLAINTEXT)], start=1):
        env = p.ab.seal(msg, seq=seq)
        assert len(env) <= MAX_ENVELOPE
        assert p.ba.open(env) == msg
        reply = p.ba.seal(msg[::-1], seq=10 * seq)
        assert p.ab.open(reply) == msg[::-1]
    assert p.ba.last_opened == 4 and p.ab.last_opened == 40 and p.ab.last_sealed == 4
    assert len(seal_calls) == 2  # one link key each way
    # A random nonce per envelope: equal plaintexts never give equal ciphertexts.
    e1, e2 = p.ab.seal(b"same", seq=100), p.ab.seal(b"same", seq=101)
    assert e1[-64 - 20 - 4 - 12 :] != e2[-64 - 20 - 4 - 12 :]
    assert p.ba.open(e1) == p.ba.open(e2) == b"same"
    # Overhead: header + wrap (enc + link key + tag) + nonce + lengths + tag + signature.
    nenc = kem_b.enc_len
    assert len(e1) == 1 + 32 + 1 + 6 + 1 + 6 + 8 + 2 + nenc + 48 + 12 + 4 + len(b"same") + 16 + 64


def test_link_keys_are_shared_by_sessions_and_replaced_after_their_uses(
    seal_calls: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = NodeKeys.generate("node-a"), NodeKeys.generate("node-b")
    peer_a, peer_b = admit(a.card()), admit(b.card())
    wraps = []
    for sid in (SID, SID2):  # two sessions: one HPKE seal between them
        ab, ba = Channel(a, a.card(), peer_b, sid), Channel(b, b.card(), peer_a, sid)
        for seq in (1, 2):
            env = ab.seal(b"m%d" % seq, seq=seq)
            wraps.append(env[layout(env)["wrap"][0] :][: layout(env)["wrap"][1]])
            assert ba.open(env) == b"m%d" % seq
    assert len(seal_calls) == 1 and len(set(wraps)) == 1
    # After LINK_KEY_USES envelopes the sender makes a new link key; old envelopes still open.
    monkeypatch.setattr(channel_mod, "LINK_KEY_USES", 3)
    c = NodeKeys.generate("node-c")
    ac, ca = Channel(a, a.card(), admit(c.card()), SID), Channel(c, c.card(), peer_a, SID)
    envs = [ac.seal(b"%d" % i, seq=i) for i in range(1, 8)]
    assert len(seal_calls) == 1 + 3  # 3 + 3 + 1 envelopes
    assert [ca.open(e) for e in envs] == [b"%d" % i for i in range(1, 8)]
    assert len({e[layout(e)["wrap"][0] : sum(layout(e)["wrap"])] for e in envs}) == 3
    # A peer that restarted has a new channel key: a new link key for it.
    c2 = NodeKeys.generate("node-c")
    Channel(a, a.card(), admit(c2.card()), SID).seal(b"x", seq=1)
    assert len(seal_calls) == 5


def test_a_wrap_copied_by_another_peer_opens_nothing() -> None:
    # E (admitted, honest keys) copies A's wrap, nonce and ciphertext into an envelope it signs
    # under its own name: B has A's link key cached, but the header names E, and E's claimed
    # wrap opens nothing for E.
    a, b, e = (NodeKeys.generate(n) for n in ("node-a", "node-b", "node-e"))
    peer_b = admit(b.card())
    b_from_a = Channel(b, b.card(), admit(a.card()), SID)
    b_from_e = Channel(b, b.card(), admit(e.card()), SID)
    env = Channel(a, a.card(), peer_b, SID).seal(b"for B from A", seq=1)
    assert b_from_a.open(env) == b"for B from A"  # B now holds A's link key
    f = layout(env)
    rest = env[f["wrap_len"][0] : f["signature"][0]]
    s, r = b"node-e", b"node-b"
    header = b"\x02" + SID + bytes([len(s)]) + s + bytes([len(r)]) + r + (1).to_bytes(8, "big")
    body = header + rest
    assert_auth_error(b_from_e, body + e.sign(b"envelope", body))
    assert b_from_e.last_opened is None


def test_seal_usage_errors() -> None:
    p = make_pair()
    p.ab.seal(b"x", seq=5)
    for seq in (5, 4, -1, 2**64, True, 1.0):
        with pytest.raises(ChannelUsageError):
            p.ab.seal(b"x", seq=seq)  # type: ignore[arg-type]
    with pytest.raises(ChannelUsageError, match="larger"):
        p.ab.seal(bytes(MAX_PLAINTEXT + 1), seq=6)
    with pytest.raises(ChannelUsageError):
        p.ab.seal("text", seq=6)  # type: ignore[arg-type]
    assert p.ba.open(p.ab.seal(bytearray(b"ok"), seq=2**64 - 1)) == b"ok"  # type: ignore[arg-type]
    with pytest.raises(ChannelUsageError):
        p.ba.open("not bytes")  # type: ignore[arg-type]


def test_channel_constructor_checks() -> None:
    a, b = NodeKeys.generate("node-a"), NodeKeys.generate("node-b")
    peer_b = admit(b.card())
    with pytest.raises(ChannelUsageError, match="my_card"):
        Channel(a, b.card(), peer_b, SID)
    with pytest.raises(ChannelUsageError, match="own node id"):
        Channel(b, b.card(), peer_b, SID)
    for sid in (SID[:31], SID + b"\x00", SID.hex()):
        with pytest.raises(ChannelUsageError, match="session_id"):
            Channel(a, a.card(), peer_b, sid)  # type: ignore[arg-type]
    with pytest.raises(ChannelUsageError):
        Channel(a.card(), a.card(), peer_b, SID)  # type: ignore[arg-type]
    ch = Channel(a, a.card(), peer_b, SID)
    assert "node-a" in repr(ch) and "node-b" in repr(ch)
    with pytest.raises(TypeError):
        pickle.dumps(ch)


# -- tampering: one opaque error ------------------------------------------------------------


def layout(env: bytes) -> dict[str, tuple[int, int]]:
    """Field → (offset, length), parsed here independently of the implementation."""
    out: dict[str, tuple[int, int]] = {"version": (0, 1), "session_id": (1, 32)}
    off = 33
    for name in ("sender", "recipient"):
        n = env[off]
        out[f"{name}_len"], out[name] = (off, 1), (off + 1, n)
        off += 1 + n
    out["seq"] = (off, 8)
    off += 8
    w = int.from_bytes(env[off : off + 2], "big")
    out["wrap_len"], out["wrap"] = (off, 2), (off + 2, w)
    off += 2 + w
    out["nonce"] = (off, 12)
    off += 12
    c = int.from_bytes(env[off : off + 4], "big")
    out["ct_len"], out["ct"] = (off, 4), (off + 4, c)
    off += 4 + c
    out["signature"] = (off, 64)
    assert off + 64 == len(env)
    return out


def flip(env: bytes, pos: int, mask: int = 0x01) -> bytes:
    return env[:pos] + bytes([env[pos] ^ mask]) + env[pos + 1 :]


def assert_auth_error(ch: Channel, env: bytes) -> None:
    with pytest.raises(ChannelAuthError) as e:
        ch.open(env)
    assert str(e.value) == ChannelAuthError.MESSAGE  # uniform: never says which check failed
    assert e.value.__cause__ is None  # and no chained cause that would name the failed check


@pytest.mark.parametrize("kem", KEMS)
def test_every_tampered_field_is_the_same_auth_error(kem: KemId) -> None:
    p = make_pair(kem, kem)
    env = p.ab.seal(os.urandom(1024), seq=7)
    fields = layout(env)
    assert set(fields) == {
        "version",
        "session_id",
        "sender_len",
        "sender",
        "recipient_len",
        "recipient",
        "seq",
        "wrap_len",
        "wrap",
        "nonce",
        "ct_len",
        "ct",
        "signature",
    }
    tampered = []
    for off, n in fields.values():
        tampered += [flip(env, off), flip(env, off + n - 1, 0x80)]
    tampered += [
        env[:-1],
        env + b"\x00",
        env[:100],
        b"",
        env[: fields["ct"][0]] + env[fields["ct"][0] + 1 :],  # one ciphertext byte deleted
        bytes(len(env)),
    ]
    for t in tampered:
        assert t != env
        assert_auth_error(p.ba, t)
    # Nothing above moved the receiver's state: the genuine envelope still opens, once.
    assert p.ba.last_opened is None
    assert len(p.ba.open(env)) == 1024


def test_header_is_bound_into_the_aead_not_only_the_signature() -> None:
    # A node that re-signs an envelope with a changed header (here: the genuine sender's key,
    # which only the sender has) still fails to open: the header is the AEAD's associated data.
    p = make_pair()
    env = p.ab.seal(b"secret", seq=1)
    f = layout(env)
    off, _ = f["seq"]
    body = env[: f["signature"][0]]
    body = body[:off] + (2).to_bytes(8, "big") + body[off + 8 :]
    resigned = body + p.a.sign(b"envelope", body)
    assert_auth_error(p.ba, resigned)


def _header(sender: str, recipient: str, seq: int, version: int = 2) -> bytes:
    s, r = sender.encode(), recipient.encode()
    return bytes([version]) + SID + bytes([len(s)]) + s + bytes([len(r)]) + r + seq.to_bytes(8, "big")


def build_envelope(
    signer: NodeKeys, *, sender: str, recipient: str, seq: int, wrap: bytes, ct: bytes, nonce: bytes = bytes(12), version: int = 2
) -> bytes:
    """The documented v2 layout, encoded here independently of the implementation."""
    header = _header(sender, recipient, seq, version)
    body = header + len(wrap).to_bytes(2, "big") + wrap + nonce + len(ct).to_bytes(4, "big") + ct
    return body + signer.sign(b"envelope", body)


def _wrap_info(sender: bytes, recipient: bytes) -> bytes:
    return b"shardguard/attested-channel/v1/link-key\x00" + bytes([len(sender)]) + sender + bytes([len(recipient)]) + recipient


@pytest.mark.parametrize("kem", KEMS)
def test_documented_layout_opens(kem: KemId) -> None:
    p = make_pair(KemId.X25519, kem)
    link_key, nonce = os.urandom(32), os.urandom(12)
    wrap = _seal_to(p.b.card(), link_key, _wrap_info(b"node-a", b"node-b"))
    aad = b"shardguard/attested-channel/v1/envelope-aad\x00" + _header("node-a", "node-b", 9)
    ct = ChaCha20Poly1305(link_key).encrypt(nonce, b"by hand", aad)
    env = build_envelope(p.a, sender="node-a", recipient="node-b", seq=9, wrap=wrap, ct=ct, nonce=nonce)
    assert p.ba.open(env) == b"by hand"


@pytest.mark.parametrize("kem", KEMS)
def test_authentic_but_undecryptable_envelopes_are_auth_errors(kem: KemId) -> None:
    # The peer itself signs garbage (a broken or corrupted peer): still one opaque error, and
    # the receiver's sequence state does not move.
    p = make_pair(KemId.X25519, kem)
    nw, other = kem.enc_len + 48, next(k for k in KEMS if k is not kem).enc_len + 48
    real = p.ab.seal(b"x" * 24, seq=1)
    real_wrap = real[slice(layout(real)["wrap"][0], sum(layout(real)["wrap"]))]
    cases = {
        "zero-wrap": (bytes(nw), os.urandom(40)),  # X25519: small-order point; X-Wing: garbage
        "random-wrap": (os.urandom(nw), os.urandom(40)),
        "wrap-of-other-kem": (os.urandom(other), os.urandom(40)),
        "wrap-too-short": (real_wrap[:-1], os.urandom(40)),
        "ct-shorter-than-tag": (real_wrap, os.urandom(15)),
        "real-wrap-wrong-ct": (real_wrap, os.urandom(40)),
        "wrap-for-another-sender": (_seal_to(p.b.card(), os.urandom(32), _wrap_info(b"node-x", b"node-b")), os.urandom(40)),
        "link-key-of-31-bytes": (_seal_to(p.b.card(), os.urandom(31), _wrap_info(b"node-a", b"node-b")), os.urandom(40)),
    }
    for name, (wrap, ct) in cases.items():
        env = build_envelope(p.a, sender="node-a", recipient="node-b", seq=5, wrap=wrap, ct=ct)
        with pytest.raises(ChannelAuthError):
            p.ba.open(env)
        assert p.ba.last_opened is None, name
    for version in (1, 3):
        assert_auth_error(
            p.ba, build_envelope(p.a, sender="node-a", recipient="node-b", seq=5, wrap=real_wrap, ct=bytes(40), version=version)
        )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000))
def test_random_bytes_raise_only_channel_errors(data: bytes) -> None:
    ch = _FUZZ_PAIR.ba
    with pytest.raises(ChannelError) as e:
        ch.open(data)
    assert type(e.value) is ChannelAuthError


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_envelopes_raise_only_auth_errors(data: st.DataObject) -> None:
    env = _FUZZ_ENVELOPE
    kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
    pos = data.draw(st.integers(0, len(env) - 1))
    if kind == "flip":
        mutated = flip(env, pos, data.draw(st.integers(1, 255)))
    elif kind == "insert":
        mutated = env[:pos] + data.draw(st.binary(min_size=1, max_size=8)) + env[pos:]
    elif kind == "delete":
        mutated = env[:pos] + env[pos + data.draw(st.integers(1, 8)) :]
    elif kind == "truncate":
        mutated = env[:pos]
    else:
        mutated = env[:pos] + data.draw(st.binary(max_size=64))
    if mutated == env:
        return
    with pytest.raises(ChannelError) as e:
        _FUZZ_PAIR.ba.open(mutated)
    assert type(e.value) is ChannelAuthError
    assert _FUZZ_PAIR.ba.last_opened is None


_FUZZ_PAIR = make_pair(KemId.X25519, KemId.MLKEM768_X25519)
_FUZZ_ENVELOPE = _FUZZ_PAIR.ab.seal(b"fuzz me", seq=1)


def test_oversized_envelope_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    p = make_pair()
    monkeypatch.setattr(channel_mod, "_Envelope", lambda data: pytest.fail("parsed an oversized envelope"))
    assert_auth_error(p.ba, bytes(MAX_ENVELOPE + 1))


# -- authentic envelopes out of place: exact reasons ----------------------------------------


def test_replayed_envelope() -> None:
    p = make_pair()
    env = p.ab.seal(b"m1", seq=1)
    assert p.ba.open(env) == b"m1"
    with pytest.raises(ChannelReplayError) as e:
        p.ba.open(env)
    assert e.value.reason is ReplayReason.REPLAYED and (e.value.seq, e.value.last_seq) == (1, 1)
    assert p.ba.open(p.ab.seal(b"m2", seq=2)) == b"m2"  # the channel goes on


def test_reordered_envelopes() -> None:
    p = make_pair()
    e1, e2 = p.ab.seal(b"m1", seq=1), p.ab.seal(b"m2", seq=2)
    assert p.ba.open(e2) == b"m2"
    with pytest.raises(ChannelReplayError) as e:
        p.ba.open(e1)
    assert e.value.reason is ReplayReason.REORDERED and (e.value.seq, e.value.last_seq) == (1, 2)
    with pytest.raises(ChannelReplayError) as e:
        p.ba.open(e2)
    assert e.value.reason is ReplayReason.REPLAYED


def test_gaps_are_allowed_but_never_backwards() -> None:
    p = make_pair()
    assert p.ba.open(p.ab.seal(b"x", seq=0)) == b"x"
    assert p.ba.open(p.ab.seal(b"y", seq=1000)) == b"y"
    assert p.ba.last_opened == 1000


def test_retargeted_envelope() -> None:
    # A seals to C; the relay delivers it to B instead.
    a, b, c = (NodeKeys.generate(n) for n in ("node-a", "node-b", "node-c"))
    a_to_c = Channel(a, a.card(), admit(c.card()), SID)
    b_from_a = Channel(b, b.card(), admit(a.card()), SID)
    env = a_to_c.seal(b"for C only", seq=1)
    with pytest.raises(ChannelReplayError) as e:
        b_from_a.open(env)
    assert e.value.reason is ReplayReason.WRONG_RECIPIENT
    assert b_from_a.last_opened is None
    assert Channel(c, c.card(), admit(a.card()), SID).open(env) == b"for C only"


def test_retargeted_envelope_across_kems() -> None:
    # The recipient check does not depend on the receiver's own KEM (enc sizes differ).
    a, b, c = NodeKeys.generate("node-a"), NodeKeys.generate("node-b"), NodeKeys.generate("node-c", kem=KemId.MLKEM768_X25519)
    env = Channel(a, a.card(), admit(c.card()), SID).seal(b"for C only", seq=1)
    with pytest.raises(ChannelReplayError) as e:
        Channel(b, b.card(), admit(a.card()), SID).open(env)
    assert e.value.reason is ReplayReason.WRONG_RECIPIENT


def test_envelope_from_another_session() -> None:
    a, b = NodeKeys.generate("node-a"), NodeKeys.generate("node-b")
    peer_a, peer_b = admit(a.card()), admit(b.card())
    other = Channel(a, a.card(), peer_b, SID2).seal(b"session 2", seq=1)
    b_session1 = Channel(b, b.card(), peer_a, SID)
    with pytest.raises(ChannelReplayError) as e:
        b_session1.open(other)
    assert e.value.reason is ReplayReason.WRONG_SESSION
    assert Channel(b, b.card(), peer_a, SID2).open(other) == b"session 2"


def test_replay_reasons_are_typed_and_distinct_from_auth_errors() -> None:
    assert not issubclass(ChannelReplayError, ChannelAuthError)
    assert {r.name for r in ReplayReason} == {"REPLAYED", "REORDERED", "WRONG_RECIPIENT", "WRONG_SESSION"}
    assert str(ChannelAuthError()) == ChannelAuthError.MESSAGE


# -- envelopes signed by the wrong node -----------------------------------------------------


def test_envelope_signed_by_another_nodes_key() -> None:
    a, b = NodeKeys.generate("node-a"), NodeKeys.generate("node-b")
    b_from_a = Channel(b, b.card(), admit(a.card()), SID)
    # An impostor that has B's public card (anyone has) and claims A's node id: its own keys.
    impostor = NodeKeys.generate("node-a")
    forged = Channel(impostor, impostor.card(), admit(b.card()), SID).seal(b"pay mallory", seq=1)
    assert_auth_error(b_from_a, forged)
    # Another admitted node, under its own name, on A's channel: not the peer of this channel.
    e = NodeKeys.generate("node-e")
    assert_auth_error(b_from_a, Channel(e, e.card(), admit(b.card()), SID).seal(b"hi", seq=1))
    # A's genuine envelope with its signature replaced by the impostor's over the same bytes.
    genuine = Channel(a, a.card(), admit(b.card()), SID).seal(b"hello", seq=1)
    body = genuine[:-64]
    assert_auth_error(b_from_a, body + impostor.sign(b"envelope", body))
    # A signature made by A itself for another purpose (another signing context) is refused.
    assert_auth_error(b_from_a, body + a.sign(b"audit-log", body))
    assert b_from_a.open(genuine) == b"hello"


# -- the HPKE suite ids, checked by an independent RFC 9180 key schedule ---------------------


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    # RFC 9180 §4: LabeledExtract = HKDF-Extract(salt, "HPKE-v1" ‖ suite_id ‖ label ‖ ikm).
    return hmac.new(salt or bytes(32), b"HPKE-v1" + suite_id + label + ikm, hashlib.sha256).digest()


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, n: int) -> bytes:
    labeled = n.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + labeled + bytes([i]), hashlib.sha256).digest()
        out, i = out + t, i + 1
    return out[:n]


def _open_independently(kem_id: int, shared_secret: bytes, info: bytes, ct: bytes) -> bytes:
    # RFC 9180 §5.1 KeySchedule (mode_base, empty PSK), §5.2 first nonce, AEAD 0x0003.
    sid = b"HPKE" + kem_id.to_bytes(2, "big") + (0x0001).to_bytes(2, "big") + (0x0003).to_bytes(2, "big")
    ctx = b"\x00" + _labeled_extract(sid, b"", b"psk_id_hash", b"") + _labeled_extract(sid, b"", b"info_hash", info)
    secret = _labeled_extract(sid, shared_secret, b"secret", b"")
    key = _labeled_expand(sid, secret, b"key", ctx, 32)
    nonce = _labeled_expand(sid, secret, b"base_nonce", ctx, 12)
    return ChaCha20Poly1305(key).decrypt(nonce, ct, b"")


def _seal_to(card: PeerCard, plaintext: bytes, info: bytes) -> bytes:
    return channel_mod._hpke_seal(card.kem_id.suite(), channel_mod._hpke_public_key(card), plaintext, info=info)


def test_x25519_suite_matches_rfc9180_ids() -> None:
    sk = x25519.X25519PrivateKey.generate()
    pk = sk.public_key().public_bytes_raw()
    card = dataclasses.replace(NodeKeys.generate("node-b").card(), channel_public_key=pk)
    sealed = _seal_to(card, b"independent", b"info")
    enc, ct = sealed[:32], sealed[32:]
    # RFC 9180 §4.1 DHKEM Decap: ExtractAndExpand(DH(skR, pkE), enc ‖ pkR), suite "KEM" ‖ 0x0020.
    ksid = b"KEM" + (0x0020).to_bytes(2, "big")
    prk = _labeled_extract(ksid, b"", b"eae_prk", sk.exchange(x25519.X25519PublicKey.from_public_bytes(enc)))
    ss = _labeled_expand(ksid, prk, b"shared_secret", enc + pk, 32)
    assert _open_independently(KemId.X25519, ss, b"info", ct) == b"independent"


def test_hybrid_suite_is_xwing_0x647a_with_the_card_key_order() -> None:
    msk, xsk = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    pk_x = xsk.public_key().public_bytes_raw()
    card = dataclasses.replace(
        NodeKeys.generate("node-b", kem=KemId.MLKEM768_X25519).card(),
        channel_public_key=msk.public_key().public_bytes_raw() + pk_x,
    )
    sealed = _seal_to(card, b"independent pq", b"info")
    enc, ct = sealed[:1120], sealed[1120:]
    ct_m, ct_x = enc[:1088], enc[1088:]
    # X-Wing combiner: SHA3-256(ss_M ‖ ss_X ‖ ct_X ‖ pk_X ‖ "\.//^\").
    ss = hashlib.sha3_256(
        msk.decapsulate(ct_m) + xsk.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x)) + ct_x + pk_x + b"\\.//^\\"
    ).digest()
    assert _open_independently(KemId.MLKEM768_X25519, ss, b"info", ct) == b"independent pq"
    # And the library agrees that this card's key is the one it encrypted to.
    assert (
        KemId.MLKEM768_X25519.suite().decrypt(sealed, hpke.MLKEM768X25519PrivateKey(msk, xsk), info=b"info") == b"independent pq"
    )


# -- end to end with the simulated platform --------------------------------------------------


@dataclasses.dataclass
class SimNode:
    keys: NodeKeys
    platform: Any


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Callable[..., SimNode]]:
    simulated = pytest.importorskip("shardguard.enclave.simulated")

    def make(name: str, kem: KemId = KemId.X25519, clock: Callable[[], dt.datetime] | None = None) -> SimNode:
        kwargs: dict[str, Any] = {"state_dir": tmp_path / name}
        if clock is not None:
            kwargs["clock"] = clock
        return SimNode(NodeKeys.generate(name, kem=kem), simulated.SimulatedPlatform(**kwargs))

    yield make


def sim_admit(
    verifier_policy: VerificationPolicy, peer: SimNode, *, now: dt.datetime, attest_nonce: bytes | None = None
) -> AdmittedPeer:
    """The verifier sends a fresh nonce; the peer attests binding(card, nonce); the verifier
    proves the evidence with verify_nitro (development root allowed) and admits the card."""
    nitro = pytest.importorskip("shardguard.attestation.nitro")
    dev_root = pytest.importorskip("shardguard.attestation.dev_root")
    nonce = os.urandom(32)
    evidence = peer.platform.attest(binding(peer.keys.card(), attest_nonce or nonce))
    assert evidence.platform == "nitro"
    verified = nitro.verify_nitro(evidence.blob, simulated_roots=dev_root.DEV_ROOTS)
    assert verified.simulated and verified.report_data == binding(peer.keys.card(), attest_nonce or nonce)
    return admit_peer(peer.keys.card(), verified, nonce=nonce, policy=verifier_policy, now=now)


def sim_policy(node: SimNode, *, allow_simulated: bool = True, pcr0: str | None = None) -> VerificationPolicy:
    return VerificationPolicy(
        allow_simulated=allow_simulated, measurements={"simulated": {"pcr0": (pcr0 or node.platform.measurement,)}}
    )


@pytest.mark.parametrize(("kem_a", "kem_b"), KEM_PAIRS, ids=["x25519", "hybrid", "mixed"])
def test_end_to_end_with_simulated_evidence(sim: Callable[..., SimNode], kem_a: KemId, kem_b: KemId) -> None:
    a, b = sim("node-a", kem_a), sim("node-b", kem_b)
    now = dt.datetime.now(dt.UTC)
    peer_b = sim_admit(sim_policy(b), b, now=now)  # A admits B
    peer_a = sim_admit(sim_policy(a), a, now=now)  # B admits A
    assert peer_a.verified.simulated and "SIMULATED" in repr(peer_a)
    ab, ba = Channel(a.keys, a.keys.card(), peer_b, SID), Channel(b.keys, b.keys.card(), peer_a, SID)
    for seq in range(1, 4):
        msg = os.urandom(1024)
        assert ba.open(ab.seal(msg, seq=seq)) == msg
        assert ab.open(ba.seal(msg, seq=seq)) == msg


def test_simulated_evidence_refused_without_allow_simulated(
    sim: Callable[..., SimNode], seal_calls: list[tuple[Any, ...]]
) -> None:
    b = sim("node-b")
    with pytest.raises(AttestationError) as e:
        sim_admit(sim_policy(b, allow_simulated=False), b, now=dt.datetime.now(dt.UTC))
    assert e.value.reason is R.SIMULATED
    assert seal_calls == []


@pytest.mark.parametrize("failure", ["wrong-measurement", "stale", "other-nonce"])
def test_simulated_evidence_failures(sim: Callable[..., SimNode], seal_calls: list[tuple[Any, ...]], failure: str) -> None:
    now = dt.datetime.now(dt.UTC)
    if failure == "stale":
        b = sim("node-b", clock=lambda: now - dt.timedelta(minutes=30))
        policy, expected = sim_policy(b), R.STALE
    else:
        b = sim("node-b")
        policy, expected = sim_policy(b), R.NONCE
    attest_nonce = os.urandom(32) if failure == "other-nonce" else None
    if failure == "wrong-measurement":
        policy, expected = sim_policy(b, pcr0="00" * 48), R.MEASUREMENT
    with pytest.raises(AttestationError) as e:
        sim_admit(policy, b, now=now, attest_nonce=attest_nonce)
    assert e.value.reason is expected
    assert seal_calls == []


# -- cost of an envelope ----------------------------------------------------------------------


@pytest.mark.parametrize("kem", KEMS)
def test_seal_open_timing_1kib(kem: KemId, capsys: pytest.CaptureFixture[str]) -> None:
    p = make_pair(kem, kem)
    msg = os.urandom(1024)
    seal_t, open_t = [], []
    for seq in range(300):
        t0 = time.perf_counter()
        env = p.ab.seal(msg, seq=seq)
        t1 = time.perf_counter()
        assert p.ba.open(env) == msg
        t2 = time.perf_counter()
        seal_t.append(t1 - t0)
        open_t.append(t2 - t1)
    s, o = statistics.median(seal_t) * 1e3, statistics.median(open_t) * 1e3
    with capsys.disabled():
        total = f"{s:.3f} ms + open {o:.3f} ms = {s + o:.3f} ms"
        print(f"\n[channel timing] {kem.name}: 1 KiB seal {total} (median of 300); envelope {len(env)} B")
    assert s + o < 50  # generous bound: catches a pathological regression, not CI noise


def test_link_keys_are_replaced_after_their_time(seal_calls: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch) -> None:
    p = make_pair()
    clock = [1000.0]
    monkeypatch.setattr(channel_mod.time, "monotonic", lambda: clock[0])
    e1 = p.ab.seal(b"1", seq=1)
    clock[0] += channel_mod.LINK_KEY_SECONDS - 1
    e2 = p.ab.seal(b"2", seq=2)
    clock[0] += 1
    e3 = p.ab.seal(b"3", seq=3)
    wraps = [e[slice(layout(e)["wrap"][0], sum(layout(e)["wrap"]))] for e in (e1, e2, e3)]
    assert wraps[0] == wraps[1] != wraps[2] and len(seal_calls) == 2
    assert [p.ba.open(e) for e in (e1, e2, e3)] == [b"1", b"2", b"3"]


def test_a_peer_sending_fresh_wraps_pushes_out_only_its_own_link_keys(
    seal_calls: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver keeps unwrapped link keys per sender: an admitted peer that makes a new link
    key for every envelope costs the receiver one HPKE open each, as any envelope did before,
    and cannot evict another peer's key."""
    a, b, m = (NodeKeys.generate(n) for n in ("node-a", "node-b", "node-m"))
    b_from_a = Channel(b, b.card(), admit(a.card()), SID)
    b_from_m = Channel(b, b.card(), admit(m.card()), SID)
    a_to_b = Channel(a, a.card(), admit(b.card()), SID)
    opens = []
    real_open = NodeKeys.hpke_open
    monkeypatch.setattr(NodeKeys, "hpke_open", lambda self, *x, **k: opens.append(1) or real_open(self, *x, **k))
    assert b_from_a.open(a_to_b.seal(b"1", seq=1)) == b"1" and len(opens) == 1
    monkeypatch.setattr(channel_mod, "LINK_KEY_USES", 1)  # m: a new link key per envelope
    m_to_b = Channel(m, m.card(), admit(b.card()), SID)
    for seq in range(1, 40):
        assert b_from_m.open(m_to_b.seal(b"m", seq=seq)) == b"m"
    assert len(opens) == 1 + 39
    monkeypatch.setattr(channel_mod, "LINK_KEY_USES", 4096)
    assert b_from_a.open(a_to_b.seal(b"2", seq=2)) == b"2"
    assert len(opens) == 40  # a's key was still there


def test_expired_link_keys_are_dropped_on_both_sides(seal_calls: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A quiet link's expired key is dropped when the sender makes any new one, and a receiver
    drops a key twice the rotation time after unwrapping it (an envelope under it then costs
    one HPKE open again, and still opens)."""
    a, b, c = (NodeKeys.generate(n) for n in ("node-a", "node-b", "node-c"))
    clock = [5000.0]
    monkeypatch.setattr(channel_mod.time, "monotonic", lambda: clock[0])
    a_to_b, a_to_c = Channel(a, a.card(), admit(b.card()), SID), Channel(a, a.card(), admit(c.card()), SID)
    b_from_a = Channel(b, b.card(), admit(a.card()), SID)
    e1 = a_to_b.seal(b"1", seq=1)
    links = channel_mod._links_of(a)
    assert len(links._sending) == 1
    clock[0] += channel_mod.LINK_KEY_SECONDS
    a_to_c.seal(b"x", seq=1)  # a new key for c: b's expired one goes
    assert len(links._sending) == 1
    opens = []
    real_open = NodeKeys.hpke_open
    monkeypatch.setattr(NodeKeys, "hpke_open", lambda self, *x, **k: opens.append(1) or real_open(self, *x, **k))
    assert b_from_a.open(e1) == b"1" and len(opens) == 1
    e2 = e1  # the same wrap again, later: kept, then dropped after twice the rotation time
    assert channel_mod._links_of(b).for_opening(b, "node-a", e2[slice(layout(e2)["wrap"][0], sum(layout(e2)["wrap"]))])
    assert len(opens) == 1
    clock[0] += 2 * channel_mod.LINK_KEY_SECONDS
    assert channel_mod._links_of(b).for_opening(b, "node-a", e2[slice(layout(e2)["wrap"][0], sum(layout(e2)["wrap"]))])
    assert len(opens) == 2
