"""The chat page served by `aigw dev`: files, config, refusals, and JavaScript that parses."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from aigw.dev import DevGateway, Ports, running
from components.settings import StackSettings
from components.web_app import connect_sources, content_security_policy, security_headers, web_files

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"


@pytest.fixture(scope="module")
def gateway() -> Iterator[DevGateway]:
    settings = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
    with running(settings, ports=Ports(0, 0, 0, 0), pacing_s=0.0, stack=f"web{secrets.token_hex(3)}") as gw:
        yield gw


def base(gw: DevGateway) -> str:
    return gw.info["http"].removesuffix("/event")


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def test_the_page_has_landmarks_and_labelled_inputs(gateway: DevGateway) -> None:
    status, content_type, body = get(base(gateway) + "/")
    assert status == 200 and content_type.startswith("text/html")
    html = body.decode()
    for landmark in ("<header", "<main", "<nav"):
        assert landmark in html
    assert 'aria-live="polite"' in html
    inputs = set(re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', html))
    assert {"username", "password", "prompt", "model"} <= inputs
    for input_id in inputs:
        assert f'<label for="{input_id}"' in html, input_id


def test_dev_json_names_the_page_and_the_page_is_there(gateway: DevGateway) -> None:
    assert gateway.info["web"] == base(gateway) + "/"
    status, content_type, _ = get(gateway.info["web"])
    assert status == 200 and content_type.startswith("text/html")


def test_config_json_names_the_gateway_endpoints(gateway: DevGateway) -> None:
    status, content_type, body = get(base(gateway) + "/config.json")
    assert status == 200 and content_type.startswith("application/json")
    config = json.loads(body)
    info = gateway.info
    assert config["http"] == info["http"] and config["realtime"] == info["realtime"]
    assert config["region"] == info["region"]
    assert config["cognito"]["endpoint"] == info["cognito"]["endpoint"]
    assert config["cognito"]["user_pool_id"] == info["cognito"]["user_pool_id"]
    assert config["cognito"]["client_id"] == info["cognito"]["client_id"]
    assert config["models"] and "demo_user" not in config  # no credentials on the page


def get_headers(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers


@pytest.mark.parametrize("path", ["/", "/app.js", "/config.json"])
def test_the_page_is_served_with_the_deployed_security_headers(gateway: DevGateway, path: str) -> None:
    headers = get_headers(base(gateway) + path)
    config = gateway.web_config()
    expected = security_headers(content_security_policy(connect_sources(config)))
    for name, value in expected.items():
        if name == "Strict-Transport-Security":
            assert headers.get(name) is None  # never pinned to https on localhost
        else:
            assert headers.get(name) == value, name
    csp = headers["Content-Security-Policy"]
    # The page may talk to the local gateway itself and to moto's Cognito, and to nothing else.
    connect = next(d for d in csp.split("; ") if d.startswith("connect-src ")).split()[1:]
    moto = urlparse(config["cognito"]["endpoint"])
    events = urlparse(config["http"])
    assert sorted(connect) == sorted(["'self'", f"http://{events.netloc}", f"ws://{events.netloc}",
                                      f"http://{moto.netloc}"])
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp


def test_the_page_is_served_file_for_file_as_the_stack_uploads_it(gateway: DevGateway) -> None:
    # One list of files and one content-type table for both: what the WebApp component uploads, aigw dev serves.
    uploaded = web_files(WEB)
    assert {f.key for f in uploaded} >= {"index.html", "app.js", "events.js", "cognito.js", "markdown.js"}
    for file in uploaded:
        status, content_type, body = get(f"{base(gateway)}/{file.key}")
        assert (status, content_type, body) == (200, file.content_type, file.path.read_bytes()), file.key


@pytest.mark.parametrize(("name", "kind"), [
    ("app.js", "text/javascript"), ("events.js", "text/javascript"), ("cognito.js", "text/javascript"),
    ("style.css", "text/css"), ("index.html", "text/html"),
])
def test_page_files_are_served_with_their_types(gateway: DevGateway, name: str, kind: str) -> None:
    status, content_type, body = get(f"{base(gateway)}/{name}")
    assert status == 200 and content_type.startswith(kind)
    assert body == (WEB / name).read_bytes()


@pytest.mark.parametrize("path", [
    "/../pyproject.toml", "/%2e%2e/pyproject.toml", "/%2E%2E%2Fpyproject.toml", "/..%2fpyproject.toml",
    "/web/index.html", "/missing.js", "/.hidden", "/%2e%2e",
])
def test_nothing_outside_the_page_is_served(gateway: DevGateway, path: str) -> None:
    # http.client sends the path as given (urllib would too, but be explicit about no normalisation).
    import http.client

    netloc = urlparse(base(gateway)).netloc
    connection = http.client.HTTPConnection(netloc, timeout=5)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 404, (path, response.status)
    assert b"[project]" not in body


def test_the_events_api_still_answers_next_to_the_page(gateway: DevGateway) -> None:
    status, _, _ = get(gateway.info["http"])  # GET /event is not a publish
    assert status == 405


JS_FILES = sorted(WEB.glob("*.js"))


@pytest.mark.parametrize("path", JS_FILES, ids=lambda p: p.name)
def test_javascript_parses_and_never_writes_html(path: Path) -> None:
    source = path.read_text()
    assert not re.search(r"\.(innerHTML|outerHTML)\s*\+?=|insertAdjacentHTML|document\.write", source)
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    # As a module (what the page loads): `node --check file.js` parses ESM-looking files leniently and passes
    # errors a browser refuses, such as a redeclared name.
    result = subprocess.run([node, "--input-type=module", "--check"], input=source, capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 0, result.stderr


def test_forms_never_send_passwords_in_a_url() -> None:
    # Should a script fail to load, a form submits itself natively: with POST (which the CSP's form-action
    # 'none' then blocks), a password never lands in a URL, a history entry or a server log.
    html = (WEB / "index.html").read_text()
    forms = re.findall(r"<form\b[^>]*>", html)
    assert forms and all('method="post"' in form for form in forms), forms
