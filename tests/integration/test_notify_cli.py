"""``citybrain notify`` on real PostgreSQL: add (secret from the environment), list masked, deliveries, delete."""

from __future__ import annotations

import json

import psycopg
import pytest

from citybrain.cli import build_parser
from citybrain.settings import Settings

pytestmark = pytest.mark.integration


def _run(argv: list[str], database_url: str) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args, Settings(database_url=database_url))
    return result


def test_add_list_deliveries_delete(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROBOT_SECRET", "SECxyz")
    url = "https://oapi.dingtalk.com/robot/send?access_token=tok123"
    argv = ["notify", "add", "值班群", url, "--format", "dingtalk_markdown", "--rule", "air.*"]
    assert (
        _run([*argv, "--min-severity", "major", "--district", "350203", "--secret-env", "ROBOT_SECRET"], database_url)
        == 0
    )
    sub_id = int(capsys.readouterr().out.strip())
    assert _run(["notify", "list"], database_url) == 0
    listed = capsys.readouterr().out
    assert f"{sub_id}\t值班群\tdingtalk_markdown\tair.*\t>=major\t350203\t" in listed
    assert "access_token=***" in listed and "signed" in listed
    assert "tok123" not in listed and "SECxyz" not in listed
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select secret, url from notification_subscriptions where id = %s", (sub_id,)).fetchone()
        assert row == ("SECxyz", url)
        conn.execute(
            "insert into notification_deliveries (subscription_id, alert_id, transition, severity, alert, status,"
            " attempts) values (%s, 'a1', 'open', 'major', '{}', 'delivered', 1)",
            (sub_id,),
        )
    assert _run(["notify", "deliveries", str(sub_id)], database_url) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert json.loads(line)["status"] == "delivered"

    assert _run(["notify", "add", "x", "ftp://nope"], database_url) == 1
    assert "http or https" in capsys.readouterr().err
    assert _run(["notify", "add", "x", url, "--secret-env", "NOT_SET_ANYWHERE"], database_url) == 1
    assert _run(["notify", "delete", str(sub_id)], database_url) == 0
    assert _run(["notify", "delete", str(sub_id)], database_url) == 1
    with psycopg.connect(database_url) as conn:
        actions = [r[0] for r in conn.execute("select action from audit_log order by seq").fetchall()]
    assert actions == ["notification.create", "notification.delete"]
