"""Strict checks of OpenAI Responses API replies (PROTOCOLS-2 B.5-B.7, C.2-C.3).

    parse_sse(body)               -> [(event name, data dict)]; fails on `data: [DONE]`
    check_responses_stream(events) raises AssertionError unless the stream is well formed
    check_responses_object(obj)    raises AssertionError unless the `response` is well formed

`events` are (event name, data) pairs, as parse_sse gives them, or bare data dicts (then the
SSE name is not checked). The stream rules are what the openai SDK's responses.stream()
helper, Codex and strict (Open Responses-style) validators need together: response.created
first and once; the SSE name equal to data["type"]; sequence_number 0, 1, 2, ...;
output_item.added with output_index 0, 1, 2, ...; every event of an item between its
output_item.added and output_item.done, with that item's id and output_index; a part's or
summary's *.added before its deltas; each *.done text equal to its concatenated deltas, and
the done item agreeing with them; exactly one terminal event (response.completed,
.incomplete or .failed), last, for the same response id, with the status its name says,
listing (unless failed) exactly the output_item.done items in order; integer usage.
"""

import json

TERMINAL = {"response.completed": "completed", "response.incomplete": "incomplete",
            "response.failed": "failed"}
STATUSES = ("completed", "failed", "in_progress", "cancelled", "queued", "incomplete")
ITEM_STATUSES = ("in_progress", "completed", "incomplete")
# Keys openai-python's Response type requires (B.5).
REQUIRED_KEYS = ("id", "created_at", "model", "object", "output", "parallel_tool_calls",
                 "tool_choice", "tools")
# Item-scoped events: their part index field and the item type they belong to.
PART_EVENTS = {"response.content_part.added": "message", "response.content_part.done": "message",
               "response.output_text.delta": "message", "response.output_text.done": "message",
               "response.output_text.annotation.added": "message",
               "response.refusal.delta": "message", "response.refusal.done": "message",
               "response.reasoning_summary_part.added": "reasoning",
               "response.reasoning_summary_part.done": "reasoning",
               "response.reasoning_summary_text.delta": "reasoning",
               "response.reasoning_summary_text.done": "reasoning",
               "response.reasoning_text.delta": "reasoning",
               "response.reasoning_text.done": "reasoning",
               "response.function_call_arguments.delta": "function_call",
               "response.function_call_arguments.done": "function_call",
               "response.custom_tool_call_input.delta": "custom_tool_call",
               "response.custom_tool_call_input.done": "custom_tool_call"}


def fail(message, *args):
    raise AssertionError(message % args if args else message)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


# -- SSE ------------------------------------------------------------------------------------

def parse_sse(body):
    """(event name or None, data dict) for each event of an SSE body (bytes or text).
    Comment lines (`: keepalive`) are skipped; CRLF and LF are both accepted. Fails on a
    `data: [DONE]` sentinel (a Responses stream has none), on data that is not one JSON
    object, on an `event:` without data, and on a last event not ended by a blank line."""
    text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.strip("\n") and not text.endswith("\n\n"):
        fail("the body does not end with a blank line: its last event is cut: %r", text[-80:])
    events = []
    for block in text.split("\n\n"):
        name, lines = None, []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                lines.append(value)
        if not lines:
            if name is not None:
                fail("event %r has no data line (the openai SDK then fails on empty data)",
                     name)
            continue
        payload = "\n".join(lines)
        if payload.strip() == "[DONE]":
            fail("`data: [DONE]` after %d events: a Responses stream has no [DONE] sentinel",
                 len(events))
        try:
            data = json.loads(payload)
        except ValueError:
            fail("event %d (%r): data is not JSON: %r", len(events), name, payload[:200])
        if not isinstance(data, dict):
            fail("event %d (%r): data is not a JSON object: %r", len(events), name, payload[:200])
        events.append((name, data))
    return events


# -- whole objects ----------------------------------------------------------------------------

def check_usage(usage, where="usage"):
    """Responses usage: integer input_tokens, output_tokens, total_tokens (= their sum);
    input_tokens_details.cached_tokens <= input_tokens and
    output_tokens_details.reasoning_tokens <= output_tokens when present."""
    if not isinstance(usage, dict):
        fail("%s is %r, not an object", where, usage)
    for field in ("input_tokens", "output_tokens", "total_tokens"):
        if field not in usage:
            fail("%s has no %s: %r", where, field, usage)
        if not _is_int(usage[field]) or usage[field] < 0:
            fail("%s.%s is %r, not a non-negative integer", where, field, usage[field])
    if usage["total_tokens"] != usage["input_tokens"] + usage["output_tokens"]:
        fail("%s.total_tokens %r != input_tokens + output_tokens (%r + %r)", where,
             usage["total_tokens"], usage["input_tokens"], usage["output_tokens"])
    for details, field, whole in (("input_tokens_details", "cached_tokens", "input_tokens"),
                                  ("output_tokens_details", "reasoning_tokens",
                                   "output_tokens")):
        if details not in usage or usage[details] is None:
            continue
        if not isinstance(usage[details], dict):
            fail("%s.%s is %r, not an object", where, details, usage[details])
        value = usage[details].get(field, 0)
        if not _is_int(value) or not 0 <= value <= usage[whole]:
            fail("%s.%s.%s is %r: an integer from 0 to %s (%r) expected", where, details,
                 field, value, whole, usage[whole])


def _check_string(item, field, where, empty=False):
    value = item.get(field)
    if not isinstance(value, str) or (not empty and not value):
        fail("%s: %s is %r, not a %sstring", where, field, value, "" if empty else "non-empty ")


def check_item(item, where="item"):
    """One finished output item: message, reasoning, function_call, custom_tool_call (other
    types need only a type)."""
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        fail("%s is not an item with a type: %r", where, item)
    kind = item["type"]
    where = "%s (%s %s)" % (where, kind, item.get("id"))
    if "status" in item and item["status"] not in ITEM_STATUSES:
        fail("%s: status %r is not one of %s", where, item["status"], ITEM_STATUSES)
    if kind == "message":
        _check_string(item, "id", where)
        if item.get("role") != "assistant":
            fail("%s: role %r, not assistant", where, item.get("role"))
        if not isinstance(item.get("content"), list):
            fail("%s: content %r is not a list", where, item.get("content"))
        for c, part in enumerate(item["content"]):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "output_text":
                _check_string(part, "text", "%s content[%d]" % (where, c), empty=True)
                if not isinstance(part.get("annotations"), list):
                    fail("%s content[%d]: annotations %r is not a list (the SDK requires it)",
                         where, c, part.get("annotations"))
                if part.get("logprobs") is not None and not isinstance(part["logprobs"], list):
                    fail("%s content[%d]: logprobs %r is not a list", where, c, part["logprobs"])
            elif kind == "refusal":
                _check_string(part, "refusal", "%s content[%d]" % (where, c), empty=True)
            else:
                fail("%s content[%d] is not an output_text or refusal part: %r", where, c, part)
    elif kind == "reasoning":
        _check_string(item, "id", where)
        if not isinstance(item.get("summary"), list):
            fail("%s: summary %r is not a list", where, item.get("summary"))
        for s, part in enumerate(item["summary"]):
            if not isinstance(part, dict) or part.get("type") != "summary_text" or \
                    not isinstance(part.get("text"), str):
                fail("%s summary[%d] is not a summary_text part (Codex drops the item): %r",
                     where, s, part)
        if item.get("encrypted_content") is not None and \
                not isinstance(item["encrypted_content"], str):
            fail("%s: encrypted_content %r is not a string", where, item["encrypted_content"])
    elif kind == "function_call":
        _check_string(item, "call_id", where)
        _check_string(item, "name", where)
        if not isinstance(item.get("arguments"), str):
            fail("%s: arguments %r is not a JSON string (Codex drops the call)", where,
                 item.get("arguments"))
        if item.get("status") != "incomplete":
            try:
                json.loads(item["arguments"])
            except ValueError:
                fail("%s: arguments %r are not JSON", where, item["arguments"])
        if "namespace" in item:
            _check_string(item, "namespace", where)
    elif kind == "custom_tool_call":
        _check_string(item, "call_id", where)
        _check_string(item, "name", where)
        _check_string(item, "input", where, empty=True)


def check_responses_object(obj, where="response"):
    """A whole `response` object (a non-streamed reply, or a stream's terminal response)."""
    if not isinstance(obj, dict):
        fail("%s is not an object: %r", where, obj)
    if obj.get("object") != "response":
        fail('%s: object is %r, not "response"', where, obj.get("object"))
    missing = [key for key in REQUIRED_KEYS if key not in obj]
    if missing:
        fail("%s lacks %s (required by the openai SDK's Response)", where, ", ".join(missing))
    _check_string(obj, "id", where)
    if not _is_int(obj["created_at"]) and not isinstance(obj["created_at"], float):
        fail("%s: created_at %r is not a number", where, obj["created_at"])
    if obj.get("status") not in STATUSES:
        fail("%s: status %r is not one of %s", where, obj.get("status"), STATUSES)
    if "output_text" in obj:
        fail("%s has a top-level output_text: an SDK convenience property, not a wire field",
             where)
    if not isinstance(obj["output"], list):
        fail("%s: output %r is not a list", where, obj["output"])
    ids = []
    for index, item in enumerate(obj["output"]):
        check_item(item, "%s.output[%d]" % (where, index))
        if item.get("id") is not None:
            if item["id"] in ids:
                fail("%s.output[%d]: id %r is used twice", where, index, item["id"])
            ids.append(item["id"])
    status = obj["status"]
    if status == "completed":
        if obj.get("error") is not None:
            fail("%s: completed, yet error is %r", where, obj["error"])
        if "usage" not in obj or obj["usage"] is None:
            fail("%s: completed without usage (Codex needs it)", where)
    if status == "incomplete":
        details = obj.get("incomplete_details")
        if not isinstance(details, dict) or not isinstance(details.get("reason"), str):
            fail("%s: incomplete without incomplete_details.reason: %r", where, details)
    if status == "failed":
        error = obj.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("code"), str) or \
                not isinstance(error.get("message"), str):
            fail("%s: failed without error {code, message}: %r", where, error)
    if obj.get("usage") is not None:
        check_usage(obj["usage"], where + ".usage")


# -- streams --------------------------------------------------------------------------------

class _Item:
    """What the stream said so far about one output item."""

    def __init__(self, index, added):
        self.index, self.added = index, added
        self.id, self.type = added.get("id"), added.get("type")
        self.done = None
        self.parts = {}         # (family, index) -> {"kind", "deltas", "text_done", "closed"}
        self.deltas = {"args": [], "input": []}
        self.finished = {}      # "args" / "input" -> the .done value


def _normalise(events):
    out = []
    for position, event in enumerate(events):
        if isinstance(event, dict):
            name, data = None, event
        elif isinstance(event, (tuple, list)) and len(event) == 2:
            name, data = event
        else:
            fail("event %d is neither (event name, data) nor a data dict: %r", position, event)
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            fail("event %d has no data object with a type: %r", position, data)
        out.append((name, data))
    return out


def _open_item(items, data, where, by_id=True):
    """The item an item-scoped event belongs to: announced, not yet done, and (by_id) the
    event's item_id is that item's id."""
    index = data.get("output_index")
    if index is None and not by_id and "item_id" in data:       # an event we do not know
        index = next((i.index for i in items if i.id == data["item_id"]), len(items))
    if not _is_int(index):
        fail("%s: output_index %r is not an integer", where, index)
    if index >= len(items) or index < 0:
        fail("%s for output_index %d before its output_item.added", where, index)
    item = items[index]
    if item.done is not None:
        fail("%s for output_index %d after its output_item.done", where, index)
    if (by_id or "item_id" in data) and data.get("item_id") != item.id:
        fail("%s: item_id %r does not match output item %d's id %r", where,
             data.get("item_id"), index, item.id)
    return item


def _part_event(item, data, where):
    """Check one event about a message part, summary part, reasoning text, arguments or
    custom input against what the item has seen."""
    kind = data["type"]
    if item.type != PART_EVENTS[kind]:
        fail("%s on a %s item (%s), not a %s", where, item.type, item.id, PART_EVENTS[kind])
    if kind.startswith("response.function_call_arguments."):
        return _stream_field(item, data, where, "args", "arguments")
    if kind.startswith("response.custom_tool_call_input."):
        return _stream_field(item, data, where, "input", "input")
    if kind.startswith("response.reasoning_text."):
        family, index_field, added_name = "reasoning_text", "content_index", None
    elif kind.startswith("response.reasoning_summary_"):
        family, index_field = "summary", "summary_index"
        added_name = "response.reasoning_summary_part.added"
    else:
        family, index_field, added_name = "content", "content_index", \
            "response.content_part.added"
    index = data.get(index_field)
    if not _is_int(index):
        fail("%s: %s %r is not an integer", where, index_field, index)
    key = (family, index)
    part = item.parts.get(key)
    if kind == added_name:
        expected = len([k for k in item.parts if k[0] == family])
        if index != expected:
            fail("%s: %s %d; expected %d (contiguous from 0)", where, index_field, index, expected)
        new = data.get("part")
        if not isinstance(new, dict) or not isinstance(new.get("type"), str):
            fail("%s: part %r has no type", where, new)
        if family == "summary" and new["type"] != "summary_text":
            fail("%s: summary part typed %r, not summary_text", where, new["type"])
        item.parts[key] = {"kind": new["type"], "deltas": [], "text_done": None, "closed": False}
        return
    if part is None and added_name is None:         # reasoning_text: no part.added event
        part = item.parts[key] = {"kind": "reasoning_text", "deltas": [], "text_done": None,
                                  "closed": False}
    if part is None:
        fail("%s for %s %d before its %s", where, index_field, index, added_name.split(".", 1)[1])
    if part["closed"]:
        fail("%s for %s %d after its part was done", where, index_field, index)
    joined = "".join(part["deltas"])
    if kind.endswith(".delta"):
        want = {"response.output_text.delta": "output_text",
                "response.refusal.delta": "refusal"}.get(kind)
        if want and part["kind"] != want:
            fail("%s on a %s part", where, part["kind"])
        if part["text_done"] is not None:
            fail("%s for %s %d after its text was done", where, index_field, index)
        if not isinstance(data.get("delta"), str):
            fail("%s: delta %r is not a string", where, data.get("delta"))
        part["deltas"].append(data["delta"])
    elif kind in ("response.output_text.done", "response.refusal.done",
                  "response.reasoning_summary_text.done", "response.reasoning_text.done"):
        field = "refusal" if kind == "response.refusal.done" else "text"
        if part["text_done"] is not None:
            fail("%s: a second .done for %s %d", where, index_field, index)
        if data.get(field) != joined:
            fail("%s: %s %r differs from the concatenated deltas %r", where, field,
                 data.get(field), joined)
        part["text_done"] = joined
        if family == "reasoning_text":
            part["closed"] = True
    elif kind in ("response.content_part.done", "response.reasoning_summary_part.done"):
        if part["text_done"] is None:
            fail("%s for %s %d before its text .done event", where, index_field, index)
        done = data.get("part")
        field = "refusal" if part["kind"] == "refusal" else "text"
        if not isinstance(done, dict) or done.get("type") != part["kind"] or \
                done.get(field) != joined:
            fail("%s: part %r differs from the concatenated deltas %r (a %s part)", where, done,
                 joined, part["kind"])
        part["closed"] = True
        part["final"] = done


def _stream_field(item, data, where, key, field):
    if key in item.finished:
        fail("%s after the %s were done", where, field)
    if data["type"].endswith(".delta"):
        if not isinstance(data.get("delta"), str):
            fail("%s: delta %r is not a string", where, data.get("delta"))
        item.deltas[key].append(data["delta"])
        return
    joined = "".join(item.deltas[key])
    if data.get(field) != joined:
        fail("%s: %s %r differs from the concatenated deltas %r", where, field,
             data.get(field), joined)
    if key == "args" and "name" in data and data["name"] != item.added.get("name"):
        fail("%s: name %r differs from the item's %r", where, data["name"],
             item.added.get("name"))
    item.finished[key] = joined


def _item_done(item, done, where):
    """output_item.done: the same item, well formed, agreeing with its deltas."""
    if not isinstance(done, dict):
        fail("%s: item %r is not an object", where, done)
    if done.get("id") != item.id or done.get("type") != item.type:
        fail("%s: item %s %r was announced as %s %r", where, done.get("type"), done.get("id"),
             item.type, item.id)
    check_item(done, where)
    for key, part in sorted(item.parts.items()):
        if key[0] != "reasoning_text" and not part["closed"]:
            fail("%s: its %s part %d was never done", where, key[0], key[1])
    if item.type == "message":
        texts = [p["final"] for k, p in sorted(item.parts.items()) if k[0] == "content"]
        if done["content"] != texts:
            fail("%s: content %r differs from its done parts %r", where, done["content"], texts)
    if item.type == "reasoning":
        texts = [p["final"] for k, p in sorted(item.parts.items()) if k[0] == "summary"]
        if done["summary"] != texts:
            fail("%s: summary %r differs from its done parts %r", where, done["summary"], texts)
    for key, field in (("args", "arguments"), ("input", "input")):
        if key in item.finished and done.get(field) != item.finished[key]:
            fail("%s: %s %r differs from the streamed %r", where, field, done.get(field),
                 item.finished[key])
        elif key not in item.finished and item.deltas[key]:
            fail("%s: its %s deltas never got their .done event", where, field)
    for field in ("call_id", "name", "namespace"):
        if field in item.added and item.added[field] != done.get(field):
            fail("%s: %s %r differs from the announced %r", where, field, done.get(field),
                 item.added[field])


def check_responses_stream(events):
    """Raise AssertionError (saying which rule and which event) unless `events`, a list of
    (event name, data) pairs or of data dicts, is a well-formed Responses stream."""
    events = _normalise(events)
    if not events:
        fail("an empty stream: no events at all")
    first = events[0][1]["type"]
    if first != "response.created":
        fail("the first event is %s, not response.created", first)
    created = [i for i, (_, data) in enumerate(events) if data["type"] == "response.created"]
    if len(created) != 1:
        fail("%d response.created events (at %s); exactly one expected", len(created), created)
    for position, (name, data) in enumerate(events):
        if name is not None and name != data["type"]:
            fail("event %d: the SSE event name %r differs from its data type %r", position,
                 name, data["type"])
    for position, (_, data) in enumerate(events):
        number = data.get("sequence_number")
        if not _is_int(number):
            fail("event %d (%s): sequence_number %r is not an integer", position, data["type"],
                 number)
        if position == 0 and number != 0:
            fail("sequence_number starts at %r, not 0", number)
        if position and number != events[position - 1][1]["sequence_number"] + 1:
            fail("event %d (%s): sequence_number %r after %r; it must rise by exactly 1",
                 position, data["type"], number, events[position - 1][1]["sequence_number"])
    terminals = [(i, data["type"]) for i, (_, data) in enumerate(events)
                 if data["type"] in TERMINAL]
    if not terminals:
        fail("no terminal event (response.completed, .incomplete or .failed): the stream "
             "ends with %s", events[-1][1]["type"])
    if len(terminals) > 1:
        fail("%d terminal events %s; exactly one expected", len(terminals), terminals)
    if terminals[0][0] != len(events) - 1:
        fail("the terminal event %s is event %d, not the last (%d events)", terminals[0][1],
             terminals[0][0], len(events))

    head = events[0][1].get("response")
    if not isinstance(head, dict) or not isinstance(head.get("id"), str) or not head["id"]:
        fail("response.created carries no response with an id: %r", head)
    if head.get("object") != "response":
        fail('response.created: response.object is %r, not "response"', head.get("object"))
    if head.get("status") not in ("in_progress", "queued"):
        fail("response.created: status %r, not in_progress", head.get("status"))
    items, done_order, in_progress = [], [], False
    for position, (_, data) in enumerate(events[1:-1], 1):
        kind = data["type"]
        where = "event %d (%s)" % (position, kind)
        if kind == "response.in_progress":
            if in_progress or items:
                fail("%s: response.in_progress must come once, before any output item", where)
            in_progress = True
            if (data.get("response") or {}).get("id") != head["id"]:
                fail("%s: response.id %r differs from response.created's %r", where,
                     (data.get("response") or {}).get("id"), head["id"])
        elif kind == "response.output_item.added":
            index, item = data.get("output_index"), data.get("item")
            if index != len(items):
                fail("%s: output_index %r; expected %d (contiguous from 0 in the order of "
                     "output_item.added)", where, index, len(items))
            if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                fail("%s: item %r has no type", where, item)
            if not isinstance(item.get("id"), str) or not item["id"]:
                fail("%s: item has no id (deltas name their item by id): %r", where, item)
            if item["id"] in [i.id for i in items]:
                fail("%s: item id %r is used twice", where, item["id"])
            items.append(_Item(index, item))
        elif kind == "response.output_item.done":
            item = _open_item(items, data, where, by_id=False)
            _item_done(item, data.get("item"), where)
            item.done = data["item"]
            done_order.append(item.index)
        elif kind in PART_EVENTS:
            _part_event(_open_item(items, data, where), data, where)
        elif "output_index" in data or "item_id" in data:
            _open_item(items, data, where, by_id=False)     # another event about an item

    name, data = events[-1][1]["type"], events[-1][1]
    where = "the terminal event %s" % name
    response = data.get("response")
    if not isinstance(response, dict):
        fail("%s carries no response object: %r", where, response)
    if response.get("id") != head["id"]:
        fail("%s: response.id %r differs from response.created's %r", where, response.get("id"),
             head["id"])
    if response.get("status") != TERMINAL[name]:
        fail("%s: response.status %r, not %r", where, response.get("status"), TERMINAL[name])
    check_responses_object(response, where + " response")
    if TERMINAL[name] == "failed":
        return
    still_open = [(i.index, i.id) for i in items if i.done is None]
    if still_open:
        fail("%s: items %s never got their output_item.done", where, still_open)
    done_items = [items[index].done for index in sorted(done_order)]
    if response["output"] != done_items:
        fail("%s: response.output differs from the output_item.done items in order:\n"
             "output: %s\ndone:   %s", where, json.dumps(response["output"]),
             json.dumps(done_items))
