"""Pure logic of gpuslice: units, placement policies, quota rules and scheduling decisions.

Nothing in this package does I/O or imports JupyterHub, so it can be tested in microseconds and
replayed by the simulator with a virtual clock.
"""
