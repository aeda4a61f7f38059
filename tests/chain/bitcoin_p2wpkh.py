"""libbitcoinkernel acceptance harness for segwit v0 P2WPKH spends (ECDSA).

The harness builds a minimal version-2 transaction spending a P2WPKH output, computes the
BIP143 signature hash for ``SIGHASH_ALL`` in plain Python, asks a caller-supplied signer for
a 64-byte ``r || s`` ECDSA signature over it, encodes that as strict DER (BIP66) followed by the
sighash byte, puts ``[signature, public key]`` in the witness, and finally runs Bitcoin Core's
own script interpreter (via ``py-bitcoinkernel``, module ``pbk``) over the result.

libbitcoinkernel exposes only the *consensus* verification flags (``ScriptVerificationFlags.ALL``
= P2SH, DERSIG, NULLDUMMY, CHECKLOCKTIMEVERIFY, CHECKSEQUENCEVERIFY, WITNESS, TAPROOT). The
*policy* rules a node also applies before relaying (``SCRIPT_VERIFY_LOW_S``, BIP146; compressed
keys only in segwit, ``SCRIPT_VERIFY_WITNESS_PUBKEYTYPE``) are not among them, so this harness
checks those two itself: a high-s signature or an uncompressed key would be valid in a block but
non-standard, and a wallet must never produce one.

References:
    * BIP141 "Witness program": P2WPKH is ``OP_0 <20-byte HASH160(pubkey)>``, witness
      ``[signature, pubkey]``.
    * BIP143 "Specification": the v0 signature hash and the P2WPKH scriptCode.
    * BIP144: the ``0x00 0x01`` marker/flag serialization.
    * BIP66: strict DER signatures; BIP146: low-s.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence

import pbk  # type: ignore[import-untyped]  # pbk ships no py.typed
from pbk.script import PrecomputedTransactionData  # type: ignore[import-untyped]

#: secp256k1 group order ``n``.
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SIGHASH_ALL = 0x01

#: Fixed, arbitrary outpoint being spent (txid in internal byte order, vout 1).
PREVOUT_TXID = hashlib.sha256(b"shardguard/p2wpkh-harness/prevout").digest()
PREVOUT_INDEX = 1
#: Fee deducted from the spent amount for the single output.
FEE_SAT = 1_000
#: Destination: a P2WPKH output to the HASH160 of the compressed generator point.
DESTINATION_PUBKEY = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")

_VERSION = 2
_LOCKTIME = 0
_SEQUENCE = 0xFFFFFFFE
_COMPACT_SIZE_ONE_BYTE_MAX = 0xFD
COMPRESSED_KEY_LEN = 33
SIG_LEN = 64

#: Every flag libbitcoinkernel knows (all consensus rules, including WITNESS, BIP141/143).
VERIFY_FLAGS = pbk.ScriptVerificationFlags.ALL


def hash160(data: bytes) -> bytes:
    """``RIPEMD160(SHA256(data))``."""
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _compact_size(n: int) -> bytes:
    """CompactSize encoding; this harness only ever needs the one-byte form."""
    if not 0 <= n < _COMPACT_SIZE_ONE_BYTE_MAX:
        raise ValueError("CompactSize value out of range for this harness")
    return bytes([n])


def _ser_script(script: bytes) -> bytes:
    return _compact_size(len(script)) + script


def ser_txout(amount_sat: int, script_pubkey: bytes) -> bytes:
    """A serialized ``CTxOut``."""
    return struct.pack("<q", amount_sat) + _ser_script(script_pubkey)


def _check_compressed(pubkey: bytes) -> None:
    if len(pubkey) != COMPRESSED_KEY_LEN or pubkey[0] not in (2, 3):
        raise ValueError("P2WPKH needs a 33-byte compressed public key (BIP143 / WITNESS_PUBKEYTYPE policy)")


def p2wpkh_script_pubkey(pubkey: bytes) -> bytes:
    """BIP141 segwit v0 scriptPubKey ``OP_0 <HASH160(pubkey)>``."""
    _check_compressed(pubkey)
    return b"\x00\x14" + hash160(pubkey)


def p2wpkh_script_code(pubkey_hash: bytes) -> bytes:
    """BIP143 scriptCode of a P2WPKH input, with its length prefix:
    ``0x19 OP_DUP OP_HASH160 <20 bytes> OP_EQUALVERIFY OP_CHECKSIG``."""
    if len(pubkey_hash) != 20:
        raise ValueError("a public key hash is 20 bytes")
    return b"\x19\x76\xa9\x14" + pubkey_hash + b"\x88\xac"


def bip143_sighash(
    *,
    version: int,
    locktime: int,
    outpoints: Sequence[bytes],
    sequences: Sequence[int],
    outputs: Sequence[bytes],
    input_index: int,
    script_code: bytes,
    amount: int,
    sighash_type: int = SIGHASH_ALL,
) -> bytes:
    """BIP143 signature hash for ``SIGHASH_ALL`` (no ANYONECANPAY, NONE or SINGLE).

    ``outpoints`` are serialized outpoints (36 bytes each), ``outputs`` serialized
    ``CTxOut``s, ``script_code`` the scriptCode *with* its length prefix, ``amount`` the value
    of the output spent by input ``input_index``.
    """
    if sighash_type != SIGHASH_ALL:
        raise ValueError("this harness computes SIGHASH_ALL only")
    preimage = b"".join(
        [
            struct.pack("<i", version),  # 1. nVersion
            _sha256d(b"".join(outpoints)),  # 2. hashPrevouts
            _sha256d(b"".join(struct.pack("<I", n) for n in sequences)),  # 3. hashSequence
            outpoints[input_index],  # 4. outpoint
            script_code,  # 5. scriptCode
            struct.pack("<q", amount),  # 6. value
            struct.pack("<I", sequences[input_index]),  # 7. nSequence
            _sha256d(b"".join(outputs)),  # 8. hashOutputs
            struct.pack("<I", locktime),  # 9. nLockTime
            struct.pack("<I", sighash_type),  # 10. sighash type
        ]
    )
    return _sha256d(preimage)


def _der_int(x: int) -> bytes:
    body = x.to_bytes((x.bit_length() + 7) // 8, "big")
    if body[0] & 0x80:  # a positive INTEGER whose top bit is set gets a 0x00 pad
        body = b"\x00" + body
    return b"\x02" + bytes([len(body)]) + body


def der_encode_signature(r: int, s: int) -> bytes:
    """Strict DER (BIP66) ``SEQUENCE { INTEGER r, INTEGER s }``, minimal encodings."""
    if not (0 < r < SECP256K1_ORDER and 0 < s < SECP256K1_ORDER):
        raise ValueError("r and s must be in [1, n)")
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


def split_signature(sig: bytes) -> tuple[int, int]:
    """``(r, s)`` of a 64-byte ``r || s`` signature."""
    if len(sig) != SIG_LEN:
        raise ValueError("ECDSA signature must be 64 bytes r || s")
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


def build_p2wpkh_spend(
    pubkey: bytes,
    amount_sat: int,
    sign: Callable[[bytes], bytes],
    *,
    enforce_low_s: bool = True,
) -> tuple[bytes, bytes, int]:
    """Build and sign a 1-in/1-out version-2 transaction spending P2WPKH.

    The spent output is ``(p2wpkh_script_pubkey(pubkey), amount_sat)`` at a fixed outpoint.
    ``sign`` receives the 32-byte BIP143 sighash and returns a 64-byte ``r || s`` signature,
    which must be low-s unless ``enforce_low_s`` is False (only to show what consensus alone
    accepts).

    Returns:
        ``(serialized_tx_with_witness, spent_script_pubkey, amount_sat)``.
    """
    if amount_sat <= FEE_SAT:
        raise ValueError(f"amount must exceed the fixed fee of {FEE_SAT} sat")
    spent_spk = p2wpkh_script_pubkey(pubkey)
    outpoint = PREVOUT_TXID + struct.pack("<I", PREVOUT_INDEX)
    txout = ser_txout(amount_sat - FEE_SAT, p2wpkh_script_pubkey(DESTINATION_PUBKEY))

    sighash = bip143_sighash(
        version=_VERSION,
        locktime=_LOCKTIME,
        outpoints=[outpoint],
        sequences=[_SEQUENCE],
        outputs=[txout],
        input_index=0,
        script_code=p2wpkh_script_code(hash160(pubkey)),
        amount=amount_sat,
    )
    r, s = split_signature(sign(sighash))
    if enforce_low_s and s > SECP256K1_ORDER // 2:
        raise ValueError("high-s signature (non-standard under BIP146 LOW_S policy)")
    witness_sig = der_encode_signature(r, s) + bytes([SIGHASH_ALL])

    tx = b"".join(
        [
            struct.pack("<i", _VERSION),
            b"\x00\x01",  # BIP144 segwit marker and flag
            _compact_size(1),
            outpoint,
            _ser_script(b""),  # empty scriptSig: native segwit
            struct.pack("<I", _SEQUENCE),
            _compact_size(1),
            txout,
            _compact_size(2) + _ser_script(witness_sig) + _ser_script(pubkey),  # witness of input 0
            struct.pack("<I", _LOCKTIME),
        ]
    )
    return tx, spent_spk, amount_sat


def verify_input(tx: bytes, spent_outputs: Sequence[tuple[bytes, int]], input_index: int) -> bool:
    """Run Bitcoin Core's script interpreter on one input of ``tx`` with every kernel flag.

    ``spent_outputs`` are the ``(script_pubkey, amount)`` of all inputs (the TAPROOT flag
    makes the kernel want them all). Returns ``False`` when the script fails; kernel usage
    errors (``pbk.ScriptVerifyException``) and transaction parse errors propagate.
    """
    transaction = pbk.Transaction(tx)
    outs = [pbk.TransactionOutput(pbk.ScriptPubkey(spk), amount) for spk, amount in spent_outputs]
    txdata = PrecomputedTransactionData(transaction, outs)
    spk, amount = spent_outputs[input_index]
    return bool(pbk.ScriptPubkey(spk).verify(amount, transaction, txdata, input_index, VERIFY_FLAGS))


def verify_p2wpkh_spend(tx: bytes, spent_script_pubkey: bytes, amount: int) -> bool:
    """:func:`verify_input` for the single input of a :func:`build_p2wpkh_spend` transaction."""
    return verify_input(tx, [(spent_script_pubkey, amount)], 0)
