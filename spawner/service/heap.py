"""Python's cycle collector, set for a long-running service.

CPython collects its youngest objects every 700 allocations of container objects (tuples, lists,
dicts...) and, every few of those, older generations, up to the whole heap. That suits short
scripts. The service allocates many short-lived objects for every request (rows, answers, futures)
while it holds a large, slowly changing heap (the queue as the scheduler keeps it, the pass's
snapshot, the listings' kept objects): at the default thresholds a busy service ran young
collections thousands of times a second and rescanned that whole heap every few seconds, about a
twelfth of its interpreter time under load, spent finding no garbage. What the service builds at
start-up (modules, the tornado app, the ledger's engine) lives as long as the process, so it is
moved out of the collector's sight once, and young collections run less often.
"""

from __future__ import annotations

import gc


def settle_collector(young_threshold: int) -> None:
    """Freeze what start-up built and collect the youngest objects every ``young_threshold``
    allocations (0: leave Python's thresholds as they are). Older generations keep their ratios:
    a collection of generation 1 every 10 young ones, of the whole heap every 10 of those."""
    gc.collect()
    gc.freeze()
    if young_threshold > 0:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)
