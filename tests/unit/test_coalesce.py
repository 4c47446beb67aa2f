"""How submits collected at once are cut into pieces (``gateway.tasks.coalesce.pieces``)."""

from __future__ import annotations

import itertools

from gateway.tasks.coalesce import pieces


def test_submits_collected_at_once_are_written_in_a_few_even_pieces() -> None:
    assert pieces(27, 8, 4, 1000) == [(0, 8), (8, 16), (16, 24), (24, 27)]
    assert pieces(5, 8, 4, 1000) == [(0, 5)]
    assert pieces(1000, 8, 4, 1000) == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert pieces(4500, 8, 4, 1000) == [(i, min(4500, i + 1000)) for i in range(0, 4500, 1000)]
    assert pieces(0, 8, 4, 1000) == []
    for n in range(1, 300):
        got = pieces(n, 8, 4, 64)
        assert got[0][0] == 0 and got[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(got))
        assert all(0 < end - start <= 64 for start, end in got)
        assert len(got) <= max(4, -(-n // 64))
