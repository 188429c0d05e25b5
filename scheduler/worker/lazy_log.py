"""Loggers for the modules that job processes import: :mod:`logging` is imported at a
logger's first use, not with the module.

Importing :mod:`logging` (and :mod:`threading` with it) registers fork hooks, which run
in every process forked afterwards. In a job process forked by the fork server they cost
about 0.4 ms of CPU per job, mostly copy-on-write faults: more than the job process's own
work before its task. The fork server imports only the job side (:mod:`scheduler.tasks`,
:mod:`scheduler.worker.child` and what they import); those modules log through
:func:`lazy_logger`, and none of them logs on a job's normal path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import logging

__all__ = ["lazy_logger"]


class _LazyLogger:
    """Stands for the logger ``name``, looked up when one of its attributes is first used."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: logging.Logger | None = None

    def __getattr__(self, attr: str) -> Any:
        logger = self._logger
        if logger is None:
            import logging

            logger = self._logger = logging.getLogger(self._name)
        return getattr(logger, attr)


def lazy_logger(name: str) -> logging.Logger:
    """The logger :func:`logging.getLogger` gives for ``name``, with :mod:`logging`
    imported only when it is first used."""
    return cast("logging.Logger", _LazyLogger(name))
