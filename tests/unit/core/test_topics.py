import pytest

from core.topics import (
    KafkaTopics,
    TopicError,
    UplinkTopic,
    alert_topic,
    command_topic,
    downstream_topic,
    parse_uplink,
    partition_for,
    uplink_topic,
)

CODE = "35020603080000017"


def test_uplink_round_trip() -> None:
    for kind in ("telemetry", "event", "status"):
        t = uplink_topic(CODE, kind)  # type: ignore[arg-type]
        assert t == f"citybrain/up/{CODE}/{kind}"
        assert parse_uplink(t) == UplinkTopic(CODE, kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "topic",
    [
        "citybrain/up/x",
        "citybrain/down/x/telemetry",
        "other/up/x/telemetry",
        f"citybrain/up/{CODE}/bogus",
        "citybrain/up/a b/telemetry",
        "citybrain/up//telemetry",
        f"citybrain/up/{CODE}/telemetry/extra",
    ],
)
def test_bad_uplinks(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_uplink(topic)


def test_app_topics() -> None:
    assert command_topic(CODE) == f"citybrain/cmd/{CODE}"
    assert downstream_topic("350206", "air", CODE) == f"citybrain/down/350206/air/{CODE}"
    assert alert_topic("350206", "major") == "citybrain/alerts/350206/major"
    with pytest.raises(TopicError):
        alert_topic("350206", "+")


def test_kafka_topics() -> None:
    t = KafkaTopics()
    assert (t.raw, t.deadletter, t.alerts, t.readings("water")) == (
        "citybrain.raw",
        "citybrain.deadletter",
        "citybrain.alerts",
        "citybrain.readings.water",
    )
    with pytest.raises(TopicError):
        KafkaTopics("bad prefix")


def test_partition_is_stable_and_spread() -> None:
    assert partition_for(CODE, 8) == partition_for(CODE, 8)
    parts = {partition_for(f"350206030800{i:04d}0", 4) for i in range(200)}
    assert parts == {0, 1, 2, 3}
    with pytest.raises(TopicError):
        partition_for(CODE, 0)
