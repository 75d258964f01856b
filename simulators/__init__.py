"""Simulated field devices speaking the platform's real protocols (docs/simulators.md).

Modules: ``base`` (sites, drivers, seeded per-instant randomness), one value model per
device class (``air``, ``water``, ``noise``, ``manhole``, ``pole``), ``city`` (placement
and model registry), ``encoders`` (production codecs), ``faults``, ``fleet`` (MQTT
gateway model, HJ 212 TCP link, sent log), ``scenario`` (effects, ground truth,
scoring), ``score`` (scoring a run from the platform's database: alerts and quality
flags), ``runner`` (the ``citybrain simulate`` entry point) and the legacy
``mqtt_fleet`` used by ``citybrain demo``. Importing does no I/O.
"""
