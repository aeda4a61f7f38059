"""Signature checks deferred to the end of a verification and proven together (sigbatch.py).

The contract: whatever the evidence, the outcome of a deferred verification — its result, or
its error with reason, field and detail — is the outcome of checking every signature in
place; a signature taken on trust is never remembered."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardguard.attestation import AttestationError, AttestationReason, dcap, memo, nitro, sigbatch, x509chain
from shardguard.attestation.memo import Memo
from shardguard.attestation.sigbatch import deferred, signature_holds

from .conftest import FIXTURES, fixture_bytes

TDX10 = "tdx/dcapqvl_tdx10_v4_quote.bin"
TDX10_COLLATERAL = "tdx/dcapqvl_tdx10_v4_collateral.json"
AT = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)
NITRO = "nitro/evervault_prod_2022-10-13.cbor"


def good() -> None:
    pass


def bad() -> None:
    raise InvalidSignature


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """What a verification ends with, comparably: its fields, or its error's every part."""
    try:
        got = fn()
    except AttestationError as e:
        return ("error", (e.reason, e.field, e.platform, str(e)))
    return ("ok", got.to_fields() if hasattr(got, "to_fields") else got.fields)


# -- the mechanism, on synthetic checks -----------------------------------------------------------------
def test_checks_that_hold_give_the_optimistic_outcome_from_one_run_and_store_its_memos() -> None:
    m = Memo(signed=True)
    runs: list[int] = []

    def verification() -> int:
        runs.append(1)
        return m.get(b"link", lambda: 7 if signature_holds(good) else 0) + sum(signature_holds(good) for _ in range(4))

    assert deferred(verification) == 11
    assert runs == [1]
    assert m.get(b"link", lambda: -1) == 7  # committed once every check held


def test_a_failing_check_reruns_in_place_and_nothing_taken_on_trust_is_remembered() -> None:
    m = Memo(signed=True)
    plain = Memo()  # a parse: independent of any signature, stored by the optimistic run
    runs: list[bool] = []

    def verification() -> str:
        runs.append(True)
        plain.get(b"parse", lambda: "parsed")
        if not m.get(b"bad-link", lambda: signature_holds(bad)):
            return "refused at the link"
        return "accepted"

    assert deferred(verification) == "refused at the link"
    assert len(runs) == 2  # optimistic (answered True), then in place (False)
    assert m.get(b"bad-link", lambda: "absent") is False  # stored by the in-place run only, as always
    m2 = Memo(signed=True)

    def raising() -> None:
        if not m2.get(b"k", lambda: signature_holds(bad) or _raise()):
            pass

    with pytest.raises(ValueError, match="refused"):
        deferred(raising)
    assert m2.get(b"k", lambda: "absent") == "absent"  # the optimistic "True" was never stored


def _raise() -> bool:
    raise ValueError("refused")


def test_an_error_reached_after_holding_checks_is_raised_from_the_single_run() -> None:
    runs: list[int] = []

    def verification() -> None:
        runs.append(1)
        assert signature_holds(good)
        raise ValueError("malformed after the signature")

    with pytest.raises(ValueError, match="malformed after"):
        deferred(verification)
    assert runs == [1]


def test_any_exception_from_a_kept_check_counts_as_a_failure_and_the_rerun_raises_it_in_place() -> None:
    def odd() -> None:
        raise RuntimeError("unsupported algorithm")

    runs: list[int] = []

    def verification() -> bool:
        runs.append(1)
        return signature_holds(odd)

    with pytest.raises(RuntimeError, match="unsupported"):
        deferred(verification)
    assert runs == [1, 1]


def test_a_nested_verification_joins_the_outer_proof() -> None:
    seen: list[str] = []

    def inner() -> bool:
        seen.append("inner")
        return signature_holds(bad)

    def outer() -> bool:
        seen.append("outer")
        return deferred(inner)

    assert deferred(outer) is False
    # Optimistic: the inner check is kept by the outer run (inner runs once within it). The
    # proof fails, so the outer runs in place, where the inner defers on its own: optimistic,
    # then in place.
    assert seen == ["outer", "inner", "outer", "inner", "inner"]


def _recording(threads: list[int]) -> Callable[[], None]:
    def check() -> None:
        threads.append(threading.get_ident())

    return check


def test_three_checks_or_more_are_split_with_the_helper_fewer_stay_on_the_callers_thread() -> None:
    for count, split in ((2, False), (3, True), (9, True)):
        threads: list[int] = []
        assert deferred(lambda count=count, threads=threads: all(signature_holds(_recording(threads)) for _ in range(count)))
        assert len(threads) == count
        assert (len(set(threads)) == 2) is split, (count, threads)
        assert threading.get_ident() in threads


def test_a_busy_helper_means_every_check_is_proven_on_the_callers_thread() -> None:
    threads: list[int] = []
    assert sigbatch._busy.acquire(blocking=False)
    try:
        assert deferred(lambda: all(signature_holds(_recording(threads)) for _ in range(6)))
    finally:
        sigbatch._busy.release()
    assert set(threads) == {threading.get_ident()}


def test_concurrent_verifications_each_get_their_own_outcome() -> None:
    errors: list[str] = []

    def worker(k: int) -> None:
        for i in range(200):
            fail_at = (k + i) % 7  # 0..6: six of seven runs have one bad check among six
            checks = [bad if j == fail_at else good for j in range(6)]
            got = deferred(lambda checks=checks: [signature_holds(c) for c in checks])
            want = [j != fail_at for j in range(6)]
            if got != want:
                errors.append(f"{k}/{i}: {got} != {want}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_failure_stops_the_other_side_so_invalid_evidence_costs_little_more() -> None:
    """The first kept check fails: the proof (both sides) stops after about two checks, and the
    in-place rerun stops at that check too."""
    ran: list[int] = []
    lock = threading.Lock()

    def counted(k: int, fails: bool) -> Callable[[], None]:
        def check() -> None:
            with lock:
                ran.append(k)
            time.sleep(0.002)
            if fails:
                raise InvalidSignature

        return check

    def verification() -> bool:
        return all(signature_holds(counted(k, k == 0)) for k in range(12))

    assert deferred(verification) is False
    # Proof: check 0 (helper) and at most a check or two on the caller's side; rerun: check 0.
    assert ran.count(0) == 2 and len(ran) <= 5, ran


def test_a_base_exception_from_a_check_is_an_outcome_like_any_other() -> None:
    """Not an Exception (pyo3's PanicException is a BaseException): it counts as "not proven",
    and the sequential rerun decides. KeyboardInterrupt still interrupts."""

    class Panic(BaseException):
        pass

    def panics() -> None:
        raise Panic

    def verification() -> str:
        if not signature_holds(bad):  # the sequential code stops here
            return "BAD_SIGNATURE"
        signature_holds(good)
        signature_holds(panics)  # reached only because the first was assumed
        return "accepted"

    assert deferred(verification) == "BAD_SIGNATURE"

    def assumed() -> str:
        if not signature_holds(bad):
            return "BAD_SIGNATURE"
        raise Panic  # a parser's panic past a signature taken on trust

    assert deferred(assumed) == "BAD_SIGNATURE"

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        deferred(interrupted)


def test_a_helper_that_cannot_start_means_proving_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sigbatch, "_queue", None)
    monkeypatch.setattr(sigbatch, "_thread", None)

    class NoThreads:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(sigbatch.threading, "Thread", NoThreads)
    threads: list[int] = []
    for _ in range(2):
        assert deferred(lambda: all(signature_holds(_recording(threads)) for _ in range(6)))
    assert set(threads) == {threading.get_ident()}
    assert sigbatch._busy.acquire(blocking=False)  # not leaked
    sigbatch._busy.release()


def test_an_interrupted_hand_off_leaves_the_helper_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal's exception landing just after the proof was queued: the helper finishes that
    proof and goes on serving (it, not the caller, releases the hand-off)."""
    deferred(lambda: all(signature_holds(good) for _ in range(4)))  # the helper exists
    real = sigbatch._queue
    assert real is not None

    class InterruptedOnce:
        fired = False

        def put(self, item: Any) -> None:
            real.put(item)
            if not InterruptedOnce.fired:
                InterruptedOnce.fired = True
                raise KeyboardInterrupt

    monkeypatch.setattr(sigbatch, "_queue", InterruptedOnce())
    with pytest.raises(KeyboardInterrupt):
        deferred(lambda: all(signature_holds(good) for _ in range(4)))
    monkeypatch.setattr(sigbatch, "_queue", real)
    threads: list[int] = []
    box: list[bool] = []
    t = threading.Thread(target=lambda: box.append(deferred(lambda: all(signature_holds(_recording(threads)) for _ in range(6)))))
    t.start()
    t.join(10)
    assert not t.is_alive() and box == [True]
    assert sigbatch._helper_alive()


def _child(q: Any) -> None:
    threads: list[int] = []
    ok = deferred(lambda: all(signature_holds(_recording(threads)) for _ in range(4)))
    q.put((ok, len(set(threads))))


def test_a_forked_child_starts_its_own_helper() -> None:
    deferred(lambda: all(signature_holds(good) for _ in range(4)))  # the parent's helper exists
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert q.get(timeout=5) == (True, 2)


# -- the verifiers: deferred against in place ----------------------------------------------------------------
def _dcap_pair(quote: bytes, coll: dcap.Collateral) -> tuple[tuple[str, Any], tuple[str, Any]]:
    memo.clear_caches()
    deferred_outcome = outcome(lambda: dcap.verify_quote(quote, platform="tdx", collateral=coll, at=AT))
    memo.clear_caches()
    in_place = outcome(lambda: dcap._verify_quote(quote, platform="tdx", collateral=coll, at=AT, roots=dcap.INTEL_ROOTS))
    return deferred_outcome, in_place


def _nitro_pair(document: bytes) -> tuple[tuple[str, Any], tuple[str, Any]]:
    memo.clear_caches()
    deferred_outcome = outcome(lambda: nitro.verify_nitro(document))
    memo.clear_caches()
    in_place = outcome(lambda: nitro._verify(document, nitro.NITRO_ROOTS, {}))
    return deferred_outcome, in_place


def _flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[pos] ^= mask
    return bytes(b)


@pytest.fixture(scope="module")
def dcap_inputs() -> tuple[bytes, dcap.Collateral, str]:
    text = (FIXTURES / TDX10_COLLATERAL).read_text()
    return fixture_bytes(TDX10), dcap.load_collateral(text), text


def test_genuine_evidence_verifies_alike_deferred_and_in_place(dcap_inputs: tuple[bytes, dcap.Collateral, str]) -> None:
    quote, coll, _ = dcap_inputs
    a, b = _dcap_pair(quote, coll)
    assert a == b and a[0] == "ok"
    a, b = _nitro_pair(fixture_bytes(NITRO))
    assert a == b and a[0] == "ok"


def test_every_31st_quote_byte_flipped_ends_alike_deferred_and_in_place(dcap_inputs: tuple[bytes, dcap.Collateral, str]) -> None:
    quote, coll, _ = dcap_inputs
    for pos in range(0, len(quote), 31):
        a, b = _dcap_pair(_flip(quote, pos), coll)
        assert a == b, pos


@pytest.mark.parametrize(
    "field", ["tcb_info", "qe_identity", "root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature"]
)
def test_collateral_flips_end_alike_deferred_and_in_place(dcap_inputs: tuple[bytes, dcap.Collateral, str], field: str) -> None:
    quote, _, text = dcap_inputs
    doc = json.loads(text)
    value: str = doc[field]
    step = max(1, len(value) // 23)
    for pos in range(0, len(value), step):
        if field in ("tcb_info", "qe_identity"):
            edited = value[:pos] + ("0" if value[pos] != "0" else "1") + value[pos + 1 :]
        else:  # hex
            edited = value[:pos] + ("0" if value[pos] != "0" else "f") + value[pos + 1 :]
        try:
            coll = dcap.load_collateral(json.dumps({**doc, field: edited}))
        except AttestationError:
            continue  # refused before any verification
        a, b = _dcap_pair(quote, coll)
        assert a == b, (field, pos)


@pytest.mark.parametrize("year", [2017, 2024, 2025, 2026, 2030, 2049, 2060])
def test_genuine_evidence_at_any_time_ends_alike(dcap_inputs: tuple[bytes, dcap.Collateral, str], year: int) -> None:
    """Every signature holds, the optimistic run itself raises (a certificate or collateral
    window): the proof holds, and that error is the sequential one."""
    quote, coll, _ = dcap_inputs
    at = dt.datetime(year, 7, 1, tzinfo=dt.UTC)
    memo.clear_caches()
    a = outcome(lambda: dcap.verify_quote(quote, platform="tdx", collateral=coll, at=at))
    memo.clear_caches()
    b = outcome(lambda: dcap._verify_quote(quote, platform="tdx", collateral=coll, at=at, roots=dcap.INTEL_ROOTS))
    assert a == b


def test_flips_end_alike_with_warm_memos(dcap_inputs: tuple[bytes, dcap.Collateral, str]) -> None:
    quote, coll, _ = dcap_inputs
    memo.clear_caches()
    dcap.verify_quote(quote, platform="tdx", collateral=coll, at=AT)
    nitro.verify_nitro(fixture_bytes(NITRO))
    for pos in range(0, len(quote), 97):
        bad_quote = _flip(quote, pos)
        a = outcome(lambda q=bad_quote: dcap.verify_quote(q, platform="tdx", collateral=coll, at=AT))
        b = outcome(lambda q=bad_quote: dcap._verify_quote(q, platform="tdx", collateral=coll, at=AT, roots=dcap.INTEL_ROOTS))
        assert a == b, pos
    document = fixture_bytes(NITRO)
    for pos in range(0, len(document), 101):
        doc = _flip(document, pos)
        assert outcome(lambda d=doc: nitro.verify_nitro(d)) == outcome(lambda d=doc: nitro._verify(d, nitro.NITRO_ROOTS, {})), pos


def test_every_53rd_nitro_byte_flipped_ends_alike_deferred_and_in_place() -> None:
    document = fixture_bytes(NITRO)
    for pos in range(0, len(document), 53):
        a, b = _nitro_pair(_flip(document, pos))
        assert a == b, pos


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_flips_chosen_by_hypothesis_end_alike(data: st.DataObject) -> None:
    if data.draw(st.booleans(), label="nitro"):
        document = fixture_bytes(NITRO)
        pos = data.draw(st.integers(0, len(document) - 1), label="pos")
        mask = data.draw(st.integers(1, 255), label="mask")
        a, b = _nitro_pair(_flip(document, pos, mask))
    else:
        quote = fixture_bytes(TDX10)
        coll = dcap.load_collateral((FIXTURES / TDX10_COLLATERAL).read_text())
        pos = data.draw(st.integers(0, len(quote) - 1), label="pos")
        mask = data.draw(st.integers(1, 255), label="mask")
        a, b = _dcap_pair(_flip(quote, pos, mask), coll)
    assert a == b


def test_a_signature_taken_on_trust_is_not_remembered(dcap_inputs: tuple[bytes, dcap.Collateral, str]) -> None:
    """The TCB info signature tampered with: the optimistic run assumed it and kept its memo
    entry aside, the proof refuted it, and the memo of proven signatures never holds it."""
    quote, _, text = dcap_inputs
    doc = json.loads(text)
    sig: str = doc["tcb_info_signature"]
    tampered = sig[:-2] + ("00" if sig[-2:] != "00" else "01")
    coll = dcap.load_collateral(json.dumps({**doc, "tcb_info_signature": tampered}))
    memo.clear_caches()
    with pytest.raises(AttestationError) as e:
        dcap.verify_quote(quote, platform="tdx", collateral=coll, at=AT)
    assert (e.value.reason, e.value.field) == (AttestationReason.BAD_SIGNATURE, "tcb_info")
    assert not any(bytes.fromhex(tampered) in key for key in dcap._SIG_OK._data)
    assert dcap._CHAIN_SIGS._data  # the chains did verify, in place: stored as always


def test_a_cold_genuine_verification_stores_its_proven_steps(dcap_inputs: tuple[bytes, dcap.Collateral, str]) -> None:
    quote, coll, _ = dcap_inputs
    memo.clear_caches()
    dcap.verify_quote(quote, platform="tdx", collateral=coll, at=AT)
    assert dcap._CHAIN_SIGS._data and dcap._SIG_OK._data and dcap._CRL_SIGS._data
    nitro.verify_nitro(fixture_bytes(NITRO))
    assert len(x509chain._LINKS._data) >= 4
