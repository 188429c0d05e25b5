"""``python -m scheduler.simulate``: see :mod:`scheduler.simulate.cli`; it runs the
compiled core when its build is fresh (:mod:`scheduler.simulate.compiled`)."""

from scheduler.simulate import compiled


def main() -> None:
    """Choose the compiled or the interpreted core, then run the command."""
    compiled.use()
    from scheduler.simulate.cli import cli  # after use(): the compiled modules come first

    cli()


if __name__ == "__main__":
    main()
