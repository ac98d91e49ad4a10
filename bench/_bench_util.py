"""Helpers shared by the cluster benchmarks (bench only; not part of reign).

Throwaway cluster credentials and specs on free loopback ports, quiet logging, file-descriptor
limits, CPU pinning and RSS readings.
"""

from __future__ import annotations

import logging
import os
import resource
import statistics

# Throwaway CA, certificates and a spec on free loopback ports: the same helpers the tests use.
from reign.testing import free_ports, make_cluster  # noqa: F401 - re-exported for the benchmarks


def quiet_logs() -> None:
    """Drop reign's info events (structlog prints them to stdout by default)."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def raise_fd_limit(wanted: int | None = None) -> int:
    """Raise RLIMIT_NOFILE to ``wanted`` (root may lift the hard limit) or else the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is not None and wanted > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    target = hard if wanted is None else min(max(wanted, soft), hard)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin_all_threads(cpus: set[int]) -> dict[int, set[int]]:
    """Pin every thread of this process to ``cpus``; returns the previous affinities."""
    previous = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            previous[int(tid)] = os.sched_getaffinity(int(tid))
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            pass
    return previous


def restore_affinity(previous: dict[int, set[int]]) -> None:
    all_cpus = set().union(*previous.values()) if previous else set(range(os.cpu_count() or 1))
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), previous.get(int(tid), all_cpus))
        except OSError:
            pass


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    return statistics.median(values)
