"""In-memory token buckets that throttle failed logins per username and per client address.

Each failed login takes a token from the username's bucket and from the
address's bucket; a login is refused (429) while either is empty. Buckets
refill continuously. Memory is bounded: the least recently used keys are
dropped beyond ``max_keys`` (a dropped key starts full again, which only
helps an attacker who can also flood the table, and that needs many
addresses, which the per-address bucket already limits).

One process only: with several API replicas each keeps its own buckets, so
the effective limit is multiplied by the replica count (docs/security.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BucketSpec", "LoginLimiter", "TokenBuckets"]


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """Capacity (burst) and refill rate of a bucket."""

    capacity: float
    refill_per_s: float

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.refill_per_s <= 0:
            raise ValueError("capacity must be >= 1 and refill_per_s > 0")


class TokenBuckets:
    """Token buckets by key, LRU-bounded.

    Args:
        spec: Capacity and refill.
        clock: Monotonic seconds (tests pass a fake one, so no test sleeps).
        max_keys: Keys kept at most.
    """

    def __init__(
        self, spec: BucketSpec, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self._spec = spec
        self._clock = clock
        self._max = max_keys
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str) -> float:
        now = self._clock()
        tokens, at = self._state.get(key, (self._spec.capacity, now))
        return min(self._spec.capacity, tokens + (now - at) * self._spec.refill_per_s)

    def available(self, key: str) -> bool:
        """Whether the key has at least one token."""
        return self._level(key) >= 1.0

    def retry_after(self, key: str) -> float:
        """Seconds until the key has a token again (0 if it has one)."""
        missing = 1.0 - self._level(key)
        return max(0.0, missing / self._spec.refill_per_s)

    def take(self, key: str) -> None:
        """Take one token (the level may not go below zero)."""
        level = max(0.0, self._level(key) - 1.0)
        self._state[key] = (level, self._clock())
        self._state.move_to_end(key)
        while len(self._state) > self._max:
            self._state.popitem(last=False)

    def __len__(self) -> int:
        return len(self._state)


class LoginLimiter:
    """Per-username and per-address limits on failed logins.

    Defaults: 5 failures in a burst per username, then one every 60 s; 20 per
    address, then one every 15 s.
    """

    def __init__(
        self,
        *,
        per_user: BucketSpec = BucketSpec(5, 1 / 60),
        per_ip: BucketSpec = BucketSpec(20, 1 / 15),
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.users = TokenBuckets(per_user, clock=clock, max_keys=max_keys)
        self.ips = TokenBuckets(per_ip, clock=clock, max_keys=max_keys)

    def blocked(self, username: str, ip: str) -> tuple[str, float] | None:
        """``(scope, retry_after_s)`` if a login must be refused now, else ``None``."""
        # Usernames are case-folded so that "Admin" and "admin" share a bucket.
        if not self.users.available(username.casefold()):
            return "user", self.users.retry_after(username.casefold())
        if not self.ips.available(ip):
            return "ip", self.ips.retry_after(ip)
        return None

    def failed(self, username: str, ip: str) -> None:
        """Count a failed login against both buckets."""
        self.users.take(username.casefold())
        self.ips.take(ip)
