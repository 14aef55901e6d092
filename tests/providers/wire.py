"""A local HTTP server that speaks the providers' wire formats, for contract tests.

It answers ``POST /v1/messages`` (Anthropic Messages) and ``POST /v1/chat/completions``
(OpenAI Chat Completions, which vLLM, Ollama and llama.cpp servers copy), as JSON or as
server-sent events when the request asks for ``stream``. Each test can script the next
answers (errors in the provider's own error JSON, slow answers, streams that stall or
fail half-way), and every request is recorded (path, headers, body) so tests can check
what the real SDK sent and how often. Runs on 127.0.0.1 in a thread; never the internet.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 429: "requests"}


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """One scripted answer. The default is a successful answer in the request's format."""

    status: int = 200
    message: str = "Scripted failure from the wire server."
    retry_after: str | None = None
    delay_s: float = 0.0  # wait this long before answering (a slow provider)
    stall_mid_stream: bool = False  # stream: send the first chunk, then go silent
    fail_mid_stream: bool = False  # stream: send the first chunk, then an error event


class WireServer:
    def __init__(self, chunks: tuple[str, ...] = ("Hello", ", wire", " world", "!"), usage: tuple[int, int] = (11, 7)):
        self.chunks = chunks
        self.usage = usage
        self.received: list[Received] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def reset(self) -> None:
        """Forget requests and script, and release handlers still stalling for an earlier test."""
        with self._lock:
            self.received.clear()
            self._script.clear()
            self.stopping.set()
            self.stopping = threading.Event()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def next_reply(self, received: Received) -> Reply:
        with self._lock:
            self.received.append(received)
            return self._script.popleft() if self._script else Reply()

    def close(self) -> None:
        self.stopping.set()  # wakes slow and stalled handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], wire: WireServer) -> None:
        super().__init__(address, handler)
        self.wire = wire


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet

    def do_POST(self) -> None:
        wire = self.server.wire
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.loads(raw or b"{}")
        received = Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        reply = wire.next_reply(received)
        stopping = wire.stopping  # this test's event: reset() and close() set it
        fmt: Literal["anthropic", "openai"]
        if self.path == "/v1/messages":
            fmt = "anthropic"
        elif self.path == "/v1/chat/completions":
            fmt = "openai"
        else:
            self._json(404, {"error": {"type": "not_found_error", "message": f"No route {self.path}"}})
            return
        if reply.delay_s and stopping.wait(reply.delay_s):
            return
        if reply.status != 200:
            self._error(fmt, reply, received)
        elif body.get("stream"):
            self._stream(fmt, reply, body, stopping)
        else:
            self._json(200, _anthropic_message(wire, body) if fmt == "anthropic" else _openai_completion(wire, body))

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, fmt: Literal["anthropic", "openai"], reply: Reply, received: Received) -> None:
        # Some providers echo (part of) the key they were given; {key} lets a test check redaction.
        credential = received.headers.get("x-api-key") or received.headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        message = reply.message.replace("{key}", credential)
        headers = {"retry-after": reply.retry_after} if reply.retry_after else {}
        if fmt == "anthropic":
            kind = ANTHROPIC_ERROR_TYPES.get(reply.status, "api_error")
            headers["request-id"] = "req_wire_1"
            payload: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            kind = OPENAI_ERROR_TYPES.get(reply.status, "server_error")
            headers["x-request-id"] = "req_wire_1"
            code = "rate_limit_exceeded" if reply.status == 429 else None
            payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        self._json(reply.status, payload, headers)

    def _stream(
        self, fmt: Literal["anthropic", "openai"], reply: Reply, body: dict[str, Any], stopping: threading.Event
    ) -> None:
        wire = self.server.wire
        events = _anthropic_events(wire, body) if fmt == "anthropic" else _openai_events(wire, body)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        first_text = 3 if fmt == "anthropic" else 1  # index of the event carrying the first text
        for index, event in enumerate(events):
            self.wfile.write(event.encode())
            self.wfile.flush()
            if index == first_text and reply.stall_mid_stream:
                stopping.wait(30)
                return
            if index == first_text and reply.fail_mid_stream:
                self.wfile.write(_mid_stream_error(fmt).encode())
                return


def _anthropic_message(wire: WireServer, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_wire_1",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": wire.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": wire.usage[0], "output_tokens": wire.usage[1]},
    }


def _sse(event: str | None, data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def _anthropic_events(wire: WireServer, body: dict[str, Any]) -> list[str]:
    start = _anthropic_message(wire, body) | {"content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": wire.usage[0], "output_tokens": 1}
    events = [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        _sse("ping", {"type": "ping"}),
    ]
    events += [
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}},
        )
        for chunk in wire.chunks
    ]
    events += [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": wire.usage[1]},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def _openai_completion(wire: WireServer, body: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = wire.usage
    return {
        "id": "chatcmpl-wire-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": wire.text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def _openai_events(wire: WireServer, body: dict[str, Any]) -> list[str]:
    base = {
        "id": "chatcmpl-wire-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": body["model"],
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse(None, base | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": text}) for text in wire.chunks]
    events.append(chunk({}, finish="stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        prompt, completion = wire.usage
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        events.append(_sse(None, base | {"choices": [], "usage": usage}))
    events.append(_sse(None, "[DONE]"))
    return events


def _mid_stream_error(fmt: Literal["anthropic", "openai"]) -> str:
    if fmt == "anthropic":
        return _sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    return _sse(
        None,
        {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
    )
