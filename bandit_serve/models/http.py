"""Arms of kind ``http``: a model endpoint, one pooled ``aiohttp.ClientSession`` per arm.

Protocols:

``json``
    POST ``{"inputs": <inputs>}``; the prediction is the JSON answer, or its
    ``output_field`` (dots walk into objects and lists: ``result.scores.0``).
``kserve-v2``
    The Open Inference Protocol (KServe, Triton, TorchServe, MLServer). The model's
    metadata (``GET`` on the URL without ``/infer``) is read once per arm. Request
    tensors are built from the inputs (:func:`tensors`): an object ``{name: value}``
    gives one tensor per entry, anything else one tensor named after the model's only
    input (``input-0`` when the metadata lists none). A tensor's shape is its nested
    lists' (one item of a model with a batch axis gets one added, and its answer's
    removed); its datatype is the one the metadata declares for that input, else
    inferred from the values: booleans BOOL, strings BYTES, integers INT64, numbers
    with any float among them FP32 (FP64 when one is beyond float32's range). The
    prediction is the first output tensor (or the one named ``output_field``), its
    ``data`` reshaped to its ``shape``.
``openai-chat``
    POST a chat completion: the inputs are the messages (a list of ``{role, content}``)
    or a prompt string (one user message), after the arm's ``system`` message when it
    has one; ``model``, ``temperature`` and ``body`` come from the arm. The prediction is
    the first choice's message content.

An answer 400 or 422 means the endpoint refused the inputs: :class:`InputRejected` (the
client gets 422, the arm's ``input_rejections`` count it). No answer within
``timeout_s``, a refused connection, any other non-2xx answer or an answer without the
prediction raise :class:`EndpointError`: the arm's error.

Headers named in ``headers_from_env`` are read from the environment when the arm is
loaded (a missing variable is a :class:`ConfigError` naming it). Their values appear in
no message, log line or answer: every message an arm raises is scrubbed of them.

The session follows no redirect (the credentials go to the configured URL only), keeps
no cookie (it serves every user of the arm), holds at most :data:`MAX_CONNECTIONS`
connections, and gives each request ``timeout_s`` in all (connecting, waiting for a
pooled connection, sending and reading the whole answer). As httpx did, it takes a
proxy from ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` (looked up once per session) and
verifies TLS against ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set, else certifi's CAs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
from yarl import URL

from bandit_serve.config.models import HttpModel
from bandit_serve.errors import BanditServeError, ConfigError, InputRejected
from bandit_serve.models.base import ArmModel
from bandit_serve.models.contract import InputContract

__all__ = ["EndpointError", "HttpArm", "infer_datatype", "resolve_headers", "tensors"]

MAX_CONNECTIONS = 256  # per arm; a ModelVersion replica takes 100 requests at once
KEEPALIVE_S = 5.0  # an idle pooled connection is closed after this (httpx's default)
_FLOAT32_MAX = 3.4028234663852886e38
_FP = {"FP16", "FP32", "FP64", "BF16"}
_INT = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


class EndpointError(BanditServeError):
    """A model endpoint did not give a prediction: no answer in time, a connection
    refused, a non-2xx answer other than 400/422, or an answer without the prediction."""


def resolve_headers(ref: HttpModel, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The arm's headers, read from the environment. Raises ConfigError naming the first
    missing variable (never a value)."""
    env = os.environ if env is None else env
    headers = {}
    for header, var in ref.headers_from_env.items():
        value = env.get(var)
        if value is None or value == "":
            raise ConfigError(
                f"environment variable {var} is not set (headers_from_env: {header} reads it)"
            )
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or not value.isascii():
            raise ConfigError(
                f"environment variable {var} holds characters an HTTP header cannot carry "
                f"(headers_from_env: {header})"
            )
        if header.lower() == "authorization" and " " not in value.strip():
            value = f"Bearer {value.strip()}"  # a bare token (an API key): the usual scheme
        headers[header] = value
    return headers


class _Scrubbed:
    """Replaces the arm's secrets in any text it raises."""

    def __init__(self, secrets: list[str]) -> None:
        # a whole header value, and the credentials after its scheme ("Bearer <token>")
        found = {v for v in secrets} | {v.split(" ", 1)[1] for v in secrets if " " in v}
        self.secrets = sorted((s for s in found if len(s.strip()) >= 3), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text


class HttpArm(ArmModel):
    """A model endpoint speaking one of the protocols above."""

    def __init__(self, ref: HttpModel, env: Mapping[str, str] | None = None) -> None:
        self.ref = ref
        self.headers = resolve_headers(ref, env)
        self._scrub = _Scrubbed(list(self.headers.values()))
        self._client: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxy: dict[str, Any] = {}
        self._retiring: asyncio.Task[None] | None = None
        self._url = URL(ref.url)
        self._metadata: dict[str, Any] | None = None
        self._metadata_lock: asyncio.Lock | None = None
        self.where = _where(ref.url)

    def contract(self) -> InputContract | None:
        return InputContract(form="chat") if self.ref.protocol == "openai-chat" else None

    # -- the connection pool -------------------------------------------------------------

    def client(self) -> aiohttp.ClientSession:
        """The arm's pooled session (one per event loop: made on first use in a loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            if self._client is not None and self._loop is not None:  # used in another loop
                self._retiring = loop.create_task(_close(self._client, self._loop))
            self._proxy = _env_proxy(self._url)
            self._client = aiohttp.ClientSession(
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=self.ref.timeout_s),
                connector=aiohttp.TCPConnector(
                    limit=MAX_CONNECTIONS,
                    keepalive_timeout=KEEPALIVE_S,
                    ssl=_tls() if self._url.scheme == "https" else True,
                ),
                # one session serves every user of the arm: it keeps no cookie
                cookie_jar=aiohttp.DummyCookieJar(),
                json_serialize=_json_dumps,
                trust_env=False,  # the proxy is looked up above, not on every request
            )
            self._loop = loop
            self._metadata_lock = asyncio.Lock()
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is not None:
            await _close(client, self._loop)

    # -- calls ---------------------------------------------------------------------------

    async def _exchange(self, method: str, url: URL, body: Any = None) -> tuple[int, bytes]:
        """One request: the answer's status and body. EndpointError when there is none."""
        session = self.client()
        try:
            async with session.request(
                method,
                url,
                json=body,
                allow_redirects=False,  # never carry the credentials elsewhere
                **self._proxy,
            ) as r:
                return r.status, await r.read()
        except TimeoutError:  # before OSError, its base
            raise EndpointError(
                f"{self.where} gave no answer within {self.ref.timeout_s:g}s"
            ) from None
        except (aiohttp.ClientError, OSError) as err:
            raise EndpointError(
                self._scrub(f"{self.where} could not be reached ({_cause(err)})")
            ) from None

    async def _send(self, method: str, url: URL, body: Any = None) -> Any:
        """One request; the answer's JSON. Maps every failure to the arm's terms."""
        status, content = await self._exchange(method, url, body)
        if status in (400, 422):  # the client sees this: no address of ours in it
            raise InputRejected(f"its endpoint answered {status}")
        if status in (401, 403):
            raise EndpointError(f"{self.where} refused the credentials ({status})")
        if not 200 <= status < 300:
            raise EndpointError(f"{self.where} answered {status}")
        try:
            return json.loads(content)
        except ValueError:
            raise EndpointError(f"{self.where} answered {status} without JSON") from None

    async def apredict(self, inputs: Any) -> Any:
        p = self.ref.protocol
        if p == "json":
            answer = await self._send("POST", self._url, {"inputs": inputs})
            if self.ref.output_field is None:
                return answer
            return self._field(answer, self.ref.output_field)
        if p == "kserve-v2":
            return await self._infer(inputs)
        answer = await self._send("POST", self._url, self._chat_body(inputs))
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.where}'s answer has no choices[0].message") from None
        return content

    def _field(self, answer: Any, path: str) -> Any:
        value = answer
        for part in path.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise EndpointError(f"{self.where}'s answer has no {path!r}")
        return value

    # -- openai-chat ---------------------------------------------------------------------

    def _chat_body(self, inputs: Any) -> dict[str, Any]:
        if isinstance(inputs, str):
            messages: list[Any] = [{"role": "user", "content": inputs}]
        else:
            problem = InputContract(form="chat").problem(inputs)
            if problem is not None:
                raise InputRejected(problem)
            messages = list(inputs)
        if self.ref.system is not None:
            messages.insert(0, {"role": "system", "content": self.ref.system})
        body: dict[str, Any] = {**self.ref.body, "model": self.ref.model, "messages": messages}
        if self.ref.temperature is not None:
            body["temperature"] = self.ref.temperature
        return body

    # -- kserve-v2 -----------------------------------------------------------------------

    @property
    def metadata_url(self) -> str:
        parts = urlsplit(self.ref.url)
        path = parts.path.rstrip("/").removesuffix("/infer")
        return urlunsplit(parts._replace(path=path))

    async def metadata(self) -> dict[str, Any]:
        """The model's metadata (read once; a failure is retried on the next call)."""
        if self._metadata is None:
            self.client()
            assert self._metadata_lock is not None
            async with self._metadata_lock:
                if self._metadata is None:
                    meta = await self._send("GET", URL(self.metadata_url))
                    if not isinstance(meta, dict):
                        raise EndpointError(f"{self.where}'s model metadata is not an object")
                    self._metadata = meta
        return self._metadata

    async def _infer(self, inputs: Any) -> Any:
        meta = await self.metadata()
        request, batched = tensors(inputs, meta.get("inputs") or [])
        answer = await self._send("POST", self._url, {"inputs": request})
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(outputs, list) or not outputs:
            raise EndpointError(f"{self.where}'s answer has no outputs")
        want = self.ref.output_field
        chosen = next(
            (o for o in outputs if isinstance(o, dict) and (want is None or o.get("name") == want)),
            None,
        )
        if chosen is None:
            raise EndpointError(f"{self.where}'s answer has no output named {want!r}")
        try:
            value = _reshape(_flatten(chosen["data"]), [int(d) for d in chosen["shape"]])
        except (KeyError, TypeError, ValueError):
            raise EndpointError(f"{self.where}'s output tensor does not fit its shape") from None
        if batched and isinstance(value, list) and len(value) == 1:
            return value[0]
        return value

    # -- check ---------------------------------------------------------------------------

    async def probe(self) -> str | None:
        """Why the endpoint does not answer (None when it does): ``kserve-v2`` its model
        metadata, ``openai-chat`` the model list next to the chat URL, ``json`` any answer
        but 404 or 5xx to a GET. ``bandit-serve check`` calls it."""
        p = self.ref.protocol
        try:
            if p == "kserve-v2":
                self._metadata = None
                await self.metadata()
                return None
            url = self.ref.url
            if p == "openai-chat" and urlsplit(url).path.rstrip("/").endswith("/chat/completions"):
                parts = urlsplit(url)
                path = parts.path.rstrip("/").removesuffix("/chat/completions") + "/models"
                url = urlunsplit(parts._replace(path=path))
            status, _ = await self._exchange("GET", URL(url))
        except EndpointError as err:
            return str(err)
        except InputRejected as err:
            return f"{err} to a probe"
        if status in (401, 403):
            return f"{self.where} refused the credentials ({status})"
        if status == 404 or status >= 500:
            return f"{self.where} answered {status} to a probe"
        if p == "openai-chat" and not 200 <= status < 300:
            return f"{self.where} answered {status} to GET {urlsplit(url).path}"
        return None


async def _close(session: aiohttp.ClientSession, its_loop: asyncio.AbstractEventLoop) -> None:
    """Closes a session from any event loop: in its own; when its loop is closed (its
    connections went with it: closing marks it so, touching nothing of that loop); in a
    loop running in another thread, by that loop. A session left in a loop neither closed
    nor running stays as it is."""
    if its_loop is asyncio.get_running_loop() or its_loop.is_closed():
        await session.close()
    elif its_loop.is_running():
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(session.close(), its_loop))


# httpx's JSON: compact, UTF-8, and NaN or infinity refused (a ValueError) rather than sent
_json_dumps = functools.partial(
    json.dumps, ensure_ascii=False, separators=(",", ":"), allow_nan=False
)


def _cause(err: BaseException) -> str:
    """What went wrong, named as before (httpx's names): no library detail, no address."""
    if isinstance(err, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return "ProxyError"
    if isinstance(err, aiohttp.ClientConnectorError):
        return "ConnectError"  # refused, no route, DNS, TLS handshake or certificate
    if isinstance(
        err,
        aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError,
    ):
        return "RemoteProtocolError"
    if isinstance(err, OSError):
        return "ReadError"  # the connection broke while sending or reading
    return type(err).__name__


def _env_proxy(url: URL) -> dict[str, Any]:
    """The proxy the environment names for ``url`` (``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``NO_PROXY``), as a request's keywords: none, or the proxy and its credentials."""
    if url.host is None or proxy_bypass(url.host):
        return {}
    named = getproxies().get(url.scheme)
    if not named:
        return {}
    proxy = URL(named if "://" in named else f"http://{named}")
    return {"proxy": proxy.with_user(None), "proxy_auth": aiohttp.BasicAuth.from_url(proxy)}


@functools.cache
def _tls() -> ssl.SSLContext:
    """TLS verification as httpx did it: SSL_CERT_FILE or SSL_CERT_DIR when set, else
    certifi's CA bundle (made once per process, for arms with an https URL)."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _where(url: str) -> str:
    """The endpoint as messages name it: scheme, host, port and path (no query string,
    which may carry a token)."""
    parts = urlsplit(url)
    return "the endpoint " + urlunsplit(parts._replace(query="", fragment=""))


# -- KServe v2 tensors -------------------------------------------------------------------


def infer_datatype(values: list[Any]) -> str:
    """The datatype of a tensor's (flat) values when the model does not declare one.

    >>> infer_datatype([1, 2]), infer_datatype([1, 2.5]), infer_datatype(["a"])
    ('INT64', 'FP32', 'BYTES')
    >>> infer_datatype([True, False]), infer_datatype([1e300])
    ('BOOL', 'FP64')
    """
    if values and all(isinstance(v, bool) for v in values):
        return "BOOL"
    if values and all(isinstance(v, str) for v in values):
        return "BYTES"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        big = any(math.isfinite(v) and abs(v) > _FLOAT32_MAX for v in values)
        return "FP64" if big else "FP32"
    raise InputRejected("a tensor holds values of mixed kinds (numbers, strings, booleans)")


def _shape(value: Any) -> list[int]:
    """The shape of nested lists; InputRejected when they are ragged."""
    shape: list[int] = []
    v = value
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]

    def check(x: Any, axis: int) -> None:
        if axis == len(shape):
            if isinstance(x, list | dict) or x is None:
                raise InputRejected("a tensor's values must be numbers, strings or booleans")
            return
        if not isinstance(x, list) or len(x) != shape[axis]:
            raise InputRejected("a tensor's nested lists must form a rectangle (not ragged)")
        for y in x:
            check(y, axis + 1)

    check(value, 0)
    return shape


def _flatten(value: Any) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    out: list[Any] = []
    stack = [value]
    while stack:  # row-major, iteratively (deep inputs must not recurse)
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        else:
            out.append(v)
    return out


def _reshape(flat: list[Any], shape: list[int]) -> Any:
    if not shape:
        if len(flat) != 1:
            raise ValueError("a scalar output with several values")
        return flat[0]
    if math.prod(shape) != len(flat):
        raise ValueError("data and shape disagree")
    out: Any = flat
    for d in reversed(shape[1:]):
        out = [out[i : i + d] for i in range(0, len(out), d)]
    return out


def _convert(values: list[Any], datatype: str) -> list[Any]:
    """The values as the declared datatype takes them (InputRejected when they cannot)."""
    if datatype in _FP:
        if all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        ):
            return [float(v) for v in values]
        raise InputRejected(f"a {datatype} tensor takes finite numbers only")
    if datatype in _INT:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return values
        raise InputRejected(f"an {datatype} tensor takes integers only")
    if datatype == "BOOL":
        if all(isinstance(v, bool) for v in values):
            return values
        raise InputRejected("a BOOL tensor takes booleans only")
    if datatype == "BYTES":
        if all(isinstance(v, str) for v in values):
            return values
        raise InputRejected("a BYTES tensor takes strings only")
    return values


def tensors(inputs: Any, declared: list[Any]) -> tuple[list[dict[str, Any]], bool]:
    """Request tensors for ``inputs`` given the model's declared inputs (its metadata's
    ``inputs``: name, datatype, shape), and whether a batch axis was added (so the
    answer's is removed).

    >>> tensors([0.5, 1], [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}])
    ([{'name': 'x', 'shape': [1, 2], 'datatype': 'FP32', 'data': [0.5, 1.0]}], True)
    >>> tensors({"ids": [[1, 2]], "text": ["a"]}, [])[0][0]
    {'name': 'ids', 'shape': [1, 2], 'datatype': 'INT64', 'data': [1, 2]}
    """
    specs = {d["name"]: d for d in declared if isinstance(d, dict) and "name" in d}
    if isinstance(inputs, dict):
        named = list(inputs.items())
    elif len(specs) > 1:
        raise InputRejected(
            f"the model takes {len(specs)} inputs ({', '.join(specs)}): send an object "
            "with one entry per input"
        )
    else:
        named = [(next(iter(specs), "input-0"), inputs)]
    out = []
    added = False
    for name, value in named:
        shape = _shape(value)
        flat = _flatten(value)
        spec = specs.get(name, {})
        datatype = spec.get("datatype") or infer_datatype(flat)
        flat = _convert(flat, datatype)
        declared_shape = spec.get("shape")
        if isinstance(declared_shape, list) and len(declared_shape) == len(shape) + 1:
            shape = [1, *shape]  # one item of a model with a batch axis
            added = True
        out.append({"name": name, "shape": shape or [1], "datatype": datatype, "data": flat})
    return out, added and len(out) == 1
