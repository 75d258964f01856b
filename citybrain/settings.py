"""Settings, read once at the process edge (pydantic-settings).

Every setting has an environment variable ``CITYBRAIN_<NAME>``; the README's
configuration table lists them all. Below this module, code receives typed
arguments, never the environment.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from alerts.notify import TargetPolicy

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Platform settings. Unset server URLs mean "start an embedded one"."""

    model_config = SettingsConfigDict(env_prefix="CITYBRAIN_", env_file=None, extra="ignore")

    # --- servers -------------------------------------------------------------
    database_url: str | None = Field(
        default=None, description="PostgreSQL/TimescaleDB URL; unset starts embedded PostgreSQL"
    )
    mqtt_url: str | None = Field(
        default=None, description="MQTT broker URL (mqtt://user:pass@host:port); unset starts embedded amqtt"
    )
    kafka_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap servers (host:port,...); unset starts embedded noida-db"
    )
    kafka_empty_fetch_backoff_ms: int = Field(
        default=50, ge=0, description="Pause after an empty fetch the broker answered early (0: off)"
    )
    data_dir: Path = Field(default=Path("var"), description="Where embedded servers keep their data")

    # --- topics --------------------------------------------------------------
    topic_prefix: str = Field(default="citybrain", description="Prefix of every Kafka topic")
    partitions: int = Field(default=4, ge=1, le=1024, description="Partitions of the raw topic")

    # --- gateway -------------------------------------------------------------
    gateway_queue_max: int = Field(default=20000, ge=100, description="Bound of the paho→asyncio queue")
    gateway_batch_max: int = Field(default=500, ge=1, description="Raw messages per Kafka record, at most")
    gateway_linger_ms: int = Field(default=20, ge=0, description="How long a partial batch waits")
    gateway_shared_group: str = Field(
        default="", description="Shared-subscription group ($share/<group>/...); empty: plain subscription"
    )
    gateway_client_id: str = Field(default="", description="MQTT client id of the gateway (default random)")
    gateway_kafka_replay_s: float = Field(
        default=0.0,
        ge=0,
        description="Keep copies of Kafka-acknowledged records this long and resend them if the broker's log"
        " loses them (0: off; the platform sets 60 for its embedded broker)",
    )
    max_payload_bytes: int = Field(default=65536, ge=256, description="Largest accepted MQTT payload")
    gateway_flood_factor: float = Field(
        default=100.0,
        ge=0,
        description="A device may send this many × its model's cadence rate, then is throttled (0: off)",
    )
    gateway_flood_burst: int = Field(
        default=120, ge=1, description="Messages a device may send at once above that rate"
    )
    gateway_flood_window_s: float = Field(
        default=60.0, gt=0, description="A throttled device is logged and dead-lettered (`throttled`) once per window"
    )
    gateway_flood_max_devices: int = Field(
        default=1_000_000, ge=1000, description="Devices the gateway's rate limit tracks at once (LRU beyond)"
    )
    command_max_attempts: int = Field(
        default=3, ge=1, le=20, description="Sends of an unanswered MQTT command (reconnect or timeout) before it fails"
    )

    # --- streams / store -----------------------------------------------------
    worker_batch_max: int = Field(default=200, ge=1, description="Kafka records per worker batch")
    worker_batch_within_s: float = Field(default=0.2, gt=0, description="Max wait to fill a worker batch")
    store_batch_rows: int = Field(default=10000, ge=1, description="Rows per store transaction, at most")
    retention_days: int = Field(default=180, ge=1, description="Raw readings older than this are dropped")
    rollup_5m_retention_days: int = Field(
        default=400, ge=0, description="5-minute rollups older than this are dropped (0: kept for ever)"
    )
    rollup_1h_retention_days: int = Field(
        default=1098, ge=0, description="Hourly rollups older than this are dropped (0: kept for ever)"
    )
    rollup_1d_retention_days: int = Field(
        default=0, ge=0, description="Daily rollups older than this are dropped (0: kept for ever)"
    )
    maintenance_interval_s: float = Field(
        default=60.0, gt=0, description="Partitions ahead, rollup refresh and retention run this often"
    )
    compress_after_days: int = Field(default=7, ge=1, description="TimescaleDB only: compress chunks older than this")
    store_pool_size: int = Field(default=4, ge=1, description="PostgreSQL pool size per worker")
    embedded_kafka_retention_s: float = Field(
        default=3600.0,
        ge=60,
        description=(
            "retention.ms of every topic on the embedded Kafka-protocol broker (noida-db), which keeps its "
            "whole log in memory; ignored with CITYBRAIN_KAFKA_BOOTSTRAP"
        ),
    )
    worker_standby: bool = Field(
        default=True,
        description=(
            "citybrain demo keeps a warm spare stream worker (imported, not connected) and promotes it "
            "when the worker dies"
        ),
    )
    db_pool_max_lifetime_s: float = Field(
        default=600.0,
        ge=60,
        description=(
            "Pooled PostgreSQL connections (worker, API, edge) are replaced after this long: a backend's "
            "catalog and plan caches grow with every partition it touches and are freed only when it ends"
        ),
    )
    timezone: str = Field(default="Asia/Shanghai", description="Zone of device-local times (HJ 212 DataTime)")
    max_future_skew_s: float = Field(default=300.0, ge=0, description="Readings further ahead are flagged")

    # --- protocol adapters ---------------------------------------------------
    webhook_token: str = Field(
        default="",
        description="Shared token NB-IoT platforms send in X-Citybrain-Token; empty refuses every push (503)",
    )
    webhook_max_body_bytes: int = Field(default=65536, ge=256, description="Largest accepted webhook body")
    hj212_host: str = Field(default="127.0.0.1", description="Bind address of the HJ 212 TCP server")
    hj212_port: int = Field(default=0, ge=0, le=65535, description="Port of the HJ 212 TCP server (0: a free port)")
    hj212_idle_timeout_s: float = Field(default=600.0, gt=0, description="HJ 212 connections idle longer are closed")
    hj212_check_pw: bool = Field(
        default=True, description="Check HJ 212 PW against the ledger's hash; a station without one is refused"
    )
    hj212_refresh_s: float = Field(
        default=30.0, gt=0, description="How often the edge re-reads station MNs and PW hashes from the ledger"
    )
    hj212_frame_deadline_s: float = Field(
        default=30.0,
        gt=0,
        description="An HJ 212 frame must be complete this long after its first byte, or the connection is closed",
    )
    hj212_max_connections_per_address: int = Field(
        default=32, ge=0, description="Open HJ 212 connections one source address may hold (0: no limit)"
    )

    # --- TLS (device side; see docs/security.md) -----------------------------
    mqtt_tls_ca: str = Field(
        default="", description="CA file (PEM) that verifies the MQTT broker; set: gateway and edge use TLS"
    )
    mqtt_tls_cert: str = Field(default="", description="Client certificate (PEM) for MQTT mutual TLS (optional)")
    mqtt_tls_key: str = Field(default="", description="Private key (PEM) of the MQTT client certificate")
    api_tls_cert: str = Field(default="", description="Certificate (PEM chain) of the HTTP API; set: HTTPS")
    api_tls_key: str = Field(default="", description="Private key (PEM) of the HTTP API certificate")

    # --- rules ---------------------------------------------------------------
    offline_after_cadences: float = Field(
        default=5.0,
        gt=1,
        description="A device silent this many × its model's cadence is stale (connected) or offline (alert)",
    )
    rules_dir: str = Field(
        default="", description="Directory of rule YAML files; empty: the rules shipped in alerts/data/rules"
    )
    rules_reload_s: float = Field(
        default=10.0, ge=0, description="How often workers re-read CITYBRAIN_RULES_DIR for changed rules (0: never)"
    )
    notify_attempts: int = Field(
        default=5, ge=1, le=20, description="Attempts per notification webhook delivery before it is marked failed"
    )
    notify_first_wait_s: float = Field(
        default=2.0, gt=0, description="Wait after a failed notification attempt; doubles per attempt"
    )
    notify_max_wait_s: float = Field(default=120.0, gt=0, description="Longest wait between notification attempts")
    notify_timeout_s: float = Field(default=10.0, gt=0, description="HTTP timeout of one notification attempt")
    state_cache_devices: int = Field(
        default=100_000,
        ge=0,
        description="Devices whose rule and detector state a worker keeps in memory between batches (0: none)",
    )
    notify_allowed_hosts: str = Field(
        default="",
        description="Comma-separated host names, addresses and CIDR networks notification webhooks may reach "
        "although not public (an internal SMS gateway); by default loopback, link-local, private, multicast and "
        "unspecified addresses are refused (docs/security.md)",
    )
    debug_capture: Literal["on_demand", "all", "off"] = Field(
        default="on_demand",
        description="Whose last 20 raw messages workers keep for the debug view: on_demand (devices whose view was "
        "opened in the last 30 min, or registered through the API in the last 24 h), all (a write per device and "
        "batch), off",
    )
    dead_letter_retention_days: int = Field(
        default=7, ge=1, description="Days dead letters stay in the dead_letters table (the per-device debug view)"
    )
    anomaly_config: str = Field(
        default="",
        description="YAML file of anomaly detectors per class/model/metric; empty: alerts/data/anomaly/detectors.yaml",
    )
    downstream_views: Literal["auto", "all", "off"] = Field(
        default="auto",
        description="Graded Kafka views of readings: auto (only where a view differs), all, or off",
    )
    worker_role: Literal["all", "ingest", "alerts"] = Field(
        default="all",
        description=(
            "What `citybrain worker` does: all; ingest (normalise, store, republish); alerts (rules, anomaly, liveness)"
        ),
    )

    # --- HTTP ----------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="Bind address of the HTTP API")
    api_port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP API (0: a free port)")
    api_max_body_bytes: int = Field(
        default=4_194_304,
        ge=1024,
        description="Largest request body the API reads from a caller presenting a credential (413 beyond)",
    )
    api_anonymous_max_body_bytes: int = Field(
        default=16_384,
        ge=1024,
        description="Largest request body the API reads from a caller without credentials, e.g. a login (413 beyond)",
    )
    trusted_proxies: str = Field(
        default="",
        description=(
            "Addresses/networks (comma-separated) whose X-Forwarded-For/-Proto the API believes; "
            "empty: the socket peer is the client"
        ),
    )
    gateway_metrics_host: str = Field(
        default="127.0.0.1", description="Bind address of the gateway's /metrics and /healthz (0.0.0.0 in containers)"
    )
    worker_web_host: str = Field(
        default="127.0.0.1", description="Bind address of the worker's web server (0.0.0.0 in containers)"
    )
    gateway_bridge_readings: bool = Field(
        default=True, description="Re-publish normalised readings on MQTT citybrain/down/... (off at city scale)"
    )
    gateway_bridge_grades: str = Field(
        default="public,internal,sensitive",
        description="Downstream views the bridge publishes on MQTT (down/, down-internal/, down-sensitive/)",
    )
    gateway_metrics_port: int = Field(default=0, ge=0, le=65535, description="Gateway /metrics port (0: free)")
    worker_web_port: int = Field(default=0, ge=0, le=65535, description="Stream worker web/metrics port (0: free)")

    # --- demo ----------------------------------------------------------------
    demo_devices: int = Field(
        default=12, ge=1, le=10000, description="Unlocated air stations of `Platform.start` without a fleet (tests)"
    )
    demo_interval_s: float = Field(default=2.0, gt=0, description="Seconds between reports of those stations")
    demo_size: Literal["small", "city", "large"] = Field(
        default="city",
        description="Located Xiamen fleet of `citybrain demo`: small (~150), city (~2,100), large (~10,000)",
    )
    log_level: str = Field(default="INFO", description="Log level")
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines: text, or json (one object per line, for log shippers)"
    )

    def rollup_retention_days(self) -> dict[str, int | None]:
        """Per rollup level (``5m``, ``1h``, ``1d``), days kept; ``None`` keeps it for ever."""
        days = {
            "5m": self.rollup_5m_retention_days,
            "1h": self.rollup_1h_retention_days,
            "1d": self.rollup_1d_retention_days,
        }
        return {level: (n or None) for level, n in days.items()}

    @field_validator("gateway_bridge_grades")
    @classmethod
    def _known_grades(cls, value: str) -> str:
        unknown = sorted({g.strip() for g in value.split(",") if g.strip()} - {"public", "internal", "sensitive"})
        if unknown:
            raise ValueError(f"unknown grade(s) {', '.join(unknown)}; use public, internal, sensitive")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: str) -> str:
        for item in (p.strip() for p in value.split(",")):
            if not item:
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                # Host names and "*" are refused: trusting a forwarding header must name who sends it.
                raise ValueError(f"trusted proxy {item!r} is not an IP address or network") from None
        return value

    @field_validator("notify_allowed_hosts")
    @classmethod
    def _notify_allowlist(cls, value: str) -> str:
        from alerts.notify import NotifyError, TargetPolicy

        try:
            TargetPolicy.parse(value)
        except NotifyError as exc:
            raise ValueError(str(exc)) from None
        return value

    def notify_targets(self) -> TargetPolicy:
        """Where notification webhooks may post: public addresses plus ``notify_allowed_hosts``."""
        from alerts.notify import TargetPolicy

        return TargetPolicy.parse(self.notify_allowed_hosts)

    @model_validator(mode="after")
    def _body_bounds(self) -> Settings:
        if self.api_anonymous_max_body_bytes > self.api_max_body_bytes:
            raise ValueError("CITYBRAIN_API_ANONYMOUS_MAX_BODY_BYTES must not exceed CITYBRAIN_API_MAX_BODY_BYTES")
        return self

    def proxy_networks(self) -> tuple[str, ...]:
        """The entries of ``trusted_proxies`` (empty: trust no forwarding header)."""
        return tuple(p.strip() for p in self.trusted_proxies.split(",") if p.strip())

    def bridge_grades(self) -> tuple[str, ...]:
        """The grades of ``gateway_bridge_grades``."""
        return tuple(g.strip() for g in self.gateway_bridge_grades.split(",") if g.strip())
