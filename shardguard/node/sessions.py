"""Each session instance once (docs/NODE.md, "Each session once").

The coordinator picks every session's instance. A node that ran an instance before must not run
it again: its peers' envelopes of the first run would open in the second (same session id,
same identity keys), so a relay could replay them there — an honest peer then seems to send
two messages for one round (``EQUIVOCATION``, with its own signatures as "proof"), or fails a
DKLs23 pairwise check and is banned until the next refresh.

Remembering every instance would take memory without end; forgetting old ones would open a
window for exactly that replay. Instead a task's sessions are bound to the job's deadline in
whole seconds (:func:`~shardguard.node.tasks.deadline_at`,
:func:`~shardguard.node.tasks.session_instance`) and this register, given that same value
(two deadlines within one second are one session: review finding),

* refuses a deadline that passed more than ``skew`` seconds ago by this node's clock, or that
  lies more than ``ahead`` seconds ahead;
* remembers each instance it ran with its deadline, and forgets one only once its deadline is
  refused by the rule above, or, when ``capacity`` is reached, the one with the earliest
  deadline;
* refuses every deadline at or before the latest deadline it forgot (``floor``).

A forgotten session can therefore never run again: its deadline is at or below the floor, and
the same instance under another deadline is another session. This holds whatever the clock
does; a clock that jumps only makes the node refuse tasks or keep instances longer. Within one
process only: a restarted node has new identity and channel keys, under which no envelope of
an earlier process opens.

Memory: at most ``capacity`` entries (~200 B each). They stay until their deadline is out of
reach, so a node records at most ``capacity / (job_timeout + skew)`` tasks a second (555 at
the defaults) before it forgets by capacity; then the floor rises to the earliest deadline it
holds, and a task that arrives late, or shares that whole second, is refused.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable

from shardguard.node.tasks import TaskError

__all__ = ["SessionRegister"]


class SessionRegister:
    """The session instances this process has run whose deadlines are within reach.
    Thread-safe."""

    def __init__(
        self, capacity: int = 100_000, *, skew: float = 60.0, ahead: float = 3600.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._capacity = capacity
        self._skew = skew
        self._ahead = ahead
        self._clock = clock
        self._lock = threading.Lock()
        self._held: set[bytes] = set()
        # A heap: earliest deadline first, and of one deadline the one recorded first (so that a
        # full register forgets an older session rather than refuse the new one in its second).
        self._by_deadline: list[tuple[float, int, bytes]] = []
        self._order = itertools.count()
        self._floor = -math.inf  # the latest deadline forgotten

    def __len__(self) -> int:
        return len(self._held)

    @property
    def floor(self) -> float:
        """Deadlines at or below this are refused (POSIX seconds; -inf before any is forgotten)."""
        return self._floor

    def check(self, deadline: float) -> None:
        """Refuse (:class:`TaskError`, field ``deadline``) a deadline no session may run under."""
        with self._lock:
            self._check(deadline, self._clock())

    def run_once(self, instance: bytes, deadline: float) -> None:
        """Record that ``instance`` runs now, under ``deadline``; :class:`TaskError` if it ran
        before (field ``instance``) or its deadline is refused (field ``deadline``)."""
        with self._lock:
            now = self._clock()
            self._forget_before(now - self._skew)
            self._check(deadline, now)
            if instance in self._held:
                raise TaskError("this session instance was used before", "instance")
            self._held.add(instance)
            heapq.heappush(self._by_deadline, (deadline, next(self._order), instance))
            while len(self._held) > self._capacity:
                if self._forget_earliest() == instance:
                    raise TaskError(
                        f"{self._capacity} sessions with later deadlines are in reach: this one's is the earliest", "deadline"
                    )

    def _check(self, deadline: float, now: float) -> None:
        if deadline < now - self._skew:
            raise TaskError(f"the deadline passed {now - deadline:.0f} s ago by this node's clock", "deadline")
        if deadline > now + self._ahead:
            raise TaskError(f"the deadline is more than {self._ahead:.0f} s ahead by this node's clock", "deadline")
        if deadline <= self._floor:
            raise TaskError("the deadline is not after that of a session this node no longer remembers", "deadline")

    def _forget_before(self, limit: float) -> None:
        while self._by_deadline and self._by_deadline[0][0] < limit:
            self._forget_earliest()

    def _forget_earliest(self) -> bytes:
        """Forget the session with the earliest deadline (raising the floor to it); its instance."""
        earliest, _, gone = heapq.heappop(self._by_deadline)
        self._held.discard(gone)
        self._floor = max(self._floor, earliest)
        return gone
