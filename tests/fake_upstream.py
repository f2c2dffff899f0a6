"""A scriptable OpenAI-compatible upstream for tests, benchmarks and real-client runs.

It listens on 127.0.0.1 with HTTP/1.1 keep-alive and records every request. Replies come
from a script (a queue of reply functions) or, when the script is empty, from a small
rule-based "model": a user message containing `CALL name {json}` directives is answered
with those tool calls (in parallel when there are several); a turn that ends with tool
results is answered with a summary of them; anything else gets a fixed sentence.

Run it alone with `python tests/fake_upstream.py PORT` to drive a real client.
"""

import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CALL_DIRECTIVE = re.compile(r"CALL (\w+) (\{.*?\})(?=\s+CALL |\s*$)", re.S)


def sse(obj):
    return "data: %s\n\n" % (obj if isinstance(obj, str) else json.dumps(obj))


def chunk(delta=None, finish=None, usage=None, model="fake-model", choices=True):
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
            "model": model, "choices": []}
    if choices:
        body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    if usage is not None:
        body["usage"] = usage
    return body


def usage(prompt=11, completion=7, reasoning=0, cached=0):
    out = {"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion}
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def completion(content=None, tool_calls=None, finish="stop", reasoning=None, use=None):
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = reasoning
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1,
            "model": "fake-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": use or usage()}


def tool_call(call_id, name, args):
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}


# -- replies: functions(handler, request_json) that write a whole HTTP response -----------

def json_reply(payload, status=200, headers=None):
    def reply(handler, request):
        handler.send_body(status, json.dumps(payload).encode(), "application/json", headers)
    return reply


def raw_reply(body, status=200, content_type="application/json", headers=None):
    def reply(handler, request):
        handler.send_body(status, body if isinstance(body, bytes) else body.encode(),
                          content_type, headers)
    return reply


def stream_reply(events, delay=0.0, close_early=False):
    """An SSE reply; `events` are chunk dicts or raw strings (e.g. "[DONE]").
    close_early drops the connection after the events without ending the stream."""
    def reply(handler, request):
        handler.start_stream()
        for event in events:
            if delay:
                time.sleep(delay)
            if not handler.write_chunk(sse(event).encode()):
                return
        if close_early:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        handler.end_stream()
    return reply


def text_stream(text, pieces=3, reasoning=None, use=None, delay=0.0):
    events = [chunk({"role": "assistant", "content": ""})]
    if reasoning:
        events.append(chunk({"reasoning_content": reasoning}))
    size = max(1, len(text) // pieces)
    events += [chunk({"content": text[i:i + size]}) for i in range(0, len(text), size)]
    events += [chunk(finish="stop"), chunk(usage=use or usage(), choices=False), "[DONE]"]
    return stream_reply(events, delay)


def tool_stream(calls, reasoning=None, use=None, split=True, repeat_ids=False):
    """Tool calls streamed in fragments: first id and name, then the arguments in two
    pieces (llama.cpp style with repeat_ids: id and name again in every fragment)."""
    events = [chunk({"role": "assistant", "content": None})]
    if reasoning:
        events.append(chunk({"reasoning_content": reasoning}))
    for index, (call_id, name, args) in enumerate(calls):
        text = json.dumps(args)
        head = {"index": index, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": ""}}
        events.append(chunk({"tool_calls": [head]}))
        pieces = [text[:len(text) // 2], text[len(text) // 2:]] if split else [text]
        for piece in pieces:
            fragment = {"index": index, "function": {"arguments": piece}}
            if repeat_ids:
                fragment.update(id=call_id, type="function")
                fragment["function"]["name"] = name
            events.append(chunk({"tool_calls": [fragment]}))
    events += [chunk(finish="tool_calls"), chunk(usage=use or usage(), choices=False), "[DONE]"]
    return stream_reply(events)


def hang(seconds):
    def reply(handler, request):
        time.sleep(seconds)
        handler.send_body(200, json.dumps(completion("late")).encode(), "application/json")
    return reply


# -- the rule-based model used when no script is queued ------------------------------------

def message_text(message):
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def sample_json(schema):
    """The simplest value a JSON Schema accepts (enough for Gemini CLI's JSON helpers)."""
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), "null") if isinstance(kind, list) else kind
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        return {name: sample_json(sub) for name, sub in schema.get("properties", {}).items()}
    return {"string": "fake", "integer": 1, "number": 1.0, "boolean": True,
            "array": []}.get(kind)


def agent_reply(request):
    """What the rule-based model answers to a Chat Completions request: (text, calls)."""
    messages = request.get("messages", [])
    response_format = request.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        return json.dumps(sample_json(response_format["json_schema"]["schema"])), []
    if response_format.get("type") == "json_object":
        return json.dumps({"answer": "FAKE says hello."}), []
    tail = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        tail.append(message)
    if tail:
        names = {}
        for message in messages:
            for call in message.get("tool_calls") or ():
                names[call["id"]] = call["function"]["name"]
        summary = "; ".join("%s -> %s" % (names.get(m.get("tool_call_id"), "?"),
                                          message_text(m)) for m in reversed(tail))
        return "FAKE got tool result(s): " + summary, []
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    calls = [(name, json.loads(args)) for name, args in
             CALL_DIRECTIVE.findall(message_text(last_user))]
    if calls:
        return None, calls
    return "FAKE says hello.", []


class FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        with self.server.fake.lock:
            self.server.fake.connections += 1

    def do_GET(self):
        if self.path.endswith("/models"):
            self.send_body(200, json.dumps({"object": "list", "data": [
                {"id": "fake-model", "object": "model", "created": 1, "owned_by": "fake"}]})
                .encode(), "application/json")
        else:
            self.send_body(404, b'{"error":{"message":"not found"}}', "application/json")

    def do_POST(self):
        fake = self.server.fake
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            request = json.loads(raw)
        except ValueError:
            request = None
        with fake.lock:
            fake.requests.append({"path": self.path,
                                  "headers": {k.lower(): v for k, v in self.headers.items()},
                                  "json": request})
            reply = fake.script.pop(0) if fake.script else None
        if reply is None:
            reply = fake.automatic_reply(request or {})
        reply(self, request)

    # helpers for replies
    def send_body(self, status, body, content_type, headers=None):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def start_stream(self):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data):
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            return True
        except OSError:
            with self.server.fake.lock:
                self.server.fake.aborted_streams += 1
            self.close_connection = True
            return False

    def end_stream(self):
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True


class FakeOpenAI:
    """Start with FakeOpenAI().start(); base_url is its /v1 root; stop() when done."""

    def __init__(self, port=0):
        self.lock = threading.Lock()
        self.requests = []
        self.script = []
        self.connections = 0
        self.aborted_streams = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), FakeHandler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self
        self.port = self.httpd.server_address[1]
        self.base_url = "http://127.0.0.1:%d/v1" % self.port
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def queue(self, *replies):
        with self.lock:
            self.script.extend(replies)

    @property
    def last(self):
        return self.requests[-1]["json"]

    def automatic_reply(self, request):
        text, calls = agent_reply(request)
        if request.get("stream"):
            if calls:
                return tool_stream([("call_%d_%s" % (len(self.requests), i), name, args)
                                    for i, (name, args) in enumerate(calls)])
            return text_stream(text)
        if calls:
            return json_reply(completion(None, [
                tool_call("call_%d_%s" % (len(self.requests), i), name, args)
                for i, (name, args) in enumerate(calls)], finish="tool_calls"))
        return json_reply(completion(text))


if __name__ == "__main__":
    fake = FakeOpenAI(int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print("fake OpenAI-compatible upstream at %s" % fake.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
