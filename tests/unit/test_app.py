"""The gateway as ``create_app`` builds it, before it serves: its Socket.IO server's settings."""

from __future__ import annotations

from gateway.app import create_app
from gateway.appkeys import SIO
from shared.settings import Settings
from tests.support import FAULT_ENV, offline_env


def test_socketio_reaps_dead_clients_within_a_minute() -> None:
    sio = create_app(Settings.from_env(offline_env(**FAULT_ENV)))[SIO]
    assert sio.eio.ping_interval + sio.eio.ping_timeout <= 60
