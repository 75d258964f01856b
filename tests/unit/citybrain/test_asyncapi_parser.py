"""The served AsyncAPI document passes the reference parser (@asyncapi/parser) with no error.

Standard tools read the document as downloaded from ``/asyncapi.yaml``; the test
runs the AsyncAPI Initiative's own parser on exactly those bytes. It needs
Node.js and npm (``.ci/run`` installs them); the parser is installed once into
``var/npm`` at a pinned version.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from citybrain.routes import schemas

ROOT = Path(__file__).resolve().parents[3]
PARSER = "@asyncapi/parser@3.6.6"
PREFIX = ROOT / "var" / "npm"
SCRIPT = """
import { Parser } from '@asyncapi/parser';
import fs from 'node:fs';
const text = fs.readFileSync(process.argv[2], 'utf8');
const { document, diagnostics } = await new Parser().parse(text);
console.log(JSON.stringify({
  parsed: Boolean(document),
  diagnostics: diagnostics.map(d => ({ code: d.code, severity: d.severity, message: d.message, path: d.path })),
}));
"""


@pytest.fixture(scope="module")
def parser_dir() -> Path:
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm and node, "Node.js and npm are needed for the AsyncAPI parser test (.ci/run installs nodejs and npm)"
    if not (PREFIX / "node_modules" / "@asyncapi" / "parser").is_dir():
        PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", "--silent", PARSER],
            check=True,
            timeout=240,
        )
    (PREFIX / "check.mjs").write_text(SCRIPT, encoding="utf-8")
    return PREFIX


@pytest.fixture
async def downloaded(tmp_path: Path) -> Path:
    app = FastAPI()
    app.include_router(schemas.build(None))  # type: ignore[arg-type]  # the context is unused
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.get("/asyncapi.yaml")  # no credentials: the document is public
    assert r.status_code == 200
    doc = tmp_path / "asyncapi.yaml"  # alone in its folder, as after a download
    doc.write_bytes(r.content)
    return doc


def test_downloaded_asyncapi_has_no_parser_errors(parser_dir: Path, downloaded: Path) -> None:
    doc = downloaded
    out = subprocess.run(
        ["node", str(parser_dir / "check.mjs"), str(doc)], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(out.stdout)
    errors = [d for d in result["diagnostics"] if d["severity"] == 0]
    assert result["parsed"] and not errors, json.dumps(errors, indent=1, ensure_ascii=False)
