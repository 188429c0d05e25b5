"""``python -m scheduler.test_process``: showcase of the process wrapper.

A package rather than a ``test_*.py`` module, so that pytest never takes it for tests.

The command is :func:`scheduler.tools.process_showcase.cli`.
"""

from scheduler.tools.process_showcase import cli

if __name__ == "__main__":
    cli()
