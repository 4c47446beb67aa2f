"""Typed application state (``web.AppKey``), shared by the app factory and the handlers."""

from __future__ import annotations

import socketio
from aiohttp import web

from gateway.broker.redis_broker import Broker
from gateway.live.fanout import Fanout
from gateway.live.ledger import TaskEvents
from gateway.live.relay import Relay
from gateway.tasks.service import TaskService
from shared.records import AsyncRecords
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", TaskService)
RECORDS = web.AppKey("records", AsyncRecords)
BROKER = web.AppKey("broker", Broker)
RELAY = web.AppKey("relay", Relay)
SIO = web.AppKey("sio", socketio.AsyncServer)
FANOUT = web.AppKey("fanout", Fanout)
TASK_EVENTS = web.AppKey("task_events", TaskEvents)
