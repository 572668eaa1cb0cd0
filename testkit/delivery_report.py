"""The end-of-run table of the Locust load kit (loadtests/locustfile.py):
per line kind, what was sent, received, lost, late and duplicated, the
latency percentiles of the timed receipts, and the verdict. Pure text from
the ledgers' counters (testkit.delivery) and Locust's stats; no Locust
import, so tests/unit/test_delivery.py checks it directly.
"""
from __future__ import annotations

from testkit.delivery import COUNTERS, KINDS


def delivery_table(total, workers, grace, stats=None):
    """The delivery table of a run, as text, and the number of failures (lost
    and misrouted messages; the exit code is 1 when it is not 0).

    ``total``: the counters summed over every Locust process
    (:func:`testkit.delivery.add_up`); ``workers``: how many processes;
    ``grace``: the loss grace in seconds; ``stats``: Locust's
    ``RequestStats`` (or anything whose ``entries`` maps ``(kind,
    "deliver")`` to an entry with ``num_requests``, ``num_failures``,
    ``get_response_time_percentile`` and ``max_response_time``) for the
    latency columns, or None.
    """
    counts, other = total["counts"], total["other"]
    lines = [
        "",
        f"Cross-dyno delivery: {workers} Locust process(es), {other.get('users', 0)} users, "
        f"{other.get('connections', 0)} connections opened, loss grace {grace:g} s",
        f"{'kind':<10}{'sent':>9}{'received':>10}{'lost':>7}{'late':>6}{'duplicate':>10}"
        f"{'timed':>9}{'p50':>7}{'p95':>7}{'p99':>7}{'max':>7}  (ms)",
    ]
    for kind in KINDS.values():
        c = counts.get(kind, dict.fromkeys(COUNTERS, 0))
        entry = stats.entries.get((kind, "deliver")) if stats else None
        if entry is not None and entry.num_requests:
            timed = f"{entry.num_requests - entry.num_failures:>9}"
            pct = "".join(f"{entry.get_response_time_percentile(p):>7.0f}"
                          for p in (0.5, 0.95, 0.99))
            pct += f"{entry.max_response_time:>7.0f}"
        else:
            timed, pct = f"{0:>9}", f"{'-':>7}" * 4
        lines.append(f"{kind:<10}{c['sent']:>9}{c['received']:>10}{c['lost']:>7}"
                     f"{c['late']:>6}{c['duplicate']:>10}{timed}{pct}")
    lost = sum(c["lost"] for c in counts.values())
    lines.append(
        f"connections dropped {other.get('dropped', 0)}, failed connects "
        f"{other.get('connect_failed', 0)}, same-dyno pairs {other.get('same_dyno', 0)}, "
        f"misrouted lines {other.get('misrouted', 0)}")
    lines.append("broadcast: sent/received/lost count each user's own shout on its receiver; "
                 "timed = every cross-dyno receipt of a shout (fan-out)")
    if counts["private"]["duplicate"]:
        lines.append("private duplicates: whispering to yourself emits to [user(me), user(me)]; "
                     "the backplane delivers once per listed room (see loadtests/README.md)")
    if other.get("same_dyno"):
        lines.append(f"WARNING: {other['same_dyno']} user(s) had both connections on one "
                     "dyno: their room and private lines did not cross Kafka "
                     "(give --host one URL per dyno)")
    if lost or other.get("misrouted"):
        by_kind = ", ".join(f"{k} {c['lost']}" for k, c in counts.items() if c["lost"])
        lines.append(f"RESULT: FAIL: {lost} message(s) lost ({by_kind or 'none'}), "
                     f"{other.get('misrouted', 0)} misrouted")
    else:
        sent = sum(c["sent"] for c in counts.values())
        lines.append(f"RESULT: OK: all {sent} messages delivered within {grace:g} s")
    return "\n".join(lines), lost + other.get("misrouted", 0)
