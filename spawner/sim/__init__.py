"""Trace replay and benchmarks that drive ``spawner.core`` with a virtual clock.

The simulator calls the very policies the live allocator calls; a benchmark of a copy of the logic
would prove nothing about the product.
"""
