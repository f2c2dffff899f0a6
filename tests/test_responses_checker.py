"""The Responses stream checker rejects every kind of broken stream, one rule per test.

Each test starts from one valid stream (reasoning with two summary parts, a message with a
text part and a refusal part, a function call, a custom tool call), which the first tests
show the checker accepts in every form, breaks it in exactly one way (renumbering the
sequence where events move, so only the rule under test is broken) and expects the
AssertionError that names that rule."""

import copy
import json
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fake_upstream as fu  # noqa: E402
from responses_checker import (check_responses_object, check_responses_stream,  # noqa: E402
                               parse_sse)


def valid_response():
    text = fu.responses_text_part(
        "The notes file lists three chores.",
        annotations=[{"type": "file_citation", "file_id": "file_n1", "index": 4,
                      "filename": "notes.txt"}],
        logprobs=[{"token": "The", "logprob": -0.01, "bytes": [84, 104, 101],
                   "top_logprobs": []}])
    return fu.responses_object([
        fu.responses_reasoning_item(["Check the notes first.", "Then patch the list."],
                                    "enc-check-7", "rs_check"),
        fu.responses_message_item([text, fu.responses_refusal_part("I will not delete it.")],
                                  "msg_check"),
        fu.responses_function_call_item("call_check_a", "exec_command",
                                        {"cmd": "wc -l notes.txt"}),
        fu.responses_custom_call_item("call_check_b", "apply_patch",
                                      "*** Begin Patch\n*** Update File: notes.txt\n"
                                      "+water plants\n*** End Patch\n"),
    ], use=fu.responses_usage(240, 60, reasoning=12, cached=128), model="check-model",
        response_id="resp_check")


VALID = fu.responses_events(valid_response(), pieces=3)


def events():
    """A fresh copy of the valid stream, to break."""
    return copy.deepcopy(VALID)


def find(stream, kind, nth=0, **fields):
    """The position of the nth event of type `kind` whose data has `fields`."""
    hits = [i for i, (_, data) in enumerate(stream) if data["type"] == kind and
            all(data.get(k) == v for k, v in fields.items())]
    return hits[nth]


def rejects(stream, pattern):
    with pytest.raises(AssertionError, match=pattern):
        check_responses_stream(stream)


def sse_text(stream):
    return "".join("event: %s\ndata: %s\n\n" % (name, json.dumps(data)) for name, data in stream)


# -- what the checker accepts ----------------------------------------------------------------

def test_the_valid_stream_passes_as_pairs_dicts_and_sse_text():
    kinds = [data["type"] for _, data in VALID]
    assert {"response.refusal.delta", "response.reasoning_summary_part.added",
            "response.function_call_arguments.delta",
            "response.custom_tool_call_input.delta"} <= set(kinds)
    check_responses_stream(events())
    check_responses_stream([data for _, data in events()])
    check_responses_stream(parse_sse(sse_text(events()).encode()))
    crlf = (": keep-alive\n\n" + sse_text(events())).replace("\n", "\r\n")
    assert parse_sse(crlf) == events()
    check_responses_object(valid_response())


def test_streams_of_every_ending_pass():
    incomplete = fu.responses_text("Cut sh", incomplete="max_output_tokens")
    check_responses_stream(fu.responses_events(incomplete))
    empty = fu.responses_object([])
    check_responses_stream(fu.responses_events(empty, in_progress=False))
    head = events()[:find(events(), "response.output_text.delta", 1) + 1]
    check_responses_stream(head + [fu.responses_failed_event(head, "rate_limit_exceeded",
                                                             "Please try again in 3s.")])
    with_error = head + [fu.responses_error_event(head, "upstream went away")]
    check_responses_stream(with_error + [fu.responses_failed_event(with_error)])


# -- first event, names, sequence numbers -----------------------------------------------------

def test_rejects_a_wrong_first_event():
    stream = events()
    stream[0], stream[1] = stream[1], stream[0]
    rejects(fu.responses_renumber(stream), "first event is response.in_progress, not "
                                           "response.created")
    rejects(fu.responses_renumber(events()[1:]), "first event is response.in_progress")


def test_rejects_a_second_response_created():
    stream = events()
    stream.insert(5, copy.deepcopy(stream[0]))
    rejects(fu.responses_renumber(stream), "2 response.created events")


def test_rejects_an_sse_name_that_is_not_the_data_type():
    stream = events()
    stream[4] = ("response.output_text.delta", stream[4][1])
    rejects(stream, "event 4: the SSE event name 'response.output_text.delta' differs")


def test_rejects_a_sequence_that_does_not_start_at_zero():
    rejects(fu.responses_renumber(events(), start=1), "sequence_number starts at 1, not 0")


def test_rejects_a_skipped_sequence_number():
    stream = events()
    for _, data in stream[7:]:
        data["sequence_number"] += 1
    rejects(stream, r"event 7 .*: sequence_number 8 after 6; it must rise by exactly 1")


def test_rejects_a_repeated_or_missing_sequence_number():
    stream = events()
    stream[3][1]["sequence_number"] = 2
    rejects(stream, "sequence_number 2 after 2")
    stream = events()
    del stream[3][1]["sequence_number"]
    rejects(stream, "sequence_number None is not an integer")


# -- output items and their lifecycles ----------------------------------------------------------

@pytest.mark.parametrize("delta, item_type", [
    ("response.output_text.delta", "message"),
    ("response.reasoning_summary_text.delta", "reasoning"),
    ("response.function_call_arguments.delta", "function_call"),
    ("response.custom_tool_call_input.delta", "custom_tool_call")])
def test_rejects_a_delta_before_its_item_was_added(delta, item_type):
    stream = events()
    moved = stream.pop(find(stream, delta))
    stream.insert(find(stream, "response.output_item.added"), moved)
    index = [item["type"] for item in valid_response()["output"]].index(item_type)
    rejects(fu.responses_renumber(stream), re.escape(
        "(%s) for output_index %d before its output_item.added" % (delta, index)))


def test_rejects_a_delta_after_its_item_was_done():
    stream = events()
    late = copy.deepcopy(stream[find(stream, "response.function_call_arguments.delta")])
    stream.insert(find(stream, "response.output_item.done", 2) + 1, late)
    rejects(fu.responses_renumber(stream), re.escape(
        "(response.function_call_arguments.delta) for output_index 2 after its "
        "output_item.done"))


def test_rejects_a_gap_in_output_index():
    stream = events()
    for _, data in stream:
        if data.get("output_index", -1) >= 2:
            data["output_index"] += 1
    rejects(stream, r"output_item.added\): output_index 3; expected 2 \(contiguous from 0")


def test_rejects_an_item_id_that_is_not_its_items():
    stream = events()
    stream[find(stream, "response.output_text.delta", 1)][1]["item_id"] = "msg_other"
    rejects(stream, "item_id 'msg_other' does not match output item 1's id 'msg_check'")


def test_rejects_a_done_item_that_was_announced_as_another():
    stream = events()
    done = stream[find(stream, "response.output_item.done", 2)][1]
    done["item"] = dict(done["item"], id="fc_other")
    rejects(stream, "item function_call 'fc_other' was announced as function_call "
                    "'fc_check_a'")


def test_rejects_text_before_its_content_part_was_added():
    stream = events()
    del stream[find(stream, "response.content_part.added")]
    rejects(fu.responses_renumber(stream), re.escape(
        "(response.output_text.delta) for content_index 0 before its content_part.added"))


def test_rejects_summary_text_before_its_summary_part_was_added():
    stream = events()
    del stream[find(stream, "response.reasoning_summary_part.added", 1)]
    rejects(fu.responses_renumber(stream), re.escape(
        "(response.reasoning_summary_text.delta) for summary_index 1 before its "
        "reasoning_summary_part.added"))


def test_rejects_a_content_index_gap():
    stream = events()
    for _, data in stream:
        if data.get("item_id") == "msg_check" and data.get("content_index") == 1:
            data["content_index"] = 2
    rejects(stream, "content_index 2; expected 1")


def test_rejects_an_item_that_is_never_done():
    stream = events()
    del stream[find(stream, "response.output_item.done", 3)]
    stream[-1][1]["response"]["output"].pop()
    rejects(fu.responses_renumber(stream), r"items \[\(3, 'ctc_check_b'\)\] never got their "
                                           "output_item.done")


def test_rejects_in_progress_after_the_first_item():
    stream = events()
    moved = stream.pop(1)
    stream.insert(3, moved)
    rejects(fu.responses_renumber(stream), "response.in_progress must come once, before any "
                                           "output item")


# -- .done texts ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, field", [
    ("response.output_text.done", "text"),
    ("response.refusal.done", "refusal"),
    ("response.reasoning_summary_text.done", "text"),
    ("response.function_call_arguments.done", "arguments"),
    ("response.custom_tool_call_input.done", "input")])
def test_rejects_a_done_text_that_is_not_the_concatenated_deltas(kind, field):
    stream = events()
    data = stream[find(stream, kind)][1]
    data[field] = data[field] + "!"
    rejects(stream, "%s .* differs from the concatenated deltas" % field)


@pytest.mark.parametrize("kind", ["response.content_part.done",
                                  "response.reasoning_summary_part.done"])
def test_rejects_a_done_part_that_is_not_the_concatenated_deltas(kind):
    stream = events()
    data = stream[find(stream, kind)][1]
    data["part"] = dict(data["part"], text="something else")
    rejects(stream, "part .* differs from the concatenated deltas")


def test_rejects_a_done_item_whose_text_differs_from_its_parts():
    stream = events()
    for position in (find(stream, "response.output_item.done", 1), len(stream) - 1):
        data = stream[position][1]
        message = data["item"] if "item" in data else data["response"]["output"][1]
        message["content"][0]["text"] = "Different words."
    rejects(stream, "content .* differs from its done parts")


def test_rejects_a_done_call_whose_arguments_differ_from_the_streamed_ones():
    stream = events()
    for position in (find(stream, "response.output_item.done", 2), len(stream) - 1):
        data = stream[position][1]
        call = data["item"] if "item" in data else data["response"]["output"][2]
        call["arguments"] = '{"cmd": "rm notes.txt"}'
    rejects(stream, "arguments .* differs from the streamed")


# -- the terminal event -----------------------------------------------------------------------

def test_rejects_two_terminal_events():
    stream = events()
    stream.append(copy.deepcopy(stream[-1]))
    rejects(fu.responses_renumber(stream), r"2 terminal events \[\(%d, 'response.completed'\), "
                                           r"\(%d, 'response.completed'\)\]" % (
                                               len(stream) - 2, len(stream) - 1))
    stream = events()
    stream.insert(-1, fu.responses_failed_event(stream[:-1]))
    rejects(fu.responses_renumber(stream), "2 terminal events")


def test_rejects_a_terminal_event_that_is_not_last():
    stream = events()
    stream.append(fu.responses_error_event(stream, "late news"))
    rejects(stream, "the terminal event response.completed is event %d, not the last"
            % (len(stream) - 2))


def test_rejects_a_stream_without_a_terminal_event():
    rejects(events()[:-1], "no terminal event .* the stream ends with "
                           "response.output_item.done")


def test_rejects_a_terminal_response_id_that_is_not_the_created_one():
    stream = events()
    stream[-1][1]["response"]["id"] = "resp_other"
    rejects(stream, "response.id 'resp_other' differs from response.created's 'resp_check'")


def test_rejects_a_terminal_status_that_its_event_name_does_not_say():
    stream = events()
    stream[-1][1]["response"]["status"] = "incomplete"
    rejects(stream, "response.completed: response.status 'incomplete', not 'completed'")
    head = events()[:6]
    failed = fu.responses_failed_event(head)
    failed[1]["response"]["status"] = "completed"
    rejects(head + [failed], "response.failed: response.status 'completed', not 'failed'")


@pytest.mark.parametrize("change", ["drop", "reorder", "edit", "extra"])
def test_rejects_terminal_output_that_differs_from_the_done_items(change):
    stream = events()
    output = stream[-1][1]["response"]["output"]
    if change == "drop":
        output.pop(2)
    elif change == "reorder":
        output[2], output[3] = output[3], output[2]
    elif change == "edit":
        output[0]["summary"][1]["text"] = "Then do nothing."
    else:
        output.append(fu.responses_function_call_item("call_extra", "ls", {}))
    rejects(stream, "response.output differs from the output_item.done items in order")


@pytest.mark.parametrize("field", ["input_tokens", "output_tokens", "total_tokens"])
def test_rejects_a_completed_usage_without_one_of_its_integers(field):
    stream = events()
    del stream[-1][1]["response"]["usage"][field]
    rejects(stream, "usage has no %s" % field)
    stream = events()
    stream[-1][1]["response"]["usage"][field] = "12"
    rejects(stream, "usage.%s is '12', not a non-negative integer" % field)


def test_rejects_a_completed_response_without_usage_or_with_a_wrong_total():
    stream = events()
    stream[-1][1]["response"]["usage"] = None
    rejects(stream, "completed without usage")
    stream = events()
    stream[-1][1]["response"]["usage"]["total_tokens"] = 1
    rejects(stream, r"total_tokens 1 != input_tokens \+ output_tokens \(240 \+ 60\)")


def test_rejects_a_failed_response_without_its_error():
    head = events()[:6]
    failed = fu.responses_failed_event(head)
    failed[1]["response"]["error"] = None
    rejects(head + [failed], r"failed without error \{code, message\}")


# -- SSE framing ------------------------------------------------------------------------------

def test_parse_sse_rejects_a_done_sentinel():
    body = sse_text(events()) + "data: [DONE]\n\n"
    with pytest.raises(AssertionError, match=r"data: \[DONE\]. after %d events" % len(VALID)):
        parse_sse(body.encode())


def test_parse_sse_rejects_bad_framing():
    good = sse_text(events()[:3])
    for body, pattern in [
            (good + "event: ping\n\n", "event 'ping' has no data line"),
            (good + "event: response.output_text.delta\ndata: {oops\n\n", "data is not JSON"),
            (good + 'data: ["a list"]\n\n', "data is not a JSON object"),
            (good[:-1], "does not end with a blank line")]:
        with pytest.raises(AssertionError, match=pattern):
            parse_sse(body)
    assert len(parse_sse(good)) == 3


def test_rejects_events_that_are_not_pairs_or_dicts():
    rejects([("response.created",)], "neither")
    rejects([("response.created", "not a dict")], "no data object with a type")
    rejects([], "empty stream")


# -- whole response objects -------------------------------------------------------------------

def object_rejects(obj, pattern):
    with pytest.raises(AssertionError, match=pattern):
        check_responses_object(obj)


def test_check_responses_object_rejects_malformed_responses():
    obj = valid_response()
    object_rejects(dict(obj, object="chat.completion"), 'object is .chat.completion., not '
                                                        '"response"')
    object_rejects({k: v for k, v in obj.items() if k != "tools"}, "lacks tools")
    object_rejects(dict(obj, output_text="x"), "top-level output_text")
    object_rejects(dict(obj, status="done"), "status 'done' is not one of")
    object_rejects(dict(obj, status="incomplete"), "incomplete without incomplete_details")
    object_rejects(dict(obj, output=obj["output"] + [obj["output"][1]]), "is used twice")


@pytest.mark.parametrize("index, change, pattern", [
    (2, {"arguments": {"cmd": "ls"}}, "arguments .* is not a JSON string"),
    (2, {"arguments": "{cmd"}, "arguments .* are not JSON"),
    (2, {"call_id": ""}, "call_id is '', not a non-empty string"),
    (0, {"summary": [{"type": "output_text", "text": "hm"}]}, "is not a summary_text part"),
    (1, {"role": "user"}, "role 'user', not assistant"),
    (1, {"content": [{"type": "output_text", "text": "x"}]}, "annotations None is not a list"),
    (1, {"content": [{"type": "input_text", "text": "x"}]}, "not an output_text or refusal"),
    (3, {"input": None}, "input is None, not a string"),
    (3, {"status": "done"}, "status 'done' is not one of")])
def test_check_responses_object_rejects_malformed_items(index, change, pattern):
    obj = valid_response()
    obj["output"][index] = dict(obj["output"][index], **change)
    object_rejects(obj, pattern)


# -- every other rule, one case each ------------------------------------------------------------

def _set(kind, nth=0, **fields):
    """A breakage: event `kind` (the nth) gets `fields`."""
    def change(stream):
        stream[find(stream, kind, nth)][1].update(fields)
        return stream
    return change


def _set_part(kind, nth=0, **fields):
    def change(stream):
        data = stream[find(stream, kind, nth)][1]
        data["part"] = dict(data["part"], **fields) if fields else None
        return stream
    return change


def _copy_after(kind, after, nth=0, **fields):
    """A breakage: a copy of event `kind` (with `fields`) inserted after event `after`."""
    def change(stream):
        extra = copy.deepcopy(stream[find(stream, kind)])
        extra[1].update(fields)
        stream.insert(find(stream, after, nth) + 1, extra)
        return fu.responses_renumber(stream)
    return change


def _drop(kind, nth=0):
    def change(stream):
        del stream[find(stream, kind, nth)]
        return fu.responses_renumber(stream)
    return change


def _retype(kind, new_kind, nth=0):
    def change(stream):
        position = find(stream, kind, nth)
        stream[position] = (new_kind, dict(stream[position][1], type=new_kind))
        return stream
    return change


def _done_item(nth, **fields):
    """A breakage: the nth done item and its copy in the terminal output get `fields`."""
    def change(stream):
        stream[find(stream, "response.output_item.done", nth)][1]["item"].update(fields)
        stream[-1][1]["response"]["output"][nth].update(fields)
        return stream
    return change


def _usage(**fields):
    """A breakage: the terminal usage gets `fields`."""
    def change(stream):
        stream[-1][1]["response"]["usage"].update(fields)
        return stream
    return change


def _terminal_usage(usage):
    def change(stream):
        stream[-1][1]["response"]["usage"] = usage
        return stream
    return change


def _in_progress_id(response_id):
    def change(stream):
        data = stream[find(stream, "response.in_progress")][1]
        data["response"] = dict(data["response"], id=response_id)
        return stream
    return change


def _added_item(nth, **fields):
    """A breakage: the nth output_item.added item gets `fields` (None: without that key)."""
    def change(stream):
        item = stream[find(stream, "response.output_item.added", nth)][1]["item"]
        for key, value in fields.items():
            if value is None:
                del item[key]
            else:
                item[key] = value
        return stream
    return change


def _head(**fields):
    def change(stream):
        stream[0][1]["response"] = None if not fields else dict(stream[0][1]["response"],
                                                                  **fields)
        return stream
    return change


def _terminal(response):
    def change(stream):
        stream[-1][1]["response"] = response
        return stream
    return change


OTHER_STREAM_RULES = [
    ("created-no-response", _head(), "response.created carries no response with an id"),
    ("created-object", _head(object="chat"), 'response.object is .chat., not "response"'),
    ("created-status", _head(status="completed"), "response.created: status 'completed'"),
    ("in-progress-id", _in_progress_id("resp_x"),
     "response.id 'resp_x' differs from response.created's"),
    ("added-no-type", _added_item(0, type=None), "item .* has no type"),
    ("added-no-id", _added_item(0, id=None), "item has no id"),
    ("added-twice-same-id", _added_item(1, id="rs_check"), "item id 'rs_check' is used twice"),
    ("output-index-type", _set("response.output_text.delta", output_index="1"),
     "output_index '1' is not an integer"),
    ("event-on-wrong-item", _retype("response.output_text.delta",
                                    "response.function_call_arguments.delta"),
     r"on a message item \(msg_check\), not a function_call"),
    ("content-index-type", _set("response.output_text.delta", content_index="0"),
     "content_index '0' is not an integer"),
    ("part-without-type", _set_part("response.content_part.added"), "part None has no type"),
    ("summary-part-type", _set_part("response.reasoning_summary_part.added", type="output_text"),
     "summary part typed 'output_text', not summary_text"),
    ("delta-after-part-done", _copy_after("response.output_text.delta",
                                          "response.content_part.done"),
     "for content_index 0 after its part was done"),
    ("text-delta-on-refusal", _retype("response.refusal.delta", "response.output_text.delta"),
     "output_text.delta\\) on a refusal part"),
    ("delta-after-text-done", _copy_after("response.output_text.delta",
                                          "response.output_text.done"),
     "for content_index 0 after its text was done"),
    ("delta-not-string", _set("response.output_text.delta", delta=5),
     "delta 5 is not a string"),
    ("second-text-done", _copy_after("response.output_text.done", "response.output_text.done"),
     "a second .done for content_index 0"),
    ("part-done-before-text-done", _drop("response.output_text.done"),
     "for content_index 0 before its text .done event"),
    ("args-delta-after-args-done", _copy_after("response.function_call_arguments.delta",
                                               "response.function_call_arguments.done"),
     "after the arguments were done"),
    ("args-delta-not-string", _set("response.function_call_arguments.delta", delta=None),
     "delta None is not a string"),
    ("args-done-other-name", _set("response.function_call_arguments.done", name="ls"),
     "name 'ls' differs from the item's 'exec_command'"),
    ("done-item-not-object", _set("response.output_item.done", item=None),
     "item None is not an object"),
    ("part-never-done", _drop("response.content_part.done", 1),
     "its content part 1 was never done"),
    ("done-summary-differs", _done_item(0, summary=[{"type": "summary_text", "text": "x"}]),
     "summary .* differs from its done parts"),
    ("args-never-done", _drop("response.function_call_arguments.done"),
     "its arguments deltas never got their .done event"),
    ("done-call-id-differs", _done_item(2, call_id="call_other"),
     "call_id 'call_other' differs from the announced 'call_check_a'"),
    ("terminal-no-response", _terminal(None), "carries no response object"),
    ("usage-not-object", _terminal_usage([]), "usage is \\[\\], not an object"),
    ("usage-details-not-object", _usage(input_tokens_details=5),
     "input_tokens_details is 5, not an object"),
    ("cached-above-input", _usage(input_tokens_details={"cached_tokens": 999}),
     "cached_tokens is 999: an integer from 0 to input_tokens"),
    ("reasoning-above-output", _usage(output_tokens_details={"reasoning_tokens": -1}),
     "reasoning_tokens is -1: an integer from 0 to output_tokens"),
]


@pytest.mark.parametrize("breakage, pattern", [case[1:] for case in OTHER_STREAM_RULES],
                         ids=[case[0] for case in OTHER_STREAM_RULES])
def test_rejects_each_other_broken_rule(breakage, pattern):
    rejects(breakage(events()), pattern)


@pytest.mark.parametrize("change, pattern", [
    (lambda o: [], "response is not an object"),
    (lambda o: dict(o, created_at="now"), "created_at 'now' is not a number"),
    (lambda o: dict(o, output={}), "output {} is not a list"),
    (lambda o: dict(o, error={"code": "server_error", "message": "x"}),
     "completed, yet error is"),
    (lambda o: dict(o, output=["x"]), r"output\[0\] is not an item with a type"),
    (lambda o: dict(o, output=[dict(o["output"][1], content="hi")]), "content 'hi' is not a list"),
    (lambda o: dict(o, output=[dict(o["output"][1], content=[
        dict(fu.responses_text_part("x"), logprobs="x")])]), "logprobs 'x' is not a list"),
    (lambda o: dict(o, output=[dict(o["output"][0], summary="x")]), "summary 'x' is not a list"),
    (lambda o: dict(o, output=[dict(o["output"][0], encrypted_content=5)]),
     "encrypted_content 5 is not a string")],
    ids=["not-object", "created_at", "output", "error-on-completed", "item-no-type",
         "content-not-list", "logprobs", "summary-not-list", "encrypted-content"])
def test_check_responses_object_rejects_each_other_broken_rule(change, pattern):
    object_rejects(change(valid_response()), pattern)
