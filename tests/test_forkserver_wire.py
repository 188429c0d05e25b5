"""The fork server's wire (:func:`send` and :func:`receive`) over a real socket pair: a
message, with or without descriptors, in one read or in pieces; end of file; a link that
breaks off or sends two messages at once; and whatever bytes arrive, a message or an ``OSError``."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.worker.forkserver import encode, receive, send


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        yield ours, theirs


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe's read and write ends, closed after the test."""
    read_end, write_end = os.pipe()
    try:
        yield read_end, write_end
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_message_and_its_descriptors_arrive_in_one_read(
    pair: tuple[socket.socket, socket.socket], pipe: tuple[int, int]
) -> None:
    ours, theirs = pair
    read_end, write_end = pipe
    send(ours, ("fork", ("m", "f"), [1, "two"], [], {"k": None}, ["a_fd"], None), [write_end])
    got = receive(theirs)
    assert got is not None
    message, fds = got
    assert message == ("fork", ("m", "f"), [1, "two"], [], {"k": None}, ["a_fd"], None)
    assert len(fds) == 1
    os.write(fds[0], b"x")  # the same pipe, through another descriptor
    os.close(fds[0])
    assert os.read(read_end, 1) == b"x"


def test_a_message_longer_than_one_read_and_one_cut_in_its_header(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    path = [f"/a/directory/{n}" for n in range(2000)]  # about 40 KB, as a long sys.path
    send(ours, ("load", path, []))
    assert receive(theirs) == (("load", path, []), [])
    whole = encode(("reap", 42))
    ours.sendall(whole[:2])
    ours.sendall(whole[2:])
    assert receive(theirs) == (("reap", 42), [])


def test_end_of_file_between_messages_is_none_and_inside_one_an_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    ours.sendall(encode(("reap", 1))[:-1])
    ours.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionResetError, match="broke off inside a message"):
        receive(theirs)
    other, mine = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with other, mine:
        other.shutdown(socket.SHUT_WR)
        assert receive(mine) is None


def test_two_messages_at_once_are_refused_and_their_descriptors_closed(
    pair: tuple[socket.socket, socket.socket], pipe: tuple[int, int]
) -> None:
    ours, theirs = pair
    _, write_end = pipe
    before = set(os.listdir("/proc/self/fd"))
    socket.send_fds(ours, [encode(("reap", 1)) + encode(("reap", 2))], [write_end])
    with pytest.raises(ConnectionError, match="a message before its answer"):
        receive(theirs)
    assert set(os.listdir("/proc/self/fd")) == before


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=600))
def test_any_bytes_give_a_message_or_a_clear_error(data: bytes) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        ours.sendall(data)
        ours.shutdown(socket.SHUT_WR)
        try:
            receive(theirs)
        except OSError:
            pass  # what the link's caller takes as a broken fork server
