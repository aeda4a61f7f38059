"""Threshold ECDSA on secp256k1: DKLs23 (Doerner, Kondi, Lee, shelat; ePrint 2023/765).

Key generation is the Pedersen DKG of :mod:`shardguard.protocols.dkg` on the ``ecdsa`` suite
followed by :class:`OtSetup`; signing is :class:`DklsSigner`, or :class:`DklsPresigner` ahead and
:meth:`Presignature.share` once the digest is known; refresh is the shared zero-sum
re-share followed by a fresh :class:`OtSetup` (chain code carried over, bans cleared).
"""

from shardguard.crypto.bip32 import DerivationError, derive_public, format_path, parse_path
from shardguard.protocols.dkls23.keys import EcdsaKeyShare
from shardguard.protocols.dkls23.presign import DklsPresigner, Presignature, PresignedShare, presigned_signature
from shardguard.protocols.dkls23.setup import OtSetup
from shardguard.protocols.dkls23.sign import DklsSigner
from shardguard.protocols.dkls23.signature import EcdsaSignature

__all__ = [
    "DerivationError",
    "DklsPresigner",
    "DklsSigner",
    "EcdsaKeyShare",
    "EcdsaSignature",
    "OtSetup",
    "Presignature",
    "PresignedShare",
    "derive_public",
    "format_path",
    "parse_path",
    "presigned_signature",
]
