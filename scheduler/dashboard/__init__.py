"""The bus's dashboard: the page in ``static/`` (served by :mod:`scheduler.bus.http`) and
``python -m scheduler.dashboard``, which prints a signed-in link to it."""
