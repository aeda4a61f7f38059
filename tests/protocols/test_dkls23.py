"""DKLs23 threshold ECDSA: flows, BIP32, refresh, bans and malicious parties.

Every signature is also checked by OpenSSL and libsecp256k1 with key recovery (conftest).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections import deque
from collections.abc import Callable, Mapping

import pytest

from shardguard import local
from shardguard.crypto.bip32 import derive_public
from shardguard.crypto.suites import ECDSA_SECP256K1
from shardguard.protocols import wire
from shardguard.protocols.dkls23 import DklsSigner, EcdsaKeyShare, OtSetup
from shardguard.protocols.dkls23 import _rounds as rounds_module
from shardguard.protocols.dkls23._messages import (
    SetupCommit,
    SetupConfirm,
    SetupOtAnswer,
    SetupOtStart,
    SetupReveal,
    SignCommit,
    SignMultiply,
    SignOtStart,
    SignShare,
)
from shardguard.protocols.dkls23.bans import BanRegistry
from shardguard.protocols.errors import AbortReason, MessageRejected, PeerBanned, ProtocolAbort, UsageError
from shardguard.protocols.frost import FrostSigner
from shardguard.protocols.message import Message
from shardguard.protocols.party import Party
from tests.helpers.rng import DeterministicRng

DIGEST = hashlib.sha256(b"shardguard dkls23 test").digest()
G = ECDSA_SECP256K1.group


@pytest.fixture(autouse=True)
def fresh_ban_registry(monkeypatch: pytest.MonkeyPatch) -> BanRegistry:
    """Each test starts with an empty live registry (it is process-wide by design)."""
    registry = BanRegistry()
    monkeypatch.setattr(rounds_module, "REGISTRY", registry)
    return registry


@pytest.fixture(scope="module")
def key23() -> list[EcdsaKeyShare]:
    return local.ecdsa_keygen(2, 3, rng=DeterministicRng(23))


@pytest.fixture(scope="module")
def key35() -> list[EcdsaKeyShare]:
    return local.ecdsa_keygen(3, 5, rng=DeterministicRng(35))


Tamper = Callable[[Message], Message | None]


def run(parties: Mapping[int, Party[object]], tamper: Tamper | None = None) -> dict[int, object]:
    """``local.run`` with a hook that may rewrite (or drop) each message once, as sent."""
    queue: deque[Message] = deque()
    for p in parties.values():
        queue.extend(p.start())
    while queue:
        m = queue.popleft()
        if tamper is not None:
            m2 = tamper(m)
            if m2 is None:
                continue
            m = m2
        targets = [i for i in parties if i != m.sender] if m.is_broadcast else [m.recipient]
        for i in targets:
            queue.extend(parties[i].receive(m))
    return {i: p.result for i, p in parties.items()}


def run_to_the_end(parties: Mapping[int, Party[object]], tamper: Tamper, cheater: int) -> dict[int, ProtocolAbort]:
    """Deliver everything; an honest party that aborts stops, the others go on. The cheater
    never checks anything (its aborts are ignored, its messages still flow)."""
    aborts: dict[int, ProtocolAbort] = {}
    queue: deque[Message] = deque()
    for p in parties.values():
        queue.extend(p.start())
    while queue:
        m = tamper(queue.popleft())
        targets = [i for i in parties if i != m.sender] if m.is_broadcast else [m.recipient]
        for i in targets:
            if i in aborts:
                continue
            try:
                queue.extend(parties[i].receive(m))
            except ProtocolAbort as e:
                if i != cheater:
                    aborts[i] = e
    return aborts


def signers(
    shares: list[EcdsaKeyShare], digest: bytes = DIGEST, path: tuple[int, ...] = (), seed: int = 1
) -> dict[int, Party[object]]:
    rng = DeterministicRng(seed)
    ids = [s.identifier for s in shares]
    inst = rng(32)
    return {s.identifier: DklsSigner(s, signers=ids, digest=digest, instance=inst, rng=rng, path=path) for s in shares}


# -- flows ------------------------------------------------------------------------------------


def test_every_2_subset_of_3_signs(key23: list[EcdsaKeyShare]) -> None:
    pk = key23[0].public.group_key
    for subset in itertools.combinations(key23, 2):
        sig = local.ecdsa_sign(list(subset), DIGEST)
        assert sig.public_key == G.encode(pk)
        assert ECDSA_SECP256K1.verify(pk, DIGEST, sig.to_bytes())


def test_all_three_of_a_2_of_3_key_sign(key23: list[EcdsaKeyShare]) -> None:
    assert local.ecdsa_sign(key23, DIGEST).digest == DIGEST


def test_3_of_5_subsets(key35: list[EcdsaKeyShare]) -> None:
    for subset in [(0, 1, 2), (0, 2, 4), (1, 3, 4), (0, 1, 2, 3, 4)]:
        local.ecdsa_sign([key35[i] for i in subset], DIGEST)


def test_2_of_2() -> None:
    shares = local.ecdsa_keygen(2, 2)
    local.ecdsa_sign(shares, DIGEST)


def test_5_of_9() -> None:
    shares = local.ecdsa_keygen(5, 9)
    local.ecdsa_sign([shares[i] for i in (0, 2, 4, 6, 8)], DIGEST)


def test_fewer_than_t_signers_refused(key35: list[EcdsaKeyShare]) -> None:
    with pytest.raises(UsageError, match="too few"):
        local.ecdsa_sign(key35[:2], DIGEST)


def test_threshold_one_refused() -> None:
    shares = local.keygen("ecdsa", 1, 2, allow_single=True)
    with pytest.raises(UsageError, match="at least 2"):
        OtSetup(shares[0], instance=bytes(32), rng=DeterministicRng(0))


@pytest.mark.parametrize("digest", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32, bytearray(32)])
def test_digest_must_be_exactly_32_bytes(key23: list[EcdsaKeyShare], digest: object) -> None:
    with pytest.raises(UsageError, match="32 bytes"):
        DklsSigner(key23[0], signers=[1, 2], digest=digest, instance=bytes(32), rng=DeterministicRng(0))  # type: ignore[arg-type]


def test_frost_refuses_an_ecdsa_key(key23: list[EcdsaKeyShare]) -> None:
    with pytest.raises(UsageError, match="own protocol"):
        FrostSigner(key23[0].share, signers=[1, 2], message=b"m", instance=bytes(32), rng=DeterministicRng(0))


def test_two_signatures_of_one_digest_use_fresh_nonces(key23: list[EcdsaKeyShare]) -> None:
    a = local.ecdsa_sign(key23[:2], DIGEST)
    b = local.ecdsa_sign(key23[:2], DIGEST)
    assert a.r != b.r


def test_repeated_rng_stream_still_gives_fresh_values_for_another_digest(key23: list[EcdsaKeyShare]) -> None:
    """A restored snapshot replays its RNG stream: every draw of a session is hedged with the
    share and the session id, so another digest reuses neither ``R`` nor Bob's multiplier
    (a repeated multiplier lets a co-signer solve for the key from two signatures)."""
    a = signers(key23[:2], seed=5)
    b = signers(key23[:2], digest=hashlib.sha256(b"other").digest(), seed=5)
    for p in (*a.values(), *b.values()):
        p.start()
    assert a[1]._bobs[2].b != b[1]._bobs[2].b  # type: ignore[attr-defined]
    assert a[1]._big_r != b[1]._big_r  # type: ignore[attr-defined]
    same = signers(key23[:2], seed=5)
    same[1].start()
    assert same[1]._bobs[2].b == a[1]._bobs[2].b  # type: ignore[attr-defined]  # same session, same stream: documented


def test_a_failed_check_stops_concurrent_sessions_with_that_peer(key23: list[EcdsaKeyShare]) -> None:
    """Two sessions with peer 2 are open; 2 cheats in the first; the second, already past
    construction, refuses 2 at its own check instead of leaking another bit (spec P3)."""
    first = signers(key23[:2], seed=21)
    second = signers(key23[:2], seed=22)
    out1 = {i: p.start() for i, p in first.items()}
    out2 = {i: p.start() for i, p in second.items()}
    bad = next(m for m in out1[2] if not m.is_broadcast)
    payload = wire.decode_payload(ECDSA_SECP256K1, bad.payload, SignOtStart)
    bad = dataclasses.replace(bad, payload=wire.encode_payload(dataclasses.replace(payload, u=corrupt(payload.u, 0))))
    first[1].receive(next(m for m in out1[2] if m.is_broadcast))
    with pytest.raises(ProtocolAbort) as e:
        first[1].receive(bad)
    assert e.value.reason is AbortReason.OT_CONSISTENCY and e.value.culprits == {2}
    second[1].receive(next(m for m in out2[2] if m.is_broadcast))
    with pytest.raises(ProtocolAbort) as e2:
        second[1].receive(next(m for m in out2[2] if not m.is_broadcast))
    assert e2.value.reason is AbortReason.PEER_BANNED and e2.value.culprits == {2}
    with pytest.raises(PeerBanned):
        signers(key23[:2], seed=23)  # and no new session starts


# -- BIP32 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [(0,), (0, 1), (7, 2**31 - 1, 3)])
def test_derived_key_signs(key23: list[EcdsaKeyShare], path: tuple[int, ...]) -> None:
    share = key23[0]
    expected = derive_public(share.public.group_key, share.chain_code, path).public_key
    sig = local.ecdsa_sign(key23[1:], DIGEST, path=path)
    assert sig.public_key == G.encode(expected)
    assert sig.path == "m/" + "/".join(map(str, path))


def test_hardened_path_refused(key23: list[EcdsaKeyShare]) -> None:
    with pytest.raises(UsageError, match="derivation path"):
        local.ecdsa_sign(key23[:2], DIGEST, path=(2**31,))


def test_signers_must_agree_on_the_path(key23: list[EcdsaKeyShare]) -> None:
    rng = DeterministicRng(9)
    inst = rng(32)
    parties: dict[int, Party[object]] = {
        1: DklsSigner(key23[0], signers=[1, 2], digest=DIGEST, instance=inst, rng=rng, path=(0,)),
        2: DklsSigner(key23[1], signers=[1, 2], digest=DIGEST, instance=inst, rng=rng, path=(1,)),
    }
    with pytest.raises(MessageRejected) as e:
        run(parties)
    assert e.value.reason is AbortReason.WRONG_SESSION


# -- refresh ------------------------------------------------------------------------------------


def test_refresh_keeps_key_and_chain_code_and_replaces_all_pairwise_state(key23: list[EcdsaKeyShare]) -> None:
    new = local.ecdsa_refresh(key23)
    for old, fresh in zip(key23, new):
        assert fresh.public.group_key == old.public.group_key
        assert fresh.chain_code == old.chain_code
        assert fresh.public.epoch == old.public.epoch + 1
        assert fresh.share.signing_share != old.share.signing_share
        assert fresh.setup_id != old.setup_id
        for j in set(old.public.participants) - {old.identifier}:
            a, b = old.pair(j), fresh.pair(j)
            assert a.seeds0 != b.seeds0 and a.delta != b.delta and a.zero_seed != b.zero_seed
    local.ecdsa_sign(new[1:], DIGEST, path=(4,))


def test_old_and_new_shares_do_not_combine(key23: list[EcdsaKeyShare]) -> None:
    new = local.ecdsa_refresh(key23)
    with pytest.raises(MessageRejected) as e:
        local.ecdsa_sign([key23[0], new[1]], DIGEST)
    assert e.value.reason is AbortReason.WRONG_SESSION


def test_refresh_refuses_disagreeing_chain_codes(key23: list[EcdsaKeyShare]) -> None:
    other = local.ecdsa_keygen(2, 3)
    with pytest.raises(ValueError, match="chain code"):
        local.ecdsa_refresh([key23[0], other[1], key23[2]])


def test_share_round_trips_through_dict_and_stays_secret(key23: list[EcdsaKeyShare]) -> None:
    s = key23[0].with_bans({3})
    back = EcdsaKeyShare.from_dict(s.to_dict())
    assert back.banned == {3} and back.chain_code == s.chain_code and back.setup_id == s.setup_id
    assert back.to_dict() == s.to_dict()
    assert "redacted" in repr(s) and s.pair(2).zero_seed.hex() not in repr(s)
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        pickle.dumps(s.pair(2))


# -- hostile input: every field of every signing message ----------------------------------------

SIGN_TYPES = {(1, True): SignCommit, (1, False): SignOtStart, (2, False): SignMultiply, (3, True): SignShare}
NO_CULPRIT = frozenset()


def corrupt(value: object, kind: object) -> object:
    if kind == "point":
        return value + G.generator()  # type: ignore[operator]
    if kind == "scalar":
        return (value + 1) % G.order  # type: ignore[operator]
    if kind == "echo":
        first = bytearray(value[0])  # type: ignore[index]
        first[0] ^= 1
        return (bytes(first), *value[1:])  # type: ignore[index]
    raw = bytearray(value)  # type: ignore[arg-type]
    raw[len(raw) // 2] ^= 0x10
    return bytes(raw)


# (payload type, field) -> (reason, culprit is the cheater?, ban)
EXPECTED = {
    (SignCommit, "nonce"): (AbortReason.EQUIVOCATION, True),
    (SignCommit, "commitment"): (AbortReason.EQUIVOCATION, True),
    (SignOtStart, "nonce"): (AbortReason.OT_CONSISTENCY, True),  # keys the extension's PRG
    (SignOtStart, "u"): (AbortReason.OT_CONSISTENCY, True),
    (SignOtStart, "x_check"): (AbortReason.OT_CONSISTENCY, True),
    (SignOtStart, "t_check"): (AbortReason.OT_CONSISTENCY, True),
    (SignMultiply, "echo"): (AbortReason.EQUIVOCATION, True),
    (SignMultiply, "big_r"): (AbortReason.INVALID_COMMITMENT, True),
    (SignMultiply, "salt"): (AbortReason.INVALID_COMMITMENT, True),
    (SignMultiply, "a_tilde"): (AbortReason.MULTIPLICATION_CHECK, True),
    (SignMultiply, "eta"): (AbortReason.MULTIPLICATION_CHECK, True),
    (SignMultiply, "mu"): (AbortReason.MULTIPLICATION_CHECK, True),
    (SignMultiply, "gamma_u"): (AbortReason.PAIRWISE_CONSISTENCY, True),
    (SignMultiply, "gamma_v"): (AbortReason.PAIRWISE_CONSISTENCY, True),
    (SignMultiply, "pk"): (AbortReason.PAIRWISE_CONSISTENCY, True),
    # Not attributable in DKLs23 (spec P12): only the final signature fails.
    (SignMultiply, "psi"): (AbortReason.INVALID_SIGNATURE, False),
    (SignShare, "u"): (AbortReason.INVALID_SIGNATURE, False),
    (SignShare, "w"): (AbortReason.INVALID_SIGNATURE, False),
}


def test_expected_table_covers_every_field() -> None:
    listed = {(t, f) for t, f in EXPECTED}
    assert listed == {(t, name) for t in SIGN_TYPES.values() for name, _ in t.SPEC}


@pytest.mark.parametrize(("typ", "field"), list(EXPECTED), ids=[f"{t.__name__}.{f}" for t, f in EXPECTED])
def test_corrupted_field_aborts_and_names_the_culprit(key35: list[EcdsaKeyShare], typ: type, field: str) -> None:
    reason, blames = EXPECTED[(typ, field)]
    cheater = 3
    kind = dict(typ.SPEC)[field]
    shares = [key35[0], key35[2], key35[4]]  # ids 1, 3, 5
    parties = signers(shares)
    done = {"n": 0}

    def tamper(m: Message) -> Message:
        if m.sender != cheater or SIGN_TYPES.get((m.round, m.is_broadcast)) is not typ or done["n"]:
            return m
        done["n"] += 1
        payload = wire.decode_payload(ECDSA_SECP256K1, m.payload, typ)
        bad = dataclasses.replace(payload, **{field: corrupt(getattr(payload, field), kind)})
        return dataclasses.replace(m, payload=wire.encode_payload(bad))

    aborts = run_to_the_end(parties, tamper, cheater)
    assert done["n"] == 1
    assert aborts, "no honest party noticed"
    for i, err in aborts.items():
        assert err.party == i
        assert err.reason is reason, err
        assert err.culprits == ({cheater} if blames else NO_CULPRIT), err
        bans = reason in (AbortReason.OT_CONSISTENCY, AbortReason.MULTIPLICATION_CHECK, AbortReason.PAIRWISE_CONSISTENCY)
        assert err.reason.bans == bans
    for i, p in parties.items():
        assert i == cheater or not p.done, f"honest party {i} output a signature"


def test_ban_blocks_new_sessions_until_refresh(key23: list[EcdsaKeyShare]) -> None:
    cheater = 2
    parties = signers(key23[:2])

    def tamper(m: Message) -> Message:
        if m.sender == cheater and m.round == 1 and not m.is_broadcast:
            payload = wire.decode_payload(ECDSA_SECP256K1, m.payload, SignOtStart)
            return dataclasses.replace(m, payload=wire.encode_payload(dataclasses.replace(payload, u=corrupt(payload.u, 0))))
        return m

    with pytest.raises(ProtocolAbort) as e:
        run(parties, tamper)
    assert e.value.reason.bans and e.value.culprits == {cheater} and e.value.party == 1
    banned = key23[0].with_bans(e.value.culprits)
    with pytest.raises(PeerBanned) as b:
        local.ecdsa_sign([banned, key23[1]], DIGEST)
    assert b.value.parties == {cheater}
    local.ecdsa_sign([banned, key23[2]], DIGEST)  # other peers still fine
    refreshed = local.ecdsa_refresh([banned, key23[1], key23[2]])
    assert refreshed[0].banned == frozenset()
    local.ecdsa_sign(refreshed[:2], DIGEST)


def test_message_from_another_session_is_dropped(key23: list[EcdsaKeyShare]) -> None:
    a = signers(key23[:2], seed=1)
    b = signers(key23[:2], seed=2)
    first = a[1].start()
    b[1].start()
    b[2].start()
    with pytest.raises(MessageRejected) as e:
        b[2].receive(first[0])
    assert e.value.reason is AbortReason.WRONG_SESSION


def test_replayed_round_message_is_dropped(key23: list[EcdsaKeyShare]) -> None:
    parties = signers(key23[:2])
    out1 = parties[1].start()
    parties[2].start()
    parties[2].receive(out1[0])
    with pytest.raises(MessageRejected) as e:
        parties[2].receive(out1[0])
    assert e.value.reason is AbortReason.REPLAYED_MESSAGE


def test_equivocated_round1_broadcast_is_caught(key35: list[EcdsaKeyShare]) -> None:
    """Party 3 sends one commitment to party 1 and another to party 5."""
    shares = [key35[0], key35[2], key35[4]]
    parties = signers(shares)
    queue: deque[Message] = deque()
    for p in parties.values():
        queue.extend(p.start())
    aborts: dict[int, ProtocolAbort] = {}
    while queue:
        m = queue.popleft()
        targets = [i for i in parties if i != m.sender] if m.is_broadcast else [m.recipient]
        for i in targets:
            mm = m
            if m.sender == 3 and m.round == 1 and m.is_broadcast and i == 5:
                payload = wire.decode_payload(ECDSA_SECP256K1, m.payload, SignCommit)
                bad = dataclasses.replace(payload, commitment=corrupt(payload.commitment, 32))
                mm = dataclasses.replace(m, payload=wire.encode_payload(bad))
            if i in aborts:
                continue
            try:
                queue.extend(parties[i].receive(mm))
            except ProtocolAbort as e:
                if i != 3:
                    aborts[i] = e
    assert set(aborts) == {1, 5}
    for err in aborts.values():
        assert err.reason is AbortReason.EQUIVOCATION and 3 in err.culprits, err


# -- the pairwise setup ----------------------------------------------------------------------

SETUP_TYPES = {
    (1, True): SetupCommit,
    (1, False): SetupOtStart,
    (2, True): SetupReveal,
    (2, False): SetupOtAnswer,
    (3, True): SetupConfirm,
}


@pytest.mark.parametrize(
    ("typ", "field", "reason"),
    [
        (SetupCommit, "commitment", AbortReason.EQUIVOCATION),
        (SetupReveal, "contribution", AbortReason.INVALID_COMMITMENT),
        (SetupReveal, "salt", AbortReason.INVALID_COMMITMENT),
        (SetupReveal, "echo", AbortReason.EQUIVOCATION),
        (SetupConfirm, "digest", AbortReason.INCONSISTENT_KEY),
    ],
)
def test_setup_broadcast_corruption_names_the_culprit(
    key23: list[EcdsaKeyShare], typ: type, field: str, reason: AbortReason
) -> None:
    cheater = 2
    rng = DeterministicRng(4)
    inst = rng(32)
    parties: dict[int, Party[object]] = {s.identifier: OtSetup(s.share, instance=inst, rng=rng) for s in key23}
    kind = dict(typ.SPEC)[field]
    done = {"n": 0}

    def tamper(m: Message) -> Message:
        if m.sender != cheater or SETUP_TYPES.get((m.round, m.is_broadcast)) is not typ or done["n"]:
            return m
        done["n"] += 1
        payload = wire.decode_payload(ECDSA_SECP256K1, m.payload, typ)
        bad = dataclasses.replace(payload, **{field: corrupt(getattr(payload, field), kind)})
        return dataclasses.replace(m, payload=wire.encode_payload(bad))

    aborts = run_to_the_end(parties, tamper, cheater)
    assert aborts
    for err in aborts.values():
        # A differing echo of party 1's broadcast: 1 may have equivocated or 2 lies; without
        # transport signatures both are reported (party 1 itself knows it is honest).
        allowed = {cheater, 1} if field == "echo" else {cheater}
        assert err.reason is reason and cheater in err.culprits and err.culprits <= allowed, err
    assert not any(p.done for i, p in parties.items() if i != cheater)


@pytest.mark.parametrize("typ", [SetupOtStart, SetupOtAnswer])
def test_setup_undecodable_base_ot_point_is_malformed(key23: list[EcdsaKeyShare], typ: type) -> None:
    cheater = 3
    rng = DeterministicRng(5)
    inst = rng(32)
    parties: dict[int, Party[object]] = {s.identifier: OtSetup(s.share, instance=inst, rng=rng) for s in key23}

    def tamper(m: Message) -> Message:
        if m.sender != cheater or SETUP_TYPES.get((m.round, m.is_broadcast)) is not typ:
            return m
        payload = wire.decode_payload(ECDSA_SECP256K1, m.payload, typ)
        raw = bytearray(payload.base_ot)
        raw[0] = 0x05  # no SEC1 point starts with 0x05
        return dataclasses.replace(m, payload=wire.encode_payload(dataclasses.replace(payload, base_ot=bytes(raw))))

    aborts = run_to_the_end(parties, tamper, cheater)
    assert aborts
    for err in aborts.values():
        assert err.reason is AbortReason.MALFORMED_PAYLOAD and err.culprits == {cheater}, err


def test_setup_cheating_base_ot_sender_is_banned_at_first_signature(key23: list[EcdsaKeyShare]) -> None:
    """A base-OT answer that is well formed but wrong cannot be seen in the setup; the
    OT-extension check of the first signing session names (and bans) its sender."""
    cheater = 2
    rng = DeterministicRng(6)
    inst = rng(32)
    parties: dict[int, Party[object]] = {s.identifier: OtSetup(s.share, instance=inst, rng=rng) for s in key23}

    def tamper(m: Message) -> Message:
        if m.sender == cheater and m.round == 2 and not m.is_broadcast and m.recipient == 1:
            payload = wire.decode_payload(ECDSA_SECP256K1, m.payload, SetupOtAnswer)
            raw = payload.base_ot
            e0 = G.decode(raw[:33]) + G.generator()
            return dataclasses.replace(
                m, payload=wire.encode_payload(dataclasses.replace(payload, base_ot=G.encode(e0) + raw[33:]))
            )
        return m

    shares = run(parties, tamper)
    with pytest.raises(ProtocolAbort) as e:
        local.ecdsa_sign([shares[1], shares[2]], DIGEST)  # type: ignore[list-item]
    assert e.value.party == 1 and e.value.culprits == {cheater} and e.value.reason.bans
