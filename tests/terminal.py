"""A command run on a pseudo-terminal of a chosen size, for the tests of what commands draw
on a terminal (a progress bar, a live status)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import struct
import sys
import termios

from conftest import ROOT, Commands

ANSI_CODE = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[78=>])")
"""A terminal control sequence (colour, cursor, screen): what was drawn is compared
without them."""


class Terminal:
    """A pseudo-terminal of ``columns`` x ``rows`` whose other side is a command's stdout and
    stderr; everything the command writes is collected, control sequences removed."""

    def __init__(self, columns: int, rows: int = 24) -> None:
        self.controller, self._terminal = pty.openpty()
        fcntl.ioctl(self._terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        os.set_blocking(self.controller, False)
        self._drawn = bytearray()
        self.closed = asyncio.Event()

    async def start(self, commands: Commands, *args: str) -> asyncio.subprocess.Process:
        """Run ``python -m ARGS`` on this terminal; ``commands`` kills it when the test ends."""
        unset = ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")
        env = {k: v for k, v in os.environ.items() if k not in unset}
        env |= {"XDG_STATE_HOME": str(commands.state), "TERM": "xterm-256color"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *args, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=self._terminal, stderr=self._terminal, env=env,
        )  # fmt: skip
        commands.started.append(proc)
        os.close(self._terminal)
        asyncio.get_running_loop().add_reader(self.controller, self._read)
        return proc

    def _read(self) -> None:
        try:
            chunk = os.read(self.controller, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: every holder of the terminal's side has closed it
            chunk = b""
        if chunk:
            self._drawn += chunk
            return
        asyncio.get_running_loop().remove_reader(self.controller)
        self.closed.set()

    def text(self) -> str:
        """What was drawn so far, without control sequences."""
        return ANSI_CODE.sub("", self._drawn.decode(errors="replace"))

    def close(self) -> None:
        """Stop reading and close the controlling side."""
        if not self.closed.is_set():
            asyncio.get_running_loop().remove_reader(self.controller)
            self.closed.set()
        os.close(self.controller)
