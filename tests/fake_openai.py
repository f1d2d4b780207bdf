"""A scripted, OpenAI-compatible chat-completions server for tests; nothing leaves the machine.

    from tests.fake_openai import FakeOpenAI, answer, refusal, slow, status, text

    with FakeOpenAI() as server:
        server.script(status(429), answer({"risk": "low", "score": 5, "reasons": []}))
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)  # or: env={**os.environ, **server.env()}
        ...
        assert len(server.requests) == 2

Replies (each builds a `Reply`; the server answers `POST {url}/chat/completions` with the
next one in the queue, first in, first out):

- `answer(obj)`: 200, the assistant message's content is `json.dumps(obj)`, the shape
  `with_structured_output(method="json_schema")` reads.
- `text(content)`: 200 with `content` verbatim as the message, e.g. malformed JSON.
- `refusal(message)`: 200, no content, the message's `refusal` field set.
- `status(code, message=None)`: an HTTP error with an OpenAI-style body
  (`{"error": {"message", "type", "param", "code"}}`), e.g. `status(429)`, `status(500)`.
- `slow(reply, seconds)`: `reply`, sent after `seconds` (set DURAKIT_MODEL_TIMEOUT lower
  to get a client timeout).

`FakeOpenAI(default=...)`:

- `url`: the base URL, `http://127.0.0.1:<port>/v1` (OPENAI_BASE_URL).
- `env(model="fake-model")`: OPENAI_BASE_URL, OPENAI_API_KEY and DURAKIT_MODEL for this server.
- `script(*replies)`: append replies to the queue.
- `default`: what the server answers once the queue is empty (settable). Unless given, a
  400 that says nothing was scripted, so an unexpected call fails at once and is not
  retried; `FakeOpenAI(default=status(500))` is a server that fails forever.
- `requests`: the JSON body of every chat-completions request, in order.
- `start()` / `stop()`: what `with` does. After `stop()` the port refuses connections.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ERROR_TYPES = {429: ("requests", "rate_limit_exceeded"), 401: ("invalid_request_error", "invalid_api_key")}


@dataclass(frozen=True)
class Reply:
    status: int
    message: dict[str, Any] | None = None  # the assistant message of a 200
    error: str | None = None  # the error message of anything else
    delay: float = 0.0


def answer(obj: dict[str, Any]) -> Reply:
    return text(json.dumps(obj))


def text(content: str) -> Reply:
    return Reply(200, message={"role": "assistant", "content": content, "refusal": None})


def refusal(message: str) -> Reply:
    return Reply(200, message={"role": "assistant", "content": None, "refusal": message})


def status(code: int, message: str | None = None) -> Reply:
    return Reply(code, error=message or f"FakeOpenAI says {code} {HTTPStatus(code).phrase}.")


def slow(reply: Reply, seconds: float) -> Reply:
    return replace(reply, delay=seconds)


NOTHING_SCRIPTED = status(400, "FakeOpenAI has no scripted reply left for this request.")


class FakeOpenAI:
    def __init__(self, default: Reply = NOTHING_SCRIPTED) -> None:
        self.default = default
        self.requests: list[dict[str, Any]] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-openai", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def env(self, model: str = "fake-model") -> dict[str, str]:
        return {"OPENAI_BASE_URL": self.url, "OPENAI_API_KEY": "test", "DURAKIT_MODEL": model}

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()  # wakes any `slow` reply still waiting
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            return self._queue.popleft() if self._queue else self.default

    def _completion(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "message": reply.message, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, _error_body(404, f"FakeOpenAI only serves /v1/chat/completions, not {self.path}."))
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                reply = fake._next_reply(body)
                if reply.delay and fake._stopped.wait(reply.delay):
                    return
                if reply.status == 200:
                    self._send(200, fake._completion(reply, body))
                else:
                    self._send(reply.status, _error_body(reply.status, reply.error or ""))

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except ConnectionError:
                    pass  # the client gave up (a timeout); nothing to tell it

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest's output clean

        return Handler


def _error_body(code: int, message: str) -> dict[str, Any]:
    kind, error_code = ERROR_TYPES.get(code, ("server_error" if code >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": error_code}}
