"""Trace replay that drives ``spawner.core``'s placement policies: an openb pod list (or a synthetic
mix) placed task by task, as the FGD paper evaluates placement, to compare the policies.

The replay calls the very policies the live allocator calls; a benchmark of a copy of the logic
would prove nothing about the product. There is no clock here: tasks arrive in a seeded random
order and never leave, so the scheduler's time-dependent decisions (queueing, fair share,
preemption, usage decay) are not replayed yet.
"""
