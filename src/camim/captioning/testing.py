"""A local stand-in for an OpenAI-compatible chat-completions server, for tests, benchmarks and dry runs.

It runs no model. By default the "caption" of an image is derived from a hash of the image bytes it received
(:func:`expected_caption`), so a client can check that every caption landed on the right image. With a
``script`` (a table from text to answer) it answers any chat instead: the answer of a request is the entry
whose key is the longest one found in the request's last user turn; a ``str`` is the answer's text, ``None``
an answer without content (cut by the server's content filter, as a refusal can come), an ``int`` an HTTP
error status answered every time; a request that no key matches gets HTTP 400. It records
every request, tracks how many are in flight, and injects faults: a fixed ``delay``, and per request (its
images and last text) a list of failures answered before success (``429``, ``500``... or ``"hang"``: wait
``hang_seconds`` so the client times out). A ``refusal`` ``(status, body)`` is answered to every request
after the first ``refuse_after`` (as a server refuses what retrying cannot fix): a ``dict`` body is sent as
JSON, a ``str`` as plain text, and ``{tokens}`` in either becomes the word count of the request's last user
turn (a prompt-length refusal names each prompt's own length). Standalone: ``python -m
camim.captioning.testing --port 8000 --delay 0.2``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def caption_for_bytes(data: bytes) -> str:
    """The caption the server gives an image with these bytes."""
    return f"A picture whose bytes hash to {hashlib.sha1(data).hexdigest()[:12]}."


def expected_caption(path: str | Path) -> str:
    """The caption the server gives the image file at ``path`` when it is sent as is."""
    return caption_for_bytes(Path(path).read_bytes())


@dataclass
class RecordedRequest:
    """One request as the server saw it; ``status`` is what it answered."""

    model: str
    image_hash: str | None  # of the last image
    prompt: str | None  # the last text part (of the last user turn)
    max_tokens: int | None
    temperature: float | None
    authorization: str | None
    status: int
    started: float
    ended: float = 0.0
    image_hashes: list[str] = field(default_factory=list)  # every image of the request, in order
    turns: int = 1  # messages in the request


@dataclass
class ServerState:
    delay: float = 0.0
    # hold each request until this many are in flight at once (at most gather_timeout seconds), so a test sees
    # whether a client fills its slots however slowly a loaded machine starts its threads
    gather: int = 0
    gather_timeout: float = 10.0
    faults: list = field(default_factory=list)  # per image, answered before success, in order
    hang_seconds: float = 5.0
    retry_after_ms: int | None = None  # sent with 429/503 answers when set
    models: set[str] | None = None  # answer 404 for other models when set
    api_key: str | None = None  # answer 401 for other keys when set
    script: dict[str, str | int | None] | None = (
        None  # text in the last user turn -> answer (module docstring)
    )
    refusal: tuple[int, dict | str] | None = None  # (status, body) answered after refuse_after requests
    refuse_after: int = 0
    received: int = 0  # requests received so far
    requests: list[RecordedRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    attempts: dict[str, int] = field(default_factory=dict)  # request (images + last text) -> requests so far
    lock: threading.Lock = field(default_factory=threading.Lock)


def _wait_for_gathering(state: ServerState) -> None:
    """Block until ``state.gather`` requests have been in flight together (or ``gather_timeout`` passed)."""
    deadline = time.monotonic() + state.gather_timeout
    while state.max_in_flight < state.gather and time.monotonic() < deadline:
        time.sleep(0.005)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ServerState  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict | str, headers: dict | None = None) -> None:
        text = isinstance(body, str)
        data = body.encode() if text else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        state = self.state
        started = time.perf_counter()
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        messages = body.get("messages", [])
        image_bytes, prompt, hashes, user_text = _read_messages(messages)
        request_key = hashlib.sha1("".join([*hashes, user_text]).encode()).hexdigest()
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            attempt = state.attempts.get(request_key, 0)
            state.attempts[request_key] = attempt + 1
            index = state.received
            state.received += 1
        record = RecordedRequest(
            model=body.get("model"),
            image_hash=hashes[-1] if hashes else None,
            prompt=prompt,
            max_tokens=body.get("max_tokens"),
            temperature=body.get("temperature"),
            authorization=self.headers.get("Authorization"),
            status=200,
            started=started,
            image_hashes=hashes,
            turns=len(messages),
        )
        try:
            _wait_for_gathering(state)
            fault = state.faults[attempt] if attempt < len(state.faults) else None
            time.sleep(state.hang_seconds if fault == "hang" else state.delay)
            self._respond(record, fault, index, user_text, image_bytes)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
            record.status = -1
        finally:
            record.ended = time.perf_counter()
            with state.lock:
                state.in_flight -= 1
                state.requests.append(record)

    def _respond(self, record: RecordedRequest, fault, index: int, user_text: str, image_bytes) -> None:
        """The answer the server's state calls for, in order: a wrong key (401), an unknown model (404), a
        refusal after ``refuse_after`` requests, an injected fault, a scripted answer, no image (400), or the
        image's caption; ``record.status`` says which."""
        state = self.state
        if state.api_key is not None and record.authorization != f"Bearer {state.api_key}":
            record.status = 401
            self._send(
                401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
            )
        elif state.models is not None and record.model not in state.models:
            record.status = 404
            self._send(404, {"error": {"message": f"The model `{record.model}` does not exist."}})
        elif state.refusal is not None and index >= state.refuse_after:
            record.status, body = state.refusal
            self._send(record.status, _with_tokens(body, len(user_text.split())))
        elif isinstance(fault, int):
            record.status = fault
            headers = {}
            if state.retry_after_ms is not None and fault in (429, 503):
                headers["retry-after-ms"] = str(state.retry_after_ms)
            self._send(fault, {"error": {"message": f"injected {fault}"}}, headers)
        elif state.script is not None:
            keys = [k for k in state.script if k in user_text]
            answer = state.script[max(keys, key=len)] if keys else 400
            if isinstance(answer, int):
                record.status = answer
                message = "scripted error" if keys else "no scripted answer for this request"
                self._send(answer, {"error": {"message": message}})
            else:
                self._send_answer(record, answer)
        elif image_bytes is None:
            record.status = 400
            self._send(400, {"error": {"message": "no image in the request"}})
        else:
            self._send_answer(record, caption_for_bytes(image_bytes))

    def _send_answer(self, record: RecordedRequest, text: str | None) -> None:
        """A chat completion whose message is ``text`` (``None``: no content, cut by the content filter)."""
        self._send(
            200,
            {
                "id": f"chatcmpl-{hashlib.sha1(str(text).encode()).hexdigest()[:8]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": record.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop" if text is not None else "content_filter",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
            },
        )


def _with_tokens(body: dict | str, tokens: int) -> dict | str:
    """``body`` with ``{tokens}`` in its strings replaced by ``tokens``."""
    if isinstance(body, str):
        return body.replace("{tokens}", str(tokens))
    return json.loads(json.dumps(body).replace("{tokens}", str(tokens)))


class FakeChatServer:
    """A chat-completions server on ``127.0.0.1`` (port 0: a free one) in a background thread.

    Use as a context manager; ``base_url`` is what to pass as ``--base-url``.
    """

    def __init__(self, port: int = 0, **state: object):
        self.state = ServerState(**state)  # type: ignore[arg-type]
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    def start(self) -> FakeChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - manual dry runs
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per request")
    args = parser.parse_args(argv)
    server = FakeChatServer(port=args.port, delay=args.delay).start()
    print(f"serving chat completions at {server.base_url}; Ctrl-C to stop", flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    main()


def _read_messages(messages: list) -> tuple[bytes | None, str | None, list[str], str]:
    """(the last image's bytes, the last text part, the SHA-1 of every image, the user turn's text) of a chat."""
    image_bytes, prompt, hashes, user_text = None, None, [], ""
    for message in messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        texts = []
        for part in parts:
            if part.get("type") == "image_url":
                image_bytes = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                hashes.append(hashlib.sha1(image_bytes).hexdigest())
            elif part.get("type") == "text":
                prompt = part["text"]
                texts.append(part["text"])
        if message.get("role") == "user":
            user_text = "\n".join(texts)
    return image_bytes, prompt, hashes, user_text
