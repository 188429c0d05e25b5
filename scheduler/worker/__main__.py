"""``python -m scheduler.worker``: a scheduler running your own tasks.

The command is :func:`scheduler.worker.cli.cli`.
"""

from scheduler.worker.cli import cli

if __name__ == "__main__":
    cli()
