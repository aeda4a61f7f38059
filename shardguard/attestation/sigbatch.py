"""A verification's signature checks, proven together at its end, on two cores.

A cold verification is mostly ECDSA checks: five P-384 ones for a Nitro document, nine P-256
ones for a DCAP quote with full collateral. Checked one by one, each waits for the one before.
But none needs another's answer to be *computed*: only the order in which failures are
reported depends on them. So :func:`deferred` runs a verification twice at most:

1. **Optimistic run.** Every check goes through :func:`signature_holds`, which keeps it and
   answers True; everything else (parsing, names, extensions, validity windows, TCB levels)
   runs as always. Signed memos (``memo.py``, ``signed=True``) keep what they compute aside.
2. **Proof.** The kept checks run together: about half on a helper thread, the rest on the
   caller's (OpenSSL verifies without the GIL, so both cores work). If every one holds, the
   optimistic run's outcome is exactly the sequential one — its result, or the error it
   reached, since every check before that error held — and the kept memo results are stored.
3. **Otherwise** the verification runs again, sequentially, every check in place as before:
   its first failure is reported, with its own reason and field. Nothing of the optimistic run
   is kept but pure parses.

So the outcome is always the sequential code's, whatever the evidence; a valid cold
verification waits for about half its checks in a row; invalid evidence costs at most twice
the work (bounded, like the evidence itself). A verification that defers inside another
(``deferred`` nested) joins the outer one.

Measured on this 2-core host: nine P-256 checks, 605 µs in a row, 380 µs split 5/4 between two
threads; a thread hand-off costs about 70 µs here, so fewer than three checks (a warm
verification: only the evidence's own signature is new) are proven on the caller's thread.
"""

from __future__ import annotations

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
    error: Exception | None = None
    try:
        with staging() as staged:
            try:
                outcome = verification()
            except Exception as e:  # re-raised below once its checks are proven
                error = e
    finally:
        _KEPT.reset(token)
    if not _all_hold(kept):
        return verification()  # sequentially: the first failure, as always
    staged.commit()
    if error is not None:
        raise error
    return outcome


def _all_hold(checks: Sequence[Check]) -> bool:
    if len(checks) < PARALLEL_FROM:
        return _run(checks)
    helper_part = checks[: len(checks) // 2]
    done = _submit(helper_part)
    if done is None:  # the helper is busy with another thread's proof: all here
        return _run(checks)
    mine = _run(checks[len(helper_part) :])
    done.wait()
    return mine and done.ok


def _run(checks: Sequence[Check]) -> bool:
    try:
        for check in checks:
            check()
    except Exception:  # InvalidSignature, or an error the sequential run will name
        return False
    return True


# -- the helper thread --------------------------------------------------------------------------------
class _Done:
    __slots__ = ("_lock", "ok")

    def __init__(self) -> None:
        self.ok = False
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self, ok: bool) -> None:
        self.ok = ok
        self._lock.release()

    def wait(self) -> None:
        self._lock.acquire()


_Job = tuple[Sequence[Check], _Done]
_busy = threading.Lock()  # held from a proof's hand-off until the helper has finished it
_start_lock = threading.Lock()
_jobs: queue.SimpleQueue[_Job] | None = None
_pid = 0


def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
    while True:
        checks, done = jobs.get()
        ok = False
        try:
            ok = _run(checks)
        except BaseException:  # noqa: S110 - never leave the caller waiting; "not proven" reruns it in place
            pass
        finally:
            _busy.release()
            done.set(ok)


def _submit(checks: Sequence[Check]) -> _Done | None:
    """Hand ``checks`` to the helper (started on first use), or None when it is busy."""
    global _jobs, _pid
    if not _busy.acquire(blocking=False):
        return None
    try:
        if _jobs is None or _pid != os.getpid():
            with _start_lock:
                if _jobs is None or _pid != os.getpid():
                    jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
                    threading.Thread(target=_serve, args=(jobs,), name="shardguard-sigbatch", daemon=True).start()
                    _jobs, _pid = jobs, os.getpid()
        done = _Done()
        _jobs.put((checks, done))
    except BaseException:
        _busy.release()
        raise
    return done


def _forget_in_child() -> None:
    # Threads do not survive fork: the child starts its own helper when it first needs one.
    global _jobs, _busy, _start_lock
    _jobs = None
    _busy = threading.Lock()
    _start_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
