"""Spacing a benchmark's sends to a fixed rate."""
import time


def paced(n: int, rate: float):
    """Yield ``0 .. n-1``, the i-th no sooner than ``i / rate`` seconds after
    the first (``rate`` 0: as fast as the caller goes)."""
    started = time.time()
    for seq in range(n):
        if rate:
            delay = started + seq / rate - time.time()
            if delay > 0:
                time.sleep(delay)  # gevent's sleep where the caller patched time
        yield seq
