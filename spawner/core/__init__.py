"""Pure logic of gpuslice: the domain's words, units, the cell-payload format, placement policies,
quota rules and scheduling decisions.

Nothing in this package does I/O, imports JupyterHub or imports any other package of gpuslice, so
it can be tested in microseconds, and the simulator's trace replay calls the same placement
policies as the service. The scheduler takes the time as an argument rather than reading a clock.
"""
