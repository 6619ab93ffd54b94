"""An OpenAI-compatible /chat/completions server on 127.0.0.1 for tests (teachers, judges, simulated users).

`answer(body, number)` gets each request's JSON and its 1-based number and returns the reply message (a dict
with "content" and maybe "tool_calls"), or an int HTTP status to refuse with (sent with Retry-After: 0).
Every request's body and headers are kept; `max_in_flight` is the most requests handled at once."""

import http.server
import json
import threading
import time


class ChatServer:
    def __init__(self, answer, delay_s: float = 0.0):
        self.requests, self.headers, self.in_flight, self.max_in_flight = [], [], 0, 0
        lock, outer = threading.Lock(), self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(handler):  # noqa: N805
                body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
                with lock:
                    outer.requests.append(body)
                    outer.headers.append(dict(handler.headers))
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    number = len(outer.requests)
                time.sleep(delay_s)
                with lock:
                    outer.in_flight -= 1
                reply = answer(body, number)
                if isinstance(reply, int):
                    handler.send_response(reply)
                    handler.send_header("Retry-After", "0")
                    handler.send_header("Content-Length", "0")
                    handler.end_headers()
                    return
                payload = json.dumps({"choices": [{"message": {"role": "assistant", **reply}}]}).encode()
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(payload)))
                handler.end_headers()
                handler.wfile.write(payload)

            def log_message(handler, *args):  # noqa: N805
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
