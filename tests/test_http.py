"""HTTP on the lobby's port behaves like HTTP: bodies, keep-alive, pipelining, JSON errors.

Every request goes through a real client (http.client in a thread, or a raw TCP
socket) to a real node on this test's loop.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from typing import Any

import websockets

from lobby.http import HttpRequest, HttpResponse, json_response

BOTH_EVENT_LOOPS = True  # conftest: every test on asyncio's loop and on uvloop's

KEY = "http-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"Content-Type": "application/json"}


def _exchange(port: int, calls: list[tuple[str, str, dict[str, str], bytes | None]]
              ) -> tuple[list[tuple[int, dict[str, str], Any]], int]:
    """Requests on ONE kept-alive connection; (status, headers, JSON body) each and
    how many TCP connections http.client had to open."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    opened = 0
    out = []
    try:
        for method, path, headers, body in calls:
            if conn.sock is None:
                opened += 1
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            assert resp.getheader("Content-Type", "").startswith("application/json"), raw
            out.append((resp.status, {k.lower(): v for k, v in resp.getheaders()},
                        json.loads(raw)))
    finally:
        conn.close()
    return out, opened


async def exchange(port: int, *calls: tuple[str, str, dict[str, str], bytes | None]
                   ) -> tuple[list[tuple[int, dict[str, str], Any]], int]:
    return await asyncio.to_thread(_exchange, port, list(calls))


async def started_session(node: Any, connect_player: Any) -> str:
    host = await connect_player(node, "host")
    await host.ok("create_session")
    return str((await host.ok("start_session"))["session"]["session_id"])


def code(answer: tuple[int, dict[str, str], Any]) -> tuple[int, str]:
    status, _, body = answer
    assert body["ok"] is False and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    return status, body["error"]["code"]


async def test_json_bodies_errors_and_keep_alive(make_mode_node, connect_player) -> None:
    node = await make_mode_node(server_key=KEY)
    sid = await started_session(node, connect_player)
    big = json.dumps({"note": "x" * 10_000}).encode()
    assert len(big) > 10_000
    answers, opened = await exchange(
        node.port,
        ("GET", f"/v1/sessions/{sid}", AUTH, None),
        ("POST", f"/v1/sessions/{sid}/in-progress", {**AUTH, **JSON}, big),
        ("POST", f"/v1/sessions/{sid}/in-progress", {**AUTH, **JSON}, b'{"note": '),
        ("POST", f"/v1/sessions/{sid}/in-progress", {**AUTH, "Content-Type": "text/plain"},
         b"hello"),
        ("POST", f"/v1/sessions/{sid}/in-progress", {**AUTH, **JSON}, b"[1, 2]"),
        ("POST", f"/v1/sessions/{sid}/in-progress", JSON, b"{}"),
        ("POST", f"/v1/sessions/{sid}/in-progress", {"Authorization": "Bearer nope"}, None),
        ("GET", f"/v1/sessions/{sid}/in-progress", AUTH, None),
        ("GET", "/v1/nowhere", AUTH, None),
        ("POST", f"/v1/sessions/{sid}/in-progress", {**AUTH, **JSON}, b"{}"),
        ("GET", "/metrics.json", AUTH, None),
    )
    # Every request answered, all on one connection.
    assert opened == 1 and len(answers) == 11
    status, _, body = answers[0]
    assert status == 200 and body["session"]["session_state"] == "CONNECTING"
    status, _, body = answers[1]
    assert status == 200 and body["session"]["session_state"] == "IN_PROGRESS"
    assert code(answers[2]) == (400, "BAD_REQUEST")
    assert code(answers[3]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert code(answers[4]) == (400, "BAD_REQUEST")
    assert code(answers[5]) == (401, "UNAUTHORIZED")
    assert answers[5][1]["www-authenticate"].startswith("Bearer")
    assert code(answers[6]) == (403, "FORBIDDEN")
    assert code(answers[7]) == (405, "METHOD") and answers[7][1]["allow"] == "POST"
    assert code(answers[8]) == (404, "NOT_FOUND")
    assert answers[9][0] == 200
    assert answers[10][0] == 200 and answers[10][2]["node_id"] == node.node_id


async def test_oversized_body_is_refused_and_the_connection_closed(node) -> None:
    answers, _ = await exchange(
        node.port, ("POST", "/v1/sessions/x/complete", JSON, b"{" + b" " * 100_000 + b"}"))
    status, headers, _ = answers[0]
    assert code(answers[0]) == (413, "PAYLOAD_TOO_LARGE")
    assert headers["connection"] == "close"
    assert status == 413


async def raw_http(port: int, data: bytes, responses: int, head: tuple[int, ...] = ()
                   ) -> list[bytes]:
    """Writes `data` at once and reads `responses` answers (those numbered in `head`
    answer HEAD requests: no body whatever their Content-Length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out: list[bytes] = []
    try:
        async with asyncio.timeout(10):
            while len(out) < responses:
                answer = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in answer.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if len(out) in head:
                    length = 0
                out.append(answer + await reader.readexactly(length))
            # And then, for a connection that is to close, EOF.
            if out and b"connection: close" in out[-1].lower():
                assert await reader.read() == b""
    finally:
        writer.close()
    return out


async def test_pipelined_and_chunked_requests(make_mode_node, connect_player) -> None:
    node = await make_mode_node(server_key=KEY)
    sid = await started_session(node, connect_player)
    auth = f"Authorization: Bearer {KEY}\r\n".encode()
    chunked = (b"POST /v1/sessions/" + sid.encode() + b"/in-progress HTTP/1.1\r\nHost: x\r\n"
               + auth + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n")
    pipelined = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + chunked
                 + b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    first, second, third, fourth = await raw_http(node.port, pipelined, 4, head=(2,))
    assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"\r\n\r\nok\n")
    assert second.startswith(b"HTTP/1.1 200 ") and b'"IN_PROGRESS"' in second
    # HEAD: the GET's headers (Content-Length 3) and no body; the next answer follows.
    assert third.startswith(b"HTTP/1.1 200 ") and b"content-length: 3" in third.lower()
    assert fourth.startswith(b"HTTP/1.1 200 ") and fourth.endswith(b"ok\n")


async def test_garbage_gets_a_json_400_and_a_close(node) -> None:
    (answer,) = await raw_http(node.port, b"NOT HTTP AT ALL\r\n\r\n", 1)
    assert answer.startswith(b"HTTP/1.1 400 ")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "BAD_REQUEST"


async def test_websocket_upgrade_only_as_a_connections_first_request(node) -> None:
    # The same port still serves the WebSocket.
    async with websockets.connect(f"ws://127.0.0.1:{node.port}/ws") as ws:
        await ws.send(json.dumps({"type": "hello", "id": 1, "name": "ws"}))
        assert json.loads(await ws.recv())["ok"] is True
    upgrade = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    healthz, refused = await raw_http(
        node.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + upgrade, 2)
    assert healthz.startswith(b"HTTP/1.1 200 ")
    assert refused.startswith(b"HTTP/1.1 400 ") and b"first request" in refused


async def test_routes_registered_by_other_parts(node) -> None:
    """The interface others build on: method + pattern, path parameters, JSON bodies."""
    seen: list[HttpRequest] = []

    async def echo(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return json_response(201, {"name": request.params["name"], "body": request.json()})

    node.sockets.http.router.add("PUT", "/things/{name}", echo)
    answers, _ = await exchange(
        node.port,
        ("PUT", "/things/abc?x=1", JSON, b'{"n": 1}'),
        ("PUT", "/things/abc", {}, None),
        ("DELETE", "/things/abc", {}, None),
    )
    assert answers[0][0] == 201 and answers[0][2] == {"name": "abc", "body": {"n": 1}}
    assert answers[1][2] == {"name": "abc", "body": {}}
    assert code(answers[2]) == (405, "METHOD")
    assert seen[0].query == "x=1" and seen[0].header("content-type") == "application/json"


async def test_silent_and_idle_connections_are_closed(node) -> None:
    node.sockets.http.head_timeout = 0.3
    node.sockets.http.idle_timeout = 0.3
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", node.port)
    idle_reader, idle = await asyncio.open_connection("127.0.0.1", node.port)
    idle.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(10):
        assert await silent_reader.read() == b""
        answer = await idle_reader.read()  # the answer, then EOF when the idle time is up
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok\n")
    silent.close()
    idle.close()


async def test_metrics_need_an_operator_key_once_one_is_set(make_node) -> None:
    from tests.conftest import http_request

    for keys, good in (({"server_key": "srv"}, "srv"), ({"admin_key": "adm"}, "adm"),
                       ({"metrics_key": "met", "server_key": "srv"}, "srv")):
        node = await make_node(**keys)
        for path in ("/metrics", "/metrics.json"):
            status, body = await http_request(node.port, "GET", path)
            assert status == 401 and json.loads(body)["error"]["code"] == "UNAUTHORIZED"
            status, body = await http_request(node.port, "GET", path,
                                              {"Authorization": "Bearer wrong"})
            assert status == 403 and json.loads(body)["error"]["code"] == "FORBIDDEN"
        status, body = await http_request(node.port, "GET", "/metrics.json",
                                          {"Authorization": f"Bearer {good}"})
        assert status == 200 and json.loads(body)["node_id"] == node.node_id
        status, body = await http_request(node.port, "GET", "/metrics",
                                          {"Authorization": f"Bearer {good}"})
        assert status == 200 and b"# TYPE" in body
    # A lobby with no key at all (a laptop) keeps them open.
    bare = await make_node()
    assert (await http_request(bare.port, "GET", "/metrics.json"))[0] == 200
