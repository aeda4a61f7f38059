#!/usr/bin/env python3
"""ShardGuard FROST benchmark in the peers' JSON-line format (../shared/peers/README.md).

    python bench/bench_frost.py [N=50] [--configs 2of3,3of5] [--schemes ed25519,secp256k1,bip340]
                                [--warmup 3] [--dump PATH]

Per (scheme, t-of-n), ``warmup + N`` iterations of: Pedersen DKG among all n parties, proactive
refresh among all n, FROST signing of a fresh random 32-byte message with the refreshed shares
by the next t-subset (rotating through every t-subset). All parties live in this process and
thread; messages are passed in memory, routed as a transport would route them.

* ``total`` = wall time of the whole protocol, parties run one after another (= the sum of
  every party's compute, incl. party construction and the library's (de)serialisation);
* ``crit`` = for each round, the slowest party's compute in that round, summed over rounds;
* ``wire_bytes_*`` = sum of ``len(payload)`` of every message (a broadcast counted once).

Every signature (warm-ups included) is checked by an implementation that is not ours
(:func:`shardguard.interop.verify_independently`: libsodium + OpenSSL, libsecp256k1), plus a
negative control (one message bit flipped must be rejected). One JSON line per config goes to
stdout, progress to stderr. Exit status 1 if any protocol run failed or any check failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from typing import Any, TypeVar

import shardguard
from shardguard.interop import verify_independently
from shardguard.protocols.dkg import Dkg
from shardguard.protocols.frost import FrostSigner
from shardguard.protocols.keys import KeyShare
from shardguard.protocols.message import Message
from shardguard.protocols.party import Party
from shardguard.protocols.refresh import Refresh
from shardguard.protocols.suites import suite_by_scheme

R = TypeVar("R")

#: CLI scheme name -> the ``scheme`` label of the JSON line.
SCHEME_LABELS: dict[str, str] = {"ed25519": "ed25519", "secp256k1": "frost-secp256k1", "bip340": "bip340"}
#: Schemes verify_dump.py understands (it has no RFC 9591 secp256k1 verifier).
DUMPABLE = frozenset({"ed25519", "bip340"})
LIB = "shardguard"


# -- driving parties round by round ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RunTiming:
    total_ms: float
    crit_ms: float
    rounds_max_ms: tuple[float, ...]  # per compute round, the slowest party
    wire_bytes: int


def drive(factories: Mapping[int, Callable[[], Party[R]]]) -> tuple[dict[int, R], RunTiming]:
    """Run one protocol session to completion, timing every party in every round.

    Compute round 0 is each party's construction plus ``start()``; compute round k ≥ 1 is
    the delivery of every message emitted in round k−1 (a party emits its next-round messages
    once its inbox for the round is complete, so the rounds never mix).
    """
    ids = sorted(factories)
    perf = time.perf_counter
    parties: dict[int, Party[R]] = {}
    pending: list[Message] = []
    wire = 0
    rounds_max: list[float] = []
    t_begin = perf()

    slowest = 0.0
    for i in ids:
        t0 = perf()
        p = factories[i]()
        out = p.start()
        dt = perf() - t0
        parties[i] = p
        pending.extend(out)
        slowest = max(slowest, dt)
    rounds_max.append(slowest)

    while pending:
        inbox: dict[int, list[Message]] = {i: [] for i in ids}
        for m in pending:
            wire += len(m.payload)
            if m.is_broadcast:
                for i in ids:
                    if i != m.sender:
                        inbox[i].append(m)
            else:
                inbox[m.recipient].append(m)
        pending = []
        slowest = 0.0
        for i in ids:
            p = parties[i]
            t0 = perf()
            for m in inbox[i]:
                pending.extend(p.receive(m))
            slowest = max(slowest, perf() - t0)
        rounds_max.append(slowest)

    total = perf() - t_begin
    unfinished = [i for i in ids if not parties[i].done]
    if unfinished:
        raise RuntimeError(f"parties {unfinished} did not finish")
    results = {i: parties[i].result for i in ids}
    return results, RunTiming(
        total_ms=total * 1e3,
        crit_ms=sum(rounds_max) * 1e3,
        rounds_max_ms=tuple(x * 1e3 for x in rounds_max),
        wire_bytes=wire,
    )


# -- the three protocols -----------------------------------------------------------------------
def run_dkg(scheme: str, t: int, n: int) -> tuple[list[KeyShare], RunTiming]:
    suite = suite_by_scheme(scheme)
    ids = list(range(1, n + 1))
    instance = secrets.token_bytes(32)

    def make(i: int) -> Callable[[], Party[KeyShare]]:
        return lambda: Dkg(suite, identifier=i, participants=ids, threshold=t, instance=instance, rng=secrets.token_bytes)

    out, timing = drive({i: make(i) for i in ids})
    return [out[i] for i in ids], timing


def run_refresh(shares: Sequence[KeyShare]) -> tuple[list[KeyShare], RunTiming]:
    ids = [s.identifier for s in shares]
    instance = secrets.token_bytes(32)

    def make(s: KeyShare) -> Callable[[], Party[KeyShare]]:
        return lambda: Refresh(s, participants=ids, instance=instance, rng=secrets.token_bytes)

    out, timing = drive({s.identifier: make(s) for s in shares})
    return [out[i] for i in ids], timing


def run_sign(signers: Sequence[KeyShare], message: bytes) -> tuple[bytes, RunTiming]:
    ids = [s.identifier for s in signers]
    instance = secrets.token_bytes(32)

    def make(s: KeyShare) -> Callable[[], Party[bytes]]:
        return lambda: FrostSigner(s, signers=ids, message=message, instance=instance, rng=secrets.token_bytes)

    out, timing = drive({s.identifier: make(s) for s in signers})
    sigs = set(out.values())
    if len(sigs) != 1:
        raise RuntimeError("signers output different signatures")
    return sigs.pop(), timing


# -- statistics and output ---------------------------------------------------------------------
@dataclass(slots=True)
class Phase:
    total: list[float] = field(default_factory=list)
    crit: list[float] = field(default_factory=list)
    rounds: list[tuple[float, ...]] = field(default_factory=list)
    wire: list[int] = field(default_factory=list)

    def add(self, timing: RunTiming) -> None:
        self.total.append(timing.total_ms)
        self.crit.append(timing.crit_ms)
        self.rounds.append(timing.rounds_max_ms)
        self.wire.append(timing.wire_bytes)

    def summary(self, round_names: Sequence[str] = ()) -> dict[str, Any]:
        if not self.total:
            return {"median_ms": None, "min_ms": None, "max_ms": None, "n": 0, "crit_path_median_ms": None, "wire_bytes": 0}
        out: dict[str, Any] = {
            "median_ms": _r(statistics.median(self.total)),
            "min_ms": _r(min(self.total)),
            "max_ms": _r(max(self.total)),
            "n": len(self.total),
            "crit_path_median_ms": _r(statistics.median(self.crit)),
            "wire_bytes": int(statistics.median(self.wire)),  # as the peers report it (summarize.py shows it)
        }
        for k, name in enumerate(round_names):
            out[f"{name}_crit_median_ms"] = _r(statistics.median(r[k] for r in self.rounds))
        return out


def _r(x: float) -> float:
    return round(x, 3)


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(slots=True)
class Checks:
    verified: int = 0
    failures: int = 0
    negative_failures: int = 0
    errors: int = 0


def check_signature(scheme: str, public_key: bytes, message: bytes, sig: bytes, checks: Checks) -> None:
    checks.verified += 1
    if not verify_independently(scheme, public_key, message, sig):
        checks.failures += 1
        log(f"  VERIFY FAILURE {scheme} pk={public_key.hex()} msg={message.hex()} sig={sig.hex()}")
    flipped = bytes([message[0] ^ 1]) + message[1:]
    if verify_independently(scheme, public_key, flipped, sig):
        checks.negative_failures += 1
        log(f"  NEGATIVE CONTROL FAILURE {scheme}: a flipped message verified")


def bench_config(scheme: str, t: int, n: int, iters: int, warmup: int, dump: str | None) -> tuple[dict[str, Any], Checks]:
    keygen, sign, refresh = Phase(), Phase(), Phase()
    checks = Checks()
    subsets = list(itertools.combinations(range(1, n + 1), t))
    started = time.perf_counter()
    for it in range(warmup + iters):
        warm = it < warmup
        try:
            shares, kg_t = run_dkg(scheme, t, n)
            shares, rf_t = run_refresh(shares)
            by_id = {s.identifier: s for s in shares}
            signers = [by_id[i] for i in subsets[it % len(subsets)]]
            message = secrets.token_bytes(32)
            sig, sg_t = run_sign(signers, message)
        except Exception as e:  # a failed run is a bug: count it, report it, go on
            checks.errors += 1
            log(f"  ERROR {scheme} {t}of{n} iteration {it}: {type(e).__name__}: {e}")
            continue
        public_key = shares[0].public.public_key_bytes
        check_signature(scheme, public_key, message, sig, checks)
        if dump is not None and scheme in DUMPABLE:
            with open(dump, "a") as fh:
                rec = {"scheme": scheme, "lib": LIB, "t": t, "n": n}
                rec |= {"pk": public_key.hex(), "msg": message.hex(), "sig": sig.hex()}
                fh.write(json.dumps(rec) + "\n")
        if not warm:
            keygen.add(kg_t)
            refresh.add(rf_t)
            sign.add(sg_t)
    sign_summary = sign.summary(("round1", "round2", "aggregate"))
    log(
        f"{SCHEME_LABELS[scheme]} {t}of{n}: dkg {keygen.summary()['median_ms']} ms, sign {sign_summary['median_ms']} ms, "
        f"refresh {refresh.summary()['median_ms']} ms ({time.perf_counter() - started:.1f} s)"
    )
    record: dict[str, Any] = {
        "lib": LIB,
        "version": shardguard.__version__,
        "scheme": SCHEME_LABELS[scheme],
        "t": t,
        "n": n,
        "iters": iters,
        "warmup": warmup,
        "python": platform.python_version(),
        "verifier": "shardguard.interop.verify_independently: "
        + (
            f"PyNaCl {dist_version('PyNaCl')} (libsodium) + cryptography {dist_version('cryptography')} (OpenSSL)"
            if scheme == "ed25519"
            else f"coincurve {dist_version('coincurve')} (libsecp256k1)"
        ),
        "keygen_dkg": keygen.summary(("round1", "round2", "finish")),
        "sign": sign_summary,
        "refresh": refresh.summary(("round1", "round2", "finish")),
        "verified": checks.verified,
        "verify_failures": checks.failures,
        "negative_control_failures": checks.negative_failures,
        "errors": checks.errors,
        "peak_rss_mib": peak_rss_mib(),
        "wire_bytes_sign": int(statistics.median(sign.wire)) if sign.wire else 0,
        "wire_bytes_dkg": int(statistics.median(keygen.wire)) if keygen.wire else 0,
        "wire_bytes_refresh": int(statistics.median(refresh.wire)) if refresh.wire else 0,
    }
    return record, checks


# -- CLI ---------------------------------------------------------------------------------------
def parse_configs(text: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for item in text.split(","):
        try:
            t_s, n_s = item.strip().lower().split("of")
            t, n = int(t_s), int(n_s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"config {item!r} is not of the form TofN") from None
        if not 2 <= t <= n <= 255:
            raise argparse.ArgumentTypeError(f"config {item!r}: need 2 <= t <= n <= 255")
        out.append((t, n))
    return out


def parse_schemes(text: str) -> list[str]:
    aliases = {"frost-secp256k1": "secp256k1"}
    out = [aliases.get(s.strip(), s.strip()) for s in text.split(",")]
    unknown = [s for s in out if s not in SCHEME_LABELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scheme(s) {unknown}; choose from {sorted(SCHEME_LABELS)}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("iters", nargs="?", type=int, default=50, help="timed iterations per config (default 50)")
    ap.add_argument("--configs", type=parse_configs, default=parse_configs("2of3,3of5"), help="TofN,... (default 2of3,3of5)")
    all_schemes = ",".join(SCHEME_LABELS)
    ap.add_argument("--schemes", type=parse_schemes, default=parse_schemes(all_schemes), help=f"default {all_schemes}")
    ap.add_argument("--warmup", type=int, default=3, help="untimed (but verified) iterations first (default 3)")
    ap.add_argument("--dump", metavar="PATH", help="append ed25519/bip340 signatures as JSON lines for verify_dump.py")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        ap.error("N must be >= 1 and --warmup >= 0")

    bad = 0
    for scheme in args.schemes:
        for t, n in args.configs:
            record, checks = bench_config(scheme, t, n, args.iters, args.warmup, args.dump)
            print(json.dumps(record), flush=True)
            bad += checks.failures + checks.negative_failures + checks.errors
    if bad:
        log(f"{bad} failed run(s) or check(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
