"""The OpenAI Responses API on both sides (pure functions): requests in (PROTOCOLS-2 §C.1),
replies and streams out (§C.2, §C.3) checked by the strict checker, reasoning carried in
encrypted_content (§C.4), tool names (§C.5); and the upstream side, neutral to Responses
and back."""

import base64
import json

import pytest

import gemini_proxy as gp
from gemini_proxy import (CONTENT_FILTER, LENGTH, MEDIA, STOP, TEXT, THINKING, TOOL_CALL,
                          TOOL_CALLS, TOOL_RESULT, Choice, Finish, Part, Reply, Usage)
from responses_checker import check_responses_object, check_responses_stream, parse_sse

PNG = base64.b64encode(b"png-bytes").decode()


def store():
    return gp.ResponseStore()


def decode(payload, strict=True, **kw):
    payload = dict({"model": "gpt-5.5"}, **payload)
    return gp.decode_responses_request(payload, strict, cache=kw.pop("cache", gp.ReasoningCache()),
                                       store=kw.pop("store", store()), **kw)


def turn_of(payload, **fields):
    turn = gp.responses_turn(dict({"model": "gpt-5.5"}, **payload))
    for name, value in fields.items():
        setattr(turn, name, value)
    return turn


def options(payload=None, **fields):
    return gp.ReplyOptions(reasoning_cache=gp.ReasoningCache(),
                           responses=turn_of(payload or {}, store=False, **fields))


def whole(parts, payload=None, finish=None, usage=None, **fields):
    reply = Reply("r1", "up", [Choice(parts, finish or Finish(STOP))], usage or Usage(5, 3))
    body = gp.encode_responses_response(reply, "gpt-5.5", "resp_1", options(payload, **fields))
    check_responses_object(body)
    return body


def streamed(events, payload=None, **fields):
    opts = options(payload, **fields)
    data = b"".join(gp.encode_responses_stream(iter(events), "gpt-5.5", "resp_1", opts))
    parsed = parse_sse(data)
    check_responses_stream(parsed)
    return parsed, opts


# -- requests: client -> neutral ---------------------------------------------------------------

def test_instructions_and_a_string_input():
    chat = decode({"instructions": "be brief", "input": "hello"})
    assert [p.text for p in chat.system] == ["be brief"]
    assert [(m.role, [p.text for p in m.parts]) for m in chat.messages] == [("user", ["hello"])]


def test_leading_developer_messages_are_system_later_ones_user_text():
    chat = decode({"input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text",
                                                              "text": "rules"}]},
        {"role": "system", "content": "more rules"},            # no type: an easy message
        {"role": "user", "content": "go"},
        {"role": "developer", "content": "a late note"}]})
    assert [p.text for p in chat.system] == ["rules", "more rules"]
    assert [[p.text for p in m.parts] for m in chat.messages] == [["go", "a late note"]]


def test_images_and_files():
    chat = decode({"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "look"},
        {"type": "input_image", "image_url": "data:image/png;base64," + PNG, "detail": "low"},
        {"type": "input_image", "image_url": "https://example.test/cat.jpg"},
        {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,UERG"}]}]})
    parts = chat.messages[0].parts
    assert [(p.type, p.mime, p.data, p.url) for p in parts] == [
        (TEXT, "", "", ""), (MEDIA, "image/png", PNG, ""),
        (MEDIA, "", "", "https://example.test/cat.jpg"), (MEDIA, "application/pdf", "UERG", "")]
    assert parts[1].extra == {"detail": "low"} and parts[3].extra == {"filename": "a.pdf"}


@pytest.mark.parametrize("part", [{"type": "input_image", "file_id": "file-1"},
                                  {"type": "input_file", "file_id": "file-1"}])
def test_file_ids_are_refused(part):
    with pytest.raises(gp.ClientError, match="file_id"):
        decode({"input": [{"role": "user", "content": [part]}]})


def test_a_tool_round_trip_makes_one_assistant_turn_and_its_results():
    chat = decode({"input": [
        {"role": "user", "content": "read both"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text",
                                                         "text": "plan"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text",
                                                              "text": "Reading."}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "read",
         "arguments": "{\"path\": \"a\"}"},
        {"type": "function_call", "call_id": "call_b", "name": "read", "arguments": ""},
        {"type": "function_call_output", "call_id": "call_b", "output": "B"},
        {"type": "function_call_output", "call_id": "call_a", "output": [
            {"type": "input_text", "text": "A"},
            {"type": "input_image", "image_url": "data:image/png;base64," + PNG}]}]})
    user, assistant, results = chat.messages
    assert [(p.type, p.text) for p in assistant.parts[:2]] == [(THINKING, "plan"), (TEXT, "Reading.")]
    assert [(p.id, p.name, p.args) for p in assistant.parts[2:]] == [
        ("call_a", "read", {"path": "a"}), ("call_b", "read", {})]
    # results in the order of the calls, each named after its call
    assert [(p.type, p.id, p.name) for p in results.parts] == [
        (TOOL_RESULT, "call_a", "read"), (TOOL_RESULT, "call_b", "read")]
    assert [(p.type, p.text or p.mime) for p in results.parts[0].content] == [
        (TEXT, "A"), (MEDIA, "image/png")]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_arguments_that_are_not_a_json_object_go_on_as_empty(arguments):
    """A model's malformed call, echoed back by the client, must not end the conversation
    with a 400 on every later turn (PROTOCOLS-2 §C.1)."""
    chat = decode({"input": [{"type": "function_call", "call_id": "c", "name": "f",
                              "arguments": arguments},
                             {"type": "function_call_output", "call_id": "c", "output": "?"}]})
    assert chat.messages[0].parts[0].args == {}


def test_custom_tools_become_functions_of_one_string_with_their_grammar():
    chat = decode({"tools": [{"type": "custom", "name": "apply_patch",
                              "description": "Patch files.",
                              "format": {"type": "grammar", "syntax": "lark",
                                         "definition": "start: begin_patch"}}],
                   "input": [{"type": "custom_tool_call", "call_id": "c1",
                              "name": "apply_patch", "input": "*** Begin Patch"},
                             {"type": "custom_tool_call_output", "call_id": "c1",
                              "output": "Done"}]})
    tool, = chat.tools
    assert tool.schema["properties"] == {"input": {"type": "string",
                                                   "description": "the raw input of the tool"}}
    assert tool.schema["required"] == ["input"]
    assert "Patch files." in tool.description and "start: begin_patch" in tool.description
    call = chat.messages[0].parts[0]
    assert (call.name, call.args) == ("apply_patch", {"input": "*** Begin Patch"})
    assert chat.messages[1].parts[0].content[0].text == "Done"


def test_namespaced_tools_are_flattened_and_their_calls_qualified():
    chat = decode({"tools": [
        {"type": "namespace", "name": "multi_agent", "tools": [
            {"type": "function", "name": "spawn", "parameters": None}]},
        {"type": "namespace", "name": "mcp__files__", "tools": [
            {"type": "function", "name": "list", "parameters": {"type": "object"}}]}],
        "input": [{"type": "function_call", "call_id": "c", "name": "spawn",
                   "namespace": "multi_agent", "arguments": "{}"}]})
    assert [t.name for t in chat.tools] == ["multi_agent__spawn", "mcp__files__list"]
    assert chat.tools[0].schema == {"type": "object", "properties": {}}
    assert chat.messages[0].parts[0].name == "multi_agent__spawn"


def test_additional_tools_items_join_the_tool_list_first_declaration_wins():
    chat = decode({"tools": [{"type": "function", "name": "a", "description": "top"}],
                   "input": [{"type": "additional_tools", "role": "developer", "tools": [
                       {"type": "function", "name": "a", "description": "again"},
                       {"type": "function", "name": "b"}]},
                       {"role": "user", "content": "hi"}]})
    assert [(t.name, t.description) for t in chat.tools] == [("a", "top"), ("b", "")]


def test_hosted_tools_beside_function_tools_are_left_out():
    chat = decode({"tools": [{"type": "function", "name": "exec_command"},
                             {"type": "web_search", "external_web_access": False},
                             {"type": "tool_search", "execution": "client"}],
                   "input": [{"type": "web_search_call", "id": "ws_1"},
                             {"role": "user", "content": "hi"}]})
    assert [t.name for t in chat.tools] == ["exec_command"]
    assert chat.extra["hosted_tools"] == ["web_search", "tool_search"]
    assert [m.role for m in chat.messages] == ["user"]


def test_hosted_tools_alone_or_demanded_are_a_400():
    with pytest.raises(gp.ClientError, match="web_search is OpenAI's own"):
        decode({"tools": [{"type": "web_search"}], "input": "news?"})
    with pytest.raises(gp.ClientError, match="web_search"):
        decode({"tools": [{"type": "function", "name": "f"}, {"type": "web_search"}],
                "tool_choice": {"type": "web_search"}, "input": "news?"})


@pytest.mark.parametrize("choice, mode, allowed, names", [
    ("none", "none", [], ["f", "g", "ns__h"]),
    ("required", "required", [], ["f", "g", "ns__h"]),
    ({"type": "function", "name": "f"}, "required", ["f"], ["f", "g", "ns__h"]),
    ({"type": "function", "name": "h", "namespace": "ns"}, "required", ["ns__h"],
     ["f", "g", "ns__h"]),
    ({"type": "custom", "name": "g"}, "required", ["g"], ["f", "g", "ns__h"]),
    ({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "g"}]},
     "auto", [], ["g"]),
    ({"type": "allowed_tools", "mode": "required", "tools": [
        {"type": "function", "name": "f"}, {"type": "web_search"}]}, "required", [], ["f"]),
])
def test_tool_choice_forms(choice, mode, allowed, names):
    chat = decode({"tools": [{"type": "function", "name": "f"}, {"type": "custom", "name": "g"},
                             {"type": "namespace", "name": "ns", "tools": [
                                 {"type": "function", "name": "h"}]}],
                   "tool_choice": choice, "input": "x"})
    assert (chat.tool_choice, chat.allowed_tools, [t.name for t in chat.tools]) == \
        (mode, allowed, names)


@pytest.mark.parametrize("reasoning, budget, effort, shown", [
    ({"effort": "high"}, None, "high", True),
    ({"summary": "auto"}, -1, "", True),
    ({"effort": "none"}, None, "none", False),
])
def test_reasoning_settings(reasoning, budget, effort, shown):
    thinking = decode({"reasoning": reasoning, "input": "x"}).thinking
    assert (thinking.budget, thinking.effort, thinking.include_thoughts) == (budget, effort, shown)


def test_text_format_sampling_and_limits():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat = decode({"text": {"format": {"type": "json_schema", "name": "answer",
                                       "schema": schema, "strict": True},
                            "verbosity": "low"},
                   "max_output_tokens": 99, "temperature": 0.5, "top_p": 0.9,
                   "stream": True, "store": False, "include": ["reasoning.encrypted_content"],
                   "prompt_cache_key": "s1", "client_metadata": {"a": "b"}, "input": "x"})
    assert (chat.response_format.schema, chat.response_format.name) == (schema, "answer")
    assert (chat.max_tokens, chat.temperature, chat.top_p, chat.stream) == (99, 0.5, 0.9, True)
    assert decode({"text": {"format": {"type": "json_object"}}, "input": "x"}) \
        .response_format.schema is None


@pytest.mark.parametrize("payload, words", [
    ({"input": "x", "frobnicate": 1}, "Unrecognized request argument supplied: frobnicate"),
    ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"input": "x", "background": True}, "background"),
    ({"input": [{"type": "compaction_trigger"}]}, "compaction_trigger"),
    ({"input": [{"type": "teleport"}]}, "unknown input item type 'teleport'"),
    ({"input": [{"role": "user", "content": [{"type": "input_video"}]}]}, "input_video"),
    ({"input": [{"role": "tool", "content": "x"}]}, "role"),
    ({"input": 5}, "input: expected a string or a list of items"),
    ({"input": "x", "tools": [{"type": "hologram"}]}, "unknown tool type 'hologram'"),
    ({"input": "x", "previous_response_id": "resp_missing"}, "resp_missing"),
    ({"input": [{"type": "item_reference", "id": "msg_missing"}]}, "msg_missing"),
])
def test_bad_requests_are_400s_naming_the_field(payload, words):
    with pytest.raises(gp.ClientError) as caught:
        decode(payload)
    assert caught.value.status == 400 and words in caught.value.message


def test_unknown_fields_pass_when_not_strict():
    assert decode({"input": "x", "frobnicate": 1}, strict=False).messages


# -- the stored conversation ----------------------------------------------------------------

def test_a_stored_response_starts_the_next_turns_conversation():
    kept = store()
    first = {"model": "gpt-5.5", "input": [{"role": "user", "content": "one"}]}
    turn = gp.responses_turn(first)
    gp.decode_responses_request(first, turn=turn, store=kept)
    reply = Reply("r", "up", [Choice([Part(TEXT, text="uno")], Finish(STOP))], Usage(1, 1))
    opts = gp.ReplyOptions(responses=turn, reasoning_cache=gp.ReasoningCache())
    with_store(kept, lambda: gp.encode_responses_response(reply, "gpt-5.5", "resp_A", opts))
    assert kept.get("resp_A").response["output"][0]["content"][0]["text"] == "uno"
    chat = decode({"previous_response_id": "resp_A", "input": "two"}, store=kept)
    assert [(m.role, gp.message_text(m)) for m in chat.messages] == [
        ("user", "one"), ("assistant", "uno"), ("user", "two")]
    item_id = kept.get("resp_A").output[0]["id"]
    chat = decode({"input": [{"type": "item_reference", "id": item_id},
                             {"role": "user", "content": "three"}]}, store=kept)
    assert [gp.message_text(m) for m in chat.messages] == ["uno", "three"]
    assert kept.delete("resp_A") and kept.get("resp_A") is None


def with_store(kept, action):
    """Run action with `kept` as the process's response store."""
    saved = gp.RESPONSE_STORE
    gp.RESPONSE_STORE = kept
    try:
        return action()
    finally:
        gp.RESPONSE_STORE = saved


def test_the_store_is_bounded_in_number_bytes_and_age(monkeypatch):
    kept = gp.ResponseStore(max_entries=2, ttl=100, max_bytes=10000)
    for name in ("a", "b", "c"):
        kept.put({"id": name}, [], [], 100)
    assert [kept.get(n) is not None for n in ("a", "b", "c")] == [False, True, True]
    kept.put({"id": "big"}, [], [], 9850)          # over the budget with the others
    assert [kept.get(n) is not None for n in ("b", "c", "big")] == [False, True, True]
    kept.put({"id": "huge"}, [], [], 20000)        # alone over the budget: not kept
    assert kept.get("huge") is None and kept.get("big") is not None
    assert kept.delete("big") and kept.bytes == 100 + len("[]")
    kept.put({"id": "old"}, [], [], 100)
    now = gp.time.monotonic()
    monkeypatch.setattr(gp.time, "monotonic", lambda: now + 101)
    kept.put({"id": "new"}, [], [], 100)           # the expired go when anything is kept
    assert list(kept._entries) == ["new"] and kept.bytes == 100 + len("[]")
    kept.configure(0, 100, 10000)
    kept.put({"id": "d"}, [], [], 1)
    assert kept.get("d") is None        # 0: nothing is kept


def test_store_false_keeps_nothing():
    kept = store()
    payload = {"model": "m", "input": "x", "store": False}
    turn = gp.responses_turn(payload)
    gp.decode_responses_request(payload, turn=turn, store=kept)
    reply = Reply("r", "up", [Choice([Part(TEXT, text="y")], Finish(STOP))], Usage(1, 1))
    opts = gp.ReplyOptions(responses=turn, reasoning_cache=gp.ReasoningCache())
    body = with_store(kept, lambda: gp.encode_responses_response(reply, "m", "resp_B", opts))
    assert body["store"] is False and kept.get("resp_B") is None


# -- replies: neutral -> client ------------------------------------------------------------------

def test_a_whole_reply_has_its_items_in_order_and_its_usage():
    body = whole([Part(THINKING, text="plan", origin="openai"), Part(TEXT, text="Hi "),
                  Part(TEXT, text="there"),
                  Part(TOOL_CALL, id="call_1", name="read", args={"p": 1})],
                 finish=Finish(TOOL_CALLS),
                 usage=Usage(100, 20, cached_tokens=30, reasoning_tokens=5),
                 payload={"include": ["reasoning.encrypted_content"]}, encrypted=True)
    reasoning, message, call = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["summary"] == [{"type": "summary_text", "text": "plan"}]
    assert gp.unpack_thinking(reasoning["encrypted_content"])[0].text == "plan"
    assert message["content"][0]["text"] == "Hi there" and message["id"].startswith("msg_")
    assert (call["type"], call["call_id"], call["name"], json.loads(call["arguments"])) == \
        ("function_call", "call_1", "read", {"p": 1})
    assert body["status"] == "completed" and body["model"] == "gpt-5.5"
    assert body["usage"] == {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120,
                             "input_tokens_details": {"cached_tokens": 30,
                                                      "cache_write_tokens": 0},
                             "output_tokens_details": {"reasoning_tokens": 5}}


def test_encrypted_content_only_when_asked_for():
    body = whole([Part(THINKING, text="plan", signature="sig", origin="anthropic"),
                  Part(TEXT, text="ok")])
    assert "encrypted_content" not in body["output"][0]


@pytest.mark.parametrize("reason, words", [(LENGTH, "max_output_tokens"),
                                           (CONTENT_FILTER, "content_filter")])
def test_a_cut_reply_is_incomplete_with_its_reason(reason, words):
    body = whole([Part(TEXT, text="partial")], finish=Finish(reason))
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": words}
    assert body["output"][0]["status"] == "incomplete"
    events, _ = streamed([Part(TEXT, text="partial"), Finish(reason)])
    assert events[-1][0] == "response.incomplete"


def test_custom_and_namespaced_calls_come_back_in_the_clients_terms():
    payload = {"tools": [{"type": "custom", "name": "apply_patch"},
                         {"type": "namespace", "name": "agents", "tools": [
                             {"type": "function", "name": "spawn"}]},
                         {"type": "namespace", "name": "mcp__fs__", "tools": [
                             {"type": "function", "name": "ls"}]}]}
    calls = [Part(TOOL_CALL, id="c1", name="apply_patch", args={"input": "*** Begin Patch"}),
             Part(TOOL_CALL, id="c2", name="agents__spawn", args={"n": 1}),
             Part(TOOL_CALL, id="c3", name="ls", args={}),            # a bare child name
             Part(TOOL_CALL, id="c4", name="apply_patch", args={"patch": "x"})]
    body = whole(calls, payload=payload, finish=Finish(TOOL_CALLS))
    custom, spawn, ls, odd = body["output"]
    assert (custom["type"], custom["name"], custom["input"]) == \
        ("custom_tool_call", "apply_patch", "*** Begin Patch")
    assert (spawn["name"], spawn["namespace"]) == ("spawn", "agents")
    assert (ls["name"], ls["namespace"]) == ("ls", "mcp__fs__")
    assert odd["input"] == json.dumps({"patch": "x"})   # no input key: the raw arguments
    events, _ = streamed(calls + [Finish(TOOL_CALLS)], payload=payload)
    kinds = [e for e, _ in events]
    assert "response.custom_tool_call_input.delta" in kinds
    assert "response.function_call_arguments.done" in kinds


def test_a_stream_of_reasoning_text_and_parallel_calls_passes_the_strict_checker():
    events, opts = streamed(
        [Part(THINKING, text="first "), Part(THINKING, text="thought", signature="sig-a",
                                             origin="anthropic"),
         Part(TEXT, text="I will "), Part(TEXT, text="look."),
         Part(TOOL_CALL, id="call_1", name="read", args={"p": "a"}),
         Part(TOOL_CALL, id="call_2", name="read", args={"p": "b"}),
         Finish(TOOL_CALLS, Usage(10, 4))],
        payload={"include": ["reasoning.encrypted_content"]}, encrypted=True)
    names = [e for e, _ in events]
    assert names[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.reasoning_summary_part.added"]
    assert names[-1] == "response.completed"
    done = [d["item"] for e, d in events if e == "response.output_item.done"]
    assert [i["type"] for i in done] == ["reasoning", "message", "function_call", "function_call"]
    carried = gp.unpack_thinking(done[0]["encrypted_content"])
    assert [(p.text, p.signature, p.origin) for p in carried] == [
        ("first thought", "sig-a", "anthropic")]
    assert events[-1][1]["response"]["usage"]["total_tokens"] == 14
    assert opts.responses.sequence == len(events)


def test_a_gemini_signature_rides_in_a_reasoning_item_before_its_call_and_comes_back():
    """Gemini wants its thoughtSignature back on the functionCall it signed; Codex keeps the
    reasoning item and sends it back before the call."""
    body = whole([Part(TEXT, text="Reading."),
                  Part(TOOL_CALL, id="call_g", name="read", args={}, signature="gem-sig",
                       origin="gemini")],
                 finish=Finish(TOOL_CALLS), payload={"include": ["reasoning.encrypted_content"]},
                 encrypted=True)
    message, reasoning, call = body["output"]
    assert reasoning["summary"] == [] and reasoning["encrypted_content"]
    chat = decode({"input": [{"role": "user", "content": "go"}] + body["output"] +
                   [{"type": "function_call_output", "call_id": "call_g", "output": "ok"}]})
    model_turn = gp.encode_gemini_request(chat, "gemini-3-pro")["contents"][1]
    assert model_turn["parts"][-1]["functionCall"]["name"] == "read"
    assert model_turn["parts"][-1]["thoughtSignature"] == "gem-sig"


def test_signed_anthropic_thinking_makes_the_round_trip_through_encrypted_content():
    body = whole([Part(THINKING, text="careful", signature="anth-sig", origin="anthropic"),
                  Part(TOOL_CALL, id="toolu_1", name="read", args={})],
                 finish=Finish(TOOL_CALLS), payload={"include": ["reasoning.encrypted_content"]},
                 encrypted=True)
    items = body["output"]
    items[0]["summary"] = [{"type": "summary_text", "text": "what the client shows"}]
    chat = decode({"input": [{"role": "user", "content": "go"}] + items +
                   [{"type": "function_call_output", "call_id": "toolu_1", "output": "ok"}]})
    request = gp.encode_anthropic_request(chat, "claude-x")
    blocks = request["messages"][1]["content"]
    assert blocks[0] == {"type": "thinking", "thinking": "careful", "signature": "anth-sig"}


def test_without_encrypted_content_the_reasoning_is_remembered_by_call_id():
    cache = gp.ReasoningCache()
    opts = gp.ReplyOptions(reasoning_cache=cache, responses=turn_of({}, store=False))
    reply = Reply("r", "up", [Choice([Part(THINKING, text="t", signature="anth-sig",
                                           origin="anthropic"),
                                      Part(TOOL_CALL, id="toolu_9", name="read", args={})],
                                     Finish(TOOL_CALLS))], Usage(1, 1))
    body = gp.encode_responses_response(reply, "m", "resp_C", opts)
    assert all("encrypted_content" not in item for item in body["output"])
    chat = decode({"input": [{"role": "user", "content": "go"}] + body["output"] +
                   [{"type": "function_call_output", "call_id": "toolu_9", "output": "ok"}]},
                  cache=cache)
    thinking = chat.messages[1].parts[0]
    assert (thinking.type, thinking.signature, thinking.origin) == (THINKING, "anth-sig",
                                                                    "anthropic")


def test_another_servers_encrypted_content_is_dropped_its_summary_kept():
    chat = decode({"input": [{"role": "user", "content": "go"},
                             {"type": "reasoning", "id": "rs_x", "encrypted_content": "gAAAA-openai",
                              "summary": [{"type": "summary_text", "text": "seen"}]},
                             {"role": "assistant", "content": "done"}]})
    thinking = chat.messages[1].parts[0]
    assert (thinking.text, thinking.signature) == ("seen", "")


def test_a_failure_mid_stream_is_response_failed_continuing_the_numbering():
    opts = options()
    stream = gp.encode_responses_stream(iter([Part(TEXT, text="so far")]), "gpt-5.5", "resp_1",
                                        opts)
    data = b""
    with pytest.raises(gp.UpstreamError):
        for chunk in stream:
            data += chunk
    error = gp.UpstreamError("slow down", status=429, retry_after=12)
    data += gp.responses_stream_error_event(error, opts)
    events = parse_sse(data)
    check_responses_stream(events)
    failed = events[-1][1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["error"]["code"] == "rate_limit_exceeded"
    assert "Please try again in 12s" in failed["response"]["error"]["message"]


@pytest.mark.parametrize("error, code", [
    (gp.UpstreamError("too long", status=400, reason="context_length_exceeded"),
     "context_length_exceeded"),
    (gp.UpstreamError("no money", status=429, reason="insufficient_quota"), "insufficient_quota"),
    (gp.ProxyError("the proxy is shutting down", status=503), "server_error"),
    (gp.UpstreamError("busy", status=503, reason="server_is_overloaded"), "server_is_overloaded"),
    (gp.UpstreamError("boom", status=502), "server_error"),
])
def test_failure_codes_are_those_codex_acts_on(error, code):
    assert gp.responses_error_code(error) == code


def test_errors_before_the_stream_are_openai_shaped():
    status, headers, body = gp.encode_responses_error(
        gp.UpstreamError("slow down", status=429, retry_after=3))
    assert status == 429 and ("retry-after", "3") in headers
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"


def test_a_stream_without_its_finish_raises():
    with pytest.raises(gp.UpstreamError):
        list(gp.encode_responses_stream(iter([Part(TEXT, text="x")]), "m", "resp_1", options()))


# -- the upstream side: neutral -> Responses -----------------------------------------------------

def chat_with_history():
    return decode({"instructions": "sys", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"},
                                     {"type": "input_image",
                                      "image_url": "data:image/png;base64," + PNG}]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "theirs"}]},
        {"role": "assistant", "content": "calling"},
        {"type": "function_call", "call_id": "call_1", "name": "read", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "contents"}],
        "tools": [{"type": "function", "name": "read", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "read"}, "parallel_tool_calls": False,
        "reasoning": {"effort": "low"}, "max_output_tokens": 50, "temperature": 0.2})


def test_a_request_for_a_responses_upstream():
    payload = gp.encode_responses_request(chat_with_history(), "gpt-5-mini")
    assert payload["model"] == "gpt-5-mini" and payload["store"] is False
    assert payload["instructions"] == "sys"
    assert payload["input"] == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "hi"},
            {"type": "input_image", "image_url": "data:image/png;base64," + PNG,
             "detail": "auto"}]},
        # reasoning from another provider is not sent; text and calls are
        {"type": "message", "role": "assistant", "content": "calling"},
        {"type": "function_call", "call_id": "call_1", "name": "read", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "contents"}]
    assert payload["tools"] == [{"type": "function", "name": "read", "description": "",
                                 "parameters": {"type": "object"}, "strict": False}]
    assert payload["tool_choice"] == {"type": "function", "name": "read"}
    assert payload["parallel_tool_calls"] is False
    assert payload["reasoning"] == {"effort": "low", "summary": "auto"}
    assert payload["include"] == ["reasoning.encrypted_content"]
    assert (payload["max_output_tokens"], payload["temperature"]) == (50, 0.2)


def test_this_upstreams_own_reasoning_goes_back_with_its_encrypted_content():
    chat = gp.Chat(messages=[gp.Message("user", [Part(TEXT, text="q")]), gp.Message(
        "assistant", [Part(THINKING, text="sum", signature="enc-1", origin=gp.RESPONSES_ORIGIN),
                      Part(TEXT, text="a")])])
    payload = gp.encode_responses_request(chat, "o4")
    assert payload["input"][1] == {"type": "reasoning", "encrypted_content": "enc-1",
                                   "summary": [{"type": "summary_text", "text": "sum"}]}
    assert payload["include"] == ["reasoning.encrypted_content"]


def test_json_mode_and_limits_of_a_responses_upstream():
    chat = gp.Chat(messages=[gp.Message("user", [Part(TEXT, text="q")])],
                   response_format=gp.ResponseFormat({"type": "object"}, "out"))
    assert gp.encode_responses_request(chat, "m")["text"] == {"format": {
        "type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": False}}
    chat.response_format = gp.ResponseFormat()
    payload = gp.encode_responses_request(chat, "m")
    assert payload["text"] == {"format": {"type": "json_object"}}
    assert "JSON" in payload["instructions"]     # json_object needs the word in the prompt
    chat.max_tokens = 1
    assert gp.encode_responses_request(chat, "m")["max_output_tokens"] == 16   # its least
    chat.n = 2
    with pytest.raises(gp.ClientError, match="one answer"):
        gp.encode_responses_request(chat, "m")
    count = gp.encode_responses_count_request(chat_with_history(), "m")
    assert sorted(count) == ["input", "instructions", "model", "tool_choice", "tools"]


# -- the upstream side: Responses -> neutral -----------------------------------------------------

def upstream_response(output, status="completed", **fields):
    return dict({"id": "resp_up", "object": "response", "status": status, "model": "o4",
                 "output": output, "usage": {
                     "input_tokens": 40, "input_tokens_details": {"cached_tokens": 8},
                     "output_tokens": 12, "output_tokens_details": {"reasoning_tokens": 5},
                     "total_tokens": 52}}, **fields)


OUTPUT = [
    {"type": "reasoning", "id": "rs_u", "summary": [{"type": "summary_text", "text": "hm"}],
     "encrypted_content": "enc-u"},
    {"type": "message", "id": "msg_u", "role": "assistant", "status": "completed",
     "content": [{"type": "output_text", "text": "Sure.", "annotations": []}]},
    {"type": "function_call", "id": "fc_u", "call_id": "call_u", "name": "spawn",
     "namespace": "agents", "arguments": "{\"n\": 2}"},
    {"type": "custom_tool_call", "id": "ctc_u", "call_id": "call_v", "name": "apply_patch",
     "input": "*** Begin Patch"}]


def test_a_whole_upstream_response():
    reply = gp.decode_responses_response(upstream_response(OUTPUT))
    parts = reply.choices[0].parts
    assert [(p.type, p.text, p.signature, p.origin) for p in parts[:2]] == [
        (THINKING, "hm", "enc-u", gp.RESPONSES_ORIGIN), (TEXT, "Sure.", "", "")]
    assert [(p.id, p.name, p.args) for p in parts[2:]] == [
        ("call_u", "agents__spawn", {"n": 2}), ("call_v", "apply_patch",
                                               {"input": "*** Begin Patch"})]
    assert reply.choices[0].finish.reason == TOOL_CALLS
    usage = reply.usage
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens,
            usage.reasoning_tokens) == (40, 8, 12, 5)


@pytest.mark.parametrize("fields, reason", [
    ({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}, LENGTH),
    ({"status": "incomplete", "incomplete_details": {"reason": "content_filter"}},
     CONTENT_FILTER),
])
def test_an_incomplete_upstream_response(fields, reason):
    reply = gp.decode_responses_response(upstream_response(OUTPUT[1:2], **fields))
    assert reply.choices[0].finish.reason == reason


def test_a_refusal_is_a_content_filter_finish():
    reply = gp.decode_responses_response(upstream_response([
        {"type": "message", "content": [{"type": "refusal", "refusal": "No."}]}]))
    assert reply.choices[0].finish.reason == CONTENT_FILTER
    assert reply.choices[0].parts[0].text == "No."


@pytest.mark.parametrize("payload", [
    {"object": "response", "status": "completed"},            # no output
    {"output": {"not": "a list"}},
    {"output": [{"type": "message", "content": [{"type": "output_text", "text": 5}]}]},
    ["not", "an", "object"],
])
def test_unreadable_upstream_responses_are_502s(payload):
    with pytest.raises(gp.UpstreamError) as caught:
        gp.decode_responses_response(payload)
    assert caught.value.status == 502


def test_a_failed_upstream_response_keeps_its_code():
    with pytest.raises(gp.UpstreamError) as caught:
        gp.decode_responses_response(upstream_response(
            [], status="failed", error={"code": "rate_limit_exceeded", "message": "wait"}))
    assert (caught.value.status, caught.value.reason) == (429, "rate_limit_exceeded")


def sse_pairs(events):
    return [(e["type"], json.dumps(dict(e, sequence_number=i))) for i, e in enumerate(events)]


STREAM = [
    {"type": "response.created", "response": {"id": "resp_s", "status": "in_progress",
                                              "output": [], "error": None}},
    {"type": "response.output_item.added", "output_index": 0,
     "item": {"type": "reasoning", "id": "rs_s", "summary": []}},
    {"type": "response.reasoning_summary_part.added", "item_id": "rs_s", "output_index": 0,
     "summary_index": 0, "part": {"type": "summary_text", "text": ""}},
    {"type": "response.reasoning_summary_text.delta", "item_id": "rs_s", "output_index": 0,
     "summary_index": 0, "delta": "one"},
    {"type": "response.reasoning_summary_part.added", "item_id": "rs_s", "output_index": 0,
     "summary_index": 1, "part": {"type": "summary_text", "text": ""}},
    {"type": "response.reasoning_summary_text.delta", "item_id": "rs_s", "output_index": 0,
     "summary_index": 1, "delta": "two"},
    {"type": "response.output_item.done", "output_index": 0,
     "item": {"type": "reasoning", "id": "rs_s", "encrypted_content": "enc-s",
              "summary": [{"type": "summary_text", "text": "one"},
                          {"type": "summary_text", "text": "two"}]}},
    {"type": "response.output_item.added", "output_index": 1,
     "item": {"type": "message", "id": "msg_s", "content": []}},
    {"type": "response.output_text.delta", "item_id": "msg_s", "output_index": 1,
     "content_index": 0, "delta": "Hel"},
    {"type": "response.output_text.delta", "item_id": "msg_s", "output_index": 1,
     "content_index": 0, "delta": "lo"},
    {"type": "response.output_item.done", "output_index": 1,
     "item": {"type": "message", "id": "msg_s", "content": [
         {"type": "output_text", "text": "Hello"}]}},
    {"type": "response.output_item.done", "output_index": 2,
     "item": {"type": "function_call", "id": "fc_s", "call_id": "call_s", "name": "read",
              "arguments": "{\"p\": 1}"}},
    {"type": "response.completed", "response": {
        "id": "resp_s", "status": "completed", "output": [],
        "usage": {"input_tokens": 9, "output_tokens": 3, "total_tokens": 12}}},
]


def test_an_upstream_stream():
    events = list(gp.decode_responses_stream(sse_pairs(STREAM)))
    reply = gp.collect_reply(iter(events), "r", "m")
    parts = reply.choices[0].parts
    assert [(p.type, p.text, p.signature) for p in parts] == [
        (THINKING, "one\n\ntwo", "enc-s"), (TEXT, "Hello", ""), (TOOL_CALL, "", "")]
    assert parts[2].args == {"p": 1}
    assert (reply.choices[0].finish.reason, reply.usage.input_tokens) == (TOOL_CALLS, 9)


def test_an_upstream_stream_cut_off_or_failing_raises():
    with pytest.raises(gp.UpstreamError, match="before response.completed"):
        list(gp.decode_responses_stream(sse_pairs(STREAM[:-1])))
    failed = {"type": "response.failed", "response": {
        "id": "resp_s", "status": "failed", "error": {"code": "server_error",
                                                      "message": "it broke"}}}
    with pytest.raises(gp.UpstreamError, match="it broke"):
        list(gp.decode_responses_stream(sse_pairs(STREAM[:3] + [failed])))
    error = {"type": "error", "code": "rate_limit_exceeded", "message": "slow"}
    with pytest.raises(gp.UpstreamError) as caught:
        list(gp.decode_responses_stream(sse_pairs(STREAM[:1] + [error])))
    assert caught.value.status == 429


def test_an_upstream_stream_of_garbage_is_a_502():
    with pytest.raises(gp.UpstreamError) as caught:
        list(gp.decode_responses_stream([("message", "{not json")]))
    assert caught.value.status == 502


def test_a_failure_before_any_event_still_makes_a_well_formed_stream():
    """The headers may go out before the upstream answers (stream_headers_after): a
    failure then is the whole stream."""
    opts = options()
    events = parse_sse(gp.responses_stream_error_event(
        gp.UpstreamError("upstream down", status=502), opts))
    check_responses_stream(events)
    assert [e for e, _ in events] == ["response.created", "response.failed"]
    assert events[1][1]["response"]["model"] == "gpt-5.5"


def test_a_passed_through_stream_that_breaks_continues_its_numbering():
    turn = turn_of({})
    turn.passed('{"type":"response.created","sequence_number":0,"response":{"id":"resp_up1",'
                '"model":"up-model","created_at":7}}')
    turn.passed('{"type":"response.output_text.delta","sequence_number":1,"delta":"x"}')
    failed = parse_sse(gp.responses_stream_error_event(
        gp.UpstreamError("cut", status=502), gp.ReplyOptions(responses=turn)))
    assert [(e, d["sequence_number"], d["response"]["id"], d["response"]["model"],
             d["response"]["created_at"]) for e, d in failed] == [
        ("response.failed", 2, "resp_up1", "up-model", 7)]


def test_the_turn_is_read_leniently_the_request_strictly():
    """A request for a Responses upstream is passed through: tools this proxy does not
    know are that upstream's business, until the request is converted."""
    payload = {"model": "m", "input": "x", "include": "not a list",
               "tools": [{"type": "a_tool_from_the_future"}]}
    turn = gp.responses_turn(payload)
    assert turn.tools.tools == [] and not turn.encrypted
    with pytest.raises(gp.ClientError):
        gp.decode_responses_request(payload, turn=turn, store=store())


def test_reasoning_that_no_answer_followed_is_dropped():
    chat = decode({"input": [{"type": "reasoning", "summary": [{"type": "summary_text",
                                                                "text": "stray"}]},
                             {"role": "user", "content": "next"},
                             {"role": "assistant", "content": "answer"}]})
    assert [(p.type, p.text) for m in chat.messages for p in m.parts] == [
        (TEXT, "next"), (TEXT, "answer")]


def test_a_gemini_signature_without_carriers_is_remembered_not_shown():
    cache = gp.ReasoningCache()
    opts = gp.ReplyOptions(reasoning_cache=cache, responses=turn_of({}, store=False))
    reply = Reply("r", "up", [Choice([Part(TOOL_CALL, id="call_g2", name="read", args={},
                                           signature="gem-sig-2", origin="gemini")],
                                     Finish(TOOL_CALLS))], Usage(1, 1))
    body = gp.encode_responses_response(reply, "m", "resp_D", opts)
    assert [item["type"] for item in body["output"]] == ["function_call"]
    chat = decode({"input": [{"role": "user", "content": "go"}] + body["output"] +
                   [{"type": "function_call_output", "call_id": "call_g2", "output": "ok"}]},
                  cache=cache)
    call = chat.messages[1].parts[0]
    assert (call.signature, call.origin) == ("gem-sig-2", "gemini")


def test_a_refused_parameter_is_left_out_of_the_next_try():
    """gpt-5 refuses top_p and temperature, gpt-4.1 reasoning: each refusal names one."""
    options = dict(gp.UPSTREAM_DEFAULTS)
    chat = chat_with_history()
    for name in ("top_p", "temperature", "reasoning"):
        error = gp.decode_openai_error(400, {"error": {
            "message": "Unsupported parameter: '%s%s' is not supported with this model."
                       % (name, ".effort" if name == "reasoning" else ""),
            "type": "invalid_request_error", "param": name,
            "code": "unsupported_parameter"}})
        options = gp.responses_parameter_retry(error, options)
        assert name not in gp.encode_responses_request(chat, "m", options)
    assert options["responses_refused"] == ("top_p", "temperature", "reasoning")
    again = gp.decode_openai_error(400, {"error": {"message": "Unsupported parameter: 'top_p'"}})
    assert gp.responses_parameter_retry(again, options) is None    # tried already
    other = gp.decode_openai_error(400, {"error": {"message": "Unsupported parameter: 'input'"}})
    assert gp.responses_parameter_retry(other, options) is None    # not one it can drop


@pytest.mark.parametrize("message, seconds", [
    ("Rate limit reached. Please try again in 1.5s.", 1.5),
    ("Please try again in 250ms", 0.25), ("try again in 12 seconds", 12.0),
    ("Please try again in 6m15.84s.", 375.84), ("try again in 1h2m", 3720.0),
    ("slow down", None)])
def test_an_in_stream_rate_limit_keeps_when_to_come_back(message, seconds):
    error = gp.responses_failure({"error": {"code": "rate_limit_exceeded", "message": message}})
    assert (error.status, error.retry_after) == (429, seconds)


def test_upstream_deltas_without_item_ids_are_not_doubled():
    events = [{"type": "response.created", "response": {"id": "r"}},
              {"type": "response.output_text.delta", "output_index": 0, "delta": "Hello"},
              {"type": "response.output_item.done", "output_index": 0, "item": {
                  "type": "message", "content": [{"type": "output_text", "text": "Hello"}]}},
              {"type": "response.output_item.done", "output_index": 1, "item": {
                  "type": "message", "content": [{"type": "output_text", "text": " again"}]}},
              {"type": "response.completed", "response": {"id": "r", "status": "completed"}}]
    reply = gp.collect_reply(gp.decode_responses_stream(sse_pairs(events)), "r", "m")
    assert gp.message_text(gp.Message("assistant", reply.choices[0].parts)) == "Hello again"


def test_a_failure_mid_item_leaves_it_undone_and_keeps_the_items_done_before():
    """Codex keeps each output_item.done as said: the half message must not be one, or a
    retry sends it back to the model as its own finished turn."""
    opts = options()

    def broken():
        yield Part(TOOL_CALL, id="call_1", name="read", args={"path": "a"})
        yield Part(TEXT, text="half an answer")
        raise gp.UpstreamError("connection reset", status=502)
    data = b""
    with pytest.raises(gp.UpstreamError):
        for chunk in gp.encode_responses_stream(broken(), "m", "resp_1", opts):
            data += chunk
    data += gp.responses_stream_error_event(gp.UpstreamError("connection reset", status=502),
                                            opts)
    events = parse_sse(data)
    check_responses_stream(events)
    added = [d["item"]["type"] for e, d in events if e == "response.output_item.added"]
    done = [d["item"] for e, d in events if e == "response.output_item.done"]
    assert added == ["function_call", "message"]
    assert [(i["type"], i["status"]) for i in done] == [("function_call", "completed")]
    assert "half an answer" in data.decode()             # its deltas went out as they came
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["output"] == done


def test_a_stored_gemini_call_keeps_its_signature_for_the_follow_up():
    kept = store()
    payload = {"model": "m", "input": "go"}
    turn = gp.responses_turn(payload)
    gp.decode_responses_request(payload, turn=turn, store=kept)
    reply = Reply("r", "up", [Choice([Part(TOOL_CALL, id="call_s", name="read", args={},
                                           signature="gem-sig-s", origin="gemini")],
                                     Finish(TOOL_CALLS))], Usage(1, 1))
    opts = gp.ReplyOptions(responses=turn, reasoning_cache=gp.ReasoningCache())
    body = with_store(kept, lambda: gp.encode_responses_response(reply, "m", "resp_S", opts))
    assert "encrypted_content" not in json.dumps(body)       # not asked for: not shown
    chat = decode({"previous_response_id": "resp_S", "input": [
        {"type": "function_call_output", "call_id": "call_s", "output": "ok"}]}, store=kept)
    call = chat.messages[1].parts[0]
    assert (call.signature, call.origin) == ("gem-sig-s", "gemini")


# -- the remaining rows of the mapping tables -------------------------------------------------

def test_files_by_url_or_plain_base64_refusals_and_reasoning_content():
    chat = decode({"input": [
        {"role": "user", "content": [
            {"type": "input_file", "file_url": "https://example.test/a.pdf", "filename": "a.pdf"},
            {"type": "input_file", "file_data": "UERG", "filename": "b.pdf"}]},
        {"type": "reasoning", "summary": [],
         "content": [{"type": "reasoning_text", "text": "raw thought"}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]}]})
    user, assistant = chat.messages
    assert [(p.url, p.mime, p.data) for p in user.parts] == [
        ("https://example.test/a.pdf", "application/pdf", ""), ("", "application/pdf", "UERG")]
    assert [(p.type, p.text) for p in assistant.parts] == [
        (THINKING, "raw thought"), (TEXT, "I cannot.")]


def test_a_custom_tool_inside_a_namespace_and_list_outputs_of_custom_calls():
    payload = {"tools": [{"type": "namespace", "name": "edit", "tools": [
        {"type": "custom", "name": "patch", "description": "Apply a patch."}]}],
        "input": [{"type": "custom_tool_call", "call_id": "c", "name": "patch",
                   "namespace": "edit", "input": "diff"},
                  {"type": "custom_tool_call_output", "call_id": "c", "output": [
                      {"type": "input_text", "text": "applied"}]}]}
    chat = decode(payload)
    assert [t.name for t in chat.tools] == ["edit__patch"]
    call, result = chat.messages[0].parts[0], chat.messages[1].parts[0]
    assert (call.name, call.args) == ("edit__patch", {"input": "diff"})
    assert result.content[0].text == "applied"
    body = whole([Part(TOOL_CALL, id="c2", name="edit__patch", args={"input": "more"})],
                 payload=payload, finish=Finish(TOOL_CALLS))
    item = body["output"][0]
    assert (item["type"], item["name"], item["namespace"], item["input"]) == \
        ("custom_tool_call", "patch", "edit", "more")


@pytest.mark.parametrize("choice, mode", [({"type": "auto"}, "auto"), ({"type": "none"}, "none"),
                                          ({"type": "required"}, "required")])
def test_tool_choice_as_some_clients_write_it(choice, mode):
    assert decode({"tools": [{"type": "function", "name": "f"}], "tool_choice": choice,
                   "input": "x"}).tool_choice == mode


@pytest.mark.parametrize("text, words", [
    ({"format": {"type": "text"}}, None),
    ({"format": {"type": "yaml"}}, "text.format.type"),
    ({"verbosity": "high"}, None),
])
def test_text_formats(text, words):
    if words is None:
        assert decode({"text": text, "input": "x"}).response_format is None
    else:
        with pytest.raises(gp.ClientError, match=words):
            decode({"text": text, "input": "x"})


def test_a_compaction_item_is_a_400_that_says_why():
    with pytest.raises(gp.ClientError, match="compact"):
        decode({"input": [{"type": "compaction", "encrypted_content": "x"}]})


def test_an_empty_reply_is_still_completed():
    body = whole([])
    assert (body["status"], body["output"]) == ("completed", [])
    events, _ = streamed([Finish(STOP, Usage(1, 0))])
    assert [e for e, _ in events] == ["response.created", "response.in_progress",
                                      "response.completed"]


def test_upstream_streams_with_raw_reasoning_a_refusal_or_an_incomplete_end():
    events = [
        {"type": "response.created", "response": {"id": "r"}},
        {"type": "response.reasoning_text.delta", "item_id": "rs", "output_index": 0,
         "content_index": 0, "delta": "raw"},
        {"type": "response.output_item.done", "output_index": 0, "item": {
            "type": "reasoning", "id": "rs", "content": [{"type": "reasoning_text",
                                                          "text": "raw"}]}},
        {"type": "response.output_item.done", "output_index": 1, "item": {
            "type": "message", "id": "m", "content": [{"type": "refusal", "refusal": "No."}]}},
        {"type": "response.incomplete", "response": {
            "id": "r", "status": "incomplete",
            "incomplete_details": {"reason": "content_filter"}}}]
    reply = gp.collect_reply(gp.decode_responses_stream(sse_pairs(events)), "r", "m")
    assert [(p.type, p.text) for p in reply.choices[0].parts] == [(THINKING, "raw"),
                                                                   (TEXT, "No.")]
    assert reply.choices[0].finish.reason == CONTENT_FILTER


def test_a_nested_error_event_from_an_upstream():
    nested = {"type": "error", "error": {"type": "server_error", "code": "server_error",
                                         "message": "backend exploded"}}
    with pytest.raises(gp.UpstreamError, match="backend exploded") as caught:
        list(gp.decode_responses_stream(sse_pairs(STREAM[:1] + [nested])))
    assert caught.value.status == 502


# -- what the adversarial run found ---------------------------------------------------------

@pytest.mark.parametrize("payload", [
    {"input": [{"type": ["x"], "role": "user", "content": "hi"}]},
    {"input": "x", "tools": [{"type": {}}]},
    {"input": "x", "tool_choice": {"type": [1]}},
    {"input": "x", "tools": [{"type": "function", "name": "f"}],
     "tool_choice": {"type": "allowed_tools", "tools": [{"type": {}}]}},
    {"input": [{"role": "user", "content": [{"type": ["input_text"], "text": "x"}]}]},
])
def test_a_type_that_is_not_a_string_is_a_400(payload):
    with pytest.raises(gp.ClientError, match=r"\.type: expected a string"):
        decode(payload)
    gp.responses_turn(dict(payload, model="m"))     # read leniently for a pass-through


@pytest.mark.parametrize("items", [
    [{"t": 5}], [{"t": ["x"], "s": "sig", "o": "anthropic"}], [{"t": "x", "s": 5}],
    {"t": "x"}, "text", [["t"]],
])
def test_a_carrier_holding_more_than_strings_is_not_ours(items):
    import zlib
    carrier = base64.b64encode(gp.CARRIER_MAGIC + zlib.compress(json.dumps(items).encode()))
    assert gp.unpack_thinking(carrier.decode()) == []


def test_metadata_and_user_must_be_what_openai_takes():
    deep = "x"
    for _ in range(980):
        deep = {"a": deep}
    for payload in ({"metadata": {"k": deep}}, {"metadata": {"k": 5}},
                    {"metadata": {str(i): "v" for i in range(17)}}, {"user": {"a": 1}}):
        with pytest.raises(gp.ClientError):
            decode(dict(payload, input="x"))
    for _ in range(100000 - 980):     # deeper than json.dumps goes on any Python
        deep = {"a": deep}
    turn = gp.responses_turn({"model": "m", "metadata": {"k": deep}})
    assert turn.request == {}        # too deep to repeat in a reply


def test_an_item_is_referenced_once_and_references_are_bounded():
    kept = store()
    big = {"type": "message", "id": "msg_big", "role": "assistant",
           "content": [{"type": "output_text", "text": "x" * 1000}]}
    kept.put({"id": "resp_R"}, [], [big], 10)
    ref = {"type": "item_reference", "id": "msg_big"}
    assert len(decode({"input": [ref]}, store=kept).messages) == 1
    with pytest.raises(gp.ClientError, match="referenced twice"):
        decode({"input": [ref, ref]}, store=kept)


def test_a_client_key_reads_back_only_its_own_responses():
    kept = store()
    kept.put({"id": "resp_A"}, [{"role": "user", "content": "a"}], [], 10, owner="key#a")
    assert kept.get("resp_A", "key#b") is None and not kept.delete("resp_A", "key#b")
    assert kept.get("resp_A", "key#a") is not None
    with pytest.raises(gp.ClientError, match="not found"):
        gp.responses_history({"previous_response_id": "resp_A"}, kept, "key#b")
    items, brought = gp.responses_history({"previous_response_id": "resp_A", "input": "b"},
                                          kept, "key#a")
    assert len(items) == 2 and brought == kept.get("resp_A", "key#a").size


def test_a_name_declared_as_a_function_and_a_custom_tool_is_the_first():
    tools = gp.decode_responses_tools({"tools": [
        {"type": "function", "name": "f", "parameters": {"type": "object"}},
        {"type": "custom", "name": "f"}]})
    assert [t.name for t in tools.tools] == ["f"] and tools.custom == set()


def test_an_upstream_call_without_a_name_is_a_502():
    for item in ({"type": "function_call", "call_id": "c", "arguments": "{}"},
                 {"type": "function_call", "call_id": "c", "name": 5, "arguments": "{}"}):
        with pytest.raises(gp.UpstreamError) as caught:
            gp.decode_responses_response(upstream_response([item]))
        assert caught.value.status == 502



# -- what the second review found ------------------------------------------------------------

def test_an_upstream_error_before_anything_reached_the_client_still_starts_the_stream():
    """A passed-through attempt whose first event is an error has sent the client
    nothing: the proxy's failure starts the stream itself."""
    turn = turn_of({})
    turn.passed('{"type":"error","sequence_number":0,"code":"server_error","message":"x"}')
    events = parse_sse(gp.responses_stream_error_event(gp.UpstreamError("x", status=502),
                                                       gp.ReplyOptions(responses=turn)))
    check_responses_stream(events)
    assert [(e, d["sequence_number"]) for e, d in events] == [
        ("response.created", 0), ("response.failed", 1)]
    assert events[0][1]["response"]["id"] == events[1][1]["response"]["id"] != ""


def test_references_are_bounded_apart_from_the_previous_conversation(monkeypatch):
    kept = store()
    item = {"type": "message", "id": "msg_1", "role": "assistant", "content": "x"}
    kept.put({"id": "resp_P"}, [{"role": "user", "content": "y" * 100}], [item], 10)
    monkeypatch.setattr(gp, "MAX_REFERENCED_BYTES", 80)
    items, brought = gp.responses_history(
        {"previous_response_id": "resp_P", "input": [{"type": "item_reference",
                                                      "id": "msg_1"}]}, kept)
    assert len(items) == 3 and brought > 80      # the conversation counts for the store...
    monkeypatch.setattr(gp, "MAX_REFERENCED_BYTES", 10)
    with pytest.raises(gp.ClientError) as caught:  # ...but only references for the limit
        gp.responses_history({"input": [{"type": "item_reference", "id": "msg_1"}]}, kept)
    assert caught.value.status == 413


def test_an_entry_expires_on_time_behind_one_that_lives_longer(monkeypatch):
    """After a reload shortens the time to live, a newer entry may expire before an
    older one: it must not be read back once it has."""
    kept = gp.ResponseStore(ttl=3600)
    kept.put({"id": "old"}, [], [], 1)
    kept.configure(1000, 10, gp.MiB)
    kept.put({"id": "new"}, [], [{"id": "item_new"}], 1)
    now = gp.time.monotonic()
    monkeypatch.setattr(gp.time, "monotonic", lambda: now + 60)
    assert kept.get("old") is not None and kept.get("new") is None
    assert kept.item("item_new") is None


def test_a_carrier_that_does_not_unpack_is_no_providers_signature():
    import zlib
    bad = base64.b64encode(gp.CARRIER_MAGIC + zlib.compress(b'[{"s": 5}]')).decode()
    assert gp.is_carrier(bad) and gp.unpack_thinking(bad) == []
    chat = gp.decode_gemini_request({"contents": [
        {"role": "user", "parts": [{"text": "go"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}},
                                     "thoughtSignature": bad}]}]}, "gemini-x")
    assert chat.messages[1].parts[0].signature == ""
    chat = gp.decode_anthropic_request({"model": "c", "max_tokens": 10, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm", "signature": bad},
            {"type": "text", "text": "ok"}]}]})
    thinking = chat.messages[1].parts[0]
    assert (thinking.text, thinking.signature, thinking.origin) == ("hm", "", "openai")
