"""``python -m scheduler.monitor``: prints every job event.

The command is :func:`scheduler.tools.monitor.cli`.
"""

from scheduler.tools.monitor import cli

if __name__ == "__main__":
    cli()
