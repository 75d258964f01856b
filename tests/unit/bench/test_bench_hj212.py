"""The HJ 212 benchmark counts each 9014 answer once, however the bytes arrive."""

from __future__ import annotations

from bench.bench_hj212 import count_acks

ANSWER = b"##0060QN=20261129080000000;ST=91;CN=9014;PW=123456;MN=1;Flag=4;CP=&&&&ABCD\r\n"
OTHER = b"##0040QN=20261129080000001;ST=91;CN=9013;CP=&&&&ABCD\r\n"


def _read(stream: bytes, cuts: list[int]) -> int:
    """Feed ``stream`` in pieces cut at ``cuts``, as the benchmark's reader does."""
    acks, buf, last = 0, b"", 0
    for cut in [*cuts, len(stream)]:
        counted, buf = count_acks(buf + stream[last:cut])
        acks += counted
        last = cut
    return acks


def test_a_partial_line_holding_cn_9014_is_counted_once_it_is_complete() -> None:
    stream = ANSWER + ANSWER
    after_cn = ANSWER.index(b"CN=9014") + len(b"CN=9014") + 3
    # the first read ends inside the first answer, after its CN=9014
    assert _read(stream, [after_cn]) == 2
    assert count_acks(ANSWER[:after_cn]) == (0, ANSWER[:after_cn])


def test_every_way_of_cutting_the_stream_counts_each_answer_once() -> None:
    stream = ANSWER + OTHER + ANSWER + ANSWER
    for a in range(len(stream) + 1):
        for b in (a, a + 1, a + 37, len(stream)):
            assert _read(stream, sorted({a, min(b, len(stream))})) == 3, (a, b)
