"""An attested end-to-end channel between two nodes (ARCHITECTURE §6).

Every protocol message travels as one **envelope**: encrypted under a **link key** that is
HPKE-sealed to the recipient's attested channel key (RFC 9180, base mode §5.1.1, single-shot
API §6.1), and Ed25519-signed by the sender's attested identity key. The coordinator relays
envelopes it cannot read (HPKE), forge (signature), re-target, move to another session, or
replay (header checks below).

Envelope, version 2 (fixed binary, big-endian, every length checked)::

    off  size  field
    0    1     version                      = 2
    1    32    session_id
    33   1     s = len(sender id)           1..64, then s bytes of ASCII
         1     r = len(recipient id)        1..64, then r bytes of ASCII
         8     seq                          u64
         ----- the header ends here: it is the AEAD associated data (see below)
         2     w = len(wrap)                = Nenc of the recipient's KEM + 32 + 16 (80 or 1168)
         w     wrap                         HPKE enc ‖ ChaCha20-Poly1305(link key) ‖ tag
         12    nonce                        random, for the message AEAD
         4     c = len(ct)                  16..MAX_PLAINTEXT + 16
         c     ct                           ChaCha20-Poly1305(link key, nonce, aad) ciphertext ‖ tag
         64    signature                    Ed25519, by the sender's identity key

**Link keys.** A sender makes a random 32-byte link key per recipient (per recipient channel
key) and seals it once with HPKE, ``info = "…/link-key" ‖ frame(sender) ‖ frame(recipient)``;
that ``wrap`` rides in every envelope it seals under the key, so every envelope still opens on
its own, in any order, after any restart of either side. The recipient decapsulates a wrap once
and keeps the key (in memory: per sender, its 8 most recent), keyed by sender and wrap. A link key seals at most
:data:`LINK_KEY_USES` envelopes, for at most :data:`LINK_KEY_SECONDS`, and is then replaced.
Why: one HPKE seal costs ~0.1–0.2 ms (an X25519 key generation and a DH; with ML-KEM also an
encapsulation) and one open ~0.1 ms; a signing job sends each peer three or more envelopes, so
per-envelope encapsulations were about a fifth of a node's CPU per signature.

**Why it is safe.** Link keys exist only in enclave memory and are never written anywhere, so
a restart or a rolled-back disk (ARCHITECTURE §1) cannot bring one back. Message nonces are
random 96-bit values, never counters, so no state can make one repeat; with at most 4096
envelopes per key, the chance that two nonces collide is below 2^-72. The header (version,
session, sender, recipient, seq) is the AEAD's associated data, so it cannot be changed even by
a holder of the link key. Forward secrecy towards the sender is per link key rather than per
envelope (RFC 9180 §9.7.4): memory taken from the sender's enclave reveals the envelopes sealed
under its current link keys. Against theft of the recipient's channel key (also enclave memory
only) nothing changes: that key opens every wrap, as it opened every envelope before.

**Signature.** Neither HPKE base mode nor the link key authenticates anybody (§5.1.1): anyone
with the recipient's public key can seal. The sender's Ed25519 signature over
``frame(DOMAIN_TAG) ‖ frame("envelope") ‖ everything before the signature`` proves which
admitted peer sent it, and lets the recipient reject forgeries before spending a
decapsulation. Encrypt-then-sign cannot be stripped and re-signed by another node: the sender
id is inside the AEAD's associated data and the wrap's HPKE info, so a re-signed envelope
either names the wrong signer or fails to open.

**Receive order.** Parse and size limits; sender is our admitted peer; signature; and only
then the checks that name a reason: recipient is us, session is ours, sequence number strictly
above the last accepted one (RFC 9180 §9.7.3 leaves replay protection to the application);
finally the wrap (HPKE open, unless known) and the AEAD. Reasons are reported only for
envelopes the peer really signed, so a forger learns nothing: every failed authenticity check
raises the same :class:`ChannelAuthError` with the same message (STYLE: pyca Fernet's
``InvalidToken``).

**Sequence state.** The receiver keeps the last accepted ``seq`` per (session, sender) — one
:class:`Channel` is one (local node, peer, session) — in memory. Keep exactly one Channel per
(session, peer) and give every session a fresh id; a restarted node makes new keys and
re-attests, so an old envelope cannot open under its new key. A Channel is not thread-safe;
the link keys it shares with the other Channels of its :class:`NodeKeys` are.
"""

from __future__ import annotations

import collections
import enum
import functools
import secrets
import threading
import time
import weakref
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from shardguard.channel.identity import (
    DOMAIN_TAG,
    MAX_NODE_ID_LEN,
    ChannelError,
    ChannelUsageError,
    HpkePublicKey,
    KemId,
    NodeKeys,
    PeerCard,
    verify_signature,
)
from shardguard.channel.peer import AdmittedPeer

__all__ = [
    "ENVELOPE_VERSION",
    "LINK_KEY_SECONDS",
    "LINK_KEY_USES",
    "MAX_ENVELOPE",
    "MAX_PLAINTEXT",
    "MAX_SEQ",
    "SESSION_ID_LEN",
    "Channel",
    "ChannelAuthError",
    "ChannelReplayError",
    "ReplayReason",
]

ENVELOPE_VERSION = 2
#: Envelopes one link key seals before the sender makes a new one.
LINK_KEY_USES = 4096
#: Seconds a link key seals for before the sender makes a new one (bounds what memory taken
#: from the sender could open, on a quiet link too).
LINK_KEY_SECONDS = 600.0
SESSION_ID_LEN = 32
MAX_SEQ = 2**64 - 1
#: Largest plaintext one envelope carries. The biggest protocol payload is ~8.5 KB (a 255-party
#: commitment) and protocol messages are capped at 64 KiB; 256 KiB leaves room without letting a
#: relay make a node buffer or hash megabytes per envelope.
MAX_PLAINTEXT = 256 * 1024

_SIG_LEN = 64
_TAG_LEN = 16  # ChaCha20-Poly1305 (RFC 8439; RFC 9180 §7.3: Nt = 16)
_KEY_LEN = 32
_NONCE_LEN = 12
_WRAP_EXTRA = _KEY_LEN + _TAG_LEN  # a wrap is enc ‖ sealed link key
_MAX_WRAP = max(k.enc_len for k in KemId) + _WRAP_EXTRA
_MIN_WRAP = min(k.enc_len for k in KemId) + _WRAP_EXTRA
#: Largest well-formed envelope; anything longer is refused before it is parsed.
MAX_ENVELOPE = (
    1 + SESSION_ID_LEN + 2 * (1 + MAX_NODE_ID_LEN) + 8 + 2 + _MAX_WRAP + _NONCE_LEN + 4 + MAX_PLAINTEXT + _TAG_LEN + _SIG_LEN
)
_MIN_ENVELOPE = 1 + SESSION_ID_LEN + 2 * (1 + 1) + 8 + 2 + _MIN_WRAP + _NONCE_LEN + 4 + _TAG_LEN + _SIG_LEN

_SIG_CONTEXT = b"envelope"
# Fixed prefixes, so this layer's HPKE ``info`` and AEAD associated data can never equal those
# of another use of the same keys.
_WRAP_INFO_PREFIX = DOMAIN_TAG + b"/link-key\x00"
_AAD_PREFIX = DOMAIN_TAG + b"/envelope-aad\x00"
#: Link keys a node keeps of its peers (each an HPKE open saved per envelope): per sender, so a
#: peer that sends fresh wraps only pushes out its own, and for this many senders; and of its
#: own (per recipient channel key; a restarted peer has a new one).
_RECEIVED_PER_SENDER = 8
_RECEIVED_SENDERS = 256
_RECEIVED_SECONDS = 2 * LINK_KEY_SECONDS
_SENDING_LINK_KEYS = 256


class ChannelAuthError(ChannelError):
    """The envelope is not authentic. One opaque error, always the same message, for every
    failed check: size, parse, unknown version, unknown sender, signature, KEM mismatch, HPKE
    open (STYLE: pyca Fernet ``InvalidToken``). It never says which check failed."""

    MESSAGE = "channel envelope rejected: not authentic"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class ReplayReason(enum.Enum):
    """Why an envelope that the peer really signed was still refused."""

    REPLAYED = "sequence number already accepted (replay)"
    REORDERED = "sequence number below the last accepted one (reordered or replayed)"
    WRONG_RECIPIENT = "envelope is addressed to another node (re-targeted)"
    WRONG_SESSION = "envelope belongs to another session"


class ChannelReplayError(ChannelError):
    """An authentic envelope used out of place. ``reason`` is machine-readable; ``seq`` is the
    envelope's sequence number and ``last_seq`` the last one accepted (None before the first)."""

    def __init__(self, reason: ReplayReason, *, seq: int, last_seq: int | None) -> None:
        self.reason = reason
        self.seq = seq
        self.last_seq = last_seq
        super().__init__(f"{reason.value} (seq {seq}, last accepted {last_seq})")


def _hpke_seal(suite: hpke.Suite, public_key: HpkePublicKey, plaintext: bytes, *, info: bytes) -> bytes:
    """RFC 9180 §6.1 ``SealBase(pkR, info, "", pt)`` → ``enc ‖ ct``, a fresh encapsulation.

    The one place this package HPKE-encrypts: link keys, for :meth:`Channel.seal`.
    """
    return suite.encrypt(plaintext, public_key, info=info)


def _aead_seal(key: ChaCha20Poly1305, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """RFC 8439 ChaCha20-Poly1305 under a link key; the one place messages are encrypted."""
    return key.encrypt(nonce, plaintext, aad)


def _wrap_info(sender: str, recipient: str) -> bytes:
    s, r = sender.encode("ascii"), recipient.encode("ascii")
    return _WRAP_INFO_PREFIX + bytes([len(s)]) + s + bytes([len(r)]) + r


class _LinkKeys:
    """The link keys of one :class:`NodeKeys` (see the module docstring): those it seals with,
    per recipient channel key, and those it has unwrapped, per sender and wrap. Thread-safe:
    every task thread of a node shares them. Secret: never logged, pickled or shown."""

    __slots__ = ("_lock", "_received", "_sending")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (recipient id, KEM, channel key) -> [AEAD, wrap, envelopes left, made at (monotonic)]
        self._sending: collections.OrderedDict[tuple[str, KemId, bytes], list[Any]] = collections.OrderedDict()
        # sender id -> (wrap -> (key, unwrapped at (monotonic))), both least recently used first
        self._received: collections.OrderedDict[str, collections.OrderedDict[bytes, tuple[ChaCha20Poly1305, float]]] = (
            collections.OrderedDict()
        )

    def for_sending(self, sender: str, peer: PeerCard, suite: hpke.Suite, pk: HpkePublicKey) -> tuple[ChaCha20Poly1305, bytes]:
        slot = (peer.node_id, peer.kem_id, peer.channel_public_key)
        now = time.monotonic()
        with self._lock:
            link = self._sending.get(slot)
            if link is None or link[2] <= 0 or now - link[3] >= LINK_KEY_SECONDS:
                key = secrets.token_bytes(_KEY_LEN)
                wrap = _hpke_seal(suite, pk, key, info=_wrap_info(sender, peer.node_id))
                link = self._sending[slot] = [ChaCha20Poly1305(key), wrap, LINK_KEY_USES, now]
                # Expired keys of quiet links go too, not only when their link sends again.
                for old in [s for s, v in self._sending.items() if now - v[3] >= LINK_KEY_SECONDS]:
                    del self._sending[old]
                while len(self._sending) > _SENDING_LINK_KEYS:
                    self._sending.popitem(last=False)
            self._sending.move_to_end(slot)
            link[2] -= 1
            return link[0], link[1]

    def for_opening(self, me: NodeKeys, sender: str, wrap: bytes) -> ChaCha20Poly1305:
        """The link key in ``wrap``; raises ``InvalidTag``/``ValueError`` if it does not open.
        Call only for an envelope whose signature the sender's identity key has verified."""
        now = time.monotonic()
        with self._lock:
            keys = self._received.get(sender)
            hit = keys.get(wrap) if keys is not None else None
            if keys is not None and hit is not None and now - hit[1] < _RECEIVED_SECONDS:
                keys.move_to_end(wrap)
                self._received.move_to_end(sender)
                return hit[0]
        raw = me.hpke_open(wrap, info=_wrap_info(sender, me.node_id))
        if len(raw) != _KEY_LEN:
            raise ValueError("link key of the wrong length")
        key = ChaCha20Poly1305(raw)
        with self._lock:
            keys = self._received.setdefault(sender, collections.OrderedDict())
            keys[wrap] = (key, now)
            while len(keys) > _RECEIVED_PER_SENDER:
                keys.popitem(last=False)
            self._received.move_to_end(sender)
            # Keys kept past their sender's use (twice its rotation time) go; a late envelope
            # under one only costs an HPKE open again.
            for s, ks in list(self._received.items()):
                for w in [w for w, (_, t) in ks.items() if now - t >= _RECEIVED_SECONDS]:
                    del ks[w]
                if not ks:
                    del self._received[s]
            while len(self._received) > _RECEIVED_SENDERS:
                self._received.popitem(last=False)
        return key

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("link keys are secret; they cannot be pickled")

    def __repr__(self) -> str:
        return "_LinkKeys(<redacted>)"


_LINKS: weakref.WeakKeyDictionary[NodeKeys, _LinkKeys] = weakref.WeakKeyDictionary()
_LINKS_LOCK = threading.Lock()


def _links_of(me: NodeKeys) -> _LinkKeys:
    with _LINKS_LOCK:
        links = _LINKS.get(me)
        if links is None:
            links = _LINKS[me] = _LinkKeys()
        return links


def _hpke_public_key(card: PeerCard) -> HpkePublicKey:
    return _hpke_public_key_of(card.kem_id, card.channel_public_key)


@functools.lru_cache(maxsize=1024)
def _hpke_public_key_of(kem_id: KemId, pk: bytes) -> HpkePublicKey:
    """The key object of a card's channel key, parsed once per key (a Channel per session and
    peer would parse it again each time). Public keys only; the objects are immutable."""
    if kem_id is KemId.X25519:
        return x25519.X25519PublicKey.from_public_bytes(pk)
    split = len(pk) - 32  # X-Wing public key: ML-KEM-768 key ‖ X25519 key
    return hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(pk[:split]),
        x25519.X25519PublicKey.from_public_bytes(pk[split:]),
    )


def _header(session_id: bytes, sender: str, recipient: str, seq: int) -> bytes:
    s, r = sender.encode("ascii"), recipient.encode("ascii")
    return bytes([ENVELOPE_VERSION]) + session_id + bytes([len(s)]) + s + bytes([len(r)]) + r + seq.to_bytes(8, "big")


class _Envelope:
    """A parsed envelope (structure only: nothing in it is trusted yet)."""

    __slots__ = ("body", "ct", "header", "nonce", "recipient", "sender", "seq", "session_id", "signature", "wrap")

    def __init__(self, data: bytes) -> None:
        # Every failure below is a ChannelAuthError: malformed bytes are as unauthentic as
        # forged ones, and the caller must not learn which byte was wrong.
        n = len(data)
        if not _MIN_ENVELOPE <= n <= MAX_ENVELOPE or data[0] != ENVELOPE_VERSION:  # (re-checked: cheap)
            raise ChannelAuthError
        off = 1
        self.session_id = data[off : off + SESSION_ID_LEN]
        off += SESSION_ID_LEN
        ids = []
        for _ in range(2):
            if off >= n:
                raise ChannelAuthError
            k = data[off]
            if not 1 <= k <= MAX_NODE_ID_LEN or off + 1 + k > n:
                raise ChannelAuthError
            raw = data[off + 1 : off + 1 + k]
            if not raw.isascii():
                raise ChannelAuthError
            ids.append(raw.decode("ascii"))
            off += 1 + k
        self.sender, self.recipient = ids
        if off + 8 + 2 > n:
            raise ChannelAuthError
        self.seq = int.from_bytes(data[off : off + 8], "big")
        off += 8
        self.header = data[:off]
        w = int.from_bytes(data[off : off + 2], "big")
        off += 2
        if not _MIN_WRAP <= w <= _MAX_WRAP or off + w + _NONCE_LEN + 4 > n:
            raise ChannelAuthError
        self.wrap = data[off : off + w]
        off += w
        self.nonce = data[off : off + _NONCE_LEN]
        off += _NONCE_LEN
        c = int.from_bytes(data[off : off + 4], "big")
        off += 4
        if not _TAG_LEN <= c <= MAX_PLAINTEXT + _TAG_LEN or off + c + _SIG_LEN != n:
            raise ChannelAuthError
        self.ct = data[off : off + c]
        off += c
        self.body = data[:off]
        self.signature = data[off:]


class Channel:
    """One direction-agnostic channel between this node and one admitted peer, in one session.

    Args:
        me: this node's keys.
        my_card: this node's card (must be ``me.card()``; the peer admitted exactly this).
        peer: the peer, as returned by :func:`~shardguard.channel.peer.admit_peer`. Nothing else
            is accepted: an un-admitted card cannot be encrypted to.
        session_id: 32 bytes naming the protocol session (ARCHITECTURE §4).

    Raises:
        ChannelUsageError: a wrong type, a card that is not ``me``'s, a peer with our own node
            id, or a session id that is not 32 bytes.
    """

    __slots__ = ("_last_opened", "_last_sealed", "_links", "_me", "_my_id", "_peer", "_peer_pk", "_peer_suite", "_session_id")

    def __init__(self, me: NodeKeys, my_card: PeerCard, peer: AdmittedPeer, session_id: bytes) -> None:
        if not isinstance(me, NodeKeys):
            raise ChannelUsageError("me must be NodeKeys")
        if not isinstance(peer, AdmittedPeer):
            # The type says so already; this is for callers that bypass the type checker.
            raise ChannelUsageError("peer must be an AdmittedPeer (see admit_peer)")
        if my_card != me.card():
            raise ChannelUsageError("my_card is not the card of these NodeKeys")
        if peer.node_id == my_card.node_id:
            raise ChannelUsageError("a node cannot open a channel to its own node id")
        if type(session_id) is not bytes or len(session_id) != SESSION_ID_LEN:
            raise ChannelUsageError(f"session_id must be {SESSION_ID_LEN} bytes")
        self._me = me
        self._my_id = my_card.node_id
        self._peer = peer
        self._peer_suite = peer.card.kem_id.suite()
        self._peer_pk = _hpke_public_key(peer.card)
        self._links = _links_of(me)
        self._session_id = session_id
        self._last_sealed: int | None = None
        self._last_opened: int | None = None

    @property
    def session_id(self) -> bytes:
        return self._session_id

    @property
    def peer(self) -> AdmittedPeer:
        return self._peer

    @property
    def last_sealed(self) -> int | None:
        """The last sequence number sealed, or None."""
        return self._last_sealed

    @property
    def last_opened(self) -> int | None:
        """The last sequence number accepted from the peer, or None."""
        return self._last_opened

    def seal(self, plaintext: bytes, *, seq: int) -> bytes:
        """Encrypt ``plaintext`` to the peer and sign the envelope.

        Args:
            plaintext: at most :data:`MAX_PLAINTEXT` bytes.
            seq: this envelope's sequence number, 0..2**64-1, strictly above the last one sealed
                on this channel. The caller derives it from protocol state, so it survives
                restarts with that state.

        Returns:
            the envelope bytes, for any untrusted relay.

        Raises:
            ChannelUsageError: plaintext too large or not bytes; ``seq`` out of range or not
                increasing.
        """
        if not isinstance(plaintext, bytes | bytearray | memoryview):
            raise ChannelUsageError("plaintext must be bytes")
        plaintext = bytes(plaintext)
        if len(plaintext) > MAX_PLAINTEXT:
            raise ChannelUsageError(f"plaintext is larger than {MAX_PLAINTEXT} bytes")
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            raise ChannelUsageError("seq must be an integer in 0..2**64-1")
        if self._last_sealed is not None and seq <= self._last_sealed:
            # The peer would refuse it as a replay; fail here, where the bug is.
            raise ChannelUsageError(f"seq {seq} is not above the last sealed {self._last_sealed}")
        header = _header(self._session_id, self._my_id, self._peer.node_id, seq)
        key, wrap = self._links.for_sending(self._my_id, self._peer.card, self._peer_suite, self._peer_pk)
        nonce = secrets.token_bytes(_NONCE_LEN)
        ct = _aead_seal(key, nonce, plaintext, _AAD_PREFIX + header)
        body = header + len(wrap).to_bytes(2, "big") + wrap + nonce + len(ct).to_bytes(4, "big") + ct
        envelope = body + self._me.sign(_SIG_CONTEXT, body)
        self._last_sealed = seq
        return envelope

    def open(self, envelope: bytes) -> bytes:
        """Authenticate and decrypt an envelope from the peer. A mutating call: on success the
        envelope's ``seq`` becomes the last accepted one.

        Raises:
            ChannelAuthError: anything about the envelope is not authentic (always the same
                message; which check failed is deliberately not said).
            ChannelReplayError: the peer really signed it, but it is addressed to another node,
                belongs to another session, or its ``seq`` is not above the last accepted one.
            ChannelUsageError: ``envelope`` is not bytes (a local bug, not network input).

        No other exception escapes for any byte string; anything else is a bug here.
        """
        if not isinstance(envelope, bytes | bytearray | memoryview):
            raise ChannelUsageError("envelope must be bytes")
        # Size first, before copying or parsing anything a relay sent.
        if not _MIN_ENVELOPE <= len(envelope) <= MAX_ENVELOPE:
            raise ChannelAuthError
        env = _Envelope(bytes(envelope))
        peer = self._peer.card
        # Authenticity first. Until the signature verifies, no field is trusted and no
        # reason is given.
        if env.sender != peer.node_id:
            raise ChannelAuthError
        if not verify_signature(peer.identity_public_key, _SIG_CONTEXT, env.body, env.signature):
            raise ChannelAuthError
        # The peer signed this exact envelope. Now: is it for us, here, and new?
        if env.recipient != self._my_id:
            raise ChannelReplayError(ReplayReason.WRONG_RECIPIENT, seq=env.seq, last_seq=self._last_opened)
        if env.session_id != self._session_id:
            raise ChannelReplayError(ReplayReason.WRONG_SESSION, seq=env.seq, last_seq=self._last_opened)
        if self._last_opened is not None and env.seq <= self._last_opened:
            reason = ReplayReason.REPLAYED if env.seq == self._last_opened else ReplayReason.REORDERED
            raise ChannelReplayError(reason, seq=env.seq, last_seq=self._last_opened)
        if len(env.wrap) != self._me.kem_id.enc_len + _WRAP_EXTRA:
            raise ChannelAuthError
        try:
            key = self._links.for_opening(self._me, env.sender, env.wrap)
            plaintext = key.decrypt(env.nonce, env.ct, _AAD_PREFIX + env.header)
        except (InvalidTag, ValueError):
            raise ChannelAuthError from None
        self._last_opened = env.seq
        return plaintext

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("a Channel holds private keys and replay state; it cannot be pickled")

    def __repr__(self) -> str:
        return f"Channel({self._my_id!r} <-> {self._peer.node_id!r}, session={self._session_id.hex()[:16]}…)"
