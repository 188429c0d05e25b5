"""Encoding and decoding of the wire messages of :mod:`scheduler.protocol`, in one place.

Decoding is validation: a frame that does not decode into one of the message structs
raises :class:`ProtocolError` naming the field to blame and the rule it breaks, and no
frame can raise anything else (not even one nested a thousand levels deep). The v1
encoders write the original prototype's frames byte for byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Final, TypeVar

import msgspec

from scheduler.protocol import (
    BusMessage,
    ClientMessage,
    Error,
    JobPayload,
    Register,
)
from scheduler.protocol_batch import Batch, BusFrame, ClientBatch, ClientFrame
from scheduler.protocol_types import (
    DEFAULT_PRIORITY,
    MAX_BATCH_BYTES,
    MAX_NAME_LEN,
    MAX_NESTING,
    MAX_SAFE_INT,
    Role,
)


class ProtocolError(ValueError):
    """A frame that does not decode. ``field`` is the dotted path to blame, if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_error(self, ref: int | str | None = None) -> Error:
        """The ``error`` reply for this failure."""
        return Error(message=self.message, field=self.field, ref=ref)


_client_decoder: msgspec.json.Decoder[ClientMessage] = msgspec.json.Decoder(ClientMessage)
_client_frame_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)
_bus_decoder: msgspec.json.Decoder[BusMessage] = msgspec.json.Decoder(BusMessage)
_frame_decoder: msgspec.json.Decoder[BusFrame] = msgspec.json.Decoder(BusFrame)
_payload_decoder = msgspec.json.Decoder(JobPayload)


def plain_str(value: object) -> object:
    """An encoder's ``enc_hook``: a ``str`` subclass (a job handle is one) is encoded as
    the string it is; anything else is refused."""
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=plain_str)
_T = TypeVar("_T")
_TOO_DEEP: Final = (
    f"frame: nesting deeper than the decoder allows (args and result: {MAX_NESTING} levels)"
)
_NESTED = re.compile(
    r"^(?P<name>args|result): (?P<rule>nesting deeper .*)$"
    r"|^(?P<time>run_at|delay): (?P<why>.*)$"
)
_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def _field_of(message: str) -> tuple[str, str | None]:
    """Split msgspec's ``... - at `$.payload.priority``` into text and ``payload.priority``."""
    match = _PATH.search(message)
    if match is None:
        return message, None
    # msgspec writes a dict's key as [...]: the dict itself is the field we can name.
    path = match.group("path").replace("[...]", "").replace("[", ".").replace("]", "")
    return message[: match.start()], path or None


def _protocol_error(exc: msgspec.MsgspecError) -> ProtocolError:
    if isinstance(exc, msgspec.ValidationError):
        text, field = _field_of(str(exc))
        nested = _NESTED.match(text)
        if nested is not None:
            name, text = nested.group("name", "rule")
            if name is None:
                name, text = nested.group("time", "why")
            field = name if field is None else f"{field}.{name}"
        if field == "cmd" and text.startswith("Invalid value"):
            text = f"unknown cmd: {text.removeprefix('Invalid value ')}"
        return ProtocolError(f"{field or 'frame'}: {text}", field)
    return ProtocolError(f"not valid JSON: {exc}")


def _decode(decoder: msgspec.json.Decoder[_T], frame: str | bytes) -> _T:
    try:
        return decoder.decode(frame)
    except msgspec.MsgspecError as exc:
        raise _protocol_error(exc) from None
    except RecursionError:
        raise ProtocolError(_TOO_DEEP) from None


def decode_client(frame: str | bytes) -> ClientMessage:
    """Decode and validate a client frame; raise :class:`ProtocolError` naming the bad field."""
    return _decode(_client_decoder, frame)


def decode_client_frame(frame: str | bytes) -> ClientMessage | ClientBatch:
    """Decode a client frame: one message, or a :class:`~scheduler.protocol_batch.ClientBatch`
    whose messages :func:`batch_messages` decodes. Raise :class:`ProtocolError` naming the
    bad field, or ``messages`` for a batch of more than one message past
    :data:`~scheduler.protocol_types.MAX_BATCH_BYTES`."""
    message = _decode(_client_frame_decoder, frame)
    if isinstance(message, ClientBatch) and len(message.messages) > 1:
        size = len(frame) if isinstance(frame, bytes) else _utf8_len(frame)
        if size > MAX_BATCH_BYTES:
            raise ProtocolError(
                f"messages: a batch frame holds at most {MAX_BATCH_BYTES} bytes"
                f" (this one: {size}); send a bigger message alone",
                "messages",
            )
    return message


def _utf8_len(text: str) -> int:
    # A UTF-8 character takes at most 4 bytes: most frames need no encoding to measure.
    return len(text) if len(text) * 4 <= MAX_BATCH_BYTES else len(text.encode())


_NESTED_BATCH: Final = ProtocolError("cmd: a batch may not hold a batch", "cmd")
_REGISTER_IN_BATCH: Final = ProtocolError(
    "cmd: register may not travel in a batch; send it alone, first", "cmd"
)


def batch_messages(batch: ClientBatch) -> list[tuple[ClientMessage | ProtocolError, bytes]]:
    """Each message of a client's ``batch``, in order, decoded as if it had come alone
    (or the :class:`ProtocolError` it would have got: a ``register`` and a nested batch
    get theirs), with its raw JSON. Never raises."""
    return [_batch_message(bytes(raw)) for raw in batch.messages]


def _batch_message(raw: bytes) -> tuple[ClientMessage | ProtocolError, bytes]:
    try:
        message = _decode(_client_frame_decoder, raw)
    except ProtocolError as exc:
        return exc, raw
    if isinstance(message, ClientBatch):
        return _NESTED_BATCH, raw
    if isinstance(message, Register):
        return _REGISTER_IN_BATCH, raw
    return message, raw


def encode_client_batch(frames: Sequence[bytes]) -> bytes:
    """One client ``batch`` frame holding ``frames`` (each an encoded client message)."""
    return b'{"cmd":"batch","messages":[' + b",".join(frames) + b"]}"


def decode_bus(frame: str | bytes) -> BusMessage:
    """Decode and validate a frame sent by the bus to a v2 client."""
    return _decode(_bus_decoder, frame)


def decode_bus_frame(frame: str | bytes) -> list[BusMessage | ProtocolError]:
    """Decode a frame from the bus into the messages it holds, in order: one, or each of a
    :class:`~scheduler.protocol_batch.Batch`'s. Never raises: a frame that does not decode is a
    one-item list of its :class:`ProtocolError`, and a message of a batch that does not
    decode (a nested batch among them) is its error in that message's place."""
    try:
        outer = _decode(_frame_decoder, frame)
    except ProtocolError as exc:
        return [exc]
    if not isinstance(outer, Batch):
        return [outer]
    return [_bus_message(bytes(raw)) for raw in outer.messages]


def _bus_message(frame: bytes) -> BusMessage | ProtocolError:
    try:
        return decode_bus(frame)
    except ProtocolError as exc:
        return ProtocolError(f"batch message: {exc.message}", exc.field)


def encode_batch(frames: Sequence[bytes]) -> bytes:
    """One ``batch`` frame holding ``frames`` (each an encoded bus message), in order."""
    return b'{"type":"batch","messages":[' + b",".join(frames) + b"]}"


def decode_payload(frame: str | bytes) -> JobPayload:
    """Decode the bare v1 payload a v1 scheduler receives."""
    return _decode(_payload_decoder, frame)


class _Envelope(msgspec.Struct):
    """What a frame that failed to decode may still tell: its ``ref`` and ``protocol``."""

    ref: object = None
    protocol: object = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def _envelope(frame: str | bytes) -> _Envelope | None:
    try:
        return _envelope_decoder.decode(frame)
    except (msgspec.MsgspecError, RecursionError):
        return None


def ref_of(frame: str | bytes) -> int | str | None:
    """Best-effort ``ref`` of a frame that failed to decode, so the error can name it
    (None unless it is a string or an integer a :data:`Ref` may be)."""
    envelope = _envelope(frame)
    ref = None if envelope is None else envelope.ref
    if isinstance(ref, str) and len(ref) <= MAX_NAME_LEN:
        return ref
    if isinstance(ref, int) and not isinstance(ref, bool) and abs(ref) <= MAX_SAFE_INT:
        return ref
    return None


def says_v2(frame: str | bytes | None) -> bool:
    """Whether a frame that failed to decode still announces ``"protocol": 2``."""
    envelope = None if frame is None else _envelope(frame)
    protocol = None if envelope is None else envelope.protocol
    return isinstance(protocol, int) and not isinstance(protocol, bool) and protocol == 2


def encode(message: ClientMessage | BusMessage) -> str:
    """Encode any message as a JSON text frame."""
    return _encoder.encode(message).decode()


def encode_bytes(message: ClientMessage | BusMessage) -> bytes:
    """Encode any message as the UTF-8 bytes of its JSON text frame."""
    return _encoder.encode(message)


def encode_value(value: object) -> bytes:
    """Encode a part of a message (a payload, an id) exactly as it is in the frame."""
    return _encoder.encode(value)


def _v1_payload_body(payload: JobPayload) -> dict[str, float | int]:
    # The original producer sent integer runtimes, runtime first; keep that shape on the wire.
    runtime = payload.runtime if payload.runtime is not None else 0
    return {
        "runtime": int(runtime) if float(runtime).is_integer() else runtime,
        "priority": DEFAULT_PRIORITY if payload.priority is None else payload.priority,
    }


def encode_v1_payload(payload: JobPayload) -> str:
    """The bare payload a v1 scheduler receives, formatted as the original bus sent it."""
    return json.dumps(_v1_payload_body(payload))


def encode_v1_register(role: Role) -> str:
    """The original ``register`` frame."""
    return json.dumps({"cmd": "register", "type": role})


def encode_v1_job_request(payload: JobPayload) -> str:
    """The original ``job_request`` frame."""
    return json.dumps({"cmd": "job_request", "payload": _v1_payload_body(payload)})
