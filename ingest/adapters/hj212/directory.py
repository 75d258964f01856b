"""Who a station is and what its PW must be: the connector's in-memory credential store.

The HJ 212 server resolves each frame's MN to a device and its PW check
through a :data:`Resolver`. :class:`StationDirectory` is the one object that
holds those maps: the edge builds it once, hands its :meth:`~StationDirectory.resolve`
to the server, and refreshes it from the ledger in place
(:func:`ingest.adapters.hj212.passwords.refresh_directory`). Because the server
keeps a reference to the directory, not to the maps inside it, a PW provisioned
after start-up is seen after the next refresh, whether or not any station had a
PW when the edge started.

Pure: no I/O. A refresh swaps whole maps (one reference assignment each, on the
event loop), so a frame is always checked against one consistent snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from devices.index import DeviceInfo

__all__ = ["DeviceAuth", "Resolver", "StationDirectory", "auth_resolver", "mn_map"]


@dataclass(frozen=True, slots=True)
class DeviceAuth:
    """What the resolver says about an MN.

    Attributes:
        code: The platform device code the MN belongs to.
        password: The station's expected PW in clear (tests, benchmarks; the ledger never holds one).
        pw_hash: The scrypt hash of the station's PW (the ledger's ``hj212_pw_hash``).

    With neither, the device has no PW provisioned: refused while ``check_pw`` is on.
    """

    code: str
    password: str | None = None
    pw_hash: str | None = None


#: MN → device, or ``None`` for an unknown MN. Must be fast and must not block (an in-memory map).
Resolver = Callable[[str], DeviceAuth | None]

_EMPTY: Mapping[str, str] = MappingProxyType({})


def mn_map(devices: Iterable[DeviceInfo]) -> dict[str, str]:
    """MN → device code by the ledger convention: attribute ``mn``, else the code itself.

    Args:
        devices: Ledger entries (e.g. from ``Ledger.load_index``).

    Returns:
        The map; on a duplicate MN the later device wins (the ledger should forbid it).
    """
    out: dict[str, str] = {}
    for dev in devices:
        mn = dev.attributes.get("mn")
        out[str(mn) if mn else dev.code] = dev.code
    return out


class StationDirectory:
    """MN → device code, and device code → expected PW (hash or clear), refreshable in place.

    Args:
        mns: MN → device code (see :func:`mn_map`).
        pw_hashes: Device code → scrypt hash of the PW (the ledger's).
        passwords: Device code → PW in clear (tests, benchmarks).

    The maps given are copied: later changes to them are not seen. Change the
    directory with :meth:`replace`, which every holder of :meth:`resolve` sees.
    """

    def __init__(
        self,
        mns: Mapping[str, str] = _EMPTY,
        pw_hashes: Mapping[str, str] = _EMPTY,
        passwords: Mapping[str, str] = _EMPTY,
    ) -> None:
        self._mns: Mapping[str, str] = _EMPTY
        self._by_code: Mapping[str, str] = _EMPTY
        self._hashes: Mapping[str, str] = _EMPTY
        self._passwords: Mapping[str, str] = _EMPTY
        self.replace(mns, pw_hashes, passwords)

    def replace(
        self, mns: Mapping[str, str], pw_hashes: Mapping[str, str], passwords: Mapping[str, str] = _EMPTY
    ) -> None:
        """Swap in a new snapshot (e.g. freshly read from the ledger).

        Args:
            mns: MN → device code.
            pw_hashes: Device code → PW hash.
            passwords: Device code → PW in clear.
        """
        mns_copy = dict(mns)
        self._by_code = {code: mn for mn, code in mns_copy.items()}
        self._hashes = dict(pw_hashes)
        self._passwords = dict(passwords)
        self._mns = mns_copy

    def resolve(self, mn: str) -> DeviceAuth | None:
        """The :data:`Resolver`: the device of an MN and its expected PW, or ``None`` for an unknown MN."""
        code = self._mns.get(mn)
        if code is None:
            return None
        return DeviceAuth(code, self._passwords.get(code), self._hashes.get(code))

    def mn_of(self, code: str) -> str:
        """The MN a device reports under (its code when the ledger gives no ``mn``)."""
        return self._by_code.get(code, code)

    @property
    def stations(self) -> int:
        """MNs known."""
        return len(self._mns)

    @property
    def with_pw(self) -> int:
        """Known stations whose device has a PW provisioned."""
        codes = set(self._mns.values())
        return sum(1 for code in codes if code in self._hashes or code in self._passwords)


def auth_resolver(
    mns: Mapping[str, str], passwords: Mapping[str, str] | None = None, pw_hashes: Mapping[str, str] | None = None
) -> Resolver:
    """A resolver over fixed maps (tests, benchmarks); the edge uses a :class:`StationDirectory`.

    Args:
        mns: MN → device code (see :func:`mn_map`).
        passwords: Device code → expected PW in clear.
        pw_hashes: Device code → scrypt hash of the PW.

    Returns:
        The resolver. A device in neither map has no PW: refused while PW checking is on.
    """
    return StationDirectory(
        mns,
        pw_hashes if pw_hashes is not None else _EMPTY,
        passwords if passwords is not None else _EMPTY,
    ).resolve
