"""How many CPU threads the embedded llama.cpp server runs, and how they wait for each other.

llama.cpp splits every operation of a forward pass among its threads and meets them at a
barrier after each one, hundreds of times a token. The xllamacpp wheel does this with OpenMP
(libgomp), whose threads spin about 3 ms at a barrier before they sleep. When another
process holds a core that one of the threads needs, its partners spin at every barrier
while it waits for its turn, and keep the core it could have used: on 2 cores with one
core busy elsewhere, a query took 164-296 s instead of about 11 s. Threads that sleep at once
(``OMP_WAIT_POLICY=passive``) hand their core over; on an idle machine that costs nothing
measurable (``python bench/local.py --busy``).

So: one thread per physical core this process may use (its CPU affinity, capped by a
container's CPU quota; llama.cpp's own default counts every core of the machine), and
passive waiting, unless the user chose otherwise (``$MOAC_LOCAL_THREADS``,
``$OMP_WAIT_POLICY``, ``$GOMP_SPINCOUNT``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from moac.providers.constants import LOCAL_OMP_WAIT_POLICY

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
    try:
        cpus: Iterable[int] = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        cpus = range(os.cpu_count() or 1)
    cores = physical_cores(cpus)
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return cores


def default_threads(environ: Mapping[str, str] | None = None) -> int:
    """llama.cpp's thread count for a server: ``$MOAC_LOCAL_THREADS`` when set, else
    :func:`usable_cores`."""
    chosen = threads_from_env(os.environ if environ is None else environ)
    return chosen if chosen is not None else usable_cores()


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
