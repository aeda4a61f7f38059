"""DKLs23 pre-signatures (spec §4.1, P9): made ahead, one step to sign, used once, re-randomised.

Every signature is also checked by OpenSSL and libsecp256k1 with key recovery (conftest hooks
``presign.assemble``).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardguard import local
from shardguard.crypto.secp256k1 import SECP256K1
from shardguard.protocols.dkls23 import DklsPresigner, DklsSigner, EcdsaKeyShare, Presignature, presigned_signature
from shardguard.protocols.dkls23._messages import SignMultiply, SignShare
from shardguard.protocols.dkls23.bans import BanRegistry
from shardguard.protocols.dkls23.presign import PresignedShare, rerandomizer
from shardguard.protocols.errors import AbortReason, MessageRejected, ProtocolAbort, UsageError
from shardguard.protocols.message import BROADCAST, Message
from shardguard.protocols.party import Party
from shardguard.protocols.wire import decode_payload, encode_payload
from tests.helpers.rng import DeterministicRng
from tests.protocols.test_dkls23 import fresh_ban_registry, run, run_to_the_end  # noqa: F401 - autouse fixture

DIGEST = hashlib.sha256(b"shardguard dkls23 presign test").digest()
SEED = b"\x5e" * 32
Q = SECP256K1.order


@pytest.fixture(scope="module")
def key23() -> list[EcdsaKeyShare]:
    return local.ecdsa_keygen(2, 3, rng=DeterministicRng(230))


@pytest.fixture(scope="module")
def key35() -> list[EcdsaKeyShare]:
    return local.ecdsa_keygen(3, 5, rng=DeterministicRng(350))


def presigners(shares: list[EcdsaKeyShare], seed: int = 1) -> dict[int, Party[object]]:
    rng = DeterministicRng(seed)
    ids = [s.identifier for s in shares]
    inst = rng(32)
    return {s.identifier: DklsPresigner(s, signers=ids, instance=inst, rng=rng) for s in shares}


def presign(shares: list[EcdsaKeyShare], seed: int = 1) -> dict[int, Presignature]:
    out = run(presigners(shares, seed))
    assert all(isinstance(p, Presignature) for p in out.values())
    return out  # type: ignore[return-value]


def sign_with(pres: Mapping[int, Presignature], digest: bytes = DIGEST, seed: bytes = SEED) -> object:
    first = next(iter(pres.values()))
    shares = [p.share(digest, seed) for p in pres.values()]
    assert len({SECP256K1.encode(s.big_r) for s in shares}) == 1, "every signer derives the same R'"
    return presigned_signature(first.public_key, digest, shares)


@pytest.mark.parametrize("subset", [(1, 2), (1, 3), (2, 3)])
def test_every_2_subset_of_3_presigns_and_signs(key23: list[EcdsaKeyShare], subset: tuple[int, int]) -> None:
    pres = presign([key23[i - 1] for i in subset])
    ids = {p.presignature_id for p in pres.values()}
    rs = {SECP256K1.encode(p.big_r) for p in pres.values()}
    assert len(ids) == 1 and len(rs) == 1, "every signer derives the same id and nonce point"
    assert all(p.signers == subset and p.epoch == key23[0].public.epoch for p in pres.values())
    sig = sign_with(pres)
    assert sig is not None  # verified by libsecp256k1 inside, and independently (conftest)
    assert sig.public_key == key23[0].public.public_key_bytes and sig.path == "m"  # type: ignore[attr-defined]


def test_3_of_5(key35: list[EcdsaKeyShare]) -> None:
    assert sign_with(presign([key35[0], key35[2], key35[4]], seed=3)) is not None


def test_nonce_is_rerandomised_by_digest_and_seed(key23: list[EcdsaKeyShare]) -> None:
    """The signature's r is x(R + δ·G), never x(R): it depends on the digest and the seed."""
    rs = set()
    for digest, seed in ((DIGEST, SEED), (DIGEST, b"\x01" * 32), (b"\x07" * 32, SEED)):
        pres = presign(key23[:2], seed=7)  # the same session each time: the same R
        big_r = next(iter(pres.values())).big_r
        sig = sign_with(pres, digest, seed)
        assert sig is not None
        assert sig.r != int.from_bytes(SECP256K1.encode(big_r)[1:], "big") % Q  # type: ignore[attr-defined]
        rs.add(sig.r)  # type: ignore[attr-defined]
    assert len(rs) == 3


def test_single_use(key23: list[EcdsaKeyShare]) -> None:
    pres = presign(key23[:2])
    p = pres[1]
    p.share(DIGEST, SEED)
    assert p.used
    with pytest.raises(UsageError, match="used before"):
        p.share(DIGEST, SEED)
    with pytest.raises(UsageError, match="used before"):
        p.share(b"\x00" * 32, SEED)


def test_refused_input_still_uses_it_up(key23: list[EcdsaKeyShare]) -> None:
    """A caller that hands a bad digest or seed cannot try again with the same secrets."""
    for digest, seed in ((b"short", SEED), (DIGEST, b"short"), ("not bytes", SEED)):
        p = presign(key23[:2])[2]
        with pytest.raises(UsageError):
            p.share(digest, seed)  # type: ignore[arg-type]
        assert p.used


def test_secret_never_pickled_or_shown(key23: list[EcdsaKeyShare]) -> None:
    p = presign(key23[:2])[1]
    with pytest.raises(TypeError):
        pickle.dumps(p)
    phi, u, v = p._secrets  # type: ignore[misc]
    text = repr(p)
    for secret in (phi, u, v):
        assert str(secret) not in text and f"{secret:x}" not in text
    assert "unused" in text


def test_a_wrong_share_gives_no_signature(key23: list[EcdsaKeyShare]) -> None:
    """P12: a signer's wrong (u, w) cannot be told from the others; nothing is released."""
    for bump in ((1, 0), (0, 1), (Q - 1, 0)):
        pres = presign(key23[:2])
        first = pres[1]
        shares = [p.share(DIGEST, SEED) for p in pres.values()]
        s0 = shares[0]
        shares[0] = PresignedShare(u=(s0.u + bump[0]) % Q, w=(s0.w + bump[1]) % Q, big_r=s0.big_r)
        assert presigned_signature(first.public_key, DIGEST, shares) is None


def test_combiner_inputs_must_match(key23: list[EcdsaKeyShare]) -> None:
    """Another digest at the combiner than the signers used, nonce points that differ, or one
    share missing: no signature."""
    pres = presign(key23[:2])
    first = pres[1]
    shares = [p.share(DIGEST, SEED) for p in pres.values()]
    assert presigned_signature(first.public_key, b"\x01" * 32, shares) is None
    moved = PresignedShare(u=shares[1].u, w=shares[1].w, big_r=shares[1].big_r + SECP256K1.base_mul(1))
    assert presigned_signature(first.public_key, DIGEST, [shares[0], moved]) is None
    assert presigned_signature(first.public_key, DIGEST, shares[:1]) is None
    with pytest.raises(UsageError):
        presigned_signature(first.public_key, b"\x00", shares)


def test_the_nonce_depends_on_what_only_the_signers_know(key23: list[EcdsaKeyShare]) -> None:
    """δ mixes in a value the signers derive from their commitment salts, which travel only
    point to point: the combiner's seed, the digest, the id and R alone do not give R'."""
    pres = presign(key23[:2])
    first = pres[1]
    private = first._private
    assert type(private) is bytes and len(private) == 32 and pres[2]._private == private
    share = first.share(DIGEST, SEED)
    guess = rerandomizer(first.presignature_id, first.public_key, first.big_r, DIGEST, SEED, b"\x00" * 32)
    assert SECP256K1.encode(first.big_r + SECP256K1.base_mul(guess)) != SECP256K1.encode(share.big_r)
    delta = rerandomizer(first.presignature_id, first.public_key, first.big_r, DIGEST, SEED, private)
    assert SECP256K1.encode(first.big_r + SECP256K1.base_mul(delta)) == SECP256K1.encode(share.big_r)


def test_session_ids_differ_from_signing(key23: list[EcdsaKeyShare]) -> None:
    """Same key, signers and instance: a pre-signing and a signing never share a session id,
    so no message of one is accepted by the other."""
    inst = b"\x11" * 32
    pre = DklsPresigner(key23[0], signers=[1, 2], instance=inst, rng=DeterministicRng(1))
    sig = DklsSigner(key23[0], signers=[1, 2], digest=DIGEST, instance=inst, rng=DeterministicRng(1))
    assert pre.session_id != sig.session_id
    sig.start()
    for m in DklsPresigner(key23[1], signers=[1, 2], instance=inst, rng=DeterministicRng(2)).start():
        with pytest.raises(MessageRejected) as e:
            sig.receive(m)
        assert e.value.reason is AbortReason.WRONG_SESSION


def test_round_three_share_is_refused(key23: list[EcdsaKeyShare]) -> None:
    """A pre-signing has no third message round: a SignShare is an unexpected message."""
    parties = presigners(key23[:2])
    parties[1].start()
    share = SignShare(suite=key23[0].public.suite, u=1, w=2)
    m = Message(session_id=parties[1].session_id, round=3, sender=2, recipient=BROADCAST, payload=encode_payload(share))
    with pytest.raises(ProtocolAbort) as e:
        parties[1].receive(m)
    assert e.value.reason is AbortReason.UNEXPECTED_MESSAGE and e.value.culprits == {2}


def test_cheating_counterparty_is_banned(key23: list[EcdsaKeyShare], fresh_ban_registry: BanRegistry) -> None:  # noqa: F811
    """The multiplication checks of round 3 run in a pre-signing as in a signing (spec P3)."""
    parties = presigners(key23[:2])
    suite = key23[0].public.suite

    def tamper(m: Message) -> Message:
        if m.sender == 2 and m.round == 2:
            p = decode_payload(suite, m.payload, SignMultiply)
            bad = SignMultiply(
                **{**{f: getattr(p, f) for f in p.__dataclass_fields__}, "gamma_u": p.gamma_u + SECP256K1.base_mul(1)}
            )
            return Message(session_id=m.session_id, round=m.round, sender=m.sender, recipient=m.recipient,
                           payload=encode_payload(bad))  # fmt: skip
        return m

    aborts = run_to_the_end(parties, tamper, cheater=2)
    assert aborts[1].reason is AbortReason.PAIRWISE_CONSISTENCY and aborts[1].culprits == {2}
    assert 2 in fresh_ban_registry.banned(key23[0].setup_id, 1)


def test_rerandomizer_binds_every_input() -> None:
    pk, r = SECP256K1.base_mul(3), SECP256K1.base_mul(4)
    args = (b"i" * 32, pk, r, DIGEST, SEED, b"p" * 32)
    base = rerandomizer(*args)
    assert base != rerandomizer(b"j" * 32, *args[1:])
    assert base != rerandomizer(args[0], r, pk, *args[3:])
    assert base != rerandomizer(*args[:3], b"\x00" * 32, *args[4:])
    assert base != rerandomizer(*args[:4], b"\x00" * 32, args[5])
    assert base != rerandomizer(*args[:5], b"q" * 32)
    assert 0 <= base < Q
    for bad in ((*args[:4], b"\x00", args[5]), (*args[:5], b"short"), (*args[:3], b"\x00", *args[4:])):
        with pytest.raises(ValueError):
            rerandomizer(*bad)


@settings(max_examples=8, deadline=None)
@given(digest=st.binary(min_size=32, max_size=32), seed=st.binary(min_size=32, max_size=32))
def test_any_digest_and_seed_sign(key23: list[EcdsaKeyShare], digest: bytes, seed: bytes) -> None:
    assert sign_with(presign(key23[1:]), digest, seed) is not None
