"""`aigw dev --tls` against a client nobody here wrote: AWS Amplify JS v6 (`aws-amplify/data` events), in Node.

Amplify signs in to the local Cognito (moto) with USER_PASSWORD_AUTH, opens the Events WebSocket over wss with
its access token, subscribes to the responses channel and sends a chat request twice: once with
`events.post` (HTTPS) and once with `channel.publish` (over the WebSocket). The answer must stream back as
`start`, `delta`..., `end` both times: the worker's own publishes go to the HTTPS endpoint too, so this also
proves the runtime trusts the local CA. Node trusts it through ``NODE_EXTRA_CA_CERTS``.

`npm ci` installs exactly what ``tests/local/amplify/package-lock.json`` names (Amplify v6 and ws v8; Dependabot
proposes upgrades) once per session into a temporary directory (registry access needed); without node/npm, or
when the install fails, the Amplify test is skipped with the reason.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from aigw.dev import DevGateway, Ports, running
from components.settings import StackSettings

ROOT = Path(__file__).resolve().parents[2]
NPM_PROJECT = Path(__file__).resolve().parent / "amplify"  # package.json + package-lock.json
NPM_INSTALL_TIMEOUT_S = 600
NODE_RUN_TIMEOUT_S = 30
MIN_NODE_MAJOR = 18  # global fetch, which Amplify uses for HTTP

# Run as an ES module from the install directory. Reads its settings from AIGW_AMPLIFY_CONFIG; prints one JSON
# object per line ({"kind": ...}); exits 0 once both answers ended, 1 on any failure.
AMPLIFY_SCRIPT = r"""
import { WebSocket } from 'ws';
globalThis.WebSocket = WebSocket; // Amplify's realtime provider expects a browser-style global WebSocket

const { Amplify } = await import('aws-amplify');
const { signIn, fetchAuthSession } = await import('aws-amplify/auth');
const { events } = await import('aws-amplify/data');

const cfg = JSON.parse(process.env.AIGW_AMPLIFY_CONFIG);
const emit = (record) => process.stdout.write(JSON.stringify(record) + '\n');
const fail = (stage, err) => {
  const detail = err?.errors?.[0]?.message ?? err?.message ?? JSON.stringify(err);
  emit({ kind: 'failure', stage, error: `${err?.name ?? 'Error'}: ${detail}` });
  process.exit(1);
};
setTimeout(() => fail('timeout', new Error(`no complete answers after ${cfg.timeoutMs} ms`)), cfg.timeoutMs).unref();

try {
  Amplify.configure({
    API: { Events: { endpoint: cfg.http, region: cfg.region, defaultAuthMode: 'userPool' } },
    Auth: {
      Cognito: {
        userPoolId: cfg.userPoolId,
        userPoolClientId: cfg.clientId,
        userPoolEndpoint: cfg.cognitoEndpoint, // the local Cognito (moto) instead of cognito-idp.<region>
      },
    },
  });
  const signedIn = await signIn({
    username: cfg.username,
    password: cfg.password,
    options: { authFlowType: 'USER_PASSWORD_AUTH' },
  });
  emit({ kind: 'signed_in', isSignedIn: signedIn.isSignedIn, step: signedIn.nextStep?.signInStep });
  const sub = (await fetchAuthSession()).tokens.accessToken.payload.sub;

  const ask = async (via, conversationId) => {
    const responses = await events.connect(`/responses/${sub}/${conversationId}`);
    let ended;
    const answered = new Promise((resolve, reject) => { ended = { resolve, reject }; });
    const subscription = responses.subscribe({
      next: (message) => {
        emit({ kind: 'event', via, event: message.event });
        if (['end', 'error'].includes(message.event?.type)) ended.resolve();
      },
      error: (err) => ended.reject(err),
    });
    await subscription.ready;
    emit({ kind: 'subscribed', via });
    const request = {
      requestId: `${via}-${Date.now()}`,
      conversationId,
      messages: [{ role: 'user', content: [{ text: `Hello from Amplify over ${via}` }] }],
    };
    const chatPath = `/chat/${sub}/${conversationId}`;
    if (via === 'http') {
      const failed = await events.post(chatPath, request);
      emit({ kind: 'published', via, failed: failed ?? [] });
    } else {
      const chat = await events.connect(chatPath);
      await chat.publish(request);
      emit({ kind: 'published', via, failed: [] });
      chat.close();
    }
    await answered;
    responses.close();
  };

  await ask('http', `amplify-http-${Date.now()}`);
  await ask('websocket', `amplify-ws-${Date.now()}`);
  await events.closeAll();
  emit({ kind: 'done' });
  // Amplify leaves a 15 s connection-init timer armed after a successful handshake; do not wait for it.
  process.exit(0);
} catch (err) {
  fail('run', err);
}
"""


def _node_major(node: str) -> int:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    return int(out.strip().lstrip("v").split(".")[0])


@pytest.fixture(scope="session")
def amplify_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the locked aws-amplify and ws installed (once per session) and the Amplify script."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the Amplify compatibility test needs node and npm on PATH")
    if _node_major(node) < MIN_NODE_MAJOR:
        pytest.skip(f"the Amplify compatibility test needs Node >= {MIN_NODE_MAJOR}")
    directory = tmp_path_factory.mktemp("amplify-js")
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(NPM_PROJECT / name, directory / name)
    started = time.monotonic()
    try:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=NPM_INSTALL_TIMEOUT_S,
            check=True,
            env={**os.environ, "npm_config_update_notifier": "false"},
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm ci took over {NPM_INSTALL_TIMEOUT_S} s")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"npm ci failed (registry unreachable?): {exc.stderr[-800:]}")
    print(f"npm ci (locked Amplify): {time.monotonic() - started:.1f} s")
    locked = json.loads((NPM_PROJECT / "package-lock.json").read_text())["packages"]
    for package in ("aws-amplify", "ws"):
        installed = json.loads((directory / "node_modules" / package / "package.json").read_text())["version"]
        assert installed == locked[f"node_modules/{package}"]["version"], f"{package} is not the locked release"
    (directory / "amplify_events.mjs").write_text(AMPLIFY_SCRIPT)
    return directory


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevGateway]:
    """One TLS gateway for the module. Its own stack name: moto keeps every table of this process in memory."""
    settings = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
    tls_dir = tmp_path_factory.mktemp("aigw-tls")
    previous = os.environ.get("SSL_CERT_FILE")
    stack = f"amplify{uuid.uuid4().hex[:8]}"
    gateway = running(
        settings, ports=Ports(0, 0, 0, 0), stack=stack, pacing_s=0.0, keepalive_s=5, tls=True, tls_dir=tls_dir
    )
    with gateway as gw:
        assert os.environ["SSL_CERT_FILE"] == str(tls_dir / "trust-bundle.pem")
        yield gw
    assert os.environ.get("SSL_CERT_FILE") == previous, "stopping the gateway must restore SSL_CERT_FILE"


def test_tls_mode_serves_https_and_wss_on_localhost(tls_gateway: DevGateway) -> None:
    info = tls_gateway.info
    http_url, realtime_url = urlsplit(info["http"]), urlsplit(info["realtime"])
    assert (http_url.scheme, http_url.hostname, http_url.path) == ("https", "localhost", "/event")
    assert (realtime_url.scheme, realtime_url.hostname, realtime_url.path) == ("wss", "localhost", "/event/realtime")
    assert realtime_url.port == http_url.port
    ca_file = Path(info["tls"]["ca_file"])
    assert ca_file.is_absolute() and ca_file.name == "ca.pem" and ca_file.is_file()
    # The worker's publisher uses http.client with ssl.create_default_context(): SSL_CERT_FILE makes it trust
    # the local CA. An unauthenticated publish proves the TLS handshake and gets the API's own 401.
    default_context = ssl.create_default_context()
    connection = http.client.HTTPSConnection("localhost", http_url.port, timeout=5, context=default_context)
    try:
        connection.request("POST", "/event", body=b"{}", headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 401
        assert json.loads(response.read())["errors"][0]["errorType"] == "UnauthorizedException"
    finally:
        connection.close()


def run_amplify(amplify_dir: Path, gw: DevGateway) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess[str]]:
    info = gw.info
    config = {
        "http": info["http"],
        "region": info["region"],
        "userPoolId": info["cognito"]["user_pool_id"],
        "clientId": info["cognito"]["client_id"],
        "cognitoEndpoint": info["cognito"]["endpoint"],
        "username": info["demo_user"]["username"],
        "password": info["demo_user"]["password"],
        "timeoutMs": (NODE_RUN_TIMEOUT_S - 5) * 1000,
    }
    env = {**os.environ, "AIGW_AMPLIFY_CONFIG": json.dumps(config), "NODE_EXTRA_CA_CERTS": info["tls"]["ca_file"]}
    done = subprocess.run(
        [shutil.which("node") or "node", "amplify_events.mjs"],
        cwd=amplify_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_RUN_TIMEOUT_S,
    )
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return records, done


def test_amplify_signs_in_subscribes_publishes_and_streams_the_answer(
    amplify_dir: Path, tls_gateway: DevGateway
) -> None:
    started = time.monotonic()
    records, done = run_amplify(amplify_dir, tls_gateway)
    elapsed = time.monotonic() - started
    explain = f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, explain
    assert records[0] == {"kind": "signed_in", "isSignedIn": True, "step": "DONE"}, explain
    assert records[-1] == {"kind": "done"}, explain
    for via in ("http", "websocket"):
        published = [r for r in records if r["kind"] == "published" and r["via"] == via]
        assert published == [{"kind": "published", "via": via, "failed": []}], explain
        answer = [r["event"] for r in records if r["kind"] == "event" and r["via"] == via]
        kinds = [e["type"] for e in answer]
        assert kinds[0] == "start" and kinds[-1] == "end" and set(kinds[1:-1]) == {"delta"}, explain
        assert len({e["requestId"] for e in answer}) == 1 and answer[0]["requestId"].startswith(via), explain
        assert answer[-1]["usage"]["output"] > 0, explain
    assert elapsed < NODE_RUN_TIMEOUT_S
