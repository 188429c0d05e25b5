"""``python -m scheduler.bus`` (and the ``schedbus-bus`` command): see
:func:`scheduler.bus.cli.cli`. The bus runs the compiled core (the policy, its dispatch
core among it: :data:`scheduler.compiled.SIMULATOR`) when its build matches the sources,
and the source otherwise; it logs which at start."""

from scheduler import compiled


def main() -> None:
    """Choose the compiled or the interpreted core, then run the command."""
    compiled.use(compiled.SIMULATOR)
    from scheduler.bus.cli import cli  # after use(): the compiled modules come first

    cli()


if __name__ == "__main__":
    main()
