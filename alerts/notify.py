"""Outbound notifications: alert transitions to webhooks (WeCom, DingTalk, SMS gateways).

A :class:`Subscription` filters transitions by rule (a glob such as ``air.*``),
minimum severity and districts, and says where to send them and how to shape the
body. Everything here but :class:`WebhookSender` and :class:`NotificationStore`
is pure:

* :func:`render` builds the body for the target's format — WeCom's and
  DingTalk's group robots (``msgtype`` ``text`` or ``markdown``) or plain JSON for
  an SMS gateway — from a ``string.Template`` (``$rule``, ``$severity`` …; no
  attribute access, so a template cannot reach into objects);
* :func:`signature_headers` signs ``timestamp + "." + body`` with HMAC-SHA256 and
  the subscription's secret; the receiver checks the signature and refuses old
  timestamps (replay);
* :func:`dingtalk_signed_url` adds DingTalk's own ``timestamp``/``sign`` query
  (HMAC-SHA256 of ``timestamp\\nsecret``, Base64) when the format is DingTalk.

:class:`WebhookSender` posts through an injected ``aiohttp.ClientSession`` and
retries with tenacity (exponential backoff, bounded attempts), handing every
attempt to a callback so that the store records it. :class:`NotificationStore`
keeps subscriptions and deliveries in PostgreSQL; a delivery is unique per
(subscription, alert, transition, severity), so a replayed transition (the
outbox republishing after a crash, a consumer re-reading the topic) enqueues
nothing twice.

:class:`TargetPolicy` is where a target may be (server-side request forgery: whoever may
create a subscription must not make the worker post to its own host, the cloud metadata
address or the platform's internal services). By default it refuses loopback, link-local,
private (RFC 1918, ULA), multicast, unspecified and other reserved addresses, checked on
the addresses the host name resolves to, at creation and again at every send (a DNS name
may point to 127.0.0.1 later); :class:`PolicyResolver` filters the addresses the HTTP
client connects to, so a name re-pointed between the check and the connection is refused
too. An allowlist of host names and networks (``CITYBRAIN_NOTIFY_ALLOWED_HOSTS``, read by
the composition root) lets a city reach its internal SMS gateway. A refused send is not
retried: the attempt records the reason, the delivery fails and
``citybrain_notify_refused_total`` counts it.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import string
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from prometheus_client import CollectorRegistry, Counter
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from tenacity import AsyncRetrying, RetryError, retry_if_exception, stop_after_attempt, wait_exponential

from alerts.errors import AlertsError
from core.records import Severity

__all__ = [
    "FORMATS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Delivery",
    "DeliveryFailed",
    "Dispatcher",
    "NotificationMetrics",
    "NotificationStore",
    "NotifyError",
    "PolicyResolver",
    "RetryPolicy",
    "Subscription",
    "TargetPolicy",
    "TargetRefused",
    "WebhookSender",
    "dingtalk_signed_url",
    "forbidden_category",
    "matches",
    "parse_transitions",
    "render",
    "sign",
    "signature_headers",
    "system_resolve",
    "verify",
]

log = logging.getLogger(__name__)

#: Body formats: the robots' message types and plain JSON (SMS gateways, anything else).
FORMATS = ("wecom_text", "wecom_markdown", "dingtalk_text", "dingtalk_markdown", "json")
SIGNATURE_HEADER = "X-Citybrain-Signature"
TIMESTAMP_HEADER = "X-Citybrain-Timestamp"
DELIVERY_HEADER = "X-Citybrain-Delivery"
# WeCom's text/markdown content is limited to 2048/4096 bytes, DingTalk's to 20000: cut well below.
_MAX_CONTENT = 2000
_LOCAL_TZ = ZoneInfo("Asia/Shanghai")

DEFAULT_TEMPLATES: Mapping[str, str] = {
    "text": "[$severity] $rule $transition_zh\n设备 $device ($district)\n$message\n时间 $local_time",
    "markdown": (
        "### [$severity] $rule $transition_zh\n"
        "> 设备: $device ($district)\n\n"
        "> 指标: $metric = $value (阈值 $threshold)\n\n"
        "$message\n\n"
        '<font color="comment">$local_time</font>'
    ),
}
_TRANSITIONS_ZH = {"open": "告警", "escalate": "升级", "deescalate": "降级", "clear": "恢复"}


class NotifyError(AlertsError):
    """Base of notification errors."""


class DeliveryFailed(NotifyError):
    """One attempt did not deliver (HTTP status, a robot's errcode, a network error).

    ``permanent``: the target refused the request itself (a 4xx other than 408 and
    429: a wrong path, a revoked key); trying again cannot help.
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.permanent = status is not None and 400 <= status < 500 and status not in (408, 429)


class TargetRefused(DeliveryFailed):
    """The target's address is one notifications may not reach (:class:`TargetPolicy`).

    Always permanent: the same target is refused on every attempt.

    Attributes:
        category: Why (``loopback``, ``link-local``, ``private``, ``multicast``,
            ``unspecified``, ``reserved``); a Prometheus label.
    """

    def __init__(self, reason: str, category: str) -> None:
        super().__init__(reason)
        self.permanent = True
        self.category = category


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Looks up a host's addresses (``host``, ``port``) -> address strings; injected for tests.
Resolve = Callable[[str, int], Awaitable[Sequence[str]]]

# RFC 6598 shared address space (carrier-grade NAT; also some clusters' service networks):
# not "private" to Python, not the Internet either.
_SHARED = ipaddress.ip_network("100.64.0.0/10")
# An allowlist host name: letters, digits, hyphens and dots (no scheme, port or wildcard).
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def forbidden_category(address: IpAddress) -> str | None:
    """Why notifications may not reach ``address`` by default, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:  # 169.254.169.254: the cloud metadata service
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local):
        return "private"  # RFC 1918, ULA fc00::/7, and IANA's other special-purpose ranges
    if address.is_reserved or address in _SHARED:
        return "reserved"
    return None


async def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (as the HTTP client would connect)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise NotifyError(f"target URL has no host: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise NotifyError(f"target URL has a bad port: {exc}") from exc
    return host, port


def _literal(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """Where notifications may be sent: public addresses, plus an allowlist.

    Attributes:
        allowed_hosts: Host names (lower case) allowed whatever they resolve to: the
            city's own gateways (``sms-gw.city.internal``).
        allowed_networks: Networks allowed although not public (``10.20.0.0/16``;
            ``127.0.0.1/32`` for tests with a local receiver).
    """

    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def parse(cls, spec: str | Iterable[str]) -> TargetPolicy:
        """A policy from an allowlist: comma-separated host names, addresses and CIDRs.

        Raises:
            NotifyError: An entry is neither a host name nor an address or network.
        """
        entries = spec.split(",") if isinstance(spec, str) else list(spec)
        hosts: set[str] = set()
        networks: list[IpNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if not _HOST_NAME.match(entry):
                raise NotifyError(
                    f"notification allowlist entry {raw.strip()!r} is not a host name, an address or a CIDR network"
                )
            hosts.add(entry)
        return cls(frozenset(hosts), tuple(networks))

    def allows_address(self, host: str, address: IpAddress) -> bool:
        """Whether ``host`` may be reached at ``address``."""
        if host.lower().rstrip(".") in self.allowed_hosts or forbidden_category(address) is None:
            return True
        return any(address.version == n.version and address in n for n in self.allowed_networks)

    def refusal(self, host: str, addresses: Iterable[str]) -> TargetRefused | None:
        """The refusal for ``host`` resolving to ``addresses`` (any forbidden one refuses), or None."""
        for text in addresses:
            address = _literal(text)
            if address is None:
                continue
            if not self.allows_address(host, address):
                category = forbidden_category(address) or "reserved"
                shown = host if host == str(address) else f"{host} ({address})"
                return TargetRefused(
                    f"refused: target {shown} is a {category} address; notifications reach only public "
                    "addresses unless the allowlist (CITYBRAIN_NOTIFY_ALLOWED_HOSTS) names the host or its network",
                    category,
                )
        return None

    async def check(self, url: str, resolve: Resolve = system_resolve, *, unresolved_ok: bool = False) -> None:
        """Refuse ``url`` if its host is, or resolves to, an address the policy forbids.

        Args:
            url: The target.
            resolve: The resolver (the system's by default).
            unresolved_ok: A name that does not resolve passes (creating a subscription
                while DNS is down); at send time it is a failed, retried attempt.

        Raises:
            TargetRefused: The address is forbidden.
            DeliveryFailed: The name did not resolve (and ``unresolved_ok`` is false).
        """
        host, port = _host_port(url)
        literal = _literal(host)
        if literal is not None:
            addresses: Sequence[str] = [str(literal)]
        elif host in self.allowed_hosts:
            return
        else:
            try:
                addresses = await resolve(host, port)
            except OSError as exc:
                if unresolved_ok:
                    return
                raise DeliveryFailed(f"cannot resolve {host}: {exc}") from exc
        refused = self.refusal(host, addresses)
        if refused is not None:
            raise refused


class PolicyResolver(AbstractResolver):
    """The HTTP client's resolver, keeping only the addresses a :class:`TargetPolicy` allows.

    The send-time check and the connection resolve separately; without this a name
    re-pointed to 127.0.0.1 between the two (DNS rebinding) would still be reached.
    """

    def __init__(self, policy: TargetPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The inner resolver's answers that the policy allows; OSError if none is."""
        results = await self.inner.resolve(host, port, family)
        allowed = [
            r for r in results if (a := _literal(str(r["host"]))) is not None and self.policy.allows_address(host, a)
        ]
        if not allowed:
            raise OSError(f"{host} resolves only to addresses notifications may not reach")
        return allowed

    async def close(self) -> None:
        """Close the inner resolver."""
        await self.inner.close()


@dataclass(frozen=True, slots=True)
class Subscription:
    """Where matching alert transitions go, and how.

    Attributes:
        id: Database id.
        name: A human name (shown in the console).
        url: The target (``http``/``https``).
        rule_pattern: A glob over rule ids (``*``, ``air.*``, ``anomaly.rate``).
        min_severity: Transitions below it are ignored.
        districts: 6-digit district codes; empty means every district.
        format: One of :data:`FORMATS`.
        template: A ``string.Template`` for the text; empty picks the default.
        secret: HMAC key for the signature header (and DingTalk's URL signature).
        enabled: A disabled subscription matches nothing.
    """

    id: int
    name: str
    url: str
    rule_pattern: str = "*"
    min_severity: Severity = Severity.WARNING
    districts: tuple[str, ...] = ()
    format: str = "json"
    template: str = ""
    secret: str = ""
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise NotifyError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        scheme = urllib.parse.urlsplit(self.url).scheme
        if scheme not in ("http", "https"):
            raise NotifyError(f"target URL must be http or https, got {self.url!r}")
        for d in self.districts:
            if not (len(d) == 6 and d.isdigit()):
                raise NotifyError(f"district must be a 6-digit code, got {d!r}")
        if self.template:
            try:
                string.Template(self.template).substitute(_placeholders({}, "open"))
            except (KeyError, ValueError) as exc:
                raise NotifyError(f"template has an unknown or malformed placeholder: {exc}") from exc


def matches(sub: Subscription, alert: Mapping[str, Any]) -> bool:
    """Whether ``alert`` (an ``alerts.v1`` document) passes the subscription's filters."""
    if not sub.enabled:
        return False
    try:
        severity = Severity.parse(str(alert.get("severity", "")))
    except ValueError:
        return False
    if severity < sub.min_severity:
        return False
    if sub.districts and alert.get("district") not in sub.districts:
        return False
    return fnmatch.fnmatchcase(str(alert.get("rule", "")), sub.rule_pattern)


def _local(ts: Any) -> str:
    if not ts:
        return ""
    try:
        at = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        return str(ts)
    return at.astimezone(_LOCAL_TZ).strftime("%Y-%m-%d %H:%M:%S")


def _placeholders(alert: Mapping[str, Any], transition: str) -> dict[str, str]:
    def text(key: str) -> str:
        v = alert.get(key)
        return "" if v is None else str(v)

    at = alert.get("cleared_at") if transition == "clear" else alert.get("opened_at")
    return {
        "id": text("id"),
        "rule": text("rule"),
        "device": text("device"),
        "district": text("district"),
        "class": text("class"),
        "severity": text("severity"),
        "state": text("state"),
        "metric": text("metric"),
        "value": text("value"),
        "threshold": text("threshold"),
        "message": text("message"),
        "opened_at": text("opened_at"),
        "cleared_at": text("cleared_at"),
        "transition": transition,
        "transition_zh": _TRANSITIONS_ZH.get(transition, transition),
        "local_time": _local(at),
    }


def render(sub: Subscription, alert: Mapping[str, Any], transition: str) -> bytes:
    """The request body for one transition, in the subscription's format (UTF-8 JSON)."""
    kind = "markdown" if sub.format.endswith("markdown") else "text"
    template = sub.template or DEFAULT_TEMPLATES[kind]
    values = _placeholders(alert, transition)
    content = string.Template(template).safe_substitute(values)[:_MAX_CONTENT]
    doc: dict[str, Any]
    if sub.format in ("wecom_text", "dingtalk_text"):
        doc = {"msgtype": "text", "text": {"content": content}}
    elif sub.format == "wecom_markdown":
        doc = {"msgtype": "markdown", "markdown": {"content": content}}
    elif sub.format == "dingtalk_markdown":
        title = f"[{values['severity']}] {values['rule']}"
        doc = {"msgtype": "markdown", "markdown": {"title": title, "text": content}}
    else:
        doc = {"subscription": sub.id, "transition": transition, "text": content, "alert": dict(alert)}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``"<timestamp>." + body`` with ``secret``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: int, body: bytes, signature: str, *, now: float, tolerance_s: float = 300) -> bool:
    """The receiver's check: the signature matches and the timestamp is recent (no replay)."""
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def signature_headers(secret: str, timestamp: int, body: bytes, delivery_key: str) -> dict[str, str]:
    """Headers of a signed request: content type, timestamp, signature, delivery key."""
    headers = {"Content-Type": "application/json; charset=utf-8", DELIVERY_HEADER: delivery_key}
    if secret:
        headers[TIMESTAMP_HEADER] = str(timestamp)
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return headers


def dingtalk_signed_url(url: str, secret: str, timestamp_ms: int) -> str:
    """DingTalk's robot signature: ``&timestamp=…&sign=…`` with HMAC-SHA256 of ``"<ts>\\n<secret>"``."""
    mac = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    query = urllib.parse.urlencode({"timestamp": timestamp_ms, "sign": base64.b64encode(mac).decode()})
    return f"{url}{'&' if '?' in url else '?'}{query}"


# -- delivery -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One transition for one subscription, to be sent (a ``notification_deliveries`` row)."""

    id: int
    subscription: Subscription
    alert: Mapping[str, Any]
    transition: str

    @property
    def key(self) -> str:
        """The idempotency key the receiver may dedupe on (also the delivery header)."""
        return f"{self.subscription.id}:{self.alert.get('id')}:{self.transition}:{self.alert.get('severity')}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff: ``attempts`` tries, waits ``first_wait_s`` doubling to ``max_wait_s``."""

    attempts: int = 5
    first_wait_s: float = 1.0
    max_wait_s: float = 60.0
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise NotifyError("at least one attempt")

    @property
    def worst_case_s(self) -> float:
        """The longest a delivery's attempts can take: every attempt timing out, every wait at its longest."""
        waits = sum(min(self.max_wait_s, self.first_wait_s * 2**i) for i in range(self.attempts - 1))
        return self.attempts * self.timeout_s + waits


class NotificationMetrics:
    """Counters of the notification dispatcher (on the registry passed in)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.enqueued = Counter(
            "citybrain_notify_enqueued_total", "Deliveries enqueued for matching alert transitions", registry=registry
        )
        self.duplicates = Counter(
            "citybrain_notify_duplicates_total",
            "Transitions already enqueued for a subscription (a replay), skipped",
            registry=registry,
        )
        self.attempts = Counter(
            "citybrain_notify_attempts_total", "Delivery attempts by outcome", ["outcome"], registry=registry
        )
        self.deliveries = Counter(
            "citybrain_notify_deliveries_total",
            "Deliveries finished, by status (delivered, failed)",
            ["status"],
            registry=registry,
        )
        self.refused = Counter(
            "citybrain_notify_refused_total",
            "Sends refused by the target policy (SSRF), by the address's category (loopback, private …)",
            ["category"],
            registry=registry,
        )


OnAttempt = Callable[[Delivery, int, int | None, str | None], Awaitable[None]]


class WebhookSender:
    """Posts deliveries through an injected HTTP client, retrying with bounded backoff.

    Every attempt first checks the target against ``targets`` (resolving its name
    again: DNS may have changed since the subscription was created); a refused target
    is recorded as a failed attempt with the reason and is not retried. Give ``client``
    a connector with a :class:`PolicyResolver` of the same policy so that the
    connection itself goes only to allowed addresses.

    Args:
        client: The ``aiohttp.ClientSession`` to post with (owned by the caller).
        policy: Attempts and backoff.
        metrics: Counters.
        clock: Wall clock in seconds (signature timestamps).
        targets: Where targets may be (default: public addresses only).
        resolve: Host name lookup of the send-time check (the system's by default).
    """

    def __init__(
        self,
        client: aiohttp.ClientSession,
        policy: RetryPolicy,
        metrics: NotificationMetrics,
        clock: Callable[[], float] = time.time,
        *,
        targets: TargetPolicy | None = None,
        resolve: Resolve = system_resolve,
    ) -> None:
        self.client = client
        self.policy = policy
        self.metrics = metrics
        self.clock = clock
        self.targets = targets if targets is not None else TargetPolicy()
        self.resolve = resolve

    async def _post_once(self, d: Delivery) -> int:
        sub = d.subscription
        try:
            await self.targets.check(sub.url, self.resolve)
        except TargetRefused as exc:
            self.metrics.refused.labels(exc.category).inc()
            raise
        body = render(sub, d.alert, d.transition)
        now = self.clock()
        url = sub.url
        if sub.format.startswith("dingtalk") and sub.secret:
            url = dingtalk_signed_url(url, sub.secret, int(now * 1000))
        headers = signature_headers(sub.secret, int(now), body, d.key)
        try:
            async with self.client.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout_s),
                allow_redirects=False,  # a redirect is a misconfigured target, not somewhere to resend to
            ) as resp:
                text = await resp.text(errors="replace")
                if resp.status >= 300:
                    raise DeliveryFailed(f"HTTP {resp.status}: {text[:200]}", resp.status)
                if sub.format != "json":
                    # The robots answer 200 with {"errcode": n}: anything but 0 did not post.
                    try:
                        errcode = json.loads(text).get("errcode", 0) if text.strip() else 0
                    except (ValueError, AttributeError):
                        errcode = 0
                    if errcode:
                        raise DeliveryFailed(f"robot errcode {errcode}: {text[:200]}", resp.status)
                return resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:300]) from exc

    async def deliver(self, d: Delivery, on_attempt: OnAttempt) -> bool:
        """Send one delivery, retrying failed attempts; ``on_attempt`` records each one.

        Returns:
            True once delivered, False after the last failed attempt.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, DeliveryFailed) and not e.permanent),
            stop=stop_after_attempt(self.policy.attempts),
            wait=wait_exponential(multiplier=self.policy.first_wait_s, max=self.policy.max_wait_s),
        )
        n = 0
        try:
            async for attempt in retrying:
                with attempt:
                    n += 1
                    try:
                        status = await self._post_once(d)
                    except DeliveryFailed as exc:
                        self.metrics.attempts.labels("refused" if isinstance(exc, TargetRefused) else "error").inc()
                        log.warning("notification %s attempt %d failed: %s", d.key, n, exc.reason)
                        await on_attempt(d, n, exc.status, exc.reason)
                        raise
                    self.metrics.attempts.labels("ok").inc()
                    await on_attempt(d, n, status, None)
        except (RetryError, DeliveryFailed):
            # Attempts used up (RetryError), or a permanent refusal (not retried, re-raised as is).
            self.metrics.deliveries.labels("failed").inc()
            return False
        self.metrics.deliveries.labels("delivered").inc()
        return True


# -- store --------------------------------------------------------------------

_SUB_COLUMNS = "id, name, url, rule_pattern, min_severity, districts, format, template, secret, enabled"


def _subscription(row: Mapping[str, Any]) -> Subscription:
    return Subscription(
        id=int(row["id"]),
        name=row["name"],
        url=row["url"],
        rule_pattern=row["rule_pattern"],
        min_severity=Severity(int(row["min_severity"])),
        districts=tuple(row["districts"] or ()),
        format=row["format"],
        template=row["template"],
        secret=row["secret"],
        enabled=bool(row["enabled"]),
    )


@dataclass(slots=True)
class NotificationStore:
    """Subscriptions and deliveries in PostgreSQL, over a pool passed in.

    Args:
        pool: The connection pool.
        metrics: Counters.
        lease_s: How long a claimed delivery is hidden from other dispatchers; a
            dispatcher that dies mid-delivery leaves it to be claimed again then.

    """

    pool: AsyncConnectionPool
    metrics: NotificationMetrics
    lease_s: float = 600.0

    # -- subscriptions --------------------------------------------------------

    async def list_subscriptions(self) -> list[dict[str, Any]]:
        """Every subscription as stored (the secret included: the caller masks it)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"select {_SUB_COLUMNS}, created_by, created_at, updated_at from notification_subscriptions order by id"
            )
            return list(await cur.fetchall())

    async def get_subscription(self, sub_id: int) -> dict[str, Any] | None:
        """One subscription row, or None."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"select {_SUB_COLUMNS}, created_by, created_at, updated_at from notification_subscriptions"
                " where id = %s",
                (sub_id,),
            )
            return await cur.fetchone()

    async def create_subscription(self, sub: Subscription, actor: str) -> int:
        """Store a new subscription (``sub.id`` is ignored) and return its id."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "insert into notification_subscriptions (name, url, rule_pattern, min_severity, districts,"
                    " format, template, secret, enabled, created_by) values (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                    " returning id",
                    (*_columns(sub), actor),
                )
            ).fetchone()
        assert row is not None
        return int(row[0])

    async def update_subscription(self, sub: Subscription) -> bool:
        """Replace a subscription's fields; False if there is none with that id."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "update notification_subscriptions set name=%s, url=%s, rule_pattern=%s, min_severity=%s,"
                " districts=%s, format=%s, template=%s, secret=%s, enabled=%s, updated_at=now() where id=%s",
                (*_columns(sub), sub.id),
            )
            return cur.rowcount > 0

    async def delete_subscription(self, sub_id: int) -> bool:
        """Delete a subscription and its deliveries; False if there was none."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("delete from notification_subscriptions where id = %s", (sub_id,))
            return cur.rowcount > 0

    async def subscriptions(self) -> list[Subscription]:
        """The enabled subscriptions.

        Read afresh for every batch of transitions, not cached: transitions are rare
        (a quiet day raises few), the table is small, and an edit then applies to
        the very next transition in every worker.
        """
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"select {_SUB_COLUMNS} from notification_subscriptions where enabled order by id")
            return [_subscription(r) for r in await cur.fetchall()]

    # -- deliveries -----------------------------------------------------------

    async def enqueue(self, transitions: Iterable[Mapping[str, Any]]) -> int:
        """Enqueue a delivery per matching subscription for each transition document.

        Each document is an ``alerts.v1`` payload with its ``transition``. Unique per
        (subscription, alert, transition, severity): a replay inserts nothing.

        Returns:
            How many deliveries were new.
        """
        subs = await self.subscriptions()
        rows = []
        for doc in transitions:
            transition = str(doc.get("transition", "open"))
            alert = {k: v for k, v in doc.items() if k != "transition"}
            for sub in subs:
                if matches(sub, alert):
                    rows.append((sub.id, str(alert.get("id")), transition, str(alert.get("severity")), Jsonb(alert)))
        if not rows:
            return 0
        new = 0
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            for row in rows:
                await cur.execute(
                    "insert into notification_deliveries (subscription_id, alert_id, transition, severity, alert)"
                    " values (%s,%s,%s,%s,%s) on conflict do nothing returning id",
                    row,
                )
                if await cur.fetchone() is not None:
                    new += 1
        self.metrics.enqueued.inc(new)
        self.metrics.duplicates.inc(len(rows) - new)
        return new

    async def claim(self, limit: int = 50) -> list[Delivery]:
        """Claim due pending deliveries for ``lease_s`` (``skip locked``: dispatchers never share one)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "update notification_deliveries d set next_at = now() + make_interval(secs => %s)"
                " where d.id in (select id from notification_deliveries where status = 'pending'"
                " and next_at <= now() order by next_at limit %s for update skip locked)"
                " returning d.id, d.subscription_id, d.alert, d.transition",
                (self.lease_s, limit),
            )
            claimed = await cur.fetchall()
            if not claimed:
                return []
            await cur.execute(
                f"select {_SUB_COLUMNS} from notification_subscriptions where id = any(%s)",
                (list({r["subscription_id"] for r in claimed}),),
            )
            subs = {int(r["id"]): _subscription(r) for r in await cur.fetchall()}
        return [
            Delivery(int(r["id"]), subs[r["subscription_id"]], r["alert"], r["transition"])
            for r in claimed
            if r["subscription_id"] in subs
        ]

    async def record_attempt(self, d: Delivery, attempt: int, status: int | None, error: str | None) -> None:
        """Record one attempt (``error`` None: delivered)."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "insert into notification_attempts (delivery_id, attempt, http_status, error) values (%s,%s,%s,%s)",
                (d.id, attempt, status, error),
            )
            await conn.execute(
                "update notification_deliveries set attempts = attempts + 1, last_error = %s,"
                " status = case when %s then 'delivered' else status end,"
                " delivered_at = case when %s then now() else delivered_at end where id = %s",
                (error, error is None, error is None, d.id),
            )

    async def finish(self, d: Delivery, delivered: bool) -> None:
        """Close a delivery whose attempts are used up (delivered ones are closed by their attempt)."""
        if not delivered:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "update notification_deliveries set status = 'failed' where id = %s and status = 'pending'",
                    (d.id,),
                )

    async def deliveries(self, sub_id: int, limit: int = 50) -> list[dict[str, Any]]:
        """A subscription's latest deliveries with their attempts, newest first."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "select d.id, d.alert_id, d.transition, d.severity, d.status, d.attempts, d.last_error,"
                " d.created_at, d.delivered_at, coalesce((select json_agg(json_build_object('attempt', a.attempt,"
                " 'at', a.at, 'http_status', a.http_status, 'error', a.error) order by a.attempt)"
                " from notification_attempts a where a.delivery_id = d.id), '[]') as attempt_log"
                " from notification_deliveries d where d.subscription_id = %s order by d.id desc limit %s",
                (sub_id, limit),
            )
            return list(await cur.fetchall())


class Dispatcher:
    """Claims due deliveries and sends each in its own task, at most ``concurrency`` at once.

    A delivery waiting out its backoff holds a slot but not the others: a slow or
    failing target delays only its own deliveries.
    """

    def __init__(self, store: NotificationStore, sender: WebhookSender, concurrency: int = 16) -> None:
        self.store = store
        self.sender = sender
        self.concurrency = concurrency
        self._tasks: set[asyncio.Task[None]] = set()

    async def _one(self, d: Delivery) -> None:
        ok = await self.sender.deliver(d, self.store.record_attempt)
        await self.store.finish(d, ok)

    async def tick(self) -> int:
        """Claim as many due deliveries as there are free slots and start them; returns how many."""
        free = self.concurrency - len(self._tasks)
        if free <= 0:
            return 0
        claimed = await self.store.claim(free)
        for d in claimed:
            task = asyncio.create_task(self._one(d), name=f"notify-{d.id}")
            self._tasks.add(task)
            task.add_done_callback(self._done)
        return len(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A database error while recording: the lease expires and the delivery is claimed again.
            log.error("notification delivery task failed: %s", task.exception())

    async def wait(self) -> None:
        """Wait for the deliveries in flight."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Cancel the deliveries in flight (their leases expire and they are claimed again later)."""
        for t in list(self._tasks):
            t.cancel()
        await self.wait()


def parse_transitions(values: Sequence[bytes]) -> list[dict[str, Any]]:
    """``citybrain.alerts`` record values as documents; unreadable ones are logged and skipped."""
    out = []
    for v in values:
        try:
            doc = json.loads(v)
        except ValueError as exc:
            log.error("unreadable alert transition skipped: %s", exc)
            continue
        if isinstance(doc, dict) and doc.get("id"):
            out.append(doc)
    return out


def _columns(sub: Subscription) -> tuple[object, ...]:
    """A subscription's stored columns, in the order create and update write them."""
    return (
        sub.name,
        sub.url,
        sub.rule_pattern,
        int(sub.min_severity),
        list(sub.districts),
        sub.format,
        sub.template,
        sub.secret,
        sub.enabled,
    )
