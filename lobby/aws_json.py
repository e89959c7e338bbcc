"""An AWS JSON-protocol client that runs on the event loop (issue 18).

boto3 costs about 0.6-1 ms of CPU per call, in threads that hold the GIL (its
event hooks, urllib3, http.client): 500 game-server claims at once kept the
node's loop from everything else for half a second. This client makes the same
calls with what they need and nothing more: the parameters validated by
botocore's own model, one JSON dump, a SigV4 signature (signing key derived
once a day), one write on a kept-alive HTTP/1.1 connection from a small pool,
and one read parsed by hand, all on the loop: about 90 us of CPU a call with
the kernel's send and receive (`python -m bench.aws_calls`; docs/benchmarks.md,
session 8). Validation runs once per shape of a call (which parameters, their
types, and their lengths up to the longest minimum the model sets): botocore's
validator is ~5 us a call, and for calls of strings its verdict depends on
nothing else.

What stays botocore's: the service model (operation names, target prefix,
signing name, parameter validation), the endpoint and credential resolution
(boto3's usual chain, refreshed off the loop when due), and the error side:
an error answer goes through botocore's JSON parser and is raised as the
client's own modeled exception, so callers catch exactly what boto3 raises
(``ClientError`` subclasses, ``EndpointConnectionError``, ``ReadTimeoutError``,
``ConnectionClosedError``, ``NoCredentialsError``, ``ParamValidationError``).
A successful answer is plain ``json.loads``: timestamps stay epoch seconds
(boto3 turns them into datetimes; nothing in the lobby reads them).

AWS JSON services answer with a Content-Length; a chunked answer is read too,
and one with neither is read to the end of the connection, which is then not
reused.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import SSLError as BotoSSLError
from botocore.parsers import create_parser
from botocore.validate import validate_parameters

from lobby import fastjson

ALGORITHM = "AWS4-HMAC-SHA256"
# An idle kept-alive connection is dropped after this: servers close theirs
# (AWS after about a minute) and a request written into a closing connection
# has an unknown outcome.
IDLE_SECONDS = 20.0
_MAX_HEADER_BYTES = 64 * 1024


_MAX_VALID_SHAPES = 1024


def _length_cap(shape: Any) -> int:
    """The longest minimum length of the operation's string members: of a string,
    botocore's validator checks only its type and that length, so a call whose
    parameters are all strings is valid exactly when one with the same names and
    the same lengths (clipped to this) was."""
    cap = 1  # members bound to the URL have an implicit minimum of 1
    for member in shape.members.values():
        if member.type_name == "string":
            cap = max(cap, int(member.metadata.get("min", 0)))
    return cap


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SigV4Signer:
    """AWS Signature Version 4 for a POST of a body to "/" (the JSON protocol).

    Signs the same headers as botocore's ``SigV4Auth`` (content-type, host,
    x-amz-date, x-amz-security-token when there is one, x-amz-target): the test
    suite checks the result against it. The signing key depends only on the
    secret, the day, the region and the service, so it is derived once a day
    instead of four HMACs per request.
    """

    def __init__(self, service: str, region: str) -> None:
        self.service = service
        self.region = region
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, key)

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret and cached[1] == day:
            return cached[2]
        key = ("AWS4" + secret).encode()
        for part in (day, self.region, self.service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._key = (secret, day, key)
        return key

    def headers(self, *, host: str, target: str, content_type: str, body: bytes,
                access_key: str, secret_key: str, token: str | None,
                now: datetime.datetime | None = None) -> list[tuple[str, str]]:
        """The signed headers (Authorization included) for this request."""
        stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        signed = [("content-type", content_type), ("host", host), ("x-amz-date", stamp)]
        if token:
            signed.append(("x-amz-security-token", token))
        signed.append(("x-amz-target", target))
        names = ";".join(name for name, _ in signed)
        canonical = "POST\n/\n\n" + "".join(
            f"{name}:{' '.join(value.split())}\n" for name, value in signed
        ) + f"\n{names}\n{_sha256(body)}"
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{_sha256(canonical.encode())}"
        signature = hmac.new(self._signing_key(secret_key, day), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        auth = f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={names}, " \
               f"Signature={signature}"
        return [*signed, ("authorization", auth)]


class _Response:
    __slots__ = ("body", "headers", "reusable", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes,
                 reusable: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.reusable = reusable


async def _read_response(reader: asyncio.StreamReader) -> _Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status = int(rest.partition(" ")[0])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    reusable = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
        reusable = False
    return _Response(status, headers, body, reusable)


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        return (not self.writer.is_closing() and not self.reader.at_eof()
                and now - self.idle_since < IDLE_SECONDS)

    def close(self) -> None:
        self.writer.close()


class AwsJsonClient:
    """Calls of one AWS JSON 1.x service (e.g. GameLift) from the event loop.

    ``call("claim_game_server", **params)`` takes boto3's method names and
    parameters and answers the parsed JSON. At most ``max_connections`` calls
    are in flight; more wait for a connection. Built from a boto3 client of the
    service (``boto_client``), whose model, endpoint, region and exception
    classes it uses; ``credentials`` are botocore credentials (None: every call
    raises NoCredentialsError, as boto3 would).
    """

    def __init__(self, boto_client: Any, credentials: Any, *, max_connections: int = 32,
                 connect_timeout: float = 2.0, read_timeout: float = 5.0) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        meta = boto_client.meta
        model = meta.service_model
        self._model = model
        self._exceptions = boto_client.exceptions
        self._methods: dict[str, str] = dict(meta.method_to_api_mapping)
        self._target_prefix = model.metadata["targetPrefix"]
        self._content_type = f"application/x-amz-json-{model.metadata.get('jsonVersion', '1.0')}"
        # botocore picks one of the model's protocols (GameLift lists CBOR first
        # and JSON second, and botocore speaks JSON to it).
        protocol = model.resolved_protocol
        if protocol != "json":
            raise ValueError(f"{model.service_name} is spoken in {protocol}, not JSON")
        self._parser = create_parser(protocol)
        self.endpoint_url = meta.endpoint_url
        url = urlsplit(self.endpoint_url)
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port or (443 if self._https else 80)
        default_port = (url.scheme, self._port) in (("https", 443), ("http", 80))
        bracketed = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = bracketed if default_port else f"{bracketed}:{self._port}"
        self._path = url.path or "/"
        self._ssl = ssl.create_default_context() if self._https else None
        self._signer = SigV4Signer(model.signing_name or model.endpoint_prefix, meta.region_name)
        self._credentials = credentials
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Conn] = []
        self._busy: set[_Conn] = set()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._length_caps: dict[str, int] = {}
        self._valid_shapes: set[tuple[Any, ...]] = set()
        self._closed = False
        self.connections_opened = 0  # for tests and metrics: keep-alive reuse is visible

    # -- the public call ----------------------------------------------------

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        operation = self._methods.get(method)
        if operation is None:
            raise AttributeError(f"{self._model.service_name} has no operation {method!r}")
        op_model = self._model.operation_model(operation)
        self._validate(operation, op_model, params)
        body = fastjson.dumps(params).encode()
        key, secret, token = await self._frozen_credentials()
        headers = self._signer.headers(
            host=self._host_header, target=f"{self._target_prefix}.{operation}",
            content_type=self._content_type, body=body,
            access_key=key, secret_key=secret, token=token)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers)
        request = (f"POST {self._path} HTTP/1.1\r\n{head}content-length: {len(body)}\r\n"
                   "user-agent: lobby-aws-json\r\n\r\n").encode("latin-1") + body
        response = await self._exchange(request)
        if response.status < 300:
            result: dict[str, Any] = fastjson.loads(response.body) if response.body else {}
            return result
        parsed = self._parser.parse(
            {"status_code": response.status, "headers": response.headers,
             "body": response.body}, op_model.output_shape)
        code = parsed.get("Error", {}).get("Code")
        raise self._exceptions.from_code(code)(parsed, operation)

    def _validate(self, operation: str, op_model: Any, params: dict[str, Any]) -> None:
        """botocore's validation (ParamValidationError, as boto3), remembered per shape."""
        cap = self._length_caps.get(operation)
        if cap is None:
            cap = self._length_caps[operation] = _length_cap(op_model.input_shape)
        key: tuple[Any, ...] | None = None
        if all(type(v) is str for v in params.values()):
            key = (operation, *((k, min(len(v), cap)) for k, v in params.items()))
            if key in self._valid_shapes:
                return
        validate_parameters(params, op_model.input_shape)
        if key is not None and len(self._valid_shapes) < _MAX_VALID_SHAPES:
            self._valid_shapes.add(key)

    async def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    # -- credentials ---------------------------------------------------------

    async def _frozen_credentials(self) -> tuple[str, str, str | None]:
        creds = self._credentials
        if creds is None:
            raise NoCredentialsError()
        refresh_needed: Callable[[], bool] | None = getattr(creds, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():
            # A refresh is a network call (STS, the instance metadata service):
            # never on the loop.
            frozen = await asyncio.to_thread(creds.get_frozen_credentials)
        else:
            frozen = creds.get_frozen_credentials()
        if not frozen.access_key or not frozen.secret_key:
            raise NoCredentialsError()
        return frozen.access_key, frozen.secret_key, frozen.token

    # -- HTTP ---------------------------------------------------------------

    async def _exchange(self, request: bytes) -> _Response:
        async with self._slots:
            if self._closed:
                raise EndpointConnectionError(endpoint_url=self.endpoint_url,
                                              error="the client is closed")
            conn = await self._connection()
            self._busy.add(conn)
            reuse = False
            try:
                conn.writer.write(request)
                response = await self._bounded(self._read(conn), self.read_timeout,
                                               ReadTimeoutError)
                reuse = response.reusable and not self._closed
                return response
            finally:
                self._busy.discard(conn)
                if reuse:
                    conn.idle_since = time.monotonic()
                    self._idle.append(conn)
                else:
                    # Errors, cancellation, "Connection: close": the connection's
                    # state is unknown or spent.
                    conn.close()

    async def _read(self, conn: _Conn) -> _Response:
        try:
            return await _read_response(conn.reader)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ValueError, IndexError) as exc:
            # The request went out; whether it was carried out is unknown.
            raise ConnectionClosedError(endpoint_url=self.endpoint_url) from exc

    async def _connection(self) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: least likely closed
            if conn.usable(now):
                return conn
            conn.close()
        reader, writer = await self._bounded(self._open(), self.connect_timeout,
                                             ConnectTimeoutError)
        self.connections_opened += 1
        return _Conn(reader, writer)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_connection(
                self._host, self._port, ssl=self._ssl, limit=_MAX_HEADER_BYTES,
                server_hostname=self._host if self._ssl else None)
        except ssl.SSLError as exc:
            raise BotoSSLError(endpoint_url=self.endpoint_url, error=exc) from exc
        except OSError as exc:
            raise EndpointConnectionError(endpoint_url=self.endpoint_url, error=exc) from exc

    async def _bounded(self, work: Awaitable[Any], seconds: float, error: type[Exception]
                       ) -> Any:
        try:
            async with asyncio.timeout(seconds):
                return await work
        except TimeoutError as exc:
            raise error(endpoint_url=self.endpoint_url, error=exc) from exc
