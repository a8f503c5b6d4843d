"""The local Cognito endpoint answers the browser's CORS preflight itself, whatever moto release is installed.

moto 5.2.6 routes `OPTIONS /` (which carries no `X-Amz-Target`) to its S3 backend, which raises: the page could
not sign in. These tests send exactly what Chromium sends before the page's first Cognito call.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

from hypothesis import given
from hypothesis import strategies as st

from aigw.emulators.moto_server import _CorsForCognito, cors_preflight_headers

PAGE_ORIGIN = "http://127.0.0.1:4100"

# What Chromium sends before `fetch(endpoint, {method: "POST", headers: {Content-Type, X-Amz-Target}})`
# from the page (web/cognito.js), header for header.
CHROMIUM_PREFLIGHT = {
    "Accept": "*/*",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type,x-amz-target",
    "Origin": PAGE_ORIGIN,
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0",
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Site": "same-site",
    "Sec-Fetch-Dest": "empty",
    "Referer": f"{PAGE_ORIGIN}/",
    "Accept-Encoding": "gzip, deflate, br, zstd",
    "Accept-Language": "en-US,en;q=0.9",
}


def _request(endpoint: str, method: str, headers: dict[str, str], body: bytes = b"") -> http.client.HTTPResponse:
    parts = urlsplit(endpoint)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request(method, "/", body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_chromium_preflight_is_answered_for_the_cognito_api(moto_endpoint: str) -> None:
    response = _request(moto_endpoint, "OPTIONS", CHROMIUM_PREFLIGHT)
    assert response.status == 204
    assert response.getheader("Access-Control-Allow-Origin") == PAGE_ORIGIN
    assert "POST" in response.getheader("Access-Control-Allow-Methods", "")
    allowed = {h.strip() for h in response.getheader("Access-Control-Allow-Headers", "").split(",")}
    assert {"content-type", "x-amz-target"} <= allowed
    assert int(response.getheader("Access-Control-Max-Age", "0")) > 0


def test_the_call_after_the_preflight_names_the_origin_and_reaches_cognito(moto_endpoint: str) -> None:
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "AWSCognitoIdentityProviderService.InitiateAuth",
        "Origin": PAGE_ORIGIN,
    }
    body = json.dumps({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": "nope", "AuthParameters": {}}).encode()
    response = _request(moto_endpoint, "POST", headers, body)
    assert response.status == 400  # moto's Cognito answered (an unknown client), not its S3 backend
    assert response.getheader("Access-Control-Allow-Origin") in (PAGE_ORIGIN, "*")
    assert "x-amzn-errortype" in response.getheader("Access-Control-Expose-Headers", "").lower()


def _fake_moto(calls: list[str]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["REQUEST_METHOD"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    return app


def _environ(method: str, headers: dict[str, str]) -> dict[str, Any]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": "/"}
    environ.update({"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()})
    return environ


def test_a_cognito_preflight_never_reaches_moto() -> None:
    calls: list[str] = []
    seen: list[str] = []
    _CorsForCognito(_fake_moto(calls))(_environ("OPTIONS", CHROMIUM_PREFLIGHT), lambda status, _h: seen.append(status))
    assert calls == [] and seen == ["204 No Content"]


def test_other_requests_pass_through_to_moto() -> None:
    calls: list[str] = []
    headers: list[list[tuple[str, str]]] = []
    app = _CorsForCognito(_fake_moto(calls))
    app(_environ("OPTIONS", {"Access-Control-Request-Method": "PUT", "Origin": PAGE_ORIGIN}), lambda s, h: None)
    app(_environ("POST", {"X-Amz-Target": "DynamoDB_20120810.ListTables"}), lambda s, h: headers.append(h))
    assert calls == ["OPTIONS", "POST"]
    assert not any(name.startswith("Access-Control") for name, _ in headers[0])  # no Origin, no CORS headers


header_names = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)


@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]), asked=st.lists(header_names))
def test_only_an_options_request_is_a_preflight(method: str, asked: list[str]) -> None:
    headers = {"access-control-request-method": "POST", "access-control-request-headers": ",".join(asked)}
    assert cors_preflight_headers(method, headers) is None


@given(asked=st.lists(header_names, max_size=6), extra_case=st.booleans())
def test_a_preflight_is_ours_exactly_when_it_asks_for_x_amz_target(asked: list[str], extra_case: bool) -> None:
    target = "X-Amz-Target" if extra_case else "x-amz-target"
    for names, ours in ((asked, "x-amz-target" in asked), ([*asked, target], True)):
        headers = {"access-control-request-method": "POST", "access-control-request-headers": " , ".join(names)}
        answer = cors_preflight_headers("OPTIONS", headers)
        assert (answer is not None) == ours
        if answer is not None:
            allowed = dict(answer)["Access-Control-Allow-Headers"].split(", ")
            assert set(allowed) == {n.lower() for n in names}
