"""``python -m scheduler.schedules``: adds, lists and controls periodic jobs.

The command is :func:`scheduler.tools.schedules.cli`.
"""

from scheduler.tools.schedules import cli

if __name__ == "__main__":
    cli()
