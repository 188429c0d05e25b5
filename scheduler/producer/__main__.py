"""``python -m scheduler.producer``: submits jobs.

The command is :func:`scheduler.producer.cli.cli`.
"""

from scheduler.producer.cli import cli

if __name__ == "__main__":
    cli()
