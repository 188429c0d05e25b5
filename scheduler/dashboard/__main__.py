"""``python -m scheduler.dashboard``: see :func:`scheduler.dashboard.cli.cli`."""

from scheduler.dashboard.cli import cli

if __name__ == "__main__":
    cli()
