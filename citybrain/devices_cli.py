"""``citybrain devices …``: bulk import and export, credentials, Mosquitto files.

Wired into the main CLI by :func:`register`; every handler receives the parsed
arguments and the process's :class:`~citybrain.settings.Settings`. It lives in
the composition root because it reads settings and reaches into two packages
(the ledger in ``devices``, HJ 212 station passwords in ``ingest``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from citybrain.settings import Settings
from devices.credentials import ServiceUser, parse_app_user, parse_service_user, render_acl_file
from devices.errors import CredentialError, DevicesError, ImportFileError, UnknownDeviceError
from devices.lifecycle import ACCEPTING

__all__ = ["ProgressBar", "register"]

_EXPORT = """
copy (select code, serial, district, substr(code, 7, 4) as class_code, model, name, lon, lat, crs, grid,
             owner_unit, installer, contact, install_date,
             case when attributes = '{}'::jsonb then null else attributes end as attributes, state
      from devices order by code)
to stdout with (format csv, header)
"""


class ProgressBar:
    """Rows read and rows/s on stderr, redrawn in place (only on a terminal, else a line per update)."""

    def __init__(self, stream: TextIO = sys.stderr, label: str = "rows") -> None:
        self.stream = stream
        self.label = label
        self.t0 = time.perf_counter()
        self.tty = stream.isatty()

    def __call__(self, done: int) -> None:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        text = f"{done:>12,} {self.label}  {done / elapsed:>10,.0f} {self.label}/s  {elapsed:7.1f}s"
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _database_url(settings: Settings) -> str:
    if not settings.database_url:
        raise SystemExit("error: CITYBRAIN_DATABASE_URL is not set (the ledger lives in PostgreSQL)")
    return settings.database_url


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    """Validate and import a CSV / JSON file; print every rejected row."""
    import psycopg

    from devices.importer import import_file
    from devices.models import shipped_models

    path = Path(args.file)
    fmt = args.format or ("json" if path.suffix.lower() in (".json", ".jsonl", ".ndjson") else "csv")
    bar = ProgressBar()
    try:
        with (
            psycopg.connect(_database_url(settings)) as conn,
            path.open(encoding="utf-8-sig", newline="") as stream,
        ):
            report = import_file(
                conn, stream, fmt, shipped_models(), actor=args.actor, dry_run=args.dry_run, progress=bar
            )
    except ImportFileError as exc:
        bar.close()
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 2
    except (DevicesError, OSError) as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    for issue in report.issues:
        print(f"{path}:{issue.line}: {issue.reason}")
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
    print(report.summary(), file=sys.stderr)
    return 1 if report.issues else 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Export the whole ledger as CSV in the import format (with contacts: operators only)."""
    import psycopg

    with psycopg.connect(_database_url(settings)) as conn, conn.cursor() as cur:
        out = sys.stdout.buffer if args.file == "-" else open(args.file, "wb")  # noqa: SIM115
        try:
            with cur.copy(_EXPORT) as copy:
                for chunk in copy:
                    out.write(chunk)
        finally:
            if out is not sys.stdout.buffer:
                out.close()
    return 0


def cmd_credentials(args: argparse.Namespace, settings: Settings) -> int:
    """Rotate (print the new secret once) or revoke a device's MQTT credentials, or its HJ 212 PW."""
    if args.hj212:
        return _hj212_pw(args, settings)
    if args.pw is not None:
        print("error: --pw is for HJ 212 station passwords (with --hj212)", file=sys.stderr)
        return 2
    from psycopg_pool import AsyncConnectionPool

    from devices.ledger import Ledger
    from devices.models import shipped_models

    async def run() -> int:
        pool = AsyncConnectionPool(_database_url(settings), min_size=1, max_size=1, open=False)
        await pool.open(wait=True, timeout=30)
        try:
            ledger = Ledger(pool, shipped_models())
            if args.action == "rotate":
                secret = await ledger.rotate_credentials(args.code, actor=args.actor)
                code = await ledger.lookup(args.code)
                print(f"username: {code}\nsecret:   {secret}\n(shown once; stored only hashed)")
            else:
                await ledger.revoke_credentials(args.code, actor=args.actor)
                print(f"credentials of {args.code} revoked")
        finally:
            await pool.close()
        return 0

    try:
        return asyncio.run(run())
    except DevicesError as exc:
        return _device_error(args.code, exc)


def _device_error(code: str, exc: DevicesError) -> int:
    """Report a ledger error about device ``code`` on stderr; the exit status."""
    if isinstance(exc, UnknownDeviceError):
        print(f"error: no device {code}", file=sys.stderr)
    else:
        print(f"error: {exc}", file=sys.stderr)
    return 2


def _hj212_pw(args: argparse.Namespace, settings: Settings) -> int:
    """Provision (``rotate``) or remove (``revoke``) a station's HJ 212 PW; it is stored only hashed."""
    import psycopg

    from devices.code import resolve
    from ingest.adapters.hj212.passwords import revoke_pw, set_pw

    try:
        code = resolve(args.code).full
        with psycopg.connect(_database_url(settings)) as conn:
            if args.action == "rotate":
                pw = set_pw(conn, code, args.pw, actor=args.actor)
                shown = "(as given)" if args.pw is not None else f"{pw}\n(shown once; stored only hashed)"
                print(f"HJ 212 PW of {code}: {shown}")
            else:
                revoke_pw(conn, code, actor=args.actor)
                print(f"HJ 212 PW of {code} revoked")
    except DevicesError as exc:
        return _device_error(args.code, exc)
    # The edge re-reads the hashes every 30 s; a connected station is checked again on its next frame.
    return 0


def _service_user(text: str, role: str) -> ServiceUser:
    """``NAME:SECRET`` or ``NAME:@FILE`` (the secret read from a file, so it is not in the process list).

    Role ``app`` takes ``NAME:GRADE[:DISTRICT,…]:SECRET`` (:func:`parse_app_user`).
    """
    user = parse_app_user(text) if role == "app" else parse_service_user(text, role)
    if user.secret.startswith("@"):
        try:
            secret = Path(user.secret[1:]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CredentialError(f"service user {user.name}: cannot read the secret file: {exc}") from exc
        user = ServiceUser(user.name, secret, user.role, user.grade, user.districts)
    return user


def _write_private(path: Path, lines: Iterable[str]) -> None:
    """Write ``path`` owner-only (0600) through a temp file: Mosquitto never reads half a file."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.writelines(lines)
    tmp.replace(path)


def cmd_mosquitto_files(args: argparse.Namespace, settings: Settings) -> int:
    """Write Mosquitto's password files (``passwd``, ``services.passwd``) and acl_file (``acl``) into DIR.

    ``passwd``: every device that may log in (registered or active, with a
    credential) and every service account given, for the device listener, where
    Mosquitto replaces each client id by the username (``use_username_as_clientid``).
    ``services.passwd``: the platform's own accounts (gateway, downstream bridge,
    simulator, ``--service-user``), for the service listener, where they keep the
    client ids they choose; no device and no app can log in there, so none can take
    over the gateway's session. ``acl``: the topics of each role. Every file is
    replaced atomically; send Mosquitto SIGHUP afterwards to reload them.
    """
    import psycopg

    from devices.credentials import mosquitto_hash

    target = args.out or args.dir
    if not target:
        print("error: give the output directory (--out DIR)", file=sys.stderr)
        return 2
    try:
        services = [_service_user(s, "all") for s in args.service_user]
        for role in ("gateway", "downstream", "simulator", "app"):
            services += [_service_user(s, role) for s in getattr(args, f"{role}_user")]
    except CredentialError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = [u.name for u in services]
    if len(set(names)) != len(names):
        print(f"error: a service user is given twice: {names}", file=sys.stderr)
        return 2
    directory = Path(target)
    directory.mkdir(parents=True, exist_ok=True)
    passwd, acl = directory / "passwd", directory / "acl"
    hashed_services = [f"{user.name}:{mosquitto_hash(user.secret)}\n" for user in services]
    # Apps are third parties: they log in on the device listener, under their own name.
    platform_only = [line for user, line in zip(services, hashed_services, strict=True) if user.role != "app"]
    _write_private(directory / "services.passwd", platform_only)
    tmp = passwd.with_suffix(".tmp")
    count = 0
    # Written to a private temp file, then renamed: Mosquitto never reads half a file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.writelines(hashed_services)
        with psycopg.connect(_database_url(settings)) as conn, conn.transaction():
            cur = conn.cursor(name="mosquitto_passwd")
            cur.execute(
                "select code, mosquitto_hash from devices where mosquitto_hash is not null and state = any(%s)"
                " order by code",
                (sorted(ACCEPTING),),
            )
            for code, hashed in cur:
                out.write(f"{code}:{hashed}\n")
                count += 1
    tmp.replace(passwd)
    acl_tmp = acl.with_suffix(".tmp")
    acl_tmp.write_text(render_acl_file(services), encoding="utf-8")
    acl_tmp.replace(acl)
    print(
        f"wrote {passwd} ({count} devices, {len(services)} service users), {directory / 'services.passwd'} and {acl}",
        file=sys.stderr,
    )
    return 0


def cmd_permit(args: argparse.Namespace, settings: Settings) -> int:
    """Import a discharge permit from YAML, or export one (devices/permits.py)."""
    import psycopg
    import yaml

    from devices.models import DeviceModel, shipped_models
    from devices.permits import load_permit, parse_permit, permit_document, save_permit

    models = shipped_models()

    async def run(text: str) -> int:
        async with await psycopg.AsyncConnection.connect(_database_url(settings)) as conn:
            if args.action == "export":
                permit = await load_permit(conn, args.target)
                if permit is None:
                    print(f"error: no permit {args.target}", file=sys.stderr)
                    return 2
                print(yaml.safe_dump(permit_document(permit), allow_unicode=True, sort_keys=False), end="")
                return 0
            rows = await (await conn.execute("select code, model from devices")).fetchall()
            model_keys: dict[str, str] = {str(r[0]): str(r[1]) for r in rows}

            def model_of(code: str) -> DeviceModel:
                if code not in model_keys:
                    raise UnknownDeviceError(code)
                return models.get(model_keys[code])

            doc = yaml.safe_load(text)
            permit = parse_permit(doc, model_of)
            await save_permit(conn, permit)
            print(f"permit {permit.number}: {len(permit.limits)} limits saved", file=sys.stderr)
            return 0

    try:
        return asyncio.run(run(Path(args.target).read_text(encoding="utf-8") if args.action == "import" else ""))
    except (DevicesError, OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``devices`` and its subcommands to the main CLI's subparsers."""
    p = subparsers.add_parser("devices", help="device ledger: import, export, credentials, Mosquitto files")
    sub = p.add_subparsers(dest="devices_command", required=True, metavar="DEVICES_COMMAND")

    q = sub.add_parser("import", help="validate and import devices from CSV or JSON (array or JSON Lines)")
    q.add_argument("file", help="CSV or JSON file of devices (columns: docs/device-code.md)")
    q.add_argument("--format", choices=["csv", "json"], default=None, help="default: from the file name")
    q.add_argument("--dry-run", action="store_true", help="validate and report, change nothing")
    q.add_argument("--actor", default="cli-import", help="recorded as created_by / updated_by")
    q.add_argument("--report", default=None, help="also write the full report as JSON here")
    q.set_defaults(func=cmd_import)

    q = sub.add_parser("export", help="export the ledger as CSV (import format, with contacts)")
    q.add_argument("file", help="output file, or - for stdout")
    q.set_defaults(func=cmd_export)

    q = sub.add_parser("permit", help="import a pollution source's discharge permit (YAML), or export one")
    q.add_argument("action", choices=["import", "export"], help="import: FILE → ledger; export: NUMBER → stdout")
    q.add_argument("target", help="import: the permit's YAML file (docs/store.md); export: the permit number")
    q.set_defaults(func=cmd_permit)

    q = sub.add_parser("credentials", help="MQTT credentials of a device, or its HJ 212 PW (--hj212)")
    q.add_argument("action", choices=["rotate", "revoke"], help="rotate: issue a new secret; revoke: refuse it")
    q.add_argument("code", help="device code or alias")
    q.add_argument("--actor", default="cli", help="recorded in the audit log as who did it")
    q.add_argument("--hj212", action="store_true", help="the station's HJ 212 PW instead of the MQTT secret")
    q.add_argument("--pw", default=None, help="with --hj212 rotate: record the station's PW instead of a new one")
    q.set_defaults(func=cmd_credentials)

    q = sub.add_parser(
        "mosquitto-files",
        help="write Mosquitto password and ACL files into DIR (then SIGHUP Mosquitto)",
        description="Renders DIR/passwd (devices that may log in, plus service accounts: the device "
        "listener, where each client id is replaced by the username), DIR/services.passwd (the platform's "
        "own accounts, apps excepted: the service listener, where they keep their client ids) and DIR/acl "
        "(devices: publish under citybrain/up/<own code>/, read citybrain/cmd/<own code>; services: "
        "the topics of their role). A secret given as @FILE is read from that file.",
    )
    q.add_argument("dir", nargs="?", default=None, help="output directory (or --out)")
    q.add_argument("--out", default=None, help="output directory")
    q.add_argument(
        "--service-user",
        action="append",
        default=[],
        metavar="NAME:SECRET",
        help="account with access to every citybrain topic (repeatable; admin tools, development)",
    )
    q.add_argument(
        "--gateway-user",
        action="append",
        default=[],
        metavar="NAME:SECRET",
        help="gateway/edge: read citybrain/up/#, write citybrain/cmd/#, citybrain/alerts/# and the downstream "
        "views citybrain/down/#, citybrain/down-internal/#, citybrain/down-sensitive/#",
    )
    q.add_argument(
        "--downstream-user",
        action="append",
        default=[],
        metavar="NAME:SECRET",
        help="downstream consumer: read the public view citybrain/down/# and citybrain/alerts/#",
    )
    q.add_argument(
        "--simulator-user",
        action="append",
        default=[],
        metavar="NAME:SECRET",
        help="simulators: write citybrain/up/#, read citybrain/cmd/#",
    )
    q.add_argument(
        "--app-user",
        action="append",
        default=[],
        metavar="NAME:GRADE[:DISTRICT,...]:SECRET",
        help="downstream app: reads the views up to GRADE (public, internal, sensitive) and the alerts, "
        "of the given districts or all (repeatable)",
    )
    q.set_defaults(func=cmd_mosquitto_files)
