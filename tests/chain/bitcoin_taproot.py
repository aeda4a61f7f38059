"""libbitcoinkernel acceptance harness for BIP340/BIP341 P2TR key-path spends.

The harness builds a minimal segwit v1 transaction spending a P2TR output, computes
the BIP341 signature message for ``SIGHASH_DEFAULT`` in plain Python, asks a caller
supplied signer for a 64-byte BIP340 signature, and finally runs Bitcoin Core's own
script interpreter (via ``py-bitcoinkernel``, module ``pbk``) over the result.

References:
    * BIP340 "Design" / "Specification": tagged hashes, x-only public keys.
    * BIP341 "Script validation rules": witness program, key-path spending.
    * BIP341 "Signature validation rules" / "Common signature message".
    * BIP341 "Constructing and spending Taproot outputs": key-path-only tweak.

"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

import coincurve
import pbk  # type: ignore[import-untyped]  # pbk ships no py.typed
from pbk.script import PrecomputedTransactionData  # type: ignore[import-untyped]

#: secp256k1 group order (BIP340 "Specification", ``n``).
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

#: Fixed, arbitrary outpoint being spent (txid in internal byte order, vout 0).
PREVOUT_TXID = hashlib.sha256(b"shardguard/taproot-harness/prevout").digest()
PREVOUT_INDEX = 0
#: Fee deducted from the spent amount for the single output.
FEE_SAT = 1_000
#: Destination: P2TR output to the x-only generator point (any 32-byte program works).
DESTINATION_XONLY = bytes.fromhex("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")

_VERSION = 2
_LOCKTIME = 0
_SEQUENCE = 0xFFFFFFFF
_SIGHASH_DEFAULT = 0x00
_COMPACT_SIZE_ONE_BYTE_MAX = 0xFD
XONLY_LEN = 32
SIG_LEN = 64

#: Every consensus flag, including WITNESS (BIP141) and TAPROOT (BIP341/342).
VERIFY_FLAGS = pbk.ScriptVerificationFlags.ALL


def tagged_hash(tag: str, msg: bytes) -> bytes:
    """BIP340 "Design" tagged hash: ``SHA256(SHA256(tag) || SHA256(tag) || msg)``."""
    tag_digest = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(tag_digest + tag_digest + msg).digest()


def p2tr_script_pubkey(output_key_xonly: bytes) -> bytes:
    """Return the BIP341 segwit v1 scriptPubKey ``OP_1 <32-byte x-only key>``."""
    if len(output_key_xonly) != XONLY_LEN:
        raise ValueError("output key must be a 32-byte x-only public key")
    return b"\x51\x20" + output_key_xonly


def taptweak(internal_key_xonly: bytes) -> int:
    """Return the BIP341 key-path-only tweak ``t = int(hash_TapTweak(bytes(P)))``.

    BIP341 "Constructing and spending Taproot outputs": fails if ``t >= n``.
    """
    t = int.from_bytes(tagged_hash("TapTweak", internal_key_xonly), "big")
    if t >= SECP256K1_ORDER:
        raise ValueError("TapTweak hash is not a valid scalar")
    return t


def taproot_output_key(internal_key_xonly: bytes) -> bytes:
    """Compute the x-only output key ``Q = P + t*G`` (BIP341 taproot_tweak_pubkey).

    ``P`` is ``lift_x(internal_key_xonly)`` (the even-Y point, BIP340) and ``t`` is the
    key-path-only tweak with no script tree.
    """
    if len(internal_key_xonly) != XONLY_LEN:
        raise ValueError("internal key must be a 32-byte x-only public key")
    p = coincurve.PublicKey(b"\x02" + internal_key_xonly)
    q = p.add(taptweak(internal_key_xonly).to_bytes(32, "big"))
    return q.format(compressed=True)[1:]


def _compact_size(n: int) -> bytes:
    """CompactSize encoding; this harness only ever needs the one-byte form."""
    if not 0 <= n < _COMPACT_SIZE_ONE_BYTE_MAX:
        raise ValueError("CompactSize value out of range for this harness")
    return bytes([n])


def _ser_script(script: bytes) -> bytes:
    return _compact_size(len(script)) + script


def _ser_txout(amount_sat: int, script_pubkey: bytes) -> bytes:
    return struct.pack("<q", amount_sat) + _ser_script(script_pubkey)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def keypath_sighash(
    outpoints: list[bytes],
    spent_outputs: list[tuple[bytes, int]],
    sequences: list[int],
    outputs: list[bytes],
    input_index: int,
) -> bytes:
    """Return the BIP341 SIGHASH_DEFAULT key-path sighash of a version-2 transaction.

    Computes ``hash_TapSighash(0x00 || SigMsg(0x00, 0))`` following BIP341
    "Common signature message" with ``hash_type = 0x00`` (no ANYONECANPAY, NONE
    or SINGLE), ``ext_flag = 0`` and no annex. ``outpoints`` are serialized
    outpoints (36 bytes each), ``spent_outputs`` the ``(script_pubkey, amount)``
    of every input, and ``outputs`` serialized ``CTxOut``s.
    """
    amounts = b"".join(struct.pack("<q", amount) for _, amount in spent_outputs)
    scripts = b"".join(_ser_script(spk) for spk, _ in spent_outputs)
    sig_msg = b"".join(
        [
            bytes([_SIGHASH_DEFAULT]),  # hash_type
            struct.pack("<i", _VERSION),  # nVersion
            struct.pack("<I", _LOCKTIME),  # nLockTime
            _sha256(b"".join(outpoints)),  # sha_prevouts
            _sha256(amounts),  # sha_amounts
            _sha256(scripts),  # sha_scriptpubkeys
            _sha256(b"".join(struct.pack("<I", n) for n in sequences)),  # sha_sequences
            _sha256(b"".join(outputs)),  # sha_outputs
            b"\x00",  # spend_type = ext_flag * 2 + annex_present = 0
            struct.pack("<I", input_index),  # input_index
        ]
    )
    # BIP341 "Signature validation rules": the message is prefixed with epoch 0x00.
    return tagged_hash("TapSighash", b"\x00" + sig_msg)


def build_keypath_spend(
    output_key_xonly: bytes,
    amount_sat: int,
    sign: Callable[[bytes], bytes],
) -> tuple[bytes, bytes, int]:
    """Build and sign a 1-in/1-out version-2 transaction spending P2TR by key path.

    The spent output is ``(p2tr_script_pubkey(output_key_xonly), amount_sat)`` at a
    fixed outpoint. ``sign`` receives the 32-byte BIP341 sighash and must return a
    64-byte BIP340 signature (SIGHASH_DEFAULT, so no hash-type byte; BIP341
    "Script validation rules"), which becomes the sole witness element.

    Returns:
        ``(serialized_tx_with_witness, spent_script_pubkey, amount_sat)``.

    """
    if amount_sat <= FEE_SAT:
        raise ValueError(f"amount must exceed the fixed fee of {FEE_SAT} sat")
    spent_spk = p2tr_script_pubkey(output_key_xonly)
    outpoint = PREVOUT_TXID + struct.pack("<I", PREVOUT_INDEX)
    txout = _ser_txout(amount_sat - FEE_SAT, p2tr_script_pubkey(DESTINATION_XONLY))

    sighash = keypath_sighash([outpoint], [(spent_spk, amount_sat)], [_SEQUENCE], [txout], 0)
    signature = sign(sighash)
    if len(signature) != SIG_LEN:
        raise ValueError("BIP340 signature must be 64 bytes")

    tx = b"".join(
        [
            struct.pack("<i", _VERSION),
            b"\x00\x01",  # BIP144 segwit marker and flag
            _compact_size(1),
            outpoint,
            _ser_script(b""),  # empty scriptSig
            struct.pack("<I", _SEQUENCE),
            _compact_size(1),
            txout,
            _compact_size(1) + _ser_script(signature),  # witness stack of input 0
            struct.pack("<I", _LOCKTIME),
        ]
    )
    return tx, spent_spk, amount_sat


def verify_keypath_spend(tx: bytes, spent_script_pubkey: bytes, amount: int) -> bool:
    """Run Bitcoin Core's script interpreter on input 0 of ``tx`` with all flags.

    Taproot verification (BIP341 "Signature validation rules") commits to every
    spent output, so the spent ``(script_pubkey, amount)`` is supplied through
    ``pbk.script.PrecomputedTransactionData``. Returns ``False`` when the script
    fails; kernel usage errors (``pbk.ScriptVerifyException``) and transaction
    parse errors propagate.
    """
    transaction = pbk.Transaction(tx)
    script_pubkey = pbk.ScriptPubkey(spent_script_pubkey)
    spent_outputs = [pbk.TransactionOutput(script_pubkey, amount)]
    txdata = PrecomputedTransactionData(transaction, spent_outputs)
    return bool(script_pubkey.verify(amount, transaction, txdata, 0, VERIFY_FLAGS))
