"""Minimal clients of the four dialects over raw HTTP, for the end-to-end matrix.

Each keeps a conversation the way a real client of its dialect would: the assistant turn
as it came back (Gemini CLI drops thought parts but keeps thoughtSignature; an OpenAI
client keeps reasoning_content but no unknown fields; an Anthropic client keeps its
blocks, signatures included), then tool results in its own shape. Independent of
gemini_proxy.py on purpose: a second reading of the same wire formats.
"""

import base64
import json


class Result:
    def __init__(self, status, text="", reasoning="", calls=(), finish=None, usage=(0, 0),
                 turn=None, error=None, headers=None):
        self.status, self.text, self.reasoning = status, text, reasoning
        self.calls = list(calls)            # [{"id", "name", "args"}]
        self.finish, self.usage, self.turn = finish, usage, turn
        self.error, self.headers = error, headers or {}


def _sse(data, named=False):
    """(event name, payload) pairs of an SSE body; checks the framing on the way."""
    out = []
    for block in data.decode("utf-8").split("\n\n")[:-1]:
        lines = block.split("\n")
        name = lines[0][7:] if named else None
        body = lines[-1]
        assert body.startswith("data: "), block[:80]
        out.append((name, body[6:]))
    return out


class Talker:
    dialect = ""

    def __init__(self, proxy):
        self.proxy = proxy

    def ask(self, history, stream=False, tools=None, thinking=False, schema=None):
        path, body, headers = self.request(history, stream, tools, thinking, schema)
        status, resp_headers, data = self.proxy.request("POST", path, body, headers)
        if status != 200:
            return Result(status, error=json.loads(data), headers=resp_headers)
        return self.parse(data, stream)


class GeminiTalker(Talker):
    dialect = "gemini"

    def user_turn(self, text, image=None):
        parts = [{"text": text}]
        if image:
            parts.append({"inlineData": {"mimeType": "image/png",
                                         "data": base64.b64encode(image).decode()}})
        return {"role": "user", "parts": parts}

    def request(self, history, stream, tools, thinking, schema):
        body = {"contents": history}
        if tools:
            body["tools"] = [{"functionDeclarations": [
                {"name": name, "description": "tool " + name, "parametersJsonSchema": params}
                for name, params in tools.items()]}]
        config = {}
        if thinking:
            config["thinkingConfig"] = {"includeThoughts": True, "thinkingBudget": 1024}
        if schema:
            config.update(responseMimeType="application/json", responseJsonSchema=schema)
        if config:
            body["generationConfig"] = config
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return ("/v1beta/models/gemini-2.5-pro:" + method, body,
                {"x-goog-api-key": "client-key"})

    def parse(self, data, stream):
        chunks = [json.loads(p) for _, p in _sse(data)] if stream else [json.loads(data)]
        parts, finish, usage = [], None, {}
        for chunk in chunks:
            candidate = chunk["candidates"][0]
            parts += candidate.get("content", {}).get("parts", [])
            finish = candidate.get("finishReason", finish)
            usage = chunk.get("usageMetadata", usage)
        kept = [p for p in parts if not p.get("thought")]      # what Gemini CLI keeps
        return Result(200, "".join(p.get("text", "") for p in kept),
                      "".join(p["text"] for p in parts if p.get("thought")),
                      [dict(p["functionCall"], args=p["functionCall"].get("args", {}))
                       for p in parts if "functionCall" in p], finish,
                      (usage.get("promptTokenCount"), usage.get("candidatesTokenCount", 0) +
                       usage.get("thoughtsTokenCount", 0)),
                      {"role": "model", "parts": kept})

    def results_turns(self, result, outputs):
        return [{"role": "user", "parts": [{"functionResponse": {
            "id": call.get("id"), "name": call["name"],
            "response": {"output": outputs[call["name"]]}}} for call in result.calls]}]

    @staticmethod
    def retry_seconds(result):
        for detail in result.error["error"].get("details", []):
            if "retryDelay" in detail:
                return float(detail["retryDelay"].rstrip("s"))
        return None


class OpenAITalker(Talker):
    dialect = "openai"

    def user_turn(self, text, image=None):
        if not image:
            return {"role": "user", "content": text}
        return {"role": "user", "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(image).decode()}}]}

    def request(self, history, stream, tools, thinking, schema):
        body = {"model": "gpt-test", "messages": history}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        if tools:
            body["tools"] = [{"type": "function", "function": {
                "name": name, "description": "tool " + name, "parameters": params}}
                for name, params in tools.items()]
        if thinking:
            body["reasoning_effort"] = "low"
        if schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": schema}}
        return "/v1/chat/completions", body, {"authorization": "Bearer client-key"}

    def parse(self, data, stream):
        if not stream:
            body = json.loads(data)
            message, finish = body["choices"][0]["message"], body["choices"][0]["finish_reason"]
            usage = body["usage"]
            text, reasoning = message.get("content") or "", message.get("reasoning_content", "")
            calls = message.get("tool_calls") or []
        else:
            events = [p for _, p in _sse(data)]
            assert events[-1] == "[DONE]"
            text = reasoning = ""
            by_index, finish, usage = {}, None, {}
            for event in events[:-1]:
                chunk = json.loads(event)
                usage = chunk.get("usage") or usage
                for choice in chunk["choices"]:
                    delta = choice["delta"]
                    text += delta.get("content") or ""
                    reasoning += delta.get("reasoning_content") or ""
                    for fragment in delta.get("tool_calls") or []:
                        call = by_index.setdefault(fragment["index"], {
                            "id": "", "type": "function",
                            "function": {"name": "", "arguments": ""}})
                        call["id"] = fragment.get("id") or call["id"]
                        fn = fragment.get("function", {})
                        call["function"]["name"] += fn.get("name") or ""
                        call["function"]["arguments"] += fn.get("arguments") or ""
                    finish = choice.get("finish_reason") or finish
            calls = [by_index[i] for i in sorted(by_index)]
        turn = {"role": "assistant", "content": text or None}
        if reasoning:
            turn["reasoning_content"] = reasoning          # Qwen Code echoes it back
        if calls:   # without extra_content: clients drop fields they do not know
            turn["tool_calls"] = [{"id": c["id"], "type": "function",
                                   "function": c["function"]} for c in calls]
        return Result(200, text, reasoning,
                      [{"id": c["id"], "name": c["function"]["name"],
                        "args": json.loads(c["function"]["arguments"] or "{}")} for c in calls],
                      finish, (usage.get("prompt_tokens"), usage.get("completion_tokens")),
                      turn)

    def results_turns(self, result, outputs):
        return [{"role": "tool", "tool_call_id": call["id"], "content": outputs[call["name"]]}
                for call in result.calls]

    @staticmethod
    def retry_seconds(result):
        value = result.headers.get("retry-after")
        return float(value) if value else None


class AnthropicTalker(Talker):
    dialect = "anthropic"

    def user_turn(self, text, image=None):
        content = [{"type": "text", "text": text}]
        if image:
            content.append({"type": "image", "source": {
                "type": "base64", "media_type": "image/png",
                "data": base64.b64encode(image).decode()}})
        return {"role": "user", "content": content}

    def request(self, history, stream, tools, thinking, schema):
        body = {"model": "claude-test", "max_tokens": 4096, "messages": history}
        if stream:
            body["stream"] = True
        if tools:
            body["tools"] = [{"name": name, "description": "tool " + name,
                              "input_schema": params} for name, params in tools.items()]
        if thinking:
            body["thinking"] = {"type": "enabled", "budget_tokens": 2048}
        if schema:
            body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        return "/v1/messages", body, {"x-api-key": "client-key",
                                      "anthropic-version": "2023-06-01"}

    def parse(self, data, stream):
        if not stream:
            message = json.loads(data)
        else:
            message, blocks = None, {}
            for name, payload in _sse(data, named=True):
                event = json.loads(payload)
                assert event["type"] == name
                if name == "message_start":
                    message = dict(event["message"], content=[])
                elif name == "content_block_start":
                    blocks[event["index"]] = dict(event["content_block"], _json="")
                elif name == "content_block_delta":
                    block, delta = blocks[event["index"]], event["delta"]
                    if delta["type"] == "text_delta":
                        block["text"] += delta["text"]
                    elif delta["type"] == "thinking_delta":
                        block["thinking"] += delta["thinking"]
                    elif delta["type"] == "signature_delta":
                        block["signature"] += delta["signature"]
                    elif delta["type"] == "input_json_delta":
                        block["_json"] += delta["partial_json"]
                elif name == "content_block_stop":
                    block = blocks.pop(event["index"])
                    if block["type"] == "tool_use":
                        block["input"] = json.loads(block["_json"] or "{}")
                    del block["_json"]
                    message["content"].append(block)
                elif name == "message_delta":
                    message.update(event["delta"])
                    message["usage"] = dict(message["usage"], **event["usage"])
            assert name == "message_stop"
        content = message["content"]
        usage = message["usage"]
        return Result(200, "".join(b["text"] for b in content if b["type"] == "text"),
                      "".join(b["thinking"] for b in content if b["type"] == "thinking"),
                      [{"id": b["id"], "name": b["name"], "args": b["input"]}
                       for b in content if b["type"] == "tool_use"],
                      message["stop_reason"],
                      (usage["input_tokens"] + usage.get("cache_read_input_tokens", 0),
                       usage["output_tokens"]),
                      {"role": "assistant", "content": content})

    def results_turns(self, result, outputs):
        return [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call["id"], "content": outputs[call["name"]]}
            for call in result.calls]}]

    @staticmethod
    def retry_seconds(result):
        value = result.headers.get("retry-after")
        return float(value) if value else None


class ResponsesTalker(Talker):
    """An OpenAI Responses client that keeps its history the way Codex does: the output
    items as they came (reasoning with its encrypted_content included), then
    function_call_output items; every stream and reply is checked by the strict checker."""

    dialect = "responses"

    def user_turn(self, text, image=None):
        content = [{"type": "input_text", "text": text}]
        if image:
            content.append({"type": "input_image", "image_url": "data:image/png;base64," +
                            base64.b64encode(image).decode()})
        return {"type": "message", "role": "user", "content": content}

    def request(self, history, stream, tools, thinking, schema):
        items = [i for turn in history for i in (turn if isinstance(turn, list) else [turn])]
        body = {"model": "gpt-test", "input": items, "store": False,
                "include": ["reasoning.encrypted_content"]}
        if stream:
            body["stream"] = True
        if tools:
            body["tools"] = [{"type": "function", "name": name, "description": "tool " + name,
                              "parameters": params, "strict": False}
                             for name, params in tools.items()]
        if thinking:
            body["reasoning"] = {"effort": "low", "summary": "auto"}
        if schema:
            body["text"] = {"format": {"type": "json_schema", "name": "answer",
                                       "schema": schema}}
        return "/v1/responses", body, {"authorization": "Bearer client-key"}

    def parse(self, data, stream):
        from responses_checker import (check_responses_object, check_responses_stream,
                                       parse_sse)
        if stream:
            events = parse_sse(data)
            check_responses_stream(events)
            response = events[-1][1]["response"]
        else:
            response = json.loads(data)
            check_responses_object(response)
        output = response["output"]
        text = "".join(part["text"] for item in output if item["type"] == "message"
                       for part in item["content"] if part["type"] == "output_text")
        reasoning = "".join(part["text"] for item in output if item["type"] == "reasoning"
                            for part in item["summary"])
        calls = [{"id": i["call_id"], "name": i["name"], "args": json.loads(i["arguments"])}
                 for i in output if i["type"] == "function_call"]
        usage = response["usage"]
        return Result(200, text, reasoning, calls, response["status"],
                      (usage["input_tokens"], usage["output_tokens"]), output)

    def results_turns(self, result, outputs):
        return [[{"type": "function_call_output", "call_id": call["id"],
                  "output": outputs[call["name"]]} for call in result.calls]]

    @staticmethod
    def retry_seconds(result):
        value = result.headers.get("retry-after")
        return float(value) if value else None


TALKERS = {"gemini": GeminiTalker, "openai": OpenAITalker, "anthropic": AnthropicTalker,
           "responses": ResponsesTalker}
