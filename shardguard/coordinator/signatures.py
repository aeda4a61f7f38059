"""The check a sign job's result passes before the coordinator calls the request done.

Signer nodes report the signature they made; any node the coordinator takes for a signer (a
compromised one, or a process that took over a node's registration) could report anything. So
the coordinator verifies the signature itself, against the key's public key (for ECDSA with a
path: the BIP32 child it derives from the key's public key and chain code), over the exact
message or digest of the request, and checks that the result names that key, digest and path.
Clients should verify too (``shardguard.client`` does); this makes ``done`` mean "valid".

Verification uses the crypto layer's suites: libsodium-backed Ed25519 and libsecp256k1-backed
secp256k1 arithmetic (RFC 9591 §6 ``verify_signature``, BIP340 ``Verify``, ECDSA by libsecp256k1).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from shardguard.crypto.bip32 import derive_public, parse_path
from shardguard.crypto.ecdsa_combine import combine
from shardguard.crypto.errors import CryptoError
from shardguard.crypto.frost import CheaterDetection, prepare
from shardguard.crypto.group import Point
from shardguard.crypto.secp256k1 import SECP256K1
from shardguard.crypto.suites import BIP340, suite_by_scheme
from shardguard.crypto.suites.ecdsa import recover_public_key

__all__ = [
    "assemble_frost",
    "assemble_presigned",
    "canonical_hex",
    "compressed_point_hex",
    "frost_share_culprits",
    "presigned_share_problem",
    "share_shape_problem",
    "signature_problem",
]


@functools.lru_cache(maxsize=1024)
def _public_point(scheme: str, key: bytes) -> Point:
    """A key's decoded point, kept: decoding checks the subgroup (a scalar multiplication, as
    long as the verification itself), and the same few keys sign again and again. Only keys
    that decoded are kept (a ``CryptoError`` is not cached)."""
    return suite_by_scheme(scheme).group.decode(key, field="public_key")


def _hex(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def signature_problem(
    scheme: str,
    public_key_hex: str | None,
    package: Mapping[str, Any] | None,
    params: Mapping[str, Any],
    result: Mapping[str, Any],
) -> str | None:
    """None if ``result`` holds a valid signature for this request; otherwise what is wrong
    (for the job's failure detail). Never raises on a malformed result."""
    sig = _hex(result.get("signature"))
    key = _hex(public_key_hex)
    if sig is None or key is None:
        return "the result has no hex signature, or the key no public key"
    if "scheme" in result and result["scheme"] != scheme:  # a label a caller may act on (review finding)
        return f"the result names scheme {result['scheme']!r}, the key is {scheme}"
    path = str(params.get("path") or "m")
    try:
        suite = suite_by_scheme(scheme)
        if scheme == "ecdsa":
            digest = _hex(params.get("digest_hex"))
            chain_code = _hex((package or {}).get("chain_code"))
            if digest is None or chain_code is None:
                return "the request has no digest, or the key no chain code"
            signer = SECP256K1.decode(key, field="public_key")
            if path != "m":
                signer = derive_public(signer, chain_code, parse_path(path)).public_key
            if result.get("digest") != digest.hex() or result.get("path") != path:
                return "the result names another digest or path than the request"
            if result.get("public_key") != SECP256K1.encode(signer).hex():
                return f"the result names another public key than the key's at {path}"
            ok = suite.verify(signer, digest, sig)
            rid = result.get("recovery_id")
            # Review finding: a flipped recovery id (Ethereum's v) passed, and recovered another
            # address. Present, it must recover the signer.
            bad_rid = rid is not None and (type(rid) is not int or not 0 <= rid <= 3)
            if ok and rid is not None and (bad_rid or recover_public_key(digest, sig, rid) != signer):
                return "the result's recovery id does not recover the key"
        else:
            message = _hex(params.get("message_hex"))
            if message is None:
                return "the request has no message"
            if path != "m":
                return f"{scheme} signing does not derive child keys"
            if result.get("public_key") != public_key_hex:
                return "the result names another public key than the key's"
            if suite is BIP340:
                ok = BIP340.verify_xonly(key, message, sig)
            else:
                ok = suite.verify(_public_point(scheme, key), message, sig)
    except CryptoError as e:
        return f"cannot check the signature: {e}"
    return None if ok else f"the signature does not verify under the key ({scheme})"


def canonical_hex(value: object, size: int) -> bytes | None:
    """``value`` decoded if it is exactly ``size`` bytes of lower-case hex, else None."""
    raw = _hex(value)
    return raw if raw is not None and len(raw) == size and value == raw.hex() else None


def compressed_point_hex(value: object) -> bytes | None:
    """``value`` decoded if it is a 33-byte compressed secp256k1 encoding in lower-case hex (its
    prefix checked, the point not: decoding does that), else None."""
    raw = canonical_hex(value, 33)
    return raw if raw is not None and raw[0] in (2, 3) else None


def _disagreeing(values: Mapping[str, str]) -> list[str]:
    """The signers (``node id -> what it reported``) outside the majority — all of them when
    there is none — or ``[]`` when every signer reported the same."""
    counts = collections.Counter(values.values())
    if len(counts) < 2:
        return []
    (top, n1), (_, n2) = counts.most_common(2)
    majority = top if n1 > n2 else None
    return sorted(node for node, value in values.items() if value != majority)


def share_shape_problem(scheme: str, share: object) -> str | None:
    """None if ``share`` is one signer's contribution to a precommitted FROST signature as a
    node reports it: ``{"r": hex group commitment, "z": hex signature share}`` of the scheme's
    sizes (API.md §1.13); otherwise what is wrong. Values are checked by :func:`assemble_frost`."""
    g = suite_by_scheme(scheme).group
    if not isinstance(share, dict) or set(share) != {"r", "z"}:
        return 'must be {"r": hex, "z": hex}'
    if canonical_hex(share["r"], g.element_size) is None:
        return f"r must be {g.element_size} bytes of lower-case hex"
    if canonical_hex(share["z"], g.scalar_size) is None:
        return f"z must be {g.scalar_size} bytes of lower-case hex"
    return None


def presigned_share_problem(result: Mapping[str, Any]) -> tuple[str, str] | None:
    """None if ``result`` is one signer's answer in a pre-signed ECDSA signing (API.md §1.15):
    ``{"share": {"u": hex, "w": hex, "R": hex}}``, two canonical secp256k1 scalars and a
    compressed point (decoded when combined); otherwise (field, problem)."""
    share = result.get("share")
    if set(result) != {"share"} or not isinstance(share, dict) or set(share) != {"u", "w", "R"}:
        return "result.share", 'a pre-signed signing reports {"share": {"u": hex, "w": hex, "R": hex}}, and nothing else'
    if compressed_point_hex(share["R"]) is None:
        return "result.share.R", "must be a 33-byte compressed point, lower-case hex"
    for name in ("u", "w"):
        raw = canonical_hex(share[name], 32)
        if raw is None or int.from_bytes(raw, "big") >= SECP256K1.order:
            return f"result.share.{name}", "must be a secp256k1 scalar: 32 bytes of lower-case hex, below the group order"
    return None


def assemble_presigned(
    public_key_hex: str, digest: bytes, shares: Mapping[str, Mapping[str, str]]
) -> tuple[dict[str, Any] | None, str, str, list[str]]:
    """The signature of a pre-signed ECDSA signing (DKLs23 spec §4.1) from every signer's
    ``node id -> {"u", "w", "R"}`` (shapes checked by :func:`presigned_share_problem`): the
    re-randomised nonce point ``R'`` they all report and their ``(u, w)`` combined and verified;
    the result in the shape a three-round signing reports. Returns ``(result, "", "", [])`` or
    ``(None, reason, detail, culprits)``: ``result_mismatch`` naming the signers whose ``R'``
    differs from the others' (all of them when there is no majority), ``invalid_signature``
    with nobody named when the shares make no valid signature (a wrong share cannot be told
    from the others, spec P12)."""
    points = {node: share["R"] for node, share in shares.items()}
    culprits = _disagreeing(points)
    if culprits:
        return None, "result_mismatch", f"the signers report {len(set(points.values()))} different nonce points", culprits
    try:
        key = _public_point("ecdsa", bytes.fromhex(public_key_hex))
        big_r = SECP256K1.decode(bytes.fromhex(next(iter(points.values()))), field="R")
    except (CryptoError, ValueError) as e:
        return None, "invalid_signature", f"the nonce point every signer reports is not a point: {e}", []
    made = combine(key, big_r, ((int(s["u"], 16), int(s["w"], 16)) for s in shares.values()), digest)
    if made is None:
        problem = "the signers' shares make no valid signature (a wrong share cannot be told apart: DKLs23 spec P12)"
        return None, "invalid_signature", problem, []
    r, s, recovery_id = made
    result = {
        "scheme": "ecdsa", "public_key": public_key_hex, "path": "m", "digest": digest.hex(),
        "signature": (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex(), "recovery_id": recovery_id,
    }  # fmt: skip
    return result, "", "", []


def assemble_frost(scheme: str, shares: Mapping[str, Mapping[str, str]]) -> tuple[str | None, str, str, list[str]]:
    """RFC 9591 §5.3 ``aggregate`` of one precommitted signature: every signer (``node id ->
    {"r", "z"}``, shapes checked by :func:`share_shape_problem`) derived the same group
    commitment R, and the signature is ``R ‖ Σ z_i``. Returns ``(signature hex, "", "", [])``,
    or ``(None, reason, detail, culprits)``: ``result_mismatch`` naming the signers whose R
    differs from the others' (all of them when there is no majority), or
    ``invalid_signature_share`` (an R that is no point: all; a z out of range: its signer).
    Whether the signature verifies is :func:`signature_problem`'s to say; if it does not, the
    shares cannot be told apart here (no culprit)."""
    suite = suite_by_scheme(scheme)
    g = suite.group
    commitments = {node: share["r"] for node, share in shares.items()}
    culprits = _disagreeing(commitments)
    if culprits:
        detail = f"the signers derived {len(set(commitments.values()))} different group commitments"
        return None, "result_mismatch", detail, culprits
    r = next(iter(commitments.values()))
    try:
        point = g.decode(bytes.fromhex(r), field="r")
    except CryptoError as e:
        detail = f"the group commitment every signer reported is not a point: {e}"
        return None, "invalid_signature_share", detail, sorted(shares)
    z = 0
    for node, share in shares.items():
        try:
            z += g.scalar_decode(bytes.fromhex(share["z"]), field="z")
        except CryptoError as e:
            return None, "invalid_signature_share", f"{node}'s signature share is out of range: {e}", [node]
    return suite.encode_signature(point, z % g.order).hex(), "", "", []


def frost_share_culprits(
    scheme: str,
    package: Mapping[str, Any] | None,
    epoch: int | None,
    message: bytes,
    commitments: Sequence[Mapping[str, Any]],
    shares: Mapping[str, Mapping[str, str]],
    index_of: Mapping[str, int],
) -> list[str] | None:
    """RFC 9591 §5.4 ``verify_signature_share`` for every signer of a one-step signing whose
    shares (``node id -> {"r", "z"}``, one group commitment R for all) sum to no valid
    signature: the node ids whose share does not verify, from the public key package of the
    key (``package["public"]``: what the holders reported at the DKG or the latest refresh),
    the commitment list the job handed out (``[{"index", "hiding", "binding", …}]``) and the
    message. None when that cannot be told here, and then nobody is blamed: a package of
    another epoch or without verifying shares, or commitments whose group commitment is not
    the R every signer reported (the coordinator's own view would be what is wrong)."""
    suite = suite_by_scheme(scheme)
    g = suite.group
    public = (package or {}).get("public")
    if not isinstance(public, Mapping) or public.get("epoch") != epoch or not isinstance(public.get("verifying_shares"), Mapping):
        return None
    try:
        group_key = g.decode(bytes.fromhex(str(public["group_key"])), field="group_key")
        verifying = {
            int(i): g.decode(bytes.fromhex(str(y)), field="verifying_share") for i, y in public["verifying_shares"].items()
        }
        listed = [
            (int(c["index"]), g.decode(bytes.fromhex(str(c["hiding"])), field="hiding"),
             g.decode(bytes.fromhex(str(c["binding"])), field="binding"))
            for c in commitments
        ]  # fmt: skip
        z = {index_of[node]: g.scalar_decode(bytes.fromhex(share["z"]), field="z") for node, share in shares.items()}
        reported = {bytes.fromhex(share["r"]) for share in shares.values()}
    except (CryptoError, KeyError, TypeError, ValueError):
        return None
    if set(z) != {i for i, _, _ in listed} or not set(z) <= set(verifying):
        return None
    ctx = prepare(suite, group_key, listed, message)
    if reported != {g.encode(ctx.group_commitment)}:
        return None
    bad = ctx.invalid_shares(z, verifying, CheaterDetection.ALL_CHEATERS)
    return sorted(node for node, i in index_of.items() if i in bad and node in shares)
