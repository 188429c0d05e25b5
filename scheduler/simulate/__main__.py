"""``python -m scheduler.simulate``: see :mod:`scheduler.simulate.cli`."""

from scheduler.simulate.cli import cli

if __name__ == "__main__":
    cli()
