"""Other job queues on the same workload, each driven in ``.venv-bench`` by its own module.

:mod:`bench.peers.harness` runs in the package's ``.venv`` (it starts ``redis-server`` and
the drivers); every other module here runs in ``.venv-bench`` and imports only the
standard library, its peer and :mod:`bench.peers.common`.
"""
