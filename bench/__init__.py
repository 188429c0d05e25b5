"""schedbus benchmarks: ``scripts/bench`` runs :mod:`bench.run`. Not part of the package."""
