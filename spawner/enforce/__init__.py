"""Making a granted slice real on a machine: the server's environment, CUDA MPS limits, kernel limits.

The allocator only writes a lease into its ledger; nothing stops a process from using a whole card
unless the server it runs in is told which GPUs it has and how much of them. This package turns a
lease (as the service's REST API returns it) into those instructions.
"""
