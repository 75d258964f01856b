"""MQTT over TLS for the platform's paho clients (gateway, edge command dispatcher).

Built once at the process edge from ``CITYBRAIN_MQTT_TLS_CA`` / ``_CERT`` / ``_KEY``
(:meth:`MqttTls.from_settings`) and applied to a paho client before it connects
(:meth:`MqttTls.apply`). The broker's certificate is always verified, chain and
host name (TLS 1.2 at least): a gateway that would accept any certificate gives
every device reading to whoever can intercept the connection.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.errors import IngestError

__all__ = ["MqttTls", "MqttTlsError"]


class MqttTlsError(IngestError):
    """The TLS settings are incomplete or name files that cannot be read."""


@dataclass(frozen=True, slots=True)
class MqttTls:
    """TLS settings of an MQTT client.

    Attributes:
        ca_file: CA certificates (PEM) that verify the broker.
        cert_file: Client certificate (PEM), for brokers with ``require_certificate true``.
        key_file: The client certificate's private key (PEM).
    """

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise MqttTlsError("an MQTT client certificate needs its key, and a key its certificate")
        for path in (self.ca_file, self.cert_file, self.key_file):
            if path and not Path(path).is_file():
                raise MqttTlsError(f"MQTT TLS file {path} does not exist")

    @classmethod
    def from_settings(cls, ca_file: str, cert_file: str = "", key_file: str = "") -> MqttTls | None:
        """TLS settings, or None when no CA is configured (plain MQTT)."""
        if not ca_file:
            if cert_file or key_file:
                raise MqttTlsError("CITYBRAIN_MQTT_TLS_CERT/KEY need CITYBRAIN_MQTT_TLS_CA")
            return None
        return cls(ca_file, cert_file or None, key_file or None)

    def context(self) -> ssl.SSLContext:
        """A client context: verifies the chain and the host name, TLS 1.2 or later."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def apply(self, client: Any) -> None:
        """Make a ``paho.mqtt.client.Client`` connect over TLS (call before ``connect``)."""
        try:
            client.tls_set_context(self.context())
        except (OSError, ssl.SSLError) as exc:
            raise MqttTlsError(f"cannot load the MQTT TLS files: {exc}") from exc
