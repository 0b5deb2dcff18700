"""The Python client's watch against a scripted SSE server (the client's own logic: when the
stream has ended, reconnecting with Last-Event-ID, riding out a 503)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runledger.client import Client, RunLedgerError


def sse(*events: tuple[str, str, str]) -> bytes:
    return b"".join(f"id: {i}\nevent: {kind}\ndata: {data}\n\n".encode() for i, kind, data in events)


FAILED_THEN_RESTARTED = sse(("1-0", "state", '{"type":"Scheduled"}'), ("2-0", "state", '{"type":"Failed"}'),
                            ("3-0", "end", '{"version":2}'), ("4-0", "state", '{"type":"Scheduled"}'))
RESUMED = sse(("5-0", "state", '{"type":"Running"}'), ("6-0", "state", '{"type":"Success"}'), ("7-0", "end", '{"version":4}'))


class Script:
    """Answers request n with ``answers[n]``: an HTTP status, or SSE bytes then a closed connection."""

    def __init__(self, *answers) -> None:
        self.answers, self.seen_ids = list(answers), []

    def __enter__(self) -> str:
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                script.seen_ids.append(self.headers.get("Last-Event-ID"))
                answer = script.answers.pop(0) if script.answers else 404
                if isinstance(answer, int):
                    body = b'{"detail":"busy"}'
                    self.send_response(answer)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(answer)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_end_followed_by_a_state_is_not_the_end_and_a_503_is_ridden_out():
    with Script(FAILED_THEN_RESTARTED, 503, RESUMED) as url, Client(url) as client:
        events = [(kind, data.get("type") or data.get("version")) for kind, _, data in client.watch("r1")]
    assert events == [("state", "Scheduled"), ("state", "Failed"), ("end", 2), ("state", "Scheduled"),
                      ("state", "Running"), ("state", "Success"), ("end", 4)]


def test_reconnects_resume_after_the_last_event_seen():
    script = Script(FAILED_THEN_RESTARTED, 503, RESUMED)
    with script as url, Client(url) as client:
        list(client.watch("r1"))
    assert script.seen_ids == [None, "4-0", "4-0"]


def test_a_client_error_ends_the_watch_at_once():
    with Script(404) as url, Client(url) as client, pytest.raises(RunLedgerError) as raised:
        list(client.watch("nope"))
    assert raised.value.status == 404
