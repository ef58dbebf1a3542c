"""Budget ledgers: dollars and TFLOPs spent and held against a query's or a run's limits.

The executor holds each call's worst case here before the call starts and settles it with
what the call really cost; a query's ledger sits inside its run's when a batch shares a
total. Holding and settling never await, so on one event loop a check-then-hold is atomic;
only :meth:`BudgetLedger.wait_for_release` awaits (a hold refused for what calls in flight
hold waits for one of them to settle).
"""

from __future__ import annotations

import asyncio

from moac.text import dollars


class BudgetLedger:
    """Dollars (and TFLOPs) spent and held against limits.

    A query's ledger may sit inside its run's (``parent``). The run holds, for each query,
    ``max(prepaid, spent + held) - spent``: what the query was admitted with (its worst case,
    :meth:`admit`) until its own spending and holds outgrow that. So a call inside its
    query's admission needs nothing more from the run, and a call past it (a retry, or a
    prompt denser than forecast) is checked against the run as well. Everything here is
    synchronous: on one event loop a check-then-hold cannot interleave with another's."""

    def __init__(self, max_usd: float | None = None, max_tflops: float | None = None, *,
                 parent: "BudgetLedger | None" = None, name: str = "query",
                 label: str = "max_usd"):
        self.max_usd = max_usd
        self.max_tflops = max_tflops
        self.parent = parent
        self.name = name
        self.label = label
        self.spent_usd = self.reserved_usd = 0.0
        self.spent_tflops = self.reserved_tflops = 0.0
        self.prepaid = 0.0
        self.refused = 0  # holds refused so far (a run counts its queries' refusals too)
        self._parent_hold = 0.0
        self._parent_spent = 0.0
        self._waiters: list[asyncio.Future] = []  # wait_for_release() callers

    def headroom_usd(self, keep_usd: float = 0.0) -> float:
        """The most dollars one more hold may take here (and at the parent, counting what
        the parent already holds for this ledger), leaving ``keep_usd`` unheld here."""
        own = float("inf") if self.max_usd is None else \
            self.max_usd - self.spent_usd - self.reserved_usd - keep_usd
        parent = self.parent
        if parent is None:
            return own
        # A hold of x moves this ledger's hold at the parent from _parent_hold to
        # max(prepaid, spent + reserved + x) - spent; the parent must take the difference.
        return min(own, parent.headroom_usd() + self._parent_hold - self.reserved_usd)

    def headroom_tflops(self, keep_tflops: float = 0.0) -> float:
        """The most TFLOPs one more hold may take (a run ledger bounds dollars only)."""
        if self.max_tflops is None:
            return float("inf")
        return self.max_tflops - self.spent_tflops - self.reserved_tflops - keep_tflops

    def reserve(self, usd: float, tflops: float = 0.0, *, keep_usd: float = 0.0,
                keep_tflops: float = 0.0) -> str | None:
        """Hold ``usd``/``tflops`` and return None, or hold nothing and say why not.
        ``keep_usd``/``keep_tflops`` must stay unheld here afterwards (what a query keeps
        for its aggregator while earlier calls start)."""
        why = self._refusal(usd, tflops, keep_usd=keep_usd, keep_tflops=keep_tflops)
        if why is None and self.parent is not None:
            extra = self._hold_at_parent(self.reserved_usd + usd) - self._parent_hold
            why = self.parent._refusal(extra, 0.0)
            if why is not None:
                self.parent.refused += 1
        if why is not None:
            self.refused += 1
            return why
        self.reserved_usd += usd
        self.reserved_tflops += tflops
        self._sync()
        return None

    def settle(self, held_usd: float, held_tflops: float, spent_usd: float,
               spent_tflops: float) -> None:
        """Release a hold and book what was really spent."""
        self.reserved_usd -= held_usd
        self.reserved_tflops -= held_tflops
        self.spent_usd += spent_usd
        self.spent_tflops += spent_tflops
        self._sync()
        if self._waiters and (held_usd or held_tflops):
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def blocked_by_holds(self, usd: float, tflops: float = 0.0, *, keep_usd: float = 0.0,
                         keep_tflops: float = 0.0) -> bool:
        """Whether a hold of ``usd``/``tflops`` is refused only for what this ledger's own
        calls in flight hold: with those settled at no cost, it would fit here and at the
        parent. Then it is worth waiting (:meth:`wait_for_release`) rather than giving up."""
        if not (self.reserved_usd > 1e-12 or self.reserved_tflops > 1e-9):
            return False
        if self.max_usd is not None and \
                self.spent_usd + usd + keep_usd > self.max_usd * (1 + 1e-9):
            return False
        if self.max_tflops is not None and \
                self.spent_tflops + tflops + keep_tflops > self.max_tflops * (1 + 1e-9):
            return False
        parent = self.parent
        if parent is None or parent.max_usd is None:
            return True
        others = parent.spent_usd + parent.reserved_usd - self._parent_hold
        return others + self._hold_at_parent(usd) <= parent.max_usd * (1 + 1e-9)

    async def wait_for_release(self, timeout: float) -> bool:
        """Wait until a hold of this ledger is settled (True), or ``timeout`` seconds
        pass (False)."""
        if timeout <= 0:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True

    def admit(self, usd: float) -> str | None:
        """Have the parent hold ``usd`` (a query's worst case) up front, or say why not."""
        if self.parent is None:
            return None
        usd = min(usd, self.max_usd) if self.max_usd is not None else usd
        why = self.parent._refusal(usd - self._parent_hold, 0.0, what="this query's")
        if why is not None:
            self.parent.refused += 1
            return why
        self.prepaid = usd
        self._sync()
        return None

    def close(self) -> None:
        """The query is over: the parent stops holding anything for it."""
        self.prepaid = 0.0
        self._sync()

    def _hold_at_parent(self, reserved: float) -> float:
        return max(self.prepaid, self.spent_usd + reserved) - self.spent_usd

    def _sync(self) -> None:
        if self.parent is None:
            return
        hold = self._hold_at_parent(self.reserved_usd)
        self.parent._book(hold - self._parent_hold, self.spent_usd - self._parent_spent)
        self._parent_hold, self._parent_spent = hold, self.spent_usd

    def _book(self, held: float, spent: float) -> None:
        self.reserved_usd += held
        self.spent_usd += spent
        if self.parent is not None:
            self._sync()

    def _refusal(self, usd: float, tflops: float, what: str = "its", *,
                 keep_usd: float = 0.0, keep_tflops: float = 0.0) -> str | None:
        if self.max_usd is not None and self.spent_usd + self.reserved_usd + usd + keep_usd \
                > self.max_usd * (1 + 1e-9):
            kept = f", {dollars(keep_usd)} kept for the aggregator" if keep_usd else ""
            return (f"budget: {what} worst case {dollars(usd)} would take the {self.name} "
                    f"past its {self.label} {dollars(self.max_usd)} "
                    f"({dollars(self.spent_usd)} spent, {dollars(self.reserved_usd)} held for "
                    f"calls in flight{kept})")
        if self.max_tflops is not None and self.spent_tflops + self.reserved_tflops + tflops \
                + keep_tflops > self.max_tflops * (1 + 1e-9):
            kept = f", {keep_tflops:,.1f} kept for the aggregator" if keep_tflops else ""
            return (f"budget: {what} worst case {tflops:,.1f} TFLOPs would take the "
                    f"{self.name} past its max_tflops {self.max_tflops:,.1f} "
                    f"({self.spent_tflops:,.1f} spent, {max(self.reserved_tflops, 0.0):,.1f} "
                    f"held for calls in flight{kept})")
        return None


class BudgetRefused(Exception):
    """The run's ledger cannot admit a query's worst case (raised by :meth:`Executor.run`
    with ``admission="raise"``)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)
