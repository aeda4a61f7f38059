"""A node's channel keys, the public card it shows its peers, and the 64 bytes it attests.

.. danger:: hazmat-adjacent: this module holds private keys. Only :mod:`shardguard.channel`
   and the node's boot code should touch :class:`NodeKeys`.

Theory of operation (ARCHITECTURE §6). At boot, inside the enclave, a node makes two key pairs:

* an **identity key** (Ed25519) that signs every envelope it sends (and, later, its audit log);
* a **channel key** that peers encrypt to with HPKE (RFC 9180) in base mode (§5.1.1): either
  DHKEM(X25519, HKDF-SHA256), KEM id 0x0020 (§7.1), or the post-quantum hybrid
  MLKEM768-X25519 ("X-Wing"), IANA HPKE KEM id 0x647A. The KDF is always HKDF-SHA256 (0x0001,
  §7.2) and the AEAD always ChaCha20-Poly1305 (0x0003, §7.3): constant-time in software on
  every platform, and single-shot use (see :mod:`.channel`) never approaches its limits.

The node publishes a :class:`PeerCard` (its id and both public keys) and asks its platform to
attest :func:`binding` of that card and the verifier's nonce. The binding is exactly 64 bytes,
the size every backend takes as user_data / REPORT_DATA (specs/enclave-backends.md). A peer
that verified the evidence therefore knows the keys on the card were made by measured code,
for this nonce, and nothing else.

The private keys never leave :class:`NodeKeys`: there is no export, no ``to_bytes``, no pickle,
and ``repr`` redacts them. A node that restarts makes new keys and is attested again.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
from typing import Any, NoReturn, TypeAlias, TypeGuard

import nacl.bindings
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from shardguard.crypto.ed25519 import ED25519
from shardguard.crypto.errors import DecodeError

__all__ = [
    "BINDING_LEN",
    "CARD_VERSION",
    "DOMAIN_TAG",
    "MAX_NODE_ID_LEN",
    "MAX_NONCE_LEN",
    "MIN_NONCE_LEN",
    "CardError",
    "ChannelError",
    "ChannelUsageError",
    "KemId",
    "NodeKeys",
    "PeerCard",
    "binding",
    "is_node_id",
    "verify_signature",
]

#: Opens every hash and signature of the channel layer (domain separation).
DOMAIN_TAG = b"shardguard/attested-channel/v1"
#: ``binding()`` output size: SHA-512, the 64 bytes every platform accepts as report data.
BINDING_LEN = 64
#: A verifier nonce shorter than 128 bits could repeat; longer than 1 KiB is a mistake.
MIN_NONCE_LEN = 16
MAX_NONCE_LEN = 1024
#: Node ids are short printable ASCII so they are canonical as bytes and safe in logs.
MAX_NODE_ID_LEN = 64
_NODE_ID_RE = re.compile(rb"[a-z0-9][a-z0-9._-]{0,63}")
#: Version byte of the card encoding.
CARD_VERSION = 1

_ED25519_PK_LEN = 32
_X25519_PK_LEN = 32
_MLKEM768_PK_LEN = 1184


class ChannelError(Exception):
    """Base of every error raised by :mod:`shardguard.channel`."""


class ChannelUsageError(ChannelError, ValueError):
    """The caller misused the API (wrong type, bad length, sequence not increasing…).

    Raised only for local mistakes, never for bytes received from the network.
    """


class CardError(ChannelError, ValueError):
    """A peer card (or its encoding) is invalid; ``field`` names which part."""

    def __init__(self, detail: str, *, field: str = "") -> None:
        self.detail = detail
        self.field = field
        super().__init__(f"invalid peer card{f' [{field}]' if field else ''}: {detail}")


class KemId(enum.IntEnum):
    """HPKE KEM identifiers (RFC 9180 §7.1; IANA "HPKE KEM Identifiers")."""

    #: DHKEM(X25519, HKDF-SHA256): Npk = Nenc = 32.
    X25519 = 0x0020
    #: MLKEM768-X25519 (X-Wing): Npk = 1216 (ML-KEM-768 pk ‖ X25519 pk), Nenc = 1120.
    MLKEM768_X25519 = 0x647A

    @property
    def public_key_len(self) -> int:
        return _X25519_PK_LEN if self is KemId.X25519 else _MLKEM768_PK_LEN + _X25519_PK_LEN

    @property
    def enc_len(self) -> int:
        return _HPKE_KEM[self].enc_length()

    def suite(self) -> hpke.Suite:
        """The HPKE suite ``(self, HKDF-SHA256, ChaCha20-Poly1305)`` (RFC 9180 §7)."""
        return _SUITES[self]


_HPKE_KEM = {KemId.X25519: hpke.KEM.X25519, KemId.MLKEM768_X25519: hpke.KEM.MLKEM768_X25519}
_SUITES = {k: hpke.Suite(v, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305) for k, v in _HPKE_KEM.items()}

HpkePublicKey: TypeAlias = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
HpkePrivateKey: TypeAlias = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey

# Any fixed scalar works for the small-order probe below: clamping makes it a multiple of the
# cofactor, so the product is all-zero exactly when the point has small order.
_PROBE = x25519.X25519PrivateKey.from_private_bytes(b"\x5a" * 32)


def _check_x25519(pk: bytes, field: str) -> x25519.X25519PublicKey:
    # RFC 9180 §7.1.4: DH with a small-order point yields the all-zero secret, which the library
    # refuses at encryption time. Refusing it here keeps a useless card from ever existing.
    key = x25519.X25519PublicKey.from_public_bytes(pk)
    try:
        _PROBE.exchange(key)
    except ValueError:
        raise CardError("X25519 point of small order", field=field) from None
    return key


def is_node_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a well-formed node id: ``[a-z0-9][a-z0-9._-]{0,63}``."""
    return type(value) is str and _NODE_ID_RE.fullmatch(value.encode("ascii", errors="replace")) is not None


def _check_node_id(node_id: object, field: str = "node_id") -> str:
    if type(node_id) is not str:
        raise CardError("must be a str", field=field)
    if not is_node_id(node_id):
        raise CardError(f"must match [a-z0-9][a-z0-9._-]{{0,{MAX_NODE_ID_LEN - 1}}}", field=field)
    return node_id


def _kem_id(value: object) -> KemId:
    if type(value) is not int:
        raise CardError(f"unsupported KEM {value!r}", field="kem_id")
    try:
        return KemId(value)
    except ValueError:
        raise CardError(f"unsupported KEM 0x{value:04x}", field="kem_id") from None


def _frame(data: bytes) -> bytes:
    # 8-byte big-endian length prefix, as in shardguard.crypto.transcript: no two different
    # sequences of fields frame alike.
    return len(data).to_bytes(8, "big") + data


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PeerCard:
    """What a node shows its peers: its id, identity public key, channel public key, KEM id.

    A card cannot exist invalid (STYLE: h11 events): the constructor checks the node id, that
    the identity key is a canonical Ed25519 point of prime order (not the identity), that the
    channel key has the KEM's length, that its X25519 part is not of small order and that its
    ML-KEM part is a valid encapsulation key (FIPS 203 modulus check). A card proves nothing by
    itself: it is trusted only through :func:`shardguard.channel.peer.admit_peer`.
    """

    node_id: str
    identity_public_key: bytes
    channel_public_key: bytes
    kem_id: KemId

    def __post_init__(self) -> None:
        _check_node_id(self.node_id)
        for name in ("identity_public_key", "channel_public_key"):
            if type(getattr(self, name)) is not bytes:
                raise CardError("must be bytes", field=name)
        try:
            ED25519.decode(self.identity_public_key, field="identity_public_key")
        except DecodeError as e:
            raise CardError(e.reason.value, field="identity_public_key") from None
        if type(self.kem_id) is not KemId:
            object.__setattr__(self, "kem_id", _kem_id(self.kem_id))
        pk = self.channel_public_key
        if len(pk) != self.kem_id.public_key_len:
            raise CardError(
                f"{self.kem_id.name} public key must be {self.kem_id.public_key_len} bytes", field="channel_public_key"
            )
        if self.kem_id is KemId.MLKEM768_X25519:
            try:
                mlkem.MLKEM768PublicKey.from_public_bytes(pk[:_MLKEM768_PK_LEN])
            except ValueError:
                raise CardError("invalid ML-KEM-768 encapsulation key", field="channel_public_key") from None
            _check_x25519(pk[_MLKEM768_PK_LEN:], "channel_public_key")
        else:
            _check_x25519(pk, "channel_public_key")

    def encode(self) -> bytes:
        """Canonical encoding: ``version u8 ‖ kem_id u16 ‖ len u8 ‖ node_id ‖ identity pk (32)
        ‖ len u16 ‖ channel pk`` (big-endian). :meth:`decode` accepts exactly this and nothing
        else, so a card has one encoding."""
        nid = self.node_id.encode("ascii")
        return (
            bytes([CARD_VERSION])
            + self.kem_id.to_bytes(2, "big")
            + bytes([len(nid)])
            + nid
            + self.identity_public_key
            + len(self.channel_public_key).to_bytes(2, "big")
            + self.channel_public_key
        )

    @classmethod
    def decode(cls, data: bytes) -> PeerCard:
        """Parse :meth:`encode` output. Raises :class:`CardError` on any deviation."""
        if type(data) is not bytes:
            raise CardError("must be bytes")
        if len(data) < 4:
            raise CardError("truncated")
        if data[0] != CARD_VERSION:
            raise CardError(f"unsupported card version {data[0]}", field="version")
        kem = int.from_bytes(data[1:3], "big")
        n = data[3]
        off = 4
        nid = data[off : off + n]
        off += n
        ipk = data[off : off + _ED25519_PK_LEN]
        off += _ED25519_PK_LEN
        m = int.from_bytes(data[off : off + 2], "big")
        off += 2
        cpk = data[off : off + m]
        off += m
        # Slicing past the end yields short fields rather than an error: catch that here.
        if off > len(data) or len(cpk) != m:
            raise CardError("truncated")
        if off != len(data):
            raise CardError("trailing bytes after the card")
        try:
            node_id = nid.decode("ascii")
        except UnicodeDecodeError:
            raise CardError("not ASCII", field="node_id") from None
        return cls(node_id=node_id, identity_public_key=ipk, channel_public_key=cpk, kem_id=_kem_id(kem))


def binding(card: PeerCard, nonce: bytes) -> bytes:
    """The 64 bytes a node attests (its evidence's user_data / REPORT_DATA).

    ``SHA-512(DOMAIN_TAG ‖ node_id ‖ identity pk ‖ channel pk ‖ kem_id (u16) ‖ nonce)``, every
    field framed with an 8-byte big-endian length (the domain tag too), so no two different
    (card, nonce) pairs hash the same input. The node id is bound as well as the keys: the
    enclave, not the untrusted host, then states which name its keys answer to.

    Args:
        card: the node's own card.
        nonce: the verifier's fresh challenge, 16..1024 bytes. Freshness comes from here on
            platforms whose evidence carries no time (SEV-SNP, TDX, SGX).

    Returns:
        exactly :data:`BINDING_LEN` (64) bytes.
    """
    if not isinstance(card, PeerCard):
        raise ChannelUsageError("card must be a PeerCard")
    if type(nonce) is not bytes or not MIN_NONCE_LEN <= len(nonce) <= MAX_NONCE_LEN:
        raise ChannelUsageError(f"nonce must be {MIN_NONCE_LEN}..{MAX_NONCE_LEN} bytes")
    h = hashlib.sha512()
    for part in (
        DOMAIN_TAG,
        card.node_id.encode("ascii"),
        card.identity_public_key,
        card.channel_public_key,
        card.kem_id.to_bytes(2, "big"),
        nonce,
    ):
        h.update(_frame(part))
    return h.digest()  # SHA-512: BINDING_LEN (64) bytes


def _signed_message(context: bytes, message: bytes) -> bytes:
    if type(context) is not bytes or not context:
        raise ChannelUsageError("signature context must be non-empty bytes")
    return _frame(DOMAIN_TAG) + _frame(context) + message


def verify_signature(identity_public_key: bytes, context: bytes, message: bytes, signature: bytes) -> bool:
    """Check a :meth:`NodeKeys.sign` signature. Returns False on any failure, never raises for
    bad signatures or bad keys (the caller decides what a failure means).

    RFC 8032 §5.1.7 verification by libsodium (``crypto_sign_open``), which is also strict where
    the RFC leaves room: it refuses small-order and non-canonical public keys and ``R``, and
    ``S >= L``. It verifies in about half the time OpenSSL takes, and every frame, envelope
    and audit entry is verified with it."""
    try:
        signed = _signed_message(context, message)
        if len(signature) != _ED25519_SIG_LEN or len(identity_public_key) != _ED25519_PK_LEN:
            return False
        nacl.bindings.crypto_sign_open(bytes(signature) + signed, bytes(identity_public_key))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


_ED25519_SIG_LEN = 64
_ED25519_PK_LEN = 32


class NodeKeys:
    """A node's identity key (Ed25519) and channel key (HPKE KEM), made inside the enclave.

    Immutable. ``repr`` shows the public card only; pickling and ``copy`` of private keys are
    refused, so the keys cannot leave through a cache, a queue or a debug dump by accident.
    """

    __slots__ = ("__weakref__", "_card", "_hpke_sk", "_identity")

    # libsodium's signing key (seed and expanded key as Python bytes, which Python cannot wipe:
    # the process memory is the enclave's, ARCHITECTURE §5). Signing is about a third faster
    # than OpenSSL's, and Ed25519 signatures are deterministic, so the bytes are the same.
    _identity: nacl.signing.SigningKey
    _hpke_sk: HpkePrivateKey
    _card: PeerCard

    def __init__(self) -> None:
        # Keys are only ever made fresh, inside the enclave: there is no import path.
        raise TypeError("use NodeKeys.generate(node_id, kem=...)")

    @classmethod
    def generate(cls, node_id: str, *, kem: KemId = KemId.X25519) -> NodeKeys:
        """Make fresh keys from the OS CSPRNG (inside the enclave: the platform's RNG)."""
        _check_node_id(node_id)
        if type(kem) is not KemId:
            raise ChannelUsageError(f"kem must be a KemId, got {kem!r}")
        identity = nacl.signing.SigningKey.generate()  # libsodium randombytes: the OS CSPRNG
        xsk = x25519.X25519PrivateKey.generate()
        xpk = xsk.public_key().public_bytes_raw()
        sk: HpkePrivateKey
        if kem is KemId.X25519:
            sk, cpk = xsk, xpk
        else:
            msk = mlkem.MLKEM768PrivateKey.generate()
            sk = hpke.MLKEM768X25519PrivateKey(msk, xsk)
            # X-Wing's public key order: ML-KEM-768 encapsulation key, then the X25519 key.
            cpk = msk.public_key().public_bytes_raw() + xpk
        card = PeerCard(
            node_id=node_id,
            identity_public_key=bytes(identity.verify_key),
            channel_public_key=cpk,
            kem_id=kem,
        )
        self = object.__new__(cls)
        object.__setattr__(self, "_identity", identity)
        object.__setattr__(self, "_hpke_sk", sk)
        object.__setattr__(self, "_card", card)
        return self

    @property
    def node_id(self) -> str:
        return self._card.node_id

    @property
    def kem_id(self) -> KemId:
        return self._card.kem_id

    def card(self) -> PeerCard:
        """This node's public card (what it attests, with a nonce, via :func:`binding`)."""
        return self._card

    def sign(self, context: bytes, message: bytes) -> bytes:
        """Ed25519-sign ``frame(DOMAIN_TAG) ‖ frame(context) ‖ message``.

        ``context`` separates the uses of the one identity key (channel envelopes, audit log
        entries…), so a signature made for one use is never valid for another.
        """
        return self._identity.sign(_signed_message(context, message)).signature

    def hpke_open(self, sealed: bytes, *, info: bytes) -> bytes:
        """RFC 9180 §6.1 single-shot ``OpenBase(enc, skR, info, "", ct)`` with this node's
        channel key; ``sealed`` is ``enc ‖ ct``. Raises the library's ``InvalidTag`` or
        ``ValueError`` on failure; :class:`~shardguard.channel.channel.Channel` turns those into
        its one opaque error."""
        return self._card.kem_id.suite().decrypt(sealed, self._hpke_sk, info=info)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("NodeKeys is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("NodeKeys is immutable")

    def __repr__(self) -> str:
        c = self._card
        ident = c.identity_public_key.hex()[:16]
        return f"NodeKeys(node_id={c.node_id!r}, kem={c.kem_id.name}, identity={ident}…, private=<redacted>)"

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("NodeKeys hold private keys and cannot be pickled or copied")

    def __copy__(self) -> NoReturn:
        raise TypeError("NodeKeys hold private keys and cannot be pickled or copied")

    def __deepcopy__(self, memo: Any) -> NoReturn:
        raise TypeError("NodeKeys hold private keys and cannot be pickled or copied")
