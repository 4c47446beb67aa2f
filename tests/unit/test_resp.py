"""RESP encoding by hand (``shared.resp.pack_args``) is byte for byte what redis-py sends."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection

from shared.resp import pack_args


def test_pack_args_is_what_redis_py_sends() -> None:
    args: list[Any] = ["EVAL", "return 1", 0, "é\u20ac", b"a\r\nb", b"", -12, 10**18, "x" * 70_000]
    reference = b"".join(Connection().pack_command(*args))
    assert b"*%d\r\n" % len(args) + pack_args(args) == reference
    assert pack_args([]) == b""
    for bad in (1.5, True, None, ["x"]):
        with pytest.raises(TypeError):
            pack_args(["ok", bad])
