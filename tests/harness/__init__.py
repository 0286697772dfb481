"""The test harness: the one launcher of real hubs, free ports, and the jobs API as tests call it.

- :mod:`harness.hub`: :class:`HubProcess`, every test hub (and the load benchmark's), started from
  the repository's ``hub_config.py`` through ``hub_config_for_tests.py``;
- :mod:`harness.service_hubs`: the service tests' hubs (test users, quotas, simulated GPUs);
- :mod:`harness.jobs`: submit, wait for a state or a log line, cancel;
- :mod:`harness.ports`: :func:`free_port`.

How it is imported, without touching ``sys.path``:

- by the tests, as ``harness``: ``tests/`` has no ``__init__.py``, so pytest's default
  (``prepend``) import mode puts ``tests/`` itself on ``sys.path`` for ``tests/conftest.py`` and
  every test package, as it always has for ``integration`` or ``service``;
- by the benchmarks, as ``tests.harness``: run from the repository root with ``python -m``
  (``.venv/bin/python -m benchmarks.load``), which puts the working directory on ``sys.path``;
  ``tests`` is then a namespace package. Adding ``tests/__init__.py`` instead would rename every
  test module (``tests.service.test_jobs``) and take ``tests/`` off ``sys.path``.

Modules here import each other relatively, so they work under either name. This module imports
only the launcher and ports: :mod:`harness.jobs` needs pytest, which the benchmarks do not use.
"""

from .hub import REPO_ROOT, SERVICE_PREFIX, HubProcess
from .ports import free_port

__all__ = ["REPO_ROOT", "SERVICE_PREFIX", "HubProcess", "free_port"]
