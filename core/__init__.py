"""The ground floor: contracts every package shares (docs/architecture.md).

``core`` imports nothing of the project. It holds the canonical records
(:mod:`core.records`) and the one topic scheme for MQTT and Kafka
(:mod:`core.topics`). Every other package may import it; it imports none of them.
"""
