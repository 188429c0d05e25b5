"""``python -m scheduler.jobs``: shows, cancels and vacuums jobs.

The command is :func:`scheduler.tools.jobs.cli`.
"""

from scheduler.tools.jobs import cli

if __name__ == "__main__":
    cli()
