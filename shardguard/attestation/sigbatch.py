"""A verification's signature checks, proven together at its end, on two cores.

A cold verification is mostly ECDSA checks: five P-384 ones for a Nitro document, nine P-256
ones for a DCAP quote with full collateral. Checked one by one, each waits for the one before.
But none needs another's answer to be *computed*: only the order in which failures are
reported depends on them. So :func:`deferred` runs a verification twice at most:

1. **Optimistic run.** Every check goes through :func:`signature_holds`, which keeps it and
   answers True; everything else (parsing, names, extensions, validity windows, TCB levels)
   runs as always. Signed memos (``memo.py``, ``signed=True``) keep what they compute aside.
2. **Proof.** The kept checks run together, in the order they were kept (the sequential
   order), alternately on a helper thread and on the caller's (OpenSSL verifies without the
   GIL, so both cores work). If every one holds, the optimistic run's outcome is exactly the
   sequential one — its result, or the error it reached, since every check before that error
   held — and the kept memo results are stored.
3. **Otherwise** the verification runs again, sequentially, every check in place as before:
   its first failure is reported, with its own reason and field. Nothing of the optimistic run
   is kept but pure parses.

So the outcome is always the sequential code's, whatever the evidence; a valid cold
verification waits for about half its checks in a row. Invalid evidence: the side that finds
a failure stops the other, so with the k-th check failing the proof runs about k + 2 checks
and the rerun k, against k for the sequential code (plus, once, the parsing of the rest of
the evidence, bounded like the evidence). A verification that defers inside another
(``deferred`` nested) joins the outer one.

An exception other than ``KeyboardInterrupt`` and ``SystemExit`` — a check's, or one the
optimistic run reached because it assumed a signature (a panic in a parser, say) — is an
outcome like any other: raised only once every kept check before it is proven, and otherwise
left to the sequential rerun. The helper never stops serving (it catches everything); a
caller whose helper could not be started, or is gone, proves its checks itself.

Measured on this 2-core host: nine P-256 checks, 605 µs in a row, 380 µs split 5/4 between two
threads; a thread hand-off costs about 70 µs here, so fewer than three checks (a warm
verification: only the evidence's own signature is new) are proven on the caller's thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from cryptography.exceptions import InvalidSignature

from shardguard.attestation.memo import staging

__all__ = ["deferred", "signature_holds"]

_T = TypeVar("_T")
Check = Callable[[], object]

#: Fewer kept checks than this are proven on the caller's thread (a hand-off costs about one).
PARALLEL_FROM = 3

_KEPT: contextvars.ContextVar[list[Check] | None] = contextvars.ContextVar("shardguard_sig_kept", default=None)


def signature_holds(verify: Check) -> bool:
    """Whether ``verify()`` — a signature check that raises ``InvalidSignature`` when it fails —
    passes. Inside :func:`deferred`'s optimistic run it is kept for the proof and True is
    answered; any other exception it raises then counts as a failure there."""
    kept = _KEPT.get()
    if kept is not None:
        kept.append(verify)
        return True
    try:
        verify()
    except InvalidSignature:
        return False
    return True


def deferred(verification: Callable[[], _T]) -> _T:
    """Run ``verification`` (a whole verification: no side effects but memos) with its
    signature checks deferred and proven together; see the module docstring."""
    if _KEPT.get() is not None:
        return verification()  # inside another deferred verification: its proof covers ours
    kept: list[Check] = []
    token = _KEPT.set(kept)
    error: BaseException | None = None
    try:
        with staging() as staged:
            try:
                outcome = verification()
            except _INTERRUPTS:
                raise
            except BaseException as e:  # raised below, once the checks before it are proven
                error = e
    finally:
        _KEPT.reset(token)
    if not _all_hold(kept):
        return verification()  # sequentially: the first failure, as always
    staged.commit()
    if error is not None:
        raise error
    return outcome


_INTERRUPTS = (KeyboardInterrupt, SystemExit)


class _Proof:
    """One hand-off to the helper: its share of the checks, its verdict, and a flag either side
    raises on a failure so the other stops at its next check."""

    __slots__ = ("_done", "checks", "ok", "stop")

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = checks
        self.ok = False
        self.stop = False
        self._done = threading.Lock()
        self._done.acquire()

    def finish(self, ok: bool) -> None:
        self.ok = ok
        self._done.release()

    def wait(self) -> bool | None:
        """The helper's verdict; None if the helper is gone without one."""
        while not self._done.acquire(timeout=1.0):
            if not _helper_alive():
                return None
        return self.ok


def _all_hold(checks: Sequence[Check]) -> bool:
    if len(checks) < PARALLEL_FROM:
        return _run(checks)
    # Alternately, in the kept (sequential) order: an early failure is found early by one side,
    # which stops the other.
    proof = _Proof(checks[0::2])
    if not _hand_off(proof):  # the helper is busy with another thread's proof, or cannot start
        return _run(checks)
    mine = _run(checks[1::2], proof)
    theirs = proof.wait()
    if theirs is None:
        theirs = _run(proof.checks)
    return mine and theirs


def _run(checks: Sequence[Check], proof: _Proof | None = None) -> bool:
    for check in checks:
        if proof is not None and proof.stop:
            return False  # the other side found a failure
        try:
            check()
        except _INTERRUPTS:
            raise
        except BaseException:  # InvalidSignature, or anything the sequential rerun will name
            if proof is not None:
                proof.stop = True
            return False
    return True


# -- the helper thread --------------------------------------------------------------------------------
# ``_busy`` is taken by the caller that hands a proof off and released by the helper when it
# has finished it (never by the caller once the proof is queued): one proof at a time.
_busy = threading.Lock()
_start_lock = threading.Lock()
_queue: queue.SimpleQueue[_Proof] | None = None
_thread: threading.Thread | None = None
_pid = 0


def _serve(jobs: queue.SimpleQueue[_Proof]) -> None:
    while True:
        proof = jobs.get()
        ok = False
        try:
            ok = _run(proof.checks, proof)
        except BaseException:  # noqa: S110 - never stop serving; "not proven" reruns it in place
            pass
        finally:
            with contextlib.suppress(RuntimeError):  # released already (an interrupted hand-off)
                _busy.release()
            proof.finish(ok)


def _helper_alive() -> bool:
    t = _thread
    return t is not None and t.is_alive() and _pid == os.getpid()


def _hand_off(proof: _Proof) -> bool:
    """Queue ``proof`` for the helper (started on first use). False, with nothing queued, when
    the helper is busy or cannot be started (a thread limit, interpreter shutdown)."""
    global _queue, _thread, _pid
    if not _busy.acquire(blocking=False):
        return False
    try:
        if _queue is None or not _helper_alive():
            with _start_lock:
                if _queue is None or not _helper_alive():
                    jobs: queue.SimpleQueue[_Proof] = queue.SimpleQueue()
                    thread = threading.Thread(target=_serve, args=(jobs,), name="shardguard-sigbatch", daemon=True)
                    thread.start()
                    _queue, _thread, _pid = jobs, thread, os.getpid()
        _queue.put(proof)
    except Exception:  # the thread could not start: prove here
        _busy.release()
        return False
    return True


def _forget_in_child() -> None:
    # Threads do not survive fork: the child starts its own helper when it first needs one.
    global _queue, _thread, _busy, _start_lock
    _queue = None
    _thread = None
    _busy = threading.Lock()
    _start_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
