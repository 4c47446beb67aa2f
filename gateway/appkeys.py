"""Typed application state (``web.AppKey``), shared by the app factory and the handlers."""

from __future__ import annotations

import socketio
from aiohttp import web

from gateway.broker.redis_broker import Broker
from gateway.live.fanout import Fanout
from gateway.tasks.service import TaskManager
from gateway.live.relay import Relay
from shared.records import AsyncRecords
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
MANAGER = web.AppKey("manager", TaskManager)
RECORDS = web.AppKey("records", AsyncRecords)
BROKER = web.AppKey("broker", Broker)
RELAY = web.AppKey("relay", Relay)
SIO = web.AppKey("sio", socketio.AsyncServer)
FANOUT = web.AppKey("fanout", Fanout)
