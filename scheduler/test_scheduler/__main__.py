"""``python -m scheduler.test_scheduler``: the demo scheduler, running the built-in sleep task.

A package rather than a ``test_*.py`` module, so that pytest never takes it for tests.

The command is :func:`scheduler.worker.demo.cli`.
"""

from scheduler.worker.demo import cli

if __name__ == "__main__":
    cli()
