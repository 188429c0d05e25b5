"""``python -m scheduler.bus``: see :func:`scheduler.bus.cli.cli`."""

from scheduler.bus.cli import cli

if __name__ == "__main__":
    cli()
