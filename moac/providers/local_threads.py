"""How many CPU threads the embedded llama.cpp server runs, and how they wait for each other.

llama.cpp splits every operation of a forward pass among its threads and meets them at a
barrier after each one, hundreds of times a token. The xllamacpp wheel does this with OpenMP
(libgomp), whose threads spin about 3 ms at a barrier before they sleep. When another
process holds a core that one of the threads needs, its partners spin at every barrier
while it waits for its turn, and keep the core it could have used: on 2 cores with one
core busy elsewhere, a query took 164-296 s instead of about 11 s. Threads that sleep at once
(``OMP_WAIT_POLICY=passive``) hand their core over; on an idle machine that costs nothing
measurable (``python bench/local.py --busy``).

Even sleeping, threads that must all meet hundreds of times a token go at the pace of the
one that waits longest for a core: with other work keeping a core busy, one thread fewer is
as fast or faster. So: passive waiting, and one thread per physical core this process may
use (its CPU affinity, capped by a container's CPU quota; llama.cpp's own default counts
every core of the machine) less the cores other processes keep busy, sampled for a fifth of
a second when a server starts (:class:`IdleSample`); at least one. Unless the user chose
(``$MOAC_LOCAL_THREADS``, ``$OMP_WAIT_POLICY``, ``$GOMP_SPINCOUNT``).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from moac.providers.constants import (
    LOCAL_CORE_FREE_FROM, LOCAL_IDLE_SAMPLE_S, LOCAL_OMP_WAIT_POLICY,
)

# The user's choice of llama.cpp's thread count (a positive integer).
THREADS_ENV = "MOAC_LOCAL_THREADS"
# Either of these set by the user means the user chose how OpenMP threads wait: moac then
# leaves the environment alone.
OMP_WAIT_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_CPU_SYSFS = Path("/sys/devices/system/cpu")
_CGROUP = Path("/sys/fs/cgroup")


def threads_from_env(environ: Mapping[str, str]) -> int | None:
    """``$MOAC_LOCAL_THREADS`` as a thread count; None when unset. Raises ValueError,
    naming the variable, when it is not a positive integer."""
    text = environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive whole number of threads, not "
                         f"{text[:20]!r}")
    return threads


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def physical_cores(cpus: Iterable[int],
                   siblings_of: Callable[[int], str | None] | None = None) -> int:
    """How many physical cores the logical ``cpus`` are on: SMT siblings share one core's
    vector units, so a second thread on a sibling adds little but another barrier partner.
    ``siblings_of(cpu)`` is the kernel's ``thread_siblings_list`` of a CPU ("0,4" or "0-1");
    a CPU it knows nothing about (None) counts as a core of its own."""
    if siblings_of is None:
        def siblings_of(cpu: int) -> str | None:
            return _read(_CPU_SYSFS / f"cpu{cpu}" / "topology" / "thread_siblings_list")
    cores = set()
    for cpu in cpus:
        siblings = siblings_of(cpu)
        cores.add(siblings.strip() if siblings and siblings.strip() else f"cpu{cpu}")
    return max(1, len(cores))


def cgroup_cpu_limit(cpu_max: str | None = None, quota_us: str | None = None,
                     period_us: str | None = None) -> float | None:
    """The CPUs a container may use, from cgroup v2's ``cpu.max`` ("200000 100000": 2.0;
    "max 100000": no limit) or cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
    (a quota of -1: no limit). None when there is no limit or nothing to read. Without
    arguments, reads this process's own (as a container sees it, at /sys/fs/cgroup)."""
    if cpu_max is None and quota_us is None:
        cpu_max = _read(_CGROUP / "cpu.max")
        if cpu_max is None:
            for folder in ("cpu", "cpu,cpuacct"):
                quota_us = _read(_CGROUP / folder / "cpu.cfs_quota_us")
                period_us = _read(_CGROUP / folder / "cpu.cfs_period_us")
                if quota_us is not None:
                    break
    try:
        if cpu_max is not None:
            quota, _, period = cpu_max.strip().partition(" ")
            if quota == "max":
                return None
            limit = int(quota) / int(period or "100000")
        elif quota_us is not None and period_us is not None:
            limit = int(quota_us) / int(period_us)
        else:
            return None
    except (ValueError, ZeroDivisionError):
        return None
    return limit if limit > 0 else None


def usable_cores() -> int:
    """The physical cores this process may run on: those of its CPU affinity (``taskset``,
    a cpuset), at most a container's CPU quota rounded up; at least 1."""
    cores = physical_cores(_affinity())
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return cores


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _idle_ticks() -> dict[int, int]:
    """Idle (and I/O wait) clock ticks of each CPU since boot, from /proc/stat; {} where
    there is no /proc/stat."""
    ticks: dict[int, int] = {}
    text = _read(Path("/proc/stat")) or ""
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit():
            fields = rest.split()
            try:
                ticks[int(name[3:])] = int(fields[3]) + int(fields[4])
            except (IndexError, ValueError):
                continue
    return ticks


class IdleSample:
    """How many of this process's CPUs stand idle or are used by this process itself (its
    every thread), measured from the sample's making to :meth:`free_cores`: the cores that
    other processes leave to it. Make it before slow work of this process's own (importing
    llama.cpp) and the window costs little."""

    def __init__(self, cpus: Iterable[int] | None = None) -> None:
        self.cpus = set(cpus) if cpus is not None else _affinity()
        self._idle = _idle_ticks()
        self._own_s = time.process_time()
        self._started = time.monotonic()

    def free_cores(self, min_window_s: float = LOCAL_IDLE_SAMPLE_S) -> float | None:
        """The free cores, in CPUs (2.0: two CPUs' worth), averaged over at least
        ``min_window_s`` (sleeping for what is left of it); None when the kernel does not
        say (no /proc/stat)."""
        left = min_window_s - (time.monotonic() - self._started)
        if left > 0:
            time.sleep(left)
        idle, own_s = _idle_ticks(), time.process_time() - self._own_s
        elapsed = time.monotonic() - self._started
        cpus = [cpu for cpu in self.cpus if cpu in idle and cpu in self._idle]
        if not cpus or elapsed <= 0:
            return None
        idle_s = sum(idle[cpu] - self._idle[cpu] for cpu in cpus) / os.sysconf("SC_CLK_TCK")
        return max(0.0, min(float(len(cpus)), (idle_s + own_s) / elapsed))


def threads_for(free_cores: float | None, usable: int) -> int:
    """One thread per free core (a core counts from :data:`LOCAL_CORE_FREE_FROM` of it
    free), at most ``usable``, at least 1; ``usable`` when nothing was measured."""
    if free_cores is None:
        return max(1, usable)
    return max(1, min(usable, math.floor(free_cores + 1 - LOCAL_CORE_FREE_FROM)))


def default_threads(environ: Mapping[str, str] | None = None,
                    sample: IdleSample | None = None) -> int:
    """llama.cpp's thread count for a server: ``$MOAC_LOCAL_THREADS`` when set, else
    :func:`usable_cores` less the cores ``sample`` finds busy with other processes (all of
    them without a sample)."""
    chosen = threads_from_env(os.environ if environ is None else environ)
    if chosen is not None:
        return chosen
    return threads_for(sample.free_cores() if sample is not None else None, usable_cores())


def import_xllamacpp_waiting_passively() -> Any:
    """``import xllamacpp`` with OpenMP told to put waiting threads to sleep at once.

    libgomp reads ``OMP_WAIT_POLICY`` once, when it is loaded (with xllamacpp's library),
    so it is set just for the import and the environment is put back afterwards: programs
    moac starts later do not inherit it. Left alone when the user set ``OMP_WAIT_POLICY`` or
    ``GOMP_SPINCOUNT``, or when xllamacpp is already imported. Raises ImportError."""
    import sys
    if "xllamacpp" in sys.modules or any(name in os.environ for name in OMP_WAIT_ENV):
        import xllamacpp
        return xllamacpp
    os.environ["OMP_WAIT_POLICY"] = LOCAL_OMP_WAIT_POLICY
    try:
        import xllamacpp
    finally:
        os.environ.pop("OMP_WAIT_POLICY", None)
    return xllamacpp
