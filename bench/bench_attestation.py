#!/usr/bin/env python3
"""Verification time per platform on the genuine fixtures (Nitro, SEV-SNP) and on simulated
evidence; one JSON line per sample on stdout. TDX/SGX beside dcap-qvl: bench_attestation_dcap.py.

    python bench/bench_attestation.py [N=200]

Goals (issue #5): Nitro and SEV-SNP ≤ 5 ms each.

``verify_cold`` forgets every memoised check before each verification (attestation/memo.py;
only the pinned roots' self-signatures, checked once per process, stay); ``verify`` is a
verifier that has seen the same certificates before: a region's Nitro CA certificates, an SEV-SNP
product's ARK and ASK, the same leaf or VCEK.

``median_ms`` is wall time, what a caller waits; ``cpu_median_ms`` the process's CPU time over
the same call (every thread: a cold Nitro verification proves its signature checks on two,
attestation/sigbatch.py, so it uses more CPU than it takes time).
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shardguard.attestation.dev_root import DEV_ROOTS
from shardguard.attestation.memo import clear_caches
from shardguard.attestation.nitro import verify_nitro
from shardguard.attestation.sev_snp import verify_sev_snp
from shardguard.enclave.simulated import SimulatedPlatform

FIX = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "attestation"


def _time(fn: Callable[[], object], n: int, *, cold: bool) -> dict[str, float]:
    for _ in range(5):
        fn()
    ts, cpu = [], []
    for _ in range(n):
        if cold:
            clear_caches()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return {
        "median_ms": round(statistics.median(ts), 4),
        "min_ms": round(min(ts), 4),
        "max_ms": round(max(ts), 4),
        "cpu_median_ms": round(statistics.median(cpu), 4),
        "n": n,
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    cases: list[tuple[str, str, Callable[[], object]]] = []
    for name in ("evervault_prod_2022-10-13.cbor", "anjuna_prod_userdata_2023-09-21.cbor"):
        doc = (FIX / "nitro" / name).read_bytes()
        cases.append(("nitro", name, lambda d=doc: verify_nitro(d)))
    for report, cert, at in (
        ("gosevguest_milan_v2_report.bin", "gosevguest_milan_v2_vcek.der", None),
        ("teekit_gcp_milan_v5_report.bin", "teekit_gcp_milan_v5_vcek.pem", None),
        ("trustee_aws_milan_v3_vlek_report.bin", "trustee_aws_milan_v3_vlek.der", dt.datetime(2025, 6, 1, tzinfo=dt.UTC)),
    ):
        r, c = (FIX / "sev-snp" / report).read_bytes(), (FIX / "sev-snp" / cert).read_bytes()
        cases.append(("sev-snp", report, lambda r=r, c=c, at=at: verify_sev_snp(r, signer_cert=c, at=at)))
    with tempfile.TemporaryDirectory() as tmp:
        sim = SimulatedPlatform(state_dir=Path(tmp)).attest(b"\x00" * 64).blob
    cases.append(("simulated", "SimulatedPlatform.attest", lambda: verify_nitro(sim, simulated_roots=DEV_ROOTS)))
    for platform, sample, fn in cases:
        row: dict[str, object] = {"lib": "shardguard", "platform": platform, "sample": sample}
        row["verify_cold"] = _time(fn, n, cold=True)
        row["verify"] = _time(fn, n, cold=False)
        row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
