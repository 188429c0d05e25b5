"""Helpers of the dashboard's tests: plain HTTP requests to a bus, and a bare protocol 2
producer on the wire (what any client sends) that submits jobs and waits for their end."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from scheduler.protocol_types import FINAL_EVENTS


@dataclass
class Reply:
    """An HTTP response: status, headers and body."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def _fetch(url: str, token: str | None, method: str) -> Reply:
    request = urllib.request.Request(url, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, exc.read())


async def get(url: str, token: str | None = None, method: str = "GET") -> Reply:
    """Send one HTTP request (in a thread: the bus may run in this event loop)."""
    return await asyncio.to_thread(_fetch, url, token, method)


@dataclass
class WireProducer:
    """A protocol 2 producer speaking JSON frames: submits jobs and keeps their events."""

    ws: ClientConnection
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _ref: int = 0

    @classmethod
    async def open(cls, url: str, token: str | None) -> WireProducer:
        """Connect and register (``token`` None: a bus without tokens)."""
        ws = await connect(url)
        register: dict[str, Any] = {"cmd": "register", "type": "producer", "protocol": 2}
        if token is not None:
            register["token"] = token
        await ws.send(json.dumps(register))
        reply = json.loads(await ws.recv())
        assert reply["type"] == "registered", reply
        return cls(ws)

    async def submit(self, **payload: Any) -> str:
        """Submit one job; return its id once accepted."""
        self._ref += 1
        frame = {"cmd": "job_request", "payload": payload, "ref": self._ref}
        await self.ws.send(json.dumps(frame))
        while True:
            message = await self._next()
            if message.get("ref") == self._ref:
                assert message["type"] == "accepted", message
                job_id: str = message["id"]
                return job_id

    async def wait_final(self, job_id: str) -> dict[str, Any]:
        """Read events until ``job_id`` reaches a final state; return that event."""
        while True:
            for event in self.events.get(job_id, []):
                if event["event"] in FINAL_EVENTS:
                    return event
            await self._next()

    async def _next(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await self.ws.recv())
        if message["type"] == "event":
            self.events.setdefault(message["id"], []).append(message)
        return message

    async def close(self) -> None:
        """Close the connection."""
        await self.ws.close()
