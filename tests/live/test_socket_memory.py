"""What the lighter per-connection machinery (issue 18, item 6) must keep doing.

- ``SendQueue`` (each Engine.IO socket's send queue) is FIFO, hands an item to a waiting getter,
  forgets a getter whose wait was cancelled, and ``join`` waits for every ``task_done``;
- ``CheckedWebSocket._serve`` keeps python-engineio's timeouts with one sweep instead of a timer
  per wait: a client that sends nothing is closed once ping interval + ping timeout pass; so is
  one that keeps sending but never answers a ping (the writer has nothing left to send); one that
  answers its pings stays;
- ``ExpiryTimers`` calls back each connection still there once its time passed, in order, and
  never one that was discarded;
- the young generation is collected on the clock (``gctune.young_on_the_clock``), also when
  allocations and deallocations balance.

Real python-socketio servers with the guard installed, on aiohttp test servers, and raw
websocket clients (aiohttp's ``ws_connect``).
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import socketio
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from gateway.process import gctune
from gateway.sockets.guard import SocketGuard
from gateway.sockets.handlers import ExpiryTimers
from gateway.sockets.sendqueue import SendQueue

PING_S = 0.5
PING_TIMEOUT_S = 0.5
# How late a close may come after its deadline on a loaded machine (2 CPUs shared).
MARGIN_S = 5.0


# -- SendQueue ------------------------------------------------------------------------------


async def test_the_send_queue_is_fifo_and_hands_an_item_to_a_waiting_getter() -> None:
    q = SendQueue()
    q.put_nowait("a")
    await q.put("b")
    assert q.qsize() == 2 and not q._getters
    assert await q.get() == "a"
    assert q.get_nowait() == "b"
    assert q.empty()
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    waiting = q.get()
    assert q._getters  # a parked getter, as the fan-out checks
    q.put_nowait("c")
    assert not q._getters and q.qsize() == 0  # handed over, not queued
    assert await waiting == "c"


async def test_a_cancelled_get_is_forgotten_and_the_next_item_waits_in_the_queue() -> None:
    q = SendQueue()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await q.get()
    await asyncio.sleep(0)
    assert not q._getters
    q.put_nowait("x")
    assert q.qsize() == 1
    assert await q.get() == "x"


async def test_join_waits_until_every_item_is_done() -> None:
    q = SendQueue()
    await q.join()  # nothing pending: returns at once
    q.put_nowait(1)
    q.put_nowait(2)
    joined = asyncio.ensure_future(q.join())
    await q.get()
    q.task_done()
    await asyncio.sleep(0.01)
    assert not joined.done()
    q.get_nowait()
    q.task_done()
    async with asyncio.timeout(2):
        await joined
    with pytest.raises(ValueError):
        q.task_done()


def test_the_send_queue_refuses_a_bound() -> None:
    with pytest.raises(ValueError):
        SendQueue(10)


# -- timeouts of the websocket loop ---------------------------------------------------------


@pytest.fixture
async def server(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[tuple[TestServer, socketio.AsyncServer]]:
    """python-socketio with the guard (no rate, no CONNECT deadline), quick pings."""
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        ping_interval=PING_S,
        ping_timeout=PING_TIMEOUT_S,
        transports=["websocket"],
    )
    SocketGuard(sio, event_rate=0, connect_timeout_s=0).install()
    app = web.Application()
    sio.attach(app)
    test_server = await aiohttp_server(app)
    yield test_server, sio


async def _open(
    session: aiohttp.ClientSession, test_server: TestServer
) -> aiohttp.ClientWebSocketResponse:
    url = str(test_server.make_url("/socket.io/")) + "?EIO=4&transport=websocket"
    ws = await session.ws_connect(url, autoping=True)
    opening = await ws.receive_str()
    assert opening.startswith("0")
    return ws


async def _until_closed(ws: aiohttp.ClientWebSocketResponse, answer_pings: bool) -> list[str]:
    """Read until the server closes; returns the text frames seen."""
    seen: list[str] = []
    while True:
        msg = await ws.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return seen
        if msg.type is WSMsgType.TEXT:
            seen.append(msg.data)
            if answer_pings and msg.data == "2":
                await ws.send_str("3")


async def test_a_silent_client_is_closed_after_ping_interval_and_timeout(
    server: tuple[TestServer, socketio.AsyncServer],
) -> None:
    test_server, sio = server
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, test_server)
        started = time.monotonic()
        async with asyncio.timeout(PING_S + PING_TIMEOUT_S + 1 + MARGIN_S):
            seen = await _until_closed(ws, answer_pings=False)
        assert "2" in seen  # it was pinged, did not answer, and then was closed
        assert time.monotonic() - started >= PING_S + PING_TIMEOUT_S - 0.1
    async with asyncio.timeout(MARGIN_S):
        while sio.eio.sockets:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_client_that_talks_but_never_answers_a_ping_is_closed(
    server: tuple[TestServer, socketio.AsyncServer],
) -> None:
    test_server, _ = server
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, test_server)

        async def chatter() -> None:
            while not ws.closed:
                await ws.send_str("6")  # Engine.IO noop: read by the server, never a pong
                await asyncio.sleep(0.1)

        talking = asyncio.ensure_future(chatter())
        try:
            async with asyncio.timeout(PING_S + 2 * (PING_S + PING_TIMEOUT_S) + MARGIN_S):
                seen = await _until_closed(ws, answer_pings=False)
        finally:
            talking.cancel()
            await asyncio.gather(talking, return_exceptions=True)
        assert seen.count("2") == 1  # one ping, unanswered; then nothing to send until closed


async def test_a_client_that_answers_its_pings_stays(
    server: tuple[TestServer, socketio.AsyncServer],
) -> None:
    test_server, sio = server
    async with aiohttp.ClientSession() as session:
        ws = await _open(session, test_server)
        reading = asyncio.ensure_future(_until_closed(ws, answer_pings=True))
        await asyncio.sleep(4 * (PING_S + PING_TIMEOUT_S))
        assert not reading.done() and not ws.closed
        assert len(sio.eio.sockets) == 1
        await ws.close()
        seen = await reading
        assert seen.count("2") >= 3


# -- ExpiryTimers -----------------------------------------------------------------------------


async def test_expiry_timers_call_back_in_order_and_never_a_discarded_one() -> None:
    fired: list[str] = []
    timers = ExpiryTimers(fired.append)
    now = time.time()
    timers.add("late", now + 0.3)
    timers.add("early", now + 0.1)
    timers.add("gone", now + 0.2)
    timers.discard("gone")
    timers.discard("never-added")
    async with asyncio.timeout(5):
        while len(fired) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    assert fired == ["early", "late"]
    assert len(timers) == 0
    timers.close()


async def test_expiry_timers_keep_the_live_entries_when_the_heap_is_rebuilt() -> None:
    fired: list[str] = []
    timers = ExpiryTimers(fired.append)
    now = time.time()
    for i in range(200):
        timers.add(f"s{i}", now + 3600)
    for i in range(150):  # most leave: the heap is rebuilt along the way
        timers.discard(f"s{i}")
    timers.add("soon", now + 0.05)
    assert len(timers) == 51
    async with asyncio.timeout(5):
        while not fired:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert fired == ["soon"] and len(timers) == 50
    timers.close()


# -- young collections on the clock -----------------------------------------------------------


async def test_young_garbage_is_collected_on_the_clock_without_allocation_pressure() -> None:
    """CPython collects the young generation only when allocations outnumber deallocations;
    ``young_on_the_clock`` collects it anyway (the threshold is raised here so that CPython's
    own trigger cannot do it)."""

    class Node:
        me: object = None

    old = gc.get_threshold()
    gc.set_threshold(10_000_000, old[1], old[2])
    try:
        gctune.young_on_the_clock(asyncio.get_running_loop(), every_s=0.05)
        gone = asyncio.Event()
        node = Node()
        node.me = node  # a cycle: only the collector frees it
        weakref.finalize(node, gone.set)
        del node
        async with asyncio.timeout(5):
            await gone.wait()
    finally:
        gc.set_threshold(*old)
