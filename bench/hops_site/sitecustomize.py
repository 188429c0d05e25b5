"""Hop timestamps on a job's path, for ``bench.hops`` (a measurement aid, not the package).

Put this directory first on ``PYTHONPATH`` with ``SCHEDBUS_HOPS_DIR`` set: every Python
process started then (bench, bus, scheduler, fork server) appends ``time.time_ns() tag
detail`` lines to ``$SCHEDBUS_HOPS_DIR/hops-<pid>.log`` at each hop, one ``os.write`` per
line. Modules are patched as they are imported, so a process imports nothing more.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

_DIR = os.environ.get("SCHEDBUS_HOPS_DIR")
_fd: list[int] = []
_pid: list[int] = []


def rec(tag: str, detail: object = "") -> None:
    """Append one hop line for this process (reopened after a fork)."""
    pid = os.getpid()
    if not _pid or _pid[0] != pid:
        _pid[:] = [pid]
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        _fd[:] = [os.open(os.path.join(_DIR or ".", f"hops-{pid}.log"), flags, 0o644)]
    os.write(_fd[0], f"{time.time_ns()} {tag} {detail}\n".encode())


def _wrap(owner: Any, name: str, before: Callable[..., object], after: str | None = None) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before(*args, **kwargs)
        result = original(*args, **kwargs)
        if after is not None:
            rec(after)
        return result

    setattr(owner, name, wrapper)


def _wrap_async(owner: Any, name: str, before: Callable[..., object], after: str) -> None:
    original = getattr(owner, name)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        before(*args, **kwargs)
        result = await original(*args, **kwargs)
        rec(after)
        return result

    setattr(owner, name, wrapper)


def _head(frame: object) -> str:
    text = frame.decode() if isinstance(frame, bytes) else str(frame)
    return text[:70].replace(" ", "").replace("\n", "")


def _bus_server(m: ModuleType) -> None:
    _wrap(m.BusServer, "_on_frame", lambda self, client, frame: rec("b.frame", _head(frame)))


def _bus_hub(m: ModuleType) -> None:
    _wrap(m.Hub, "apply", lambda self, *a, **k: rec("b.apply"))
    _wrap(m.Hub, "_on_timer", lambda self: rec("b.coretimer"))


def _bus_schedules(m: ModuleType) -> None:
    _wrap(m.BusSchedules, "_on_timer", lambda self: rec("b.schedtimer"))


def _journal_commit(m: ModuleType) -> None:
    _wrap(m.Committer, "write", lambda self, p, s, sc: rec("j.begin", len(p)), "j.end")


def _journal(m: ModuleType) -> None:
    _wrap(m.Journal, "_start", lambda self: rec("j.post"))
    _wrap(m.Journal, "get", lambda self, job_id: rec("j.get"), "j.got")
    _wrap(m.Journal, "_land_later", lambda self, flight: rec("j.land"))


def _outbox(m: ModuleType) -> None:
    _wrap(m.FrameOutbox, "push", lambda self, frame, *a, **k: rec("b.push", _head(frame)))
    _wrap(m.FrameOutbox, "_send", lambda self, frame, *a, **k: rec("b.write", _head(frame)))


def _session(m: ModuleType) -> None:
    _wrap(m.Session, "handle", lambda self, message: rec("s.handle", type(message).__name__))
    _wrap_async(
        m.Session,
        "send_next",
        lambda self: rec("s.send", self.links.outbox._reports[0].event),
        "s.sent",
    )


def _driver(m: ModuleType) -> None:
    _wrap(m.ScheduleDriver, "due", lambda self, *a: rec("d.due"), "d.done")


def _book(m: ModuleType) -> None:
    _wrap(m.ScheduleBook, "tick", lambda self, *a: rec("d.tick"), "d.ticked")


def _dispatcher(m: ModuleType) -> None:
    _wrap(m.Dispatcher, "submit", lambda self, *a, **k: rec("c.submit"), "c.submitted")


def _link(m: ModuleType) -> None:
    _wrap(m.ForkServerLink, "fork", lambda self, *a, **k: rec("s.fork"), "s.forked")


def _forkserver(m: ModuleType) -> None:
    _wrap(m.ForkServer, "_fork", lambda self, message, fds: rec("f.fork"))
    original = m.send

    def send(sock: Any, message: Any, fds: Sequence[int] = ()) -> None:
        rec("f.reply", message[0])
        original(sock, message, fds)

    m.send = send  # type: ignore[attr-defined]


def _held(m: ModuleType) -> None:
    _wrap(m, "wait_for_go", lambda fd: rec("k.wait"), "k.go")
    _wrap(m.GoPipe, "go", lambda self: rec("s.go"))


def _producer(m: ModuleType) -> None:
    _wrap_async(
        m.ProducerClient,
        "submit",
        lambda self, *a, **k: rec("p.submit", k.get("run_at") or ""),
        "p.accepted",
    )


_PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "scheduler.bus.server": _bus_server,
    "scheduler.bus.hub": _bus_hub,
    "scheduler.bus.schedules": _bus_schedules,
    "scheduler.bus.journal_commit": _journal_commit,
    "scheduler.bus.journal": _journal,
    "scheduler.bus.outbox": _outbox,
    "scheduler.worker.session": _session,
    "scheduler.policy.schedule_driver": _driver,
    "scheduler.policy.schedules": _book,
    "scheduler.policy.dispatch.dispatcher": _dispatcher,
    "scheduler.worker.forkserver_link": _link,
    "scheduler.worker.forkserver": _forkserver,
    "scheduler.worker.held": _held,
    "scheduler.producer.client": _producer,
}


class _Patcher(importlib.abc.MetaPathFinder):
    """Patches each module of :data:`_PATCHES` right after it is executed."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in _PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None and spec.loader is not None:
                loader = spec.loader
                exec_module = loader.exec_module

                def patched(module: ModuleType, exec_module: Any = exec_module) -> None:
                    exec_module(module)
                    _PATCHES[module.__name__](module)

                spec.loader = _Loader(loader, patched)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any, exec_module: Callable[[ModuleType], None]) -> None:
        self._inner = inner
        self._exec = exec_module

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._exec(module)


if _DIR:
    sys.meta_path.insert(0, _Patcher())
