"""``citybrain`` command line: the process edge, where settings are read once."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from citybrain.harness import HarnessError, parse_mqtt_url
from citybrain.kafka_compat import process_client_id
from citybrain.logs import logging_dict, setup_logging
from citybrain.settings import Settings
from core.topics import KafkaTopics
from ingest.mqtt_tls import MqttTls, MqttTlsError

__all__ = ["main"]

log = logging.getLogger("citybrain")


def _need(value: str | None, name: str) -> str:
    if not value:
        raise SystemExit(f"error: {name} is not set; `citybrain demo` sets it, or export it yourself")
    return value


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGINT/SIGTERM set ``stop``.

    The event is set from a short-lived thread, never inside the handler: the
    handler runs in the main thread, which may be inside ``stop.wait()`` holding
    the event's lock, and setting it there deadlocks (seen: a demo that ignored
    Ctrl-C).
    """

    def handler(signum: int, frame: object) -> None:
        threading.Thread(target=stop.set, name="stop-signal", daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from citybrain.platform import Platform, demo_device_codes

    if args.size is not None:
        settings = settings.model_copy(update={"demo_size": args.size})
    if args.port is not None:
        settings = settings.model_copy(update={"api_port": args.port})
    print("citybrain demo: bringing the platform up", flush=True)
    # A private Mosquitto whenever it is installed (durable sessions, as in production);
    # the embedded amqtt otherwise, which says at start that it is for development.
    platform = Platform.from_settings(settings, mqtt_broker="auto")
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=args.start_ago)
        platform.start(fleet=settings.demo_size, speed=args.speed, start=start)
        user, password = platform.add_user("demo", "admin")
        print("\ncitybrain is running:", flush=True)
        for k, v in platform.urls().items():
            print(f"  {k:<20} {v}")
        print(f"  {'console login':<20} {user} / {password}   (shown once)")
        # The demo registers one air station that no simulator drives: the user's own.
        code = demo_device_codes(1)[0]
        mqtt = platform.services.mqtt
        assert mqtt is not None
        print(f"\nPublish a reading yourself, as your own station {code} (no simulator drives it):")
        print(
            f"  mosquitto_pub -h {mqtt.host} -p {mqtt.port} -q 1 -t citybrain/up/{code}/telemetry "
            f'-m "{{\\"v\\":1,\\"ts\\":\\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\\",\\"metrics\\":{{\\"pm25\\":80}}}}"'
        )
        # Every data route needs a principal: the demo's admin API key (shown once).
        key = platform.api_key("admin")
        print(f"  curl -H 'X-Api-Key: {key}' http://127.0.0.1:{platform.api_port}/api/v1/devices/{code}/latest")
        print("\nPress Ctrl-C to stop.", flush=True)
        while not stop.wait(1.0):
            for name in platform.supervise_once():
                print(f"{name} exited unexpectedly and was restarted", file=sys.stderr)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\nstopping…", flush=True)
        platform.stop()
        print("stopped.", flush=True)
    return 0


def cmd_gateway(args: argparse.Namespace, settings: Settings) -> int:
    from citybrain.httpmini import MetricsServer
    from devices.models import shipped_models
    from ingest.gateway import Gateway, GatewayConfig, GatewayMetrics
    from ingest.throttle import ThrottleConfig

    mqtt = parse_mqtt_url(_need(settings.mqtt_url, "CITYBRAIN_MQTT_URL"))
    throttle = (
        ThrottleConfig(
            factor=settings.gateway_flood_factor,
            burst=settings.gateway_flood_burst,
            window_s=settings.gateway_flood_window_s,
            max_devices=settings.gateway_flood_max_devices,
        )
        if settings.gateway_flood_factor > 0
        else None
    )
    cfg = GatewayConfig(
        mqtt_host=mqtt.host,
        mqtt_port=mqtt.port,
        mqtt_username=mqtt.username,
        mqtt_password=mqtt.password,
        kafka_bootstrap=_need(settings.kafka_bootstrap, "CITYBRAIN_KAFKA_BOOTSTRAP"),
        topics=KafkaTopics(settings.topic_prefix),
        partitions=settings.partitions,
        queue_max=settings.gateway_queue_max,
        batch_max=settings.gateway_batch_max,
        linger_ms=settings.gateway_linger_ms,
        max_payload_bytes=settings.max_payload_bytes,
        shared_group=settings.gateway_shared_group,
        client_id=settings.gateway_client_id,
        kafka_client_id=process_client_id("gateway"),
        kafka_replay_s=settings.gateway_kafka_replay_s,
        device_classes=tuple(shipped_models().device_classes()),
        bridge_readings=settings.gateway_bridge_readings,
        bridge_grades=settings.bridge_grades(),
        throttle=throttle,
        mqtt_tls=_mqtt_tls(settings),
    )
    registry = CollectorRegistry()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        gw = Gateway(cfg, GatewayMetrics(registry))
        server = MetricsServer(
            registry, gw.healthy, settings.gateway_metrics_host, args.metrics_port or settings.gateway_metrics_port
        )
        await gw.start()
        await server.start()
        try:
            await gw.wait_connected(30)
            log.info("gateway up: MQTT %s:%d → Kafka %s", cfg.mqtt_host, cfg.mqtt_port, cfg.kafka_bootstrap)
            await stop.wait()
        finally:
            await server.stop()
            await gw.stop()

    asyncio.run(run())
    return 0


def _wait_for_promotion(mask: set[int | signal.Signals]) -> None:
    """A standby worker: wait for SIGUSR1 (take over) or for a stop signal (leave).

    SIGUSR1 has been blocked since the start (``mask`` is the mask before that): the
    supervisor promotes a standby only once it blocks or catches SIGUSR1
    (``citybrain.platform``), so the signal is never taken with its default action (death),
    and one that came during the imports is delivered here. The handlers only wake the
    wait (Python writes the signal's number to the wakeup fd); Faust installs its own later.
    """
    import socket

    wanted = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
    r, w = socket.socketpair()
    w.setblocking(False)
    previous = {s: signal.signal(s, lambda *_: None) for s in wanted}
    old_fd = signal.set_wakeup_fd(w.fileno())
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a SIGUSR1 already pending arrives now
    got = signal.Signals(r.recv(1)[0])
    signal.set_wakeup_fd(old_fd)
    for s, handler in previous.items():
        signal.signal(s, handler)
    r.close()
    w.close()
    if got != signal.SIGUSR1:
        logging.shutdown()
        os._exit(0)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    # A standby blocks SIGUSR1 before the heavy imports: the supervisor may promote it from now on.
    mask: set[int | signal.Signals] = set()
    if args.standby:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    from faust import Worker

    from alerts.anomaly.config import load_anomaly_config, shipped_anomaly_config
    from alerts.notify import RetryPolicy
    from alerts.rules import load_rules, shipped_rules
    from devices.models import shipped_models
    from streams.app import WorkerConfig, create_app, tune_gc
    from streams.debug import Capture

    cfg = WorkerConfig(
        kafka_bootstrap=_need(settings.kafka_bootstrap, "CITYBRAIN_KAFKA_BOOTSTRAP"),
        database_url=_need(settings.database_url, "CITYBRAIN_DATABASE_URL"),
        topics=KafkaTopics(settings.topic_prefix),
        partitions=settings.partitions,
        data_dir=str(Path(settings.data_dir) / "faust"),
        web_port=args.web_port or settings.worker_web_port,
        web_host=settings.worker_web_host,
        batch_max=settings.worker_batch_max,
        batch_within_s=settings.worker_batch_within_s,
        pool_size=settings.store_pool_size,
        pool_max_lifetime_s=settings.db_pool_max_lifetime_s,
        app_id=f"{settings.topic_prefix}-streams",
        max_future_skew_s=settings.max_future_skew_s,
        rules=load_rules(Path(settings.rules_dir)) if settings.rules_dir else shipped_rules(),
        store_batch_rows=settings.store_batch_rows,
        retention_days=settings.retention_days,
        rollup_retention_days=settings.rollup_retention_days(),
        maintenance_interval_s=settings.maintenance_interval_s,
        compress_after_days=settings.compress_after_days,
        offline_after_cadences=settings.offline_after_cadences,
        anomaly=(
            load_anomaly_config(Path(settings.anomaly_config)) if settings.anomaly_config else shipped_anomaly_config()
        ),
        role=settings.worker_role,
        downstream_views=settings.downstream_views,
        rules_dir=settings.rules_dir,
        rules_reload_s=settings.rules_reload_s,
        notify=RetryPolicy(
            attempts=settings.notify_attempts,
            first_wait_s=settings.notify_first_wait_s,
            max_wait_s=settings.notify_max_wait_s,
            timeout_s=settings.notify_timeout_s,
        ),
        notify_targets=settings.notify_targets(),
        dead_letter_retention_days=settings.dead_letter_retention_days,
        debug_capture=Capture(settings.debug_capture),
        state_cache_devices=settings.state_cache_devices,
        client_id=process_client_id("worker"),
    )
    tune_gc()
    app = create_app(cfg, CollectorRegistry(), shipped_models())
    if args.standby:
        # Everything is imported and built; nothing is connected. The rest (pool, index,
        # group join) is what a promoted standby still has to do.
        _wait_for_promotion(mask)
    worker = Worker(
        app,
        loglevel=settings.log_level.lower(),
        quiet=True,
        # Faust replaces the process's logging setup; give it ours so JSON lines stay JSON.
        logging_config=logging_dict(settings.log_level, settings.log_format),
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:  # pragma: no cover - execute_from_commandline always raises SystemExit
        code = 0
    # Faust has stopped: offsets committed, producer flushed, pool closed. Leave without the
    # interpreter's teardown, which spent seconds freeing the records fetched ahead of a
    # backlog (not drained on stop: streams/app.py) and pushed a SIGTERM past the supervisor's 10 s.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _mqtt_tls(settings: Settings) -> MqttTls | None:
    """The platform's MQTT TLS settings (None: plain MQTT); a bad setting stops the process here."""
    try:
        return MqttTls.from_settings(settings.mqtt_tls_ca, settings.mqtt_tls_cert, settings.mqtt_tls_key)
    except MqttTlsError as exc:
        raise SystemExit(f"error: {exc}") from exc


def _api_tls(settings: Settings) -> dict[str, str]:
    """uvicorn's HTTPS arguments from CITYBRAIN_API_TLS_CERT/KEY (empty: plain HTTP)."""
    cert, key = settings.api_tls_cert, settings.api_tls_key
    if not cert and not key:
        return {}
    if not (cert and key):
        raise SystemExit("error: HTTPS needs both CITYBRAIN_API_TLS_CERT and CITYBRAIN_API_TLS_KEY")
    for path in (cert, key):
        if not Path(path).is_file():
            raise SystemExit(f"error: API TLS file {path} does not exist")
    return {"ssl_certfile": cert, "ssl_keyfile": key}


def _api_proxy_headers(settings: Settings) -> dict[str, Any]:
    """uvicorn's forwarding-header arguments, always explicit.

    uvicorn believes X-Forwarded-For/-Proto from 127.0.0.1 (or $FORWARDED_ALLOW_IPS) unless
    told otherwise, and the login limiter and the audit log key on the client address: so
    they are believed only from CITYBRAIN_TRUSTED_PROXIES, and by default from nobody.
    """
    proxies = settings.proxy_networks()
    if not proxies:
        return {"proxy_headers": False, "forwarded_allow_ips": []}
    return {"proxy_headers": True, "forwarded_allow_ips": list(proxies)}


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from citybrain.api import create_api
    from citybrain.security.guard import EdgeLimits
    from devices.models import shipped_models
    from ingest.kafka_sink import KafkaSinkConfig

    tls = _api_tls(settings)  # before anything starts: half a TLS setting stops here
    ingest = KafkaSinkConfig(
        _need(settings.kafka_bootstrap, "CITYBRAIN_KAFKA_BOOTSTRAP"),
        KafkaTopics(settings.topic_prefix),
        partitions=settings.partitions,
        source="webhook",
    )
    app = create_api(
        _need(settings.database_url, "CITYBRAIN_DATABASE_URL"),
        shipped_models(),
        CollectorRegistry(),
        ingest=ingest,
        webhook_token=settings.webhook_token,
        webhook_max_body_bytes=settings.webhook_max_body_bytes,
        limits=EdgeLimits(settings.api_max_body_bytes, settings.api_anonymous_max_body_bytes),
        max_future_skew=timedelta(seconds=settings.max_future_skew_s),
        notify_targets=settings.notify_targets(),
        pool_max_lifetime_s=settings.db_pool_max_lifetime_s,
    )
    # Open SSE streams must not hold a shutdown for long.
    uvicorn.run(
        app,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level="warning",
        timeout_graceful_shutdown=3,
        **_api_proxy_headers(settings),
        **tls,  # type: ignore[arg-type]
    )
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    mqtt = parse_mqtt_url(_need(settings.mqtt_url, "CITYBRAIN_MQTT_URL"))
    stop = threading.Event()
    _stop_on_signals(stop)
    if not (args.city or args.scenario or args.size):
        # The demo's path (`citybrain demo` spawns `simulate --devices N --interval S`): real-time air stations.
        from citybrain.platform import demo_device_codes
        from simulators.air import AirStation, Episode
        from simulators.mqtt_fleet import SimulatorError, run_fleet

        codes = demo_device_codes(args.devices)
        # Station 0 has a recurring pollution episode so the demo shows alerts.
        stations = [
            AirStation(c, seed=args.seed + i, episode=Episode(20, 30, 4.0, 120) if i == 0 else None)
            for i, c in enumerate(codes)
        ]
        try:
            sent = run_fleet(
                stations,
                host=mqtt.host,
                port=mqtt.port,
                interval_s=args.interval,
                stop=stop,
                duration_s=args.duration,
                username=mqtt.username,
                password=mqtt.password,
            )
        except SimulatorError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"sent {sent} messages", flush=True)
        return 0

    from simulators.fleet import FleetError
    from simulators.runner import DEFAULT_MIX, SimulateError, SimulateOptions, parse_mix, score_run, simulate
    from simulators.scenario import ScenarioError

    if args.score and not args.scenario:
        print("error: --score needs --scenario (the ground truth comes from the scenario)", file=sys.stderr)
        return 2

    hj212 = None
    if args.hj212:
        host, _, port = args.hj212.rpartition(":")
        hj212 = (host or "127.0.0.1", int(port))
    try:
        opts = SimulateOptions(
            host=mqtt.host,
            port=mqtt.port,
            username=mqtt.username,
            password=mqtt.password,
            scenario=args.scenario,
            size=args.size,
            start=args.start,
            mix=parse_mix(args.mix) if args.mix else dict(DEFAULT_MIX),
            duration_s=args.sim_duration,
            speed=args.speed or None,
            seed=args.seed,
            connections=args.connections,
            interval_s=args.report_interval,
            faults=args.faults,
            sent_log=args.sent_log,
            hj212=hj212,
            progress=not args.quiet,
            database_url=settings.database_url,
            register=args.register or args.score,
            edge_refresh_s=settings.hj212_refresh_s + 1,
        )
        stats, scenario = simulate(opts, stop)
    except (FleetError, ScenarioError, SimulateError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"records {stats.records}, messages {stats.messages} ({stats.publish_rate:,.0f}/s), "
        f"PUBACKs {stats.acked}/{stats.published}, withheld {stats.withheld}, HJ 212 frames {stats.hj212_frames}",
        flush=True,
    )
    if scenario is not None and args.score:
        try:
            report = score_run(opts, scenario, timeout=args.score_timeout)
        except SimulateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("\n".join(report.lines()), flush=True)
    elif scenario is not None:
        print(f"scenario {scenario.id}: {len(scenario.expected())} expected alerts (score: --score)")
    return 0


def cmd_edge(args: argparse.Namespace, settings: Settings) -> int:
    """Protocol adapters and downlink: the HJ 212 TCP server and the command dispatcher."""
    import psycopg
    from psycopg_pool import AsyncConnectionPool, PoolTimeout

    from citybrain.httpmini import MetricsServer
    from devices.ledger import Ledger
    from devices.models import shipped_models
    from ingest.adapters.hj212.connector import Hj212Metrics, Hj212Server, Hj212ServerConfig, StationDirectory
    from ingest.adapters.hj212.passwords import refresh_directory
    from ingest.commands import (
        CommandDispatcher,
        CommandMetrics,
        CommandStore,
        Hj212Transport,
        MqttCommandTransport,
    )
    from ingest.kafka_sink import KafkaSink, KafkaSinkConfig, KafkaSinkMetrics

    mqtt = parse_mqtt_url(_need(settings.mqtt_url, "CITYBRAIN_MQTT_URL"))
    bootstrap = _need(settings.kafka_bootstrap, "CITYBRAIN_KAFKA_BOOTSTRAP")
    url = _need(settings.database_url, "CITYBRAIN_DATABASE_URL")
    registry = CollectorRegistry()
    models = shipped_models()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=4,
            max_lifetime=settings.db_pool_max_lifetime_s,
            open=False,
            check=AsyncConnectionPool.check_connection,
        )
        await pool.open(wait=True, timeout=30)
        ledger = Ledger(pool, models)
        # One directory, owned here and refreshed in place: the server resolves through
        # it, so a PW provisioned after start-up is seen at the next refresh.
        directory = StationDirectory()
        hj212_metrics = Hj212Metrics(registry)

        async def refresh(*, first: bool = False) -> None:
            try:
                await refresh_directory(directory, ledger)
            except (psycopg.Error, PoolTimeout, OSError) as exc:
                if first:  # no directory to keep yet: fail fast
                    raise
                # Keep the last good directory: a database blip must not stop the stations.
                hj212_metrics.directory_refreshes.labels("error").inc()
                log.warning("HJ 212 station directory not refreshed (kept the previous one): %s", exc)
                return
            hj212_metrics.directory_refreshes.labels("ok").inc()
            hj212_metrics.known_stations.set(directory.stations)
            hj212_metrics.stations_with_pw.set(directory.with_pw)

        await refresh(first=True)
        sink = KafkaSink(
            KafkaSinkConfig(bootstrap, KafkaTopics(settings.topic_prefix), settings.partitions, source="hj212"),
            KafkaSinkMetrics(registry),
        )
        await sink.start()
        # Station PWs are checked against the ledger's scrypt hashes (devices credentials
        # rotate CODE --hj212), re-read with the MN map every CITYBRAIN_HJ212_REFRESH_S.
        server = Hj212Server(
            Hj212ServerConfig(
                host=settings.hj212_host,
                port=args.hj212_port or settings.hj212_port,
                max_connections_per_address=settings.hj212_max_connections_per_address,
                idle_timeout_s=settings.hj212_idle_timeout_s,
                frame_deadline_s=settings.hj212_frame_deadline_s,
                check_pw=settings.hj212_check_pw,
            ),
            sink,
            directory.resolve,
            hj212_metrics,
        )
        await server.start()
        mqtt_tx = MqttCommandTransport(
            mqtt.host, mqtt.port, username=mqtt.username, password=mqtt.password, tls=_mqtt_tls(settings)
        )
        await mqtt_tx.start()
        dispatcher = CommandDispatcher(
            CommandStore(pool),
            {"mqtt": mqtt_tx, "hj212": Hj212Transport(server, directory.mn_of)},
            CommandMetrics(registry),
            max_attempts=settings.command_max_attempts,
        )
        await dispatcher.start()
        metrics = MetricsServer(registry, lambda: True, settings.gateway_metrics_host, args.metrics_port)
        await metrics.start()
        log.info(
            "edge up: HJ 212 on %s:%d, commands over MQTT %s:%d", settings.hj212_host, server.port, mqtt.host, mqtt.port
        )
        print(f"HJ212_PORT={server.port}", flush=True)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.hj212_refresh_s)
                if not stop.is_set():
                    await refresh()
        finally:
            await metrics.stop()
            await dispatcher.stop()
            await mqtt_tx.stop()
            await server.stop()
            await sink.stop()
            await pool.close()

    asyncio.run(run())
    return 0


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from citybrain.platform import migrate
    from devices.models import shipped_models

    applied = migrate(_need(settings.database_url, "CITYBRAIN_DATABASE_URL"), shipped_models())
    print(f"applied migrations: {applied or 'none (up to date)'}")
    return 0


def cmd_mqtt_broker(args: argparse.Namespace, settings: Settings) -> int:
    from citybrain import mqtt_broker

    argv = ["--host", args.host, "--port", str(args.port)]
    if args.database_url:
        argv += ["--database-url", args.database_url]
    for user in args.service_user or []:
        argv += ["--service-user", user]
    if args.allow_anonymous:
        argv.append("--allow-anonymous")
    mqtt_broker.main(argv)
    return 0


def cmd_db_maintain(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg

    from devices.models import shipped_models
    from streams.errors import MaintenanceError
    from streams.retention import maintenance

    url = _need(settings.database_url, "CITYBRAIN_DATABASE_URL")

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            try:
                report = await maintenance(
                    conn,
                    shipped_models(),
                    datetime.now(UTC),
                    settings.retention_days,
                    compress_after_days=settings.compress_after_days,
                    rollup_retention_days=settings.rollup_retention_days(),
                )
            except MaintenanceError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        print(report.summary())
        return 0

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citybrain", description="City-scale IoT sensing hub. Settings come from CITYBRAIN_* variables."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("demo", help="start everything (servers, services, simulators) until Ctrl-C")
    p.add_argument(
        "--size",
        choices=["small", "city", "large"],
        default=None,
        help="located Xiamen fleet: small (~150 devices), city (~2,100) or large (~10,000); "
        "default CITYBRAIN_DEMO_SIZE",
    )
    p.add_argument(
        "--speed", type=float, default=1.0, help="simulated seconds per second (1: real cadences; more: a faster day)"
    )
    p.add_argument(
        "--start-ago",
        type=float,
        default=0.0,
        help="hours before now the simulated clock starts; with --speed N it reaches now after "
        "H/(N-1) hours (readings further ahead than CITYBRAIN_MAX_FUTURE_SKEW_S are flagged)",
    )
    p.add_argument("--port", type=int, default=None, help="API port (0: a free port)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("gateway", help="run the MQTT → Kafka gateway")
    p.add_argument("--metrics-port", type=int, default=0, help="port of /metrics and /healthz (0: a free port)")
    p.set_defaults(func=cmd_gateway)
    p = sub.add_parser("worker", help="run a stream worker (Faust)")
    p.add_argument(
        "--web-port", type=int, default=0, help="port of the worker's /metrics and /healthz (0: a free port)"
    )
    p.add_argument(
        "--standby",
        action="store_true",
        help="import and build everything, then wait for SIGUSR1 before starting (the supervisor's warm spare)",
    )
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("api", help="run the HTTP API")
    p.add_argument("--host", default=None, help="address to bind (default: CITYBRAIN_API_HOST)")
    p.add_argument("--port", type=int, default=None, help="port to bind (default: CITYBRAIN_API_PORT)")
    p.set_defaults(func=cmd_api)
    p = sub.add_parser("simulate", help="run simulated devices against the MQTT broker")
    p.add_argument("--devices", type=int, default=12, help="demo mode: simulated air stations")
    p.add_argument("--interval", type=float, default=2.0, help="demo mode: seconds between reports")
    p.add_argument("--duration", type=float, default=None, help="demo mode: stop after this many seconds")
    p.add_argument("--seed", type=int, default=42, help="random seed: the same seed sends the same traffic")
    p.add_argument(
        "--start",
        type=datetime.fromisoformat,
        default=None,
        help="simulated start time, ISO 8601 with offset (default: the scenario's, or now)",
    )
    p.add_argument("--city", action="store_true", help="simulate a city mix of every device class")
    p.add_argument("--scenario", default=None, help="scenario id (simulators/scenarios) or YAML path")
    p.add_argument("--mix", default=None, help="city mix, e.g. air-station=10,manhole-cover=200")
    p.add_argument(
        "--size",
        choices=["small", "city", "large"],
        default=None,
        help="the demo's located Xiamen fleet of this size (simulators/xiamen.py) instead of --mix",
    )
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per second (0: as fast as possible)")
    p.add_argument("--sim-duration", type=float, default=None, help="simulated seconds (default: scenario's, or 1 h)")
    p.add_argument(
        "--report-interval", type=float, default=None, help="simulated seconds between reports (default: cadence)"
    )
    p.add_argument("--connections", type=int, default=4, help="shared MQTT gateway connections")
    p.add_argument("--faults", type=Path, default=None, help="fault plan YAML")
    p.add_argument("--sent-log", type=Path, default=None, help="NDJSON ground-truth log")
    p.add_argument("--hj212", default=None, help="host:port of the HJ 212 server (water stations use TCP)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--register", action="store_true", help="import the simulated devices into the ledger first")
    p.add_argument(
        "--score",
        action="store_true",
        help="with --scenario: register, run, then score the platform's alerts from the database",
    )
    p.add_argument("--score-timeout", type=float, default=120.0, help="seconds to wait for the platform to drain")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("edge", help="run the HJ 212 TCP server and the downlink command dispatcher")
    p.add_argument("--hj212-port", type=int, default=0, help="HJ 212 TCP port (0: CITYBRAIN_HJ212_PORT or a free port)")
    p.add_argument("--metrics-port", type=int, default=0, help="port of /metrics and /healthz (0: a free port)")
    p.set_defaults(func=cmd_edge)
    p = sub.add_parser("db", help="database commands")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    q = dbsub.add_parser("upgrade", help="apply pending migrations")
    q.set_defaults(func=cmd_db_upgrade)
    q = dbsub.add_parser("maintain", help="partitions ahead, rollup refresh, retention (the worker runs it too)")
    q.set_defaults(func=cmd_db_maintain)
    p = sub.add_parser("mqtt-broker", help="run the embedded amqtt broker")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (development: keep it on loopback)")
    p.add_argument("--port", type=int, default=1883, help="MQTT port")
    p.add_argument("--database-url", default=None, help="ledger PostgreSQL: turns on device authentication")
    p.add_argument("--service-user", action="append", help="NAME:SECRET of a platform service (repeatable)")
    p.add_argument("--allow-anonymous", action="store_true", help="development only: let anonymous clients in")
    p.set_defaults(func=cmd_mqtt_broker)
    from citybrain.devices_cli import register as register_devices

    register_devices(sub)
    from citybrain.notify_cli import register as register_notify

    register_notify(sub)
    from citybrain.security import cli as sec

    p = sub.add_parser("audit", help="audit log")
    s = p.add_subparsers(dest="audit_command", required=True, metavar="AUDIT_COMMAND")
    s.add_parser("verify", help="recompute the audit hash chain").set_defaults(func=sec.cmd_audit_verify)
    p = sub.add_parser("users", help="users and service accounts")
    s = p.add_subparsers(dest="users_command", required=True, metavar="USERS_COMMAND")
    q = s.add_parser("add", help="create a user (prints its password once) or --service (prints an API key once)")
    sec.add_arguments(q)
    q.set_defaults(func=sec.cmd_users_add)
    p = sub.add_parser("keys", help="JWT signing keys")
    s = p.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    s.add_parser("rotate", help="new signing key; previous keys verify until their tokens expire").set_defaults(
        func=sec.cmd_keys_rotate
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    setup_logging(settings.log_level, settings.log_format)
    from citybrain.kafka_compat import install_empty_fetch_backoff

    install_empty_fetch_backoff(settings.kafka_empty_fetch_backoff_ms / 1000)
    result: int = args.func(args, settings)
    return result


if __name__ == "__main__":
    sys.exit(main())
