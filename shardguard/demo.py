"""``make demo``: the end-to-end local story on the embedded defaults.

For each FROST scheme: DKG 2-of-3, sign, verify with an independent library, refresh, sign
again with another pair of signers, check that old and new shares do not mix, repair a lost
share. For threshold ECDSA (DKLs23) 2-of-3: DKG and OT setup, sign an EIP-191 digest, verify
with OpenSSL and libsecp256k1, show the Ethereum address and recover it from the signature,
sign for a BIP32 child key, refresh (fresh OT state), sign again, old and new shares refused.
Prints a table of what happened and how long each step took.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TypeVar

from rich.console import Console
from rich.table import Table

from shardguard import local
from shardguard.interop import recover_ecdsa, verify_ecdsa, verify_independently
from shardguard.keyfiles import ethereum_address, keccak256
from shardguard.protocols import KeyShare, ProtocolError
from shardguard.protocols.dkls23 import EcdsaSignature
from shardguard.protocols.suites import SCHEMES, verify_signature

T = TypeVar("T")

INDEPENDENT = {"ed25519": "libsodium + OpenSSL", "bip340": "libsecp256k1 schnorrsig", "secp256k1": "libsecp256k1 point ops"}


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


def _scheme_story(scheme: str) -> list[tuple[str, str, float]]:
    rows: list[tuple[str, str, float]] = []
    shares, ms = _timed(lambda: local.keygen(scheme, 2, 3))
    pk = shares[0].public.public_key_bytes
    rows.append(("DKG 2-of-3", f"public key {pk.hex()[:24]}…", ms))
    msg = b"ShardGuard demo: pay 1 BTC to Alice"
    sig, ms = _timed(lambda: local.sign([shares[0], shares[2]], msg))
    ok = verify_independently(scheme, pk, msg, sig)
    rows.append(
        ("sign with parties 1,3", f"{len(sig)}-byte signature; {INDEPENDENT[scheme]}: {'VALID' if ok else 'INVALID'}", ms)
    )
    if not ok:
        raise SystemExit(f"{scheme}: independent verification failed")
    new, ms = _timed(lambda: local.refresh(shares))
    rows.append(("refresh", f"epoch {new[0].public.epoch}; same public key: {new[0].public.public_key_bytes == pk}", ms))
    sig2, ms = _timed(lambda: local.sign([new[0], new[1]], msg))
    ok2 = verify_independently(scheme, pk, msg, sig2)
    rows.append(("sign again with parties 1,2", f"{INDEPENDENT[scheme]}: {'VALID' if ok2 else 'INVALID'}", ms))
    mixed = _mixed_signature_fails(shares[0], new[1], msg)
    rows.append(("old share 1 + new share 2", "cannot sign: " + ("refused" if mixed else "NOT REFUSED"), 0.0))
    rebuilt, ms = _timed(lambda: local.repair([new[0], new[2]], 2, new[0].public))
    rows.append(("repair share 2 from 1,3", f"rebuilt share matches verifying share: {rebuilt.public == new[1].public}", ms))
    if not (ok2 and mixed):
        raise SystemExit(f"{scheme}: demo check failed")
    return rows


def _eip191_digest(message: bytes) -> bytes:
    """What an Ethereum wallet signs for ``personal_sign`` (EIP-191 version 0x45)."""
    return keccak256(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


def _keccak_cross_check(data: bytes) -> str:
    """Our Keccak-256 against pycryptodome's, when it is installed (``make demo`` has it)."""
    try:
        from Crypto.Hash import keccak
    except ImportError:
        return "pycryptodome not installed: not cross-checked"
    same = keccak.new(digest_bits=256, data=data).digest() == keccak256(data)
    if not same:
        raise SystemExit("ecdsa: our Keccak-256 disagrees with pycryptodome")
    return "Keccak-256 agrees with pycryptodome"


def _ecdsa_story() -> list[tuple[str, str, float]]:
    rows: list[tuple[str, str, float]] = []
    shares, ms = _timed(lambda: local.ecdsa_keygen(2, 3))
    pk = shares[0].public.public_key_bytes
    address = ethereum_address(pk)
    rows.append(("DKG + OT setup 2-of-3", f"public key {pk.hex()[:24]}…", ms))
    rows.append(("Ethereum address", f"{address} (EIP-55); {_keccak_cross_check(pk)}", 0.0))
    digest = _eip191_digest(b"ShardGuard demo: pay 1 ETH to Alice")

    def check(sig: EcdsaSignature, key: bytes) -> str:
        ok = sig.public_key == key and verify_ecdsa(key, digest, sig.to_bytes())
        if not ok:
            raise SystemExit("ecdsa: independent verification failed")
        return "OpenSSL + libsecp256k1: VALID (low-s)"

    sig, ms = _timed(lambda: local.ecdsa_sign([shares[0], shares[2]], digest))
    rows.append(("sign EIP-191 digest with parties 1,3", f"64-byte r‖s, recovery id {sig.recovery_id}; {check(sig, pk)}", ms))
    recovered = recover_ecdsa(digest, sig.to_bytes(), sig.recovery_id)
    signer = ethereum_address(recovered) if recovered else "nothing"
    if signer != address:
        raise SystemExit("ecdsa: the recovered signer is not the key's address")
    rows.append(("recover the signer (ecrecover)", f"{signer}: matches the key's address", 0.0))
    child, ms = _timed(lambda: local.ecdsa_sign([shares[1], shares[2]], digest, path=(0, 1)))
    child_result = f"child address {ethereum_address(child.public_key)}; {check(child, child.public_key)}"
    rows.append(("sign for BIP32 m/0/1 with parties 2,3", child_result, ms))
    new, ms = _timed(lambda: local.ecdsa_refresh(shares))
    same = new[0].public.public_key_bytes == pk and new[0].chain_code == shares[0].chain_code
    fresh = all(n.setup_id != shares[0].setup_id and not n.banned for n in new)
    rows.append(("refresh", f"epoch {new[0].public.epoch}; same key and chain code: {same}; fresh OT setup: {fresh}", ms))
    sig2, ms = _timed(lambda: local.ecdsa_sign([new[0], new[1]], digest))
    rows.append(("sign again with parties 1,2", check(sig2, pk), ms))
    try:
        local.ecdsa_sign([shares[0], new[1]], digest)
        mixed = False
    except ProtocolError:
        mixed = True
    rows.append(("old share 1 + new share 2", "cannot sign: " + ("refused" if mixed else "NOT REFUSED"), 0.0))
    if not (same and fresh and mixed):
        raise SystemExit("ecdsa: demo check failed")
    return rows


def _mixed_signature_fails(old: KeyShare, new: KeyShare, msg: bytes) -> bool:
    """Old and new epochs never combine: the epochs differ, so the protocol refuses the pair;
    and even forced together the shares interpolate to a wrong key."""
    try:
        sig = local.sign([old, KeyShare(identifier=new.identifier, signing_share=new.signing_share, public=new.public)], msg)
    except ProtocolError:
        return True
    return not verify_signature(old.public, msg, sig)


def main() -> None:
    console = Console()
    console.print("[bold]ShardGuard demo[/bold] — local mode: all parties in this process, shares in memory.")
    console.print("[yellow]Local mode gives no enclave protection; it shows the protocols, not the deployment.[/yellow]")
    table = Table(title="DKG → sign → independent verify → refresh → sign → repair")
    for col in ("scheme", "step", "result"):
        table.add_column(col)
    table.add_column("ms", justify="right")
    stories: list[tuple[str, Callable[[], list[tuple[str, str, float]]]]] = [
        *((scheme, functools.partial(_scheme_story, scheme)) for scheme in SCHEMES),
        ("ecdsa", _ecdsa_story),
    ]
    for scheme, story in stories:
        with console.status(f"{scheme}…"):
            for step, result, ms in story():
                table.add_row(scheme, step, result, f"{ms:.1f}" if ms else "")
        table.add_section()
    console.print(table)
    console.print("[green]All signatures verified by libraries that are not ShardGuard's.[/green]")


if __name__ == "__main__":
    main()
