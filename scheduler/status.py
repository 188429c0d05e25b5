"""``python -m scheduler.status``: the bus's and each scheduler's figures.

The command is :func:`scheduler.tools.status.cli`.
"""

from scheduler.tools.status import cli

if __name__ == "__main__":
    cli()
