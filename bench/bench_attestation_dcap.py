#!/usr/bin/env python3
"""ShardGuard's DCAP verifier against dcap-qvl, on the same genuine quotes in the same run.

    python bench/bench_attestation_dcap.py [N=200] [--warmup 20] [--no-cold]

Samples: the three genuine quotes whose collateral is complete enough for both implementations
(dcap-qvl needs the PCK CRL, which the PCS-format samples lack): TDX 1.0 v4, TDX 1.5 v5 (its
TCB matches no level: both reach that verdict) and SGX v3, from ``shared/fixtures/attestation``.
Each is verified at a time inside its collateral's window, with the full collateral: the quote,
the PCK chain to the pinned root, the TCB info and QE identity signatures and chains, both CRLs,
the QE identity and the TCB level. Collateral is loaded once per sample on both sides (our
``load_collateral`` / dcap-qvl's ``QuoteCollateralV3.from_json``); that is not timed.

One JSON line per (lib, sample) on stdout::

    {"lib", "platform", "sample", "median_ms", "dcap_qvl_median_ms", "ratio",
     "cpu_median_ms", "dcap_qvl_cpu_median_ms", "cpu_ratio"}

``median_ms`` is wall time (what a caller waits); ``cpu_median_ms`` the process's CPU time over
the same call, every thread: a cold verification proves its nine signature checks on two
threads (attestation/sigbatch.py), so its CPU time exceeds its wall time there.

* ``lib = "shardguard"``: steady state. Repeated verifications in one process reuse the
  memoised pure checks (chain and collateral signatures, parsed certificates, CRLs and JSON,
  keyed by their exact bytes); the quote signature and every validity window are checked each
  time.
* ``lib = "shardguard-cold"``: every memo is cleared before each verification (a process that
  has never seen this platform or this collateral): the quote, both certificate chains, the
  CRLs and the JSON are parsed from their bytes and every signature is verified again (nine
  ECDSA P-256 verifications with full collateral). Only module constants survive: the pinned
  Intel root certificate, decoded (and its self-signature checked) at import, and the RFC 4514
  text of Intel's five certificate names (display only; a certificate is still decoded and its
  name compared byte for byte). Omitted with ``--no-cold``.

Ours and dcap-qvl's calls alternate, so both see the same machine state (each also runs with
caches the other has just evicted); ``ratio`` = ``median_ms / dcap_qvl_median_ms``. On a shared
machine the cold ratio moves with the load (about ±0.1 between quiet and loaded runs): compare
medians of several runs, taken close together. Every verdict (status and advisory IDs) of both is compared;
the exit status is 1 if they ever disagree. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dcap_qvl  # type: ignore[import-untyped]

from shardguard.attestation import dcap
from shardguard.attestation.sgx import verify_sgx
from shardguard.attestation.tdx import verify_tdx

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "attestation"
SAMPLES = [
    # (platform, quote, collateral, a time inside the collateral's window)
    ("tdx", "tdx/dcapqvl_tdx10_v4_quote.bin", "tdx/dcapqvl_tdx10_v4_collateral.json", dt.datetime(2025, 7, 1, tzinfo=dt.UTC)),
    (
        "tdx",
        "tdx/dcapqvl_tdx15_v5_quote_outdated.bin",
        "tdx/dcapqvl_tdx15_v5_collateral_outdated.json",
        dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
    ),
    ("sgx", "sgx/dcapqvl_sgx_v3_quote.bin", "sgx/dcapqvl_sgx_v3_collateral.json", dt.datetime(2025, 7, 1, tzinfo=dt.UTC)),
]
Verdict = tuple[str, tuple[str, ...]]


def ours(platform: str, quote: bytes, coll: dcap.Collateral, at: dt.datetime) -> Verdict:
    v = (verify_tdx if platform == "tdx" else verify_sgx)(quote, collateral=coll, at=at)
    return (v.tcb_status, v.advisory_ids)


def theirs(quote: bytes, coll: object, now_secs: int) -> Verdict:
    try:
        r = dcap_qvl.verify(quote, coll, now_secs)
    except ValueError as e:
        # dcap-qvl reports "no matching TCB level" as an error; that is a verdict, not a failure.
        if "No matching TCB level found" in str(e):
            return ("NoMatchingTcbLevel", ())
        raise
    return (r.status, tuple(r.advisory_ids))


def timed(fn: Callable[[], Verdict]) -> tuple[float, float, Verdict]:
    c, t = time.process_time(), time.perf_counter()
    verdict = fn()
    return time.perf_counter() - t, time.process_time() - c, verdict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=200, help="timed verifications per sample and lib (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed verifications first (default 20)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold (memos cleared) measurement")
    args = ap.parse_args(argv)
    failures = 0
    for platform, quote_file, coll_file, at in SAMPLES:
        quote = (FIXTURES / quote_file).read_bytes()
        text = (FIXTURES / coll_file).read_text()
        coll, their_coll, now_secs = dcap.load_collateral(text), dcap_qvl.QuoteCollateralV3.from_json(text), int(at.timestamp())
        sample = Path(quote_file).name
        modes = [("shardguard", False)] + ([] if args.no_cold else [("shardguard-cold", True)])
        for lib, cold in modes:
            dcap.clear_caches()
            mine: list[float] = []
            other: list[float] = []
            mine_cpu: list[float] = []
            other_cpu: list[float] = []
            verdicts: set[tuple[Verdict, Verdict]] = set()
            for i in range(args.warmup + args.n):
                if cold:
                    dcap.clear_caches()
                t_ours, c_ours, v_ours = timed(functools.partial(ours, platform, quote, coll, at))
                t_theirs, c_theirs, v_theirs = timed(functools.partial(theirs, quote, their_coll, now_secs))
                verdicts.add((v_ours, v_theirs))
                if i >= args.warmup:
                    mine.append(t_ours)
                    other.append(t_theirs)
                    mine_cpu.append(c_ours)
                    other_cpu.append(c_theirs)
            agree = all(a == b for a, b in verdicts)
            if not agree:
                failures += 1
            print(f"{lib:16} {sample:40} verdicts (ours, dcap-qvl): {sorted(verdicts)}", file=sys.stderr)
            median, their_median = statistics.median(mine) * 1000, statistics.median(other) * 1000
            cpu, their_cpu = statistics.median(mine_cpu) * 1000, statistics.median(other_cpu) * 1000
            line = {
                "lib": lib,
                "platform": platform,
                "sample": sample,
                "median_ms": round(median, 4),
                "dcap_qvl_median_ms": round(their_median, 4),
                "ratio": round(median / their_median, 3),
                "cpu_median_ms": round(cpu, 4),
                "dcap_qvl_cpu_median_ms": round(their_cpu, 4),
                "cpu_ratio": round(cpu / their_cpu, 3),
            }
            print(json.dumps(line), flush=True)
    if failures:
        print(f"{failures} sample(s) where the verdicts disagree", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
