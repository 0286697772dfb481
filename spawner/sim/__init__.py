"""Simulations that drive ``spawner.core`` itself, the functions the live service calls; a benchmark
of a copy of the logic would prove nothing about the product.

- ``replay``: an openb pod list (or a synthetic mix) placed task by task, as the FGD paper
  evaluates placement, to compare the placement policies (``gpuslice sim place``). Tasks arrive in
  a seeded random order and never leave.
- ``week``: a scenario's week of a lab (``gpuslice sim week``) on a virtual clock, at the
  service's pass interval: developers' slices through the quota checks, placement and
  ``reclaim_for_interactive``, training runs through the scheduler's pass with fair share and its
  decay, holds, preemption with its grace period and backfill, under the policies it compares.
"""
