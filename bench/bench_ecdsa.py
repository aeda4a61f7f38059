#!/usr/bin/env python3
"""ShardGuard DKLs23 threshold ECDSA benchmark in the peers' JSON-line format (../shared/peers/README.md).

    python bench/bench_ecdsa.py [N=30] [--configs 2of3,3of5] [--keygen 3] [--refresh 2]
                                [--warmup 2] [--path m/0/1] [--dump PATH]

Per t-of-n, modelled on the peers' ``dkls/bench.mjs``:

* ``1 + K`` key generations (``--keygen K``; the first is an untimed warm-up): Pedersen DKG on
  the ``ecdsa`` suite among all n parties, then the DKLs23 pairwise OT setup among all n
  (= ``local.ecdsa_keygen``). Reported as ``keygen`` (both; what the peers call keygen) and
  separately as ``keygen_dkg`` and ``keygen_setup``;
* ``R`` refreshes (``--refresh R``, all timed, no warm-up of their own): re-share among all n,
  then a fresh OT setup with the chain code carried over (= ``local.ecdsa_refresh``). Each
  refresh replaces one key set in the pool, so refreshed shares get signed with too;
* ``warmup + N`` signatures of a fresh random 32-byte digest, cycling through the key sets and
  through every t-subset of the n parties (``sign``; 3 rounds, the digest is an input from the
  start, so there is no presign/online split).

All parties live in this process and thread; messages are passed in memory and routed as a
transport would route them; the parties (sans-I/O ``start()``/``receive()``) are driven round by
round by ``bench_frost.drive``, so ``total``, ``crit`` and ``wire_bytes`` mean exactly what they
mean in ``bench_frost.py`` and in the peers' scripts:

* ``total`` = wall time with the parties run one after another (= the sum of every party's
  compute, incl. party construction and the library's CBOR encoding/decoding/validation);
* ``crit`` = for each round, the slowest party's compute in that round, summed over rounds;
* ``wire_bytes`` = sum of ``len(payload)`` of every message, a broadcast counted once (as the
  peers count); ``delivered_bytes`` counts a broadcast once per recipient.

Every signature (warm-ups included) is checked by two implementations that are not ours:
coincurve (libsecp256k1, DER, raw digest) and ``cryptography`` (OpenSSL, ECDSA with
``Prehashed(SHA256())`` on the DER signature); its recovery id must recover the public key
(libsecp256k1's ``ecdsa_recover``), s must be low, all signers must output the same signature,
and a negative control (one digest bit flipped) must be rejected by both verifiers. One JSON
line per config goes to stdout, progress to stderr. Exit status 1 if any run or check failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from typing import Any, Generic, TypeVar

import coincurve
from bench_frost import Checks, Phase, RunTiming, drive, log, parse_configs, peak_rss_mib
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

import shardguard
from shardguard.crypto.bip32 import parse_path
from shardguard.protocols.dkg import Dkg
from shardguard.protocols.dkls23 import DklsSigner, EcdsaKeyShare, EcdsaSignature, OtSetup
from shardguard.protocols.keys import KeyShare
from shardguard.protocols.message import Message
from shardguard.protocols.party import Party
from shardguard.protocols.refresh import Refresh
from shardguard.protocols.suites import suite_by_scheme

R = TypeVar("R")

LIB = "shardguard"
SCHEME = "DKLs23 threshold ECDSA secp256k1"
Q = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


# -- driving parties, with the messages kept for byte accounting ------------------------------
class _Recorded(Generic[R]):
    """A party that also keeps every list of messages it emits.

    Inside the timed region this costs one ``list.append`` per call; the bytes are counted
    after the session (``delivered_bytes``, per-round bytes). ``drive`` counts ``wire_bytes``.
    """

    __slots__ = ("_p", "sent")

    def __init__(self, party: Party[R]) -> None:
        self._p = party
        self.sent: list[list[Message]] = []

    def start(self) -> list[Message]:
        out = self._p.start()
        self.sent.append(out)
        return out

    def receive(self, m: Message) -> list[Message]:
        out = self._p.receive(m)
        self.sent.append(out)
        return out

    @property
    def done(self) -> bool:
        return self._p.done

    @property
    def result(self) -> R:
        return self._p.result


@dataclass(frozen=True, slots=True)
class Run(Generic[R]):
    results: dict[int, R]
    timing: RunTiming
    delivered_bytes: int  # a broadcast counted once per recipient
    round_bytes: tuple[int, ...]  # wire bytes (broadcast once) by message round


def run_session(factories: Mapping[int, Callable[[], Party[R]]]) -> Run[R]:
    recorded: dict[int, _Recorded[R]] = {}

    def wrap(i: int, make: Callable[[], Party[R]]) -> Callable[[], Party[R]]:
        def build() -> Party[R]:
            recorded[i] = _Recorded(make())
            return recorded[i]  # type: ignore[return-value]  # duck-typed: start/receive/done/result

        return build

    results, timing = drive({i: wrap(i, f) for i, f in factories.items()})
    n = len(factories)
    delivered = 0
    by_round: dict[int, int] = {}
    for rec in recorded.values():
        for batch in rec.sent:
            for m in batch:
                size = len(m.payload)
                delivered += size * (n - 1 if m.is_broadcast else 1)
                by_round[m.round] = by_round.get(m.round, 0) + size
    wire = sum(by_round.values())
    if wire != timing.wire_bytes:  # the two accountings must agree
        raise RuntimeError(f"byte accounting mismatch: {wire} != {timing.wire_bytes}")
    return Run(results, timing, delivered, tuple(by_round[r] for r in sorted(by_round)))


# -- the protocols (as in shardguard.local, but driven round by round) ------------------------
def run_dkg(t: int, n: int) -> tuple[list[KeyShare], Run[KeyShare]]:
    suite = suite_by_scheme("ecdsa")
    ids = list(range(1, n + 1))
    instance = secrets.token_bytes(32)

    def make(i: int) -> Callable[[], Party[KeyShare]]:
        return lambda: Dkg(suite, identifier=i, participants=ids, threshold=t, instance=instance, rng=secrets.token_bytes)

    run = run_session({i: make(i) for i in ids})
    return [run.results[i] for i in ids], run


def run_setup(shares: Sequence[KeyShare], chain_code: bytes | None = None) -> tuple[list[EcdsaKeyShare], Run[EcdsaKeyShare]]:
    instance = secrets.token_bytes(32)

    def make(s: KeyShare) -> Callable[[], Party[EcdsaKeyShare]]:
        return lambda: OtSetup(s, instance=instance, rng=secrets.token_bytes, chain_code=chain_code)

    run = run_session({s.identifier: make(s) for s in shares})
    return [run.results[s.identifier] for s in shares], run


def run_reshare(shares: Sequence[KeyShare]) -> tuple[list[KeyShare], Run[KeyShare]]:
    ids = [s.identifier for s in shares]
    instance = secrets.token_bytes(32)

    def make(s: KeyShare) -> Callable[[], Party[KeyShare]]:
        return lambda: Refresh(s, participants=ids, instance=instance, rng=secrets.token_bytes)

    run = run_session({s.identifier: make(s) for s in shares})
    return [run.results[i] for i in ids], run


def run_sign(signers: Sequence[EcdsaKeyShare], digest: bytes, path: Sequence[int]) -> tuple[EcdsaSignature, Run[EcdsaSignature]]:
    ids = [s.identifier for s in signers]
    instance = secrets.token_bytes(32)

    def make(s: EcdsaKeyShare) -> Callable[[], Party[EcdsaSignature]]:
        return lambda: DklsSigner(s, signers=ids, digest=digest, instance=instance, rng=secrets.token_bytes, path=path)

    run = run_session({s.identifier: make(s) for s in signers})
    sigs = set(run.results.values())
    if len(sigs) != 1:
        raise RuntimeError("signers output different signatures")
    return sigs.pop(), run


# -- independent verification ------------------------------------------------------------------
def _coincurve_ok(pk: bytes, digest: bytes, der: bytes) -> bool:
    try:
        return bool(coincurve.PublicKey(pk).verify(der, digest, hasher=None))
    except Exception:
        return False


def _openssl_ok(pk: bytes, digest: bytes, der: bytes) -> bool:
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), pk)
    try:
        key.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return True
    except InvalidSignature:
        return False


def _recovers(pk: bytes, digest: bytes, sig: EcdsaSignature) -> bool:
    try:
        rec = coincurve.PublicKey.from_signature_and_message(sig.to_bytes() + bytes([sig.recovery_id]), digest, hasher=None)
    except Exception:
        return False
    return bool(rec.format(compressed=True) == pk)


@dataclass(slots=True)
class EcdsaChecks(Checks):
    recovery_failures: int = 0
    high_s: int = 0
    wrong_key: int = 0


def check_signature(sig: EcdsaSignature, expected_pk: bytes, digest: bytes, checks: EcdsaChecks) -> None:
    checks.verified += 1
    pk = sig.public_key
    if pk != expected_pk or sig.digest != digest:
        checks.wrong_key += 1
        log(f"  WRONG KEY/DIGEST pk={pk.hex()} expected={expected_pk.hex()}")
    der = encode_dss_signature(sig.r, sig.s)
    ok_c, ok_o = _coincurve_ok(expected_pk, digest, der), _openssl_ok(expected_pk, digest, der)
    if not (ok_c and ok_o):
        checks.failures += 1
        log(f"  VERIFY FAILURE libsecp256k1={ok_c} openssl={ok_o} pk={expected_pk.hex()} msg={digest.hex()}")
        log(f"    sig={sig.to_bytes().hex()}")
    if not _recovers(expected_pk, digest, sig):
        checks.recovery_failures += 1
        log(f"  RECOVERY FAILURE recid={sig.recovery_id} pk={expected_pk.hex()} msg={digest.hex()}")
    if sig.s > Q // 2:
        checks.high_s += 1
    flipped = bytes([digest[0] ^ 1]) + digest[1:]
    if _coincurve_ok(expected_pk, flipped, der) or _openssl_ok(expected_pk, flipped, der):
        checks.negative_failures += 1
        log("  NEGATIVE CONTROL FAILURE: a flipped digest verified")


# -- statistics and output ---------------------------------------------------------------------
@dataclass(slots=True)
class Bytes:
    delivered: list[int] = field(default_factory=list)
    rounds: list[tuple[int, ...]] = field(default_factory=list)

    def add(self, run: Run[Any]) -> None:
        self.delivered.append(run.delivered_bytes)
        self.rounds.append(run.round_bytes)

    def summary(self) -> dict[str, Any]:
        if not self.delivered:
            return {}
        return {
            "delivered_bytes": int(statistics.median(self.delivered)),
            "wire_bytes_by_round": [int(statistics.median(r[k] for r in self.rounds)) for k in range(len(self.rounds[0]))],
        }


def combined(a: Phase, b: Phase) -> Phase:
    """Two sessions run back to back (DKG then setup): times, crit and bytes add up."""
    out = Phase()
    for ta, tb in zip(a.total, b.total, strict=True):
        out.total.append(ta + tb)
    for ca, cb in zip(a.crit, b.crit, strict=True):
        out.crit.append(ca + cb)
    for ra, rb in zip(a.rounds, b.rounds, strict=True):
        out.rounds.append(ra + rb)
    for wa, wb in zip(a.wire, b.wire, strict=True):
        out.wire.append(wa + wb)
    return out


def _path_text(path: Sequence[int]) -> str:
    return "m" + "".join(f"/{i}" for i in path)


def bench_config(
    t: int, n: int, iters: int, warmup: int, keygens: int, refreshes: int, path: Sequence[int], dump: str | None
) -> tuple[dict[str, Any], EcdsaChecks]:
    dkg, setup, reshare, resetup, sign = Phase(), Phase(), Phase(), Phase(), Phase()
    dkg_b, setup_b, reshare_b, resetup_b, sign_b = Bytes(), Bytes(), Bytes(), Bytes(), Bytes()
    checks = EcdsaChecks()
    subsets = list(itertools.combinations(range(1, n + 1), t))
    started = time.perf_counter()
    share_bytes = 0

    # (a) key generation: 1 warm-up + K timed; every key set is kept and signed with below.
    keysets: list[list[EcdsaKeyShare]] = []
    for it in range(1 + keygens):
        try:
            shares, dkg_run = run_dkg(t, n)
            ecdsa_shares, setup_run = run_setup(shares)
        except Exception as e:
            checks.errors += 1
            log(f"  ERROR keygen {t}of{n} iteration {it}: {type(e).__name__}: {e}")
            continue
        keysets.append(ecdsa_shares)
        share_bytes = len(json.dumps(ecdsa_shares[0].to_dict()))
        if it > 0:
            dkg.add(dkg_run.timing)
            setup.add(setup_run.timing)
            dkg_b.add(dkg_run)
            setup_b.add(setup_run)
    log(
        f"  {t}of{n} keygen: dkg {dkg.summary()['median_ms']} ms + setup {setup.summary()['median_ms']} ms "
        f"(peak RSS {peak_rss_mib()} MiB)"
    )
    if not keysets:
        raise RuntimeError("no key generation succeeded")

    # (b) refresh: re-share + fresh OT setup (chain code carried over); replaces a key set.
    for it in range(refreshes):
        k = it % len(keysets)
        old = keysets[k]
        try:
            new, reshare_run = run_reshare([s.share for s in old])
            refreshed, resetup_run = run_setup(new, chain_code=old[0].chain_code)
        except Exception as e:
            checks.errors += 1
            log(f"  ERROR refresh {t}of{n} iteration {it}: {type(e).__name__}: {e}")
            continue
        if refreshed[0].public.public_key_bytes != old[0].public.public_key_bytes:
            checks.errors += 1
            log(f"  ERROR refresh {t}of{n} iteration {it}: the public key changed")
            continue
        keysets[k] = refreshed
        reshare.add(reshare_run.timing)
        resetup.add(resetup_run.timing)
        reshare_b.add(reshare_run)
        resetup_b.add(resetup_run)
    if refreshes:
        log(f"  {t}of{n} refresh: {combined(reshare, resetup).summary()['median_ms']} ms (peak RSS {peak_rss_mib()} MiB)")

    # (c) signing: warm-up + N, cycling through key sets and every t-subset.
    for it in range(warmup + iters):
        ks = keysets[it % len(keysets)]
        by_id = {s.identifier: s for s in ks}
        signers = [by_id[i] for i in subsets[it % len(subsets)]]
        digest = secrets.token_bytes(32)
        try:
            sig, sign_run = run_sign(signers, digest, path)
        except Exception as e:
            checks.errors += 1
            log(f"  ERROR sign {t}of{n} iteration {it}: {type(e).__name__}: {e}")
            continue
        # with a path, the expected key is what the signer derived; the verifiers check it works
        expected = ks[0].public.public_key_bytes if not path else sig.public_key
        check_signature(sig, expected, digest, checks)
        if dump is not None:
            with open(dump, "a") as fh:
                rec = {"scheme": "ecdsa-secp256k1", "lib": LIB, "t": t, "n": n}
                rec |= {"pk": expected.hex(), "msg": digest.hex(), "sig": sig.to_bytes().hex()}
                fh.write(json.dumps(rec) + "\n")
        if it >= warmup:
            sign.add(sign_run.timing)
            sign_b.add(sign_run)

    keygen = combined(dkg, setup)
    refresh = combined(reshare, resetup)
    setup_rounds = ("round1", "round2", "round3", "finish")
    dkg_rounds = ("round1", "round2", "finish")
    both_rounds = tuple(f"dkg_{r}" for r in dkg_rounds) + tuple(f"setup_{r}" for r in setup_rounds)
    sign_summary = sign.summary(("round1", "round2", "round3", "combine")) | sign_b.summary()
    sign_summary["kind"] = f"t={t} signers, rotating subsets, 3 rounds (digest bound from round 1), path {_path_text(path)!r}"
    rss = peak_rss_mib()
    log(
        f"{t}of{n}: keygen {keygen.summary()['median_ms']} ms (dkg {dkg.summary()['median_ms']} + setup "
        f"{setup.summary()['median_ms']}), sign {sign_summary['median_ms']} ms (crit {sign_summary['crit_path_median_ms']}, "
        f"{sign_summary['wire_bytes']:,} B), refresh {refresh.summary()['median_ms']} ms; peak RSS {rss} MiB "
        f"({time.perf_counter() - started:.1f} s)"
    )
    record: dict[str, Any] = {
        "lib": LIB,
        "version": shardguard.__version__,
        "scheme": SCHEME,
        "t": t,
        "n": n,
        "sign_iters": iters,
        "keygen_iters": keygens,
        "refresh_iters": refreshes,
        "warmup": warmup,
        "python": platform.python_version(),
        "verifier": f"coincurve {dist_version('coincurve')} (libsecp256k1: verify + recover) and "
        f"cryptography {dist_version('cryptography')} (OpenSSL, ECDSA Prehashed(SHA256), DER)",
        "keygen": keygen.summary(both_rounds)
        | {"kind": "Pedersen DKG (3 rounds) + DKLs23 pairwise OT setup (3 rounds), all n parties"},
        "keygen_dkg": dkg.summary(dkg_rounds) | dkg_b.summary(),
        "keygen_setup": setup.summary(setup_rounds) | setup_b.summary(),
        "sign": sign_summary,
    }
    if refresh.total:  # a phase without samples would break summarize.py
        record["refresh"] = refresh.summary(both_rounds) | {
            "kind": "re-share (3 rounds) + fresh OT setup (3 rounds), all n parties"
        }
        record["refresh_reshare"] = reshare.summary(dkg_rounds) | reshare_b.summary()
        record["refresh_setup"] = resetup.summary(setup_rounds) | resetup_b.summary()
    record |= {
        "verified": checks.verified,
        "verify_failures": checks.failures,
        "negative_control_failures": checks.negative_failures,
        "recovery_failures": checks.recovery_failures,
        "wrong_key": checks.wrong_key,
        "high_s_sigs": checks.high_s,
        "errors": checks.errors,
        "peak_rss_mib": rss,
        "keyshare_json_bytes": share_bytes,
        "wire_bytes_sign": int(statistics.median(sign.wire)) if sign.wire else 0,
        "wire_bytes_keygen": int(statistics.median(keygen.wire)) if keygen.wire else 0,
        "wire_bytes_refresh": int(statistics.median(refresh.wire)) if refresh.wire else 0,
    }
    return record, checks


# -- CLI ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("iters", nargs="?", type=int, default=30, help="timed signatures per config (default 30)")
    ap.add_argument("--configs", type=parse_configs, default=parse_configs("2of3,3of5"), help="TofN,... (default 2of3,3of5)")
    ap.add_argument("--keygen", type=int, default=3, help="timed key generations per config, after 1 warm-up (default 3)")
    ap.add_argument("--refresh", type=int, default=2, help="timed refreshes per config (default 2)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed (but verified) signatures first (default 2)")
    ap.add_argument("--path", default="m", help="non-hardened BIP32 path to sign with (default m)")
    ap.add_argument("--dump", metavar="PATH", help="append signatures as JSON lines for the peers' verify_dump.py")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.keygen < 1 or args.refresh < 0:
        ap.error("N and --keygen must be >= 1, --warmup and --refresh >= 0")
    try:
        path = tuple(parse_path(args.path))
    except Exception as e:
        ap.error(f"--path: {e}")

    log(f"start: peak RSS {peak_rss_mib()} MiB after imports")
    bad = 0
    for t, n in args.configs:
        record, checks = bench_config(t, n, args.iters, args.warmup, args.keygen, args.refresh, path, args.dump)
        print(json.dumps(record), flush=True)
        bad += checks.failures + checks.negative_failures + checks.errors + checks.recovery_failures + checks.wrong_key
        bad += checks.high_s
    if bad:
        log(f"{bad} failed run(s) or check(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
