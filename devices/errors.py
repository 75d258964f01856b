"""The devices package's exceptions: one base, specific subclasses."""

from __future__ import annotations


class DevicesError(Exception):
    """Base of every error raised by the devices package."""


class DeviceCodeError(DevicesError, ValueError):
    """A city device code is malformed; the message says exactly why."""


class ModelError(DevicesError):
    """A device model (thing model) file is invalid."""


class UnitError(DevicesError, ValueError):
    """A unit is unknown or cannot be converted to the canonical unit."""


class LedgerError(DevicesError):
    """The ledger could not complete an operation."""


class UnknownDeviceError(LedgerError, KeyError):
    """No device with that code is registered."""


class TransitionError(LedgerError):
    """A lifecycle transition is not allowed; the message says why."""


class AllocationError(LedgerError):
    """No device code could be allocated (e.g. the sequence space is exhausted)."""


class CredentialError(DevicesError):
    """A credential or password hash is malformed or cannot be issued."""


class ImportFileError(DevicesError):
    """A bulk-import file cannot be read at all (not one bad row: the whole file)."""


class PermitError(LedgerError, ValueError):
    """A discharge permit or one of its limits is invalid."""
