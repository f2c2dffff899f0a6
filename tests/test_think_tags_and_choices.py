"""Reasoning some OpenAI-compatible servers put inside the answer text (<think>...</think>,
DeepSeek-R1 distills, QwQ, many Ollama and vLLM models), and replies with several
choices (n > 1), streamed and whole, through the neutral model."""

import json
import re

import pytest

import gemini_proxy as gp
from gemini_proxy import TEXT, THINKING, Finish, Part, Usage
from fake_upstream import chunk, completion, json_reply, stream_reply, usage


def split(deltas, tags=("think",)):
    """What the splitter makes of text deltas: (kind, text) with adjacent kinds joined."""
    events = [Part(TEXT, text=d) for d in deltas] + [Finish()]
    out = []
    for event in gp.split_think_tags(iter(events), list(tags)):
        if isinstance(event, Finish):
            continue
        if out and out[-1][0] == event.type:
            out[-1] = (event.type, out[-1][1] + event.text)
        else:
            out.append((event.type, event.text))
    return out


WHOLE = "<think>\nFirst, 2+2.\nIt is 4.\n</think>\n\nThe answer is 4."


@pytest.mark.parametrize("cut", range(1, len(WHOLE)))
def test_a_think_block_split_anywhere_across_two_deltas(cut):
    assert split([WHOLE[:cut], WHOLE[cut:]]) == [
        (THINKING, "\nFirst, 2+2.\nIt is 4.\n"), (TEXT, "The answer is 4.")]


def test_a_think_block_one_character_at_a_time():
    assert split(list(WHOLE)) == [(THINKING, "\nFirst, 2+2.\nIt is 4.\n"),
                                  (TEXT, "The answer is 4.")]


def test_only_a_block_that_opens_before_the_answer_is_reasoning():
    assert split(["Use <think> tags like this: <think>x</think>"]) == [
        (TEXT, "Use <think> tags like this: <think>x</think>")]
    assert split(["  \n<think>a</think>b <think>c</think>"]) == [
        (THINKING, "a"), (TEXT, "b <think>c</think>")]


def test_text_that_only_looks_like_the_start_of_a_tag_is_answer():
    assert split(["<thin", "g>"]) == [(TEXT, "<thing>")]
    assert split(["<", "b>bold</b>"]) == [(TEXT, "<b>bold</b>")]
    assert split(["<thi"]) == [(TEXT, "<thi")]      # the stream ended there


def test_an_unclosed_block_stays_reasoning_and_other_tag_names_work():
    assert split(["<think>still going"]) == [(THINKING, "still going")]
    assert split(["<reasoning>r</reasoning>a"], tags=("reasoning",)) == [
        (THINKING, "r"), (TEXT, "a")]
    assert split(["<think>r</think>a"], tags=()) == [(TEXT, "<think>r</think>a")]


def test_a_whole_reply_and_each_choice():
    reply = gp.decode_openai_response({"choices": [
        {"index": 0, "message": {"content": "<think>why</think>\n\nbecause"},
         "finish_reason": "stop"},
        {"index": 1, "message": {"content": "plain"}, "finish_reason": "stop"}]})
    reply = gp.split_reply_think_tags(reply, ["think"])
    assert [(p.type, p.text, p.origin) for p in reply.choices[0].parts] == [
        (THINKING, "why", "openai"), (TEXT, "because", "")]
    assert [(p.type, p.text) for p in reply.choices[1].parts] == [(TEXT, "plain")]


def test_a_whole_reply_is_looked_at_as_a_stream_of_its_parts_would_be():
    # Only text before anything else may open a block: text in several parts, the first
    # blank, still does; after reasoning or a call, or not at the start, none does.
    def whole(*parts):
        reply = gp.Reply("r", "m", [gp.Choice(list(parts), Finish())], None)
        return [(p.type, p.text) for p in gp.split_reply_think_tags(reply, ["think"])
                .choices[0].parts]
    assert whole(Part(TEXT, text=" \n"), Part(TEXT, text="<think>w</think>a")) == [
        (THINKING, "w"), (TEXT, "a")]
    assert whole(Part(THINKING, text="r"), Part(TEXT, text="<think>x</think>")) == [
        (THINKING, "r"), (TEXT, "<think>x</think>")]
    assert whole(Part(TEXT, text="so <think>x</think>")) == [(TEXT, "so <think>x</think>")]
    assert whole(Part(TEXT, text="<b>bold</b>")) == [(TEXT, "<b>bold</b>")]
    assert whole(Part(TEXT, text="  ")) == [(TEXT, "  ")]


def test_reasoning_fields_turn_tag_reading_off_for_that_reply():
    events = [Part(THINKING, text="r", origin="openai"), Part(TEXT, text="<think>x</think>"),
              Finish()]
    out = [e for e in gp.split_think_tags(iter(events), ["think"]) if not isinstance(e, Finish)]
    assert [(e.type, e.text) for e in out] == [(THINKING, "r"), (TEXT, "<think>x</think>")]


@pytest.mark.parametrize("client", ["gemini", "openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_think_tags_from_an_openai_compatible_upstream_reach_clients_as_reasoning(
        proxy_factory, fake, client, stream):
    # stop_strings make the proxy read the reply, so an OpenAI client is converted too.
    proxy = proxy_factory({"upstreams": {"local": {"base_url": fake.base_url,
                                                   "stop_strings": ["never appears"]}}})
    text = "<think>Let me see.</think>\n\nIt is sunny."
    if stream:
        fake.queue(stream_reply([chunk({"role": "assistant", "content": ""})] + [
            chunk({"content": text[i:i + 5]}) for i in range(0, len(text), 5)] + [
            chunk(finish="stop"), chunk(usage=usage(), choices=False), "[DONE]"]))
    else:
        fake.queue(json_reply(completion(text)))
    if client == "gemini":
        path = "/v1beta/models/m:%s" % ("streamGenerateContent?alt=sse" if stream
                                         else "generateContent")
        payload = {"contents": [{"role": "user", "parts": [{"text": "weather?"}]}],
                   "generationConfig": {"thinkingConfig": {"includeThoughts": True}}}
    elif client == "openai":
        path = "/v1/chat/completions"
        payload = {"model": "m", "stream": stream,
                   "messages": [{"role": "user", "content": "weather?"}]}
    else:
        path = "/v1/messages"
        payload = {"model": "m", "max_tokens": 50, "stream": stream,
                   "messages": [{"role": "user", "content": "weather?"}]}
    status, _, data = proxy.request("POST", path, payload, {"anthropic-version": "2023-06-01"})
    assert status == 200, data
    body = data.decode()
    said = "".join(json.loads('"%s"' % s) for s in re.findall(
        r'"(?:text|content|thinking|reasoning_content)":\s*"((?:[^"\\]|\\.)*)"', body))
    assert "<think>" not in said and "</think>" not in said
    assert "Let me see." in said and "It is sunny." in said
    if client == "gemini":
        assert '"thought":true' in body.replace(" ", "")
    elif client == "openai":
        assert "reasoning_content" in body
    else:
        assert "thinking" in body


def test_a_passed_through_reply_keeps_its_tags_as_the_server_sent_them(proxy, fake):
    # Same dialect on both sides: the bytes go as they came, as if the client talked to
    # its server directly.
    fake.queue(json_reply(completion("<think>hm</think>ok")))
    status, body = proxy.post("/v1/chat/completions", {
        "model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert status == 200 and body["choices"][0]["message"]["content"] == "<think>hm</think>ok"


def test_think_tags_can_be_turned_off(proxy_factory, fake):
    proxy = proxy_factory({"upstreams": {"local": {"base_url": fake.base_url,
                                                   "think_tags": []}}})
    fake.queue(json_reply(completion("<think>kept</think>as text")))
    status, body = proxy.post("/v1beta/models/m:generateContent", {
        "contents": [{"role": "user", "parts": [{"text": "x"}]}]})
    assert status == 200
    assert body["candidates"][0]["content"]["parts"] == [{"text": "<think>kept</think>as text"}]


# ---- several choices ------------------------------------------------------------------------

def two_choice_stream():
    return stream_reply([
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "first "}},
                     {"index": 1, "delta": {"role": "assistant", "content": "second "}}]},
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 1, "delta": {"content": "two"}, "finish_reason": "length"}]},
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "one"}, "finish_reason": "stop"}]},
        chunk(usage=usage(5, 6), choices=False), "[DONE]"])


def test_decode_openai_stream_keeps_every_choice():
    sse = [("message", json.dumps(c)) for c in [
        {"choices": [{"index": 0, "delta": {"content": "a"}},
                     {"index": 1, "delta": {"content": "b", "tool_calls": [
                         {"index": 0, "id": "t", "function": {"name": "f",
                                                              "arguments": "{}"}}]}}]},
        {"choices": [{"index": 0, "finish_reason": "stop", "delta": {}},
                     {"index": 1, "finish_reason": "tool_calls", "delta": {}}]}]] + [
        ("message", "[DONE]")]
    events = list(gp.decode_openai_stream(iter(sse)))
    reply = gp.collect_reply(iter(events), "r", "m")
    assert [gp.message_text(gp.Message("assistant", c.parts)) for c in reply.choices] == \
        ["a", "b"]
    assert [c.finish.reason for c in reply.choices] == [gp.STOP, gp.TOOL_CALLS]
    assert reply.choices[1].parts[-1].name == "f"


@pytest.mark.parametrize("client", ["openai", "gemini"])
def test_a_stream_with_n_2_serves_both_choices(proxy_factory, client):
    from fake_upstream import FakeGemini, FakeOpenAI
    upstream = FakeGemini().start() if client == "openai" else FakeOpenAI().start()
    try:
        kind = "gemini" if client == "openai" else "openai"
        proxy = proxy_factory({"upstreams": {"up": {"kind": kind, "base_url": upstream.base_url,
                                                    "api_key": "k-1"}}})
        if kind == "openai":
            upstream.queue(two_choice_stream())
            status, _, data = proxy.request(
                "POST", "/v1beta/models/m:streamGenerateContent?alt=sse", {
                    "contents": [{"role": "user", "parts": [{"text": "x"}]}],
                    "generationConfig": {"candidateCount": 2}})
            assert upstream.last["n"] == 2
            chunks = [json.loads(e[6:]) for e in data.decode().split("\n\n") if e]
            texts, finishes = {}, {}
            for body in chunks:
                for candidate in body["candidates"]:
                    index = candidate["index"]
                    texts[index] = texts.get(index, "") + "".join(
                        p.get("text", "") for p in candidate["content"]["parts"])
                    if "finishReason" in candidate:
                        finishes[index] = candidate["finishReason"]
            assert texts == {0: "first one", 1: "second two"}
            assert finishes == {0: "STOP", 1: "MAX_TOKENS"}
        else:
            from fake_upstream import gemini_stream
            upstream.queue(gemini_stream([
                {"candidates": [{"index": 0, "content": {"role": "model", "parts": [
                    {"text": "first "}]}}, {"index": 1, "content": {"role": "model", "parts": [
                        {"text": "second "}]}}]},
                {"candidates": [{"index": 1, "content": {"role": "model", "parts": [
                    {"text": "two"}]}, "finishReason": "MAX_TOKENS"}]},
                {"candidates": [{"index": 0, "content": {"role": "model", "parts": [
                    {"text": "one"}]}, "finishReason": "STOP"}],
                 "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}}]))
            status, _, data = proxy.request("POST", "/v1/chat/completions", {
                "model": "m", "n": 2, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "x"}]})
            assert upstream.last["generationConfig"]["candidateCount"] == 2
            events = [e[6:] for e in data.decode().split("\n\n") if e.startswith("data: ")]
            assert events[-1] == "[DONE]"
            bodies = [json.loads(e) for e in events[:-1]]
            texts, finishes = {}, {}
            for body in bodies:
                for choice in body["choices"]:
                    index = choice["index"]
                    texts[index] = texts.get(index, "") + (choice["delta"].get("content") or "")
                    if choice["finish_reason"]:
                        finishes[index] = choice["finish_reason"]
            assert texts == {0: "first one", 1: "second two"}
            assert finishes == {0: "stop", 1: "length"}
            assert bodies[-1]["usage"]["prompt_tokens"] == 3
        assert status == 200
    finally:
        upstream.stop()


def test_echo_answers_every_choice_asked_for(proxy_factory):
    proxy = proxy_factory({"upstreams": {"e": {"kind": "echo"}}})
    status, body = proxy.post("/v1/chat/completions", {
        "model": "m", "n": 3, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    assert [c["message"]["content"] for c in body["choices"]] == ["echo (m): hi"] * 3


def test_stop_strings_cut_each_choice_of_a_stream_on_its_own():
    events = [Part(TEXT, text="aXb", choice=0), Part(TEXT, text="cc", choice=1),
              Part(TEXT, text="more", choice=0), Part(TEXT, text="X", choice=1),
              Finish(gp.STOP, Usage(1, 1), choice=0), Finish(gp.STOP, Usage(1, 1), choice=1)]
    cut = []
    out = list(gp.cut_at_stop_strings(iter(events), ["X"], 2, on_cut=lambda: cut.append(1)))
    reply = gp.collect_reply(iter(out), "r", "m")
    assert [gp.message_text(gp.Message("assistant", c.parts)) for c in reply.choices] == \
        ["a", "cc"]
    assert [c.finish.stop_sequence for c in reply.choices] == ["X", "X"]
    assert cut == [1]       # hung up once, when the last choice was cut


def test_merging_a_streams_deltas_at_once_joins_them_as_one_by_one_would():
    """merge_deltas (linear, for long streams) and append_delta (for a few) share one
    rule: text joins text; thinking joins until a signature closes its block."""
    import random
    kinds = [lambda: gp.Part(gp.TEXT, text=random.choice(["", "a", "bc"])),
             lambda: gp.Part(gp.THINKING, text=random.choice(["", "t", "uv"]),
                             origin="anthropic"),
             lambda: gp.Part(gp.THINKING, signature="sig", origin="anthropic"),
             lambda: gp.Part(gp.THINKING, extra={"redacted": "r"}, origin="anthropic"),
             lambda: gp.Part(gp.TOOL_CALL, id="c", name="f", args={})]
    rng = random.Random(7)
    for _ in range(300):
        deltas = [rng.choice(kinds)() for _ in range(rng.randrange(0, 30))]
        one_by_one = []
        for delta in deltas:
            gp.append_delta(one_by_one, delta)
        assert gp.merge_deltas(deltas) == one_by_one
    assert [p.text for p in gp.merge_deltas(deltas)] == [p.text for p in one_by_one]
    assert all(d.text in ("", "a", "bc", "t", "uv") for d in deltas)   # inputs untouched
