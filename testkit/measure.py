"""Measuring a benchmark's processes and writing its report: CPU seconds
of a process (from /proc) and of this one, resident memory, percentiles,
and the results written as JSON and a Markdown table."""
from __future__ import annotations

import json
import os
import resource
from datetime import datetime, timezone
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds_of(pids: list[int]) -> float:
    """CPU seconds of several processes together (a broker's nodes)."""
    return sum(cpu_seconds(pid) for pid in pids)


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores
    summed (``/proc/stat``; idle and iowait are not busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    total = sum(fields)
    return (total - fields[3] - fields[4]) / TICK, total / TICK


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def write_report(out_dir: Path, name: str, report: dict, table: str) -> None:
    """``<name>-<time>.json`` and ``.md`` in ``out_dir``; the table printed."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    (out_dir / f"{name}-{stamp}.json").write_text(json.dumps(report, indent=1))
    (out_dir / f"{name}-{stamp}.md").write_text(table)
    print()
    print(table)
    print(f"written: {out_dir}/{name}-{stamp}.md and .json")


def raise_fd_limit(needed: int) -> int:
    """Raise this process's open-file limit (the servers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        print(f"warning: open-file limit {want} < {needed}; fewer clients may connect",
              flush=True)
    return want
