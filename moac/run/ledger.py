"""Budget ledgers: dollars and TFLOPs spent and held against a query's or a run's limits.

The executor holds each call's worst case here before the call starts and settles it with
what the call really cost; a query's ledger sits inside its run's when a batch shares a
total. Nothing here awaits, so on one event loop a check-then-hold is atomic.
"""

from __future__ import annotations


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

    def headroom_usd(self) -> float:
        own = float("inf") if self.max_usd is None else \
            self.max_usd - self.spent_usd - self.reserved_usd
        return min(own, self.parent.headroom_usd()) if self.parent else own

    def reserve(self, usd: float, tflops: float = 0.0) -> str | None:
        """Hold ``usd``/``tflops`` and return None, or hold nothing and say why not."""
        why = self._refusal(usd, tflops)
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

    def _refusal(self, usd: float, tflops: float, what: str = "its") -> str | None:
        if self.max_usd is not None and \
                self.spent_usd + self.reserved_usd + usd > self.max_usd * (1 + 1e-9):
            return (f"budget: {what} worst case ${usd:.4f} would take the {self.name} past "
                    f"its {self.label} ${self.max_usd:.4f} (${self.spent_usd:.4f} spent, "
                    f"${self.reserved_usd:.4f} held for calls in flight)")
        if self.max_tflops is not None and \
                self.spent_tflops + self.reserved_tflops + tflops > self.max_tflops * (1 + 1e-9):
            return (f"budget: {what} worst case {tflops:,.1f} TFLOPs would take the "
                    f"{self.name} past its max_tflops {self.max_tflops:,.1f} "
                    f"({self.spent_tflops:,.1f} spent, {self.reserved_tflops:,.1f} held for "
                    "calls in flight)")
        return None


class BudgetRefused(Exception):
    """The run's ledger cannot admit a query's worst case (raised by :meth:`Executor.run`
    with ``admission="raise"``)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)
