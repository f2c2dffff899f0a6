"""Section 5, the HTTP/1.1 wire format: pure functions over bytes, no sockets.

Every incremental parser is fed its input whole, byte by byte, split at every position,
and with trailing data (the next pipelined request must stay in the caller's buffer).
Hostile input covers the shapes request smuggling relies on, oversized heads and bodies,
and bad chunk framing.
"""

import random

import pytest

import gemini_proxy as gp

NEXT_REQUEST = b"GET /next HTTP/1.1\r\nHost: proxy\r\n\r\n"


def head_bytes(*lines):
    """A request head as the server hands it to parse_request_head (no final blank line)."""
    return b"\r\n".join(lines)


def rejected(call, *args, **kwargs):
    """The ClientError a call raises (anything else, or no error, fails the test)."""
    with pytest.raises(gp.ClientError) as info:
        call(*args, **kwargs)
    return info.value


def body_head(*header_lines, version=b"HTTP/1.1"):
    return gp.parse_request_head(head_bytes(b"POST /v1beta/models/m:generateContent " + version,
                                            b"Host: proxy", *header_lines))


# ---- parse_request_head ------------------------------------------------------------------

def test_head_fields_names_and_order():
    head = gp.parse_request_head(head_bytes(
        b"POST /v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=a&key=b HTTP/1.1",
        b"Host: 127.0.0.1:8000",
        b"Content-Type:application/json",
        b"X-Goog-Api-Key:   secret \t",
        b"Accept: text/event-stream",
        b"accept: application/json"))
    assert head.method == "POST"
    assert head.target == ("/v1beta/models/gemini-2.5-pro:streamGenerateContent"
                           "?alt=sse&key=a&key=b")
    assert head.path == "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    assert head.version == "HTTP/1.1"
    assert head.query_value("alt") == "sse"
    assert head.query_value("key") == "b"            # the last one wins
    assert head.query_value("missing", "dflt") == "dflt"
    assert head.headers == [
        ("host", "127.0.0.1:8000"),
        ("content-type", "application/json"),
        ("x-goog-api-key", "secret"),                 # optional whitespace trimmed
        ("accept", "text/event-stream"),
        ("accept", "application/json"),
    ]
    assert head.header("accept") == "text/event-stream, application/json"
    assert head.header("content-length", "none") == "none"


def test_head_without_headers_and_percent_decoded_path():
    head = gp.parse_request_head(b"GET /v1beta/models/gemini%2D2.5%2Dflash?x=%20y HTTP/1.0")
    assert head.headers == []
    assert head.version == "HTTP/1.0"
    assert head.path == "/v1beta/models/gemini-2.5-flash"
    assert head.query == {"x": [" y"]}


def test_absolute_form_target_is_reduced_to_its_path():
    head = gp.parse_request_head(head_bytes(
        b"GET http://127.0.0.1:8000/v1beta/models?key=k HTTP/1.1", b"Host: 127.0.0.1"))
    assert head.path == "/v1beta/models"
    assert head.query_value("key") == "k"
    assert gp.parse_request_head(b"GET http://example.com HTTP/1.1\r\nHost: example.com").path \
        == "/"


@pytest.mark.parametrize("version, connection, keep_alive", [
    (b"HTTP/1.1", None, True),
    (b"HTTP/1.1", b"close", False),
    (b"HTTP/1.1", b"Upgrade, CLOSE", False),
    (b"HTTP/1.1", b"keep-alive", True),
    (b"HTTP/1.0", None, False),
    (b"HTTP/1.0", b"Keep-Alive", True),
    (b"HTTP/1.0", b"close", False),
])
def test_keep_alive_follows_version_and_connection_header(version, connection, keep_alive):
    lines = [b"GET /health " + version, b"Host: x"]
    if connection is not None:
        lines.append(b"Connection: " + connection)
    assert gp.parse_request_head(head_bytes(*lines)).keep_alive is keep_alive


@pytest.mark.parametrize("line", [
    b"",
    b"GET",
    b"GET /",
    b"GET  / HTTP/1.1",                 # two spaces
    b"GET / HTTP/1.1 ",                 # trailing space
    b" GET / HTTP/1.1",                 # leading space
    b"GET / HTTP/1.1 extra",
    b"GET\t/\tHTTP/1.1",
    b"G(T / HTTP/1.1",                  # method is not a token
    b"GET /a\x7fb HTTP/1.1",            # DEL in the target
    b"GET /caf\xe9 HTTP/1.1",           # non-ASCII in the target
    b"GET /\x00 HTTP/1.1",
    b"GET / http/1.1",                  # the version name is case-sensitive
    b"GET / HTTP/1",
    b"GET / HTTP/11",
    b"GET / HTTP/1.1x",
    b"GET / FTP/1.1",
])
def test_malformed_request_line_is_400(line):
    error = rejected(gp.parse_request_head, head_bytes(line, b"Host: x"))
    assert error.status == 400


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/3.0"])
def test_unsupported_http_version_is_505(version):
    error = rejected(gp.parse_request_head, head_bytes(b"GET / " + version, b"Host: x"))
    assert error.status == 505


@pytest.mark.parametrize("lines", [
    # obs-fold: a continuation line must not be glued onto the header above it
    [b"Host: x", b"X-Long: first", b" second"],
    [b"Host: x", b"X-Long: first", b"\tsecond"],
    [b" Host: x"],
    # whitespace between the field name and the colon
    [b"Host : x"],
    [b"Host: x", b"Content-Length : 5"],
    [b"Host: x", b"Transfer-Encoding\t: chunked"],
    # no name, no colon, name not a token
    [b": x"],
    [b"Host x"],
    [b"Host: x", b"X(y): 1"],
    [b"Host: x", b"X\x00y: 1"],
    [b"Host: x", b"X\xe9: 1"],
    # bare LF or bare CR inside the head
    [b"Host: x\nTransfer-Encoding: chunked"],
    [b"Host: x\rTransfer-Encoding: chunked"],
    [b"Host: x", b"X-A: 1\n"],
    [b"Host: x", b"\n"],
    [b"Host: x", b"\r"],
    # NUL and other control characters in values
    [b"Host: x", b"X-A: a\x00b"],
    [b"Host: x", b"X-A: a\x01b"],
    [b"Host: x", b"X-A: a\x1fb"],
    [b"Host: x", b"X-A: a\x7fb"],
    [b"Host: x", b"X-A: a\x0bb"],
    [b"Host: x", b"X-A: a\x0cb"],
])
def test_hostile_header_lines_are_400(lines):
    error = rejected(gp.parse_request_head, head_bytes(b"GET / HTTP/1.1", *lines))
    assert error.status == 400


def test_bare_lf_in_the_request_line_is_400():
    error = rejected(gp.parse_request_head, b"GET / HTTP/1.1\nHost: x")
    assert error.status == 400


def test_tab_and_obs_text_are_allowed_in_values():
    head = gp.parse_request_head(head_bytes(b"GET / HTTP/1.1", b"Host: x",
                                            b"X-A: a\tb", b"X-B: caf\xe9", b"X-C:"))
    assert head.header("x-a") == "a\tb"
    assert head.header("x-b") == "caf\u00e9"          # latin-1, as RFC 9110 obs-text
    assert ("x-c", "") in head.headers


def test_too_many_headers_is_431():
    base = [b"GET / HTTP/1.1", b"Host: h"]
    fields = [b"X-H%d: v" % i for i in range(9)]
    assert len(gp.parse_request_head(head_bytes(*base, *fields), max_headers=10).headers) == 10
    error = rejected(gp.parse_request_head, head_bytes(*base, *fields, b"X-One-More: v"),
                     max_headers=10)
    assert error.status == 431
    many = [b"X-H%d: v" % i for i in range(101)]
    assert rejected(gp.parse_request_head, head_bytes(*base, *many)).status == 431


def test_a_huge_single_header_parses_when_the_server_let_it_through():
    # The byte limit (431) is the server's, applied before parsing (test_server_http.py);
    # the parser itself must cope with a long value without mangling it.
    value = b"v" * 100000
    head = gp.parse_request_head(head_bytes(b"GET / HTTP/1.1", b"Host: x", b"X-Big: " + value))
    assert head.header("x-big") == value.decode()


# ---- request_body_length -------------------------------------------------------------------

def test_no_framing_headers_means_no_body():
    assert gp.request_body_length(body_head(), 1000) == 0
    assert gp.request_body_length(body_head(version=b"HTTP/1.0"), 1000) == 0


@pytest.mark.parametrize("lines, length", [
    ([b"Content-Length: 5"], 5),
    ([b"Content-Length: 0"], 0),
    ([b"Content-Length: 0005"], 5),
    ([b"content-length:1000"], 1000),                    # exactly the limit
    ([b"Content-Length: 7", b"Content-Length: 7"], 7),   # identical repeats (RFC 9110 8.6)
])
def test_content_length(lines, length):
    assert gp.request_body_length(body_head(*lines), 1000) == length


@pytest.mark.parametrize("te", [b"chunked", b"Chunked", b"CHUNKED", b" chunked "])
def test_chunked_means_minus_one(te):
    assert gp.request_body_length(body_head(b"Transfer-Encoding: " + te), 1000) == -1


@pytest.mark.parametrize("te", [b"chunked\xa0", b"\x85chunked"])
def test_chunked_with_what_only_python_calls_whitespace_is_refused(te):
    assert rejected(gp.request_body_length, body_head(b"Transfer-Encoding: " + te),
                    1000).status in (400, 501)


@pytest.mark.parametrize("lines", [
    [b"Content-Length: 5", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
    [b"Transfer-Encoding: chunked", b"Content-Length: 0"],
    [b"Content-Length: 5", b"Transfer-Encoding: Chunked"],
    [b"Content-Length: 5", b"Transfer-Encoding: identity"],
    [b"Content-Length: 5", b"Transfer-Encoding: gzip, chunked"],
    # an empty or list-only Transfer-Encoding is still a Transfer-Encoding field
    [b"Content-Length: 5", b"Transfer-Encoding:"],
    [b"Content-Length: 5", b"Transfer-Encoding: ,"],
])
def test_content_length_with_transfer_encoding_is_400(lines):
    error = rejected(gp.request_body_length, body_head(*lines), 1000)
    assert error.status == 400


@pytest.mark.parametrize("lines", [
    [b"Content-Length: 5", b"Content-Length: 6"],
    [b"Content-Length: 5, 6"],
    [b"Content-Length: 5", b"Content-Length: 50"],
    [b"Content-Length: 0", b"Content-Length: 5"],
])
def test_conflicting_content_lengths_are_400(lines):
    assert rejected(gp.request_body_length, body_head(*lines), 1000).status == 400


@pytest.mark.parametrize("value", [
    b"-1", b"+5", b"0x10", b"5.0", b"1e3", b"5 5", b"abc", b"", b" ", b"5;", b"\xb2",
    b"5\xb2", b"\xb9\xb3",   # superscript digits: latin-1 letters Python calls digits
    b"5\x85", b"\xa05",      # NEL and no-break space: whitespace to Python, not to HTTP
])
def test_invalid_content_length_is_400(value):
    error = rejected(gp.request_body_length, body_head(b"Content-Length: " + value), 1000)
    assert error.status == 400


def test_absurd_content_length_is_rejected_without_overflow():
    error = rejected(gp.request_body_length,
                     body_head(b"Content-Length: 99999999999999999999999999999"), 1000)
    assert error.status in (400, 413)


def test_content_length_over_the_limit_is_413():
    error = rejected(gp.request_body_length, body_head(b"Content-Length: 1001"), 1000)
    assert error.status == 413
    assert "1000" in error.message


def test_chunked_in_http10_is_400():
    error = rejected(gp.request_body_length,
                     body_head(b"Transfer-Encoding: chunked", version=b"HTTP/1.0"), 1000)
    assert error.status == 400


@pytest.mark.parametrize("te", [b"gzip", b"chunked, gzip", b"identity", b"chunked, identity",
                                b"xchunked"])
def test_transfer_coding_not_ending_in_chunked_is_400(te):
    # RFC 9112 6.3: chunked not the final coding -> the length is unknowable -> 400 and close.
    error = rejected(gp.request_body_length, body_head(b"Transfer-Encoding: " + te), 1000)
    assert error.status == 400


@pytest.mark.parametrize("lines", [
    [b"Transfer-Encoding: gzip, chunked"],
    [b"Transfer-Encoding: deflate, chunked"],
    [b"Transfer-Encoding: chunked, chunked"],
    [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"],
])
def test_unsupported_codings_before_chunked_are_refused(lines):
    # The proxy decodes no compression: 501 (RFC 9112 6.1 SHOULD) or 400, never a body.
    error = rejected(gp.request_body_length, body_head(*lines), 1000)
    assert error.status in (400, 501)


def test_mutated_heads_only_ever_raise_client_errors():
    """Seeded random damage to a realistic head: parsing either succeeds or raises a
    ClientError with a 4xx/5xx status, never any other exception."""
    base = head_bytes(b"POST /v1beta/models/m:generateContent?alt=sse HTTP/1.1",
                      b"Host: 127.0.0.1:8000", b"Content-Type: application/json",
                      b"Content-Length: 15", b"X-Goog-Api-Key: k1")
    palette = [b"\x00", b"\r", b"\n", b" ", b"\t", b":", b",", b"\xb2", b"\xff", b"\x7f",
               b"0", b"9", b"-", b"+", b"%", b"/", b"\r\n", b"\r\n "]
    rng = random.Random(20240611)
    outcomes = set()
    for _ in range(4000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            if rng.random() < 0.25 and len(data) > 1:
                del data[min(at, len(data) - 1)]
            else:
                data[at:at] = rng.choice(palette)
        try:
            head = gp.parse_request_head(bytes(data))
            gp.request_body_length(head, 1000)
            outcomes.add("ok")
        except gp.ClientError as error:
            assert error.status in (400, 413, 431, 501, 505), bytes(data)
            outcomes.add(error.status)
        except Exception as exc:   # noqa: BLE001 - the point of the test
            pytest.fail("%r raised %s: %s" % (bytes(data), type(exc).__name__, exc))
    assert "ok" in outcomes and 400 in outcomes


# ---- ChunkedDecoder ------------------------------------------------------------------------

def decode_whole(data, max_body=10000):
    decoder = gp.ChunkedDecoder(max_body)
    buf = bytearray(data)
    body = b"".join(decoder.feed(buf))
    assert decoder.done
    return body, bytes(buf)


def decode_in_pieces(data, sizes, max_body=10000):
    """Feed `data` in pieces of the given sizes (the last piece takes the rest), the way
    the server appends each socket read to its buffer; stop feeding once done."""
    decoder = gp.ChunkedDecoder(max_body)
    buf = bytearray()
    pieces = []
    at = 0
    for size in list(sizes) + [len(data)]:
        buf += data[at:at + size]
        at += size
        pieces += decoder.feed(buf)
        if decoder.done or at >= len(data):
            break
    assert decoder.done, "decoder not done after all input"
    return b"".join(pieces), bytes(buf) + data[at:]


def decode_bytewise(data, max_body=10000):
    return decode_in_pieces(data, [1] * len(data), max_body)


VALID_BODIES = [
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"0\r\n\r\n", b""),
    (b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n", b"abcdefg"),
    (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),              # upper-case hex
    (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    (b"0005\r\nhello\r\n000\r\n\r\n", b"hello"),                   # leading zeros
    (b"5;name=value\r\nhello\r\n0;last\r\n\r\n", b"hello"),        # chunk extensions
    (b"5 ;ext\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n", b"hello"),   # trailers
    (b"2\r\n\r\n\r\n0\r\n\r\n", b"\r\n"),                          # data that looks like framing
]


@pytest.mark.parametrize("data, body", VALID_BODIES)
def test_chunked_whole_bytewise_and_every_split_agree(data, body):
    assert decode_whole(data) == (body, b"")
    assert decode_bytewise(data) == (body, b"")
    for cut in range(1, len(data)):
        assert decode_in_pieces(data, [cut]) == (body, b""), cut


@pytest.mark.parametrize("data, body", VALID_BODIES)
def test_chunked_leaves_the_next_request_in_the_buffer(data, body):
    stream = data + NEXT_REQUEST
    assert decode_whole(stream) == (body, NEXT_REQUEST)
    assert decode_bytewise(stream) == (body, NEXT_REQUEST)
    for cut in range(1, len(stream)):
        assert decode_in_pieces(stream, [cut]) == (body, NEXT_REQUEST), cut


def test_many_chunks_read_at_once_and_a_byte_at_a_time_agree(monkeypatch):
    # Whole chunks in a read are taken in one pass (split where framing seems to be,
    # each piece's length checked against its size); byte by byte they are read a line
    # at a time. Data that looks like framing, an extension, a wrong size: all must read
    # alike both ways, and the one pass must be what reads the plain chunks.
    taken = []
    whole_chunks = gp.ChunkedDecoder._whole_chunks

    def counted(self, buf, pieces):
        before = len(pieces)
        whole_chunks(self, buf, pieces)
        taken.append(len(pieces) - before)
    monkeypatch.setattr(gp.ChunkedDecoder, "_whole_chunks", counted)
    plain_datas = [b"data: one\n\n", b"data: two\r\n\r\n", b"a" * 300, b"\r\n", b"\r\n\r\n"]
    whole = b"".join(b"%x\r\n%s\r\n" % (len(d), d) for d in plain_datas) + b"0\r\n\r\n"
    assert decode_whole(whole) == (b"".join(plain_datas), b"")
    assert taken == [len(plain_datas)]    # one pass took all of them
    datas = plain_datas + [b"x\r\n5\r\nhello\r\n", b"\r\n0\r\n\r\n", b"\r\nff\r\n"]
    plain = b"".join(b"%x\r\n%s\r\n" % (len(d), d) for d in datas)
    assert decode_whole(plain + b"0\r\n\r\n") == (b"".join(datas), b"")
    for middle in (b"3;ext\r\nabc\r\n", b"3\r\nabc\r\n" + b"B\r\n" + b"x" * 11 + b"\r\n"):
        data = plain + middle + plain + b"0\r\n\r\n" + NEXT_REQUEST
        expected = decode_bytewise(data)
        assert decode_whole(data) == expected
        for cut in range(1, len(data), 7):
            assert decode_in_pieces(data, [cut]) == expected, cut
    for wrong in (b"6\r\nhello\r\n", b"4\r\nhello\r\n", b"5\r\nhelloXX"):
        data = plain + wrong + plain + b"0\r\n\r\n"
        assert chunk_error(data).status == 400
    assert chunk_error(plain + b"0\r\n\r\n", max_body=len(b"".join(datas)) - 1).status == 413
    # the last chunk, and a next request that looks like chunks: left as it is
    follows = b"5\r\nhello\r\n0\r\n\r\n"
    assert decode_whole(whole + follows) == (b"".join(plain_datas), follows)


def test_chunked_data_is_handed_on_as_it_arrives():
    decoder = gp.ChunkedDecoder(1000)
    buf = bytearray(b"b\r\nhel")   # 11 bytes: "hello world"
    assert decoder.feed(buf) == [b"hel"]
    assert buf == b""
    buf += b"lo wo"
    assert decoder.feed(buf) == [b"lo wo"]
    buf += b"rl"
    assert decoder.feed(buf) == [b"rl"]
    assert not decoder.done
    buf += b"d\r\n0\r"
    assert decoder.feed(buf) == [b"d"]
    assert not decoder.done
    buf += b"\n\r\n" + NEXT_REQUEST
    assert decoder.feed(buf) == []
    assert decoder.done and buf == NEXT_REQUEST
    assert decoder.size == 11
    assert decoder.feed(buf) == [] and buf == NEXT_REQUEST    # done: touches nothing more


def chunk_error(data, max_body=10000):
    """The ClientError raised feeding `data` whole, checked to be the same status as
    feeding it byte by byte."""
    whole = rejected(decode_whole, data, max_body)
    bytewise = rejected(decode_bytewise, data, max_body)
    assert whole.status == bytewise.status
    return whole


@pytest.mark.parametrize("size_line", [
    b"x", b"g", b"-5", b"-0", b"+5", b"0x10", b"0X10", b" 5", b"5 5", b"", b";ext",
    b"5\x00", b"1" + b"0" * 16,      # 17 hex digits
    b"\xb5",
])
def test_bad_chunk_size_line_is_400(size_line):
    error = chunk_error(size_line + b"\r\nhello\r\n0\r\n\r\n")
    assert error.status == 400


def test_bare_lf_in_chunk_framing_is_400():
    assert chunk_error(b"5\nhello\r\n0\r\n\r\n").status == 400
    assert chunk_error(b"5\r\nhello\n0\r\n\r\n").status == 400


def test_chunk_data_longer_than_its_size_is_400():
    assert chunk_error(b"3\r\nhello\r\n0\r\n\r\n").status == 400
    # the data's end is checked, not only counted: what follows it must be CRLF (else
    # "XY0..." would smuggle a request past the body)
    assert chunk_error(b"3\r\nhelXY0\r\n\r\n").status == 400
    assert chunk_error(b"1\r\naXY0\r\n\r\n" + NEXT_REQUEST).status == 400
    # shorter than its size: the framing that follows is swallowed as data, then wrong
    assert chunk_error(b"8\r\nhello\r\n0\r\n\r\nXYZ").status == 400


def test_overlong_size_line_arriving_without_its_crlf_is_400():
    decoder = gp.ChunkedDecoder(10000)
    buf = bytearray(b"5;" + b"e" * 10000)
    assert rejected(decoder.feed, buf).status == 400


def test_overlong_size_line_is_400_whole_as_well_as_bytewise():
    # The same bytes must get the same answer however the socket reads split them.
    data = b"5;" + b"e" * 10000 + b"\r\nhello\r\n0\r\n\r\n"
    assert rejected(decode_bytewise, data).status == 400
    assert rejected(decode_whole, data).status == 400


def test_overlong_leading_zeros_are_400():
    assert chunk_error(b"0" * 5000 + b"5\r\nhello\r\n0\r\n\r\n").status == 400


def test_chunked_body_over_the_limit_is_413_on_the_size_line():
    decoder = gp.ChunkedDecoder(10)
    buf = bytearray(b"6\r\nabcdef\r\n")
    assert decoder.feed(buf) == [b"abcdef"]
    buf += b"5\r\n"                          # 11 bytes declared: refused before any data
    assert rejected(decoder.feed, buf).status == 413
    assert chunk_error(b"ffffffffffffffff\r\n", max_body=10).status == 413
    assert decode_whole(b"a\r\n0123456789\r\n0\r\n\r\n", max_body=10)[0] == b"0123456789"


def test_chunked_trailer_flood_is_refused():
    trailer = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 100) for i in range(300))
    error = chunk_error(b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n")
    assert error.status in (400, 431)


def test_chunked_truncated_body_is_not_done():
    decoder = gp.ChunkedDecoder(1000)
    buf = bytearray(b"5\r\nhello\r\n0\r\n")     # missing the final blank line
    assert decoder.feed(buf) == [b"hello"]
    assert not decoder.done


# ---- response_head and encode_chunk --------------------------------------------------------

def test_response_head_layout():
    head = gp.response_head(200, [("content-type", "application/json"),
                                  ("x-request-id", "abc"), ("x-request-id", "def")])
    assert head == (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"x-request-id: abc\r\nx-request-id: def\r\n\r\n")
    assert gp.response_head(204, []) == b"HTTP/1.1 204 No Content\r\n\r\n"


@pytest.mark.parametrize("status, reason", [
    (400, b"Bad Request"), (404, b"Not Found"), (405, b"Method Not Allowed"),
    (408, b"Request Timeout"), (431, b"Request Header Fields Too Large"),
    (505, b"HTTP Version Not Supported"), (499, b"Client Closed Request"),
    (529, b"Overloaded"),
])
def test_response_head_reasons(status, reason):
    head = gp.response_head(status, [("content-length", "0")])
    assert head == b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\n\r\n" % (status, reason)


def test_response_head_for_unknown_status_has_a_reason():
    line = gp.response_head(599, []).split(b"\r\n")[0]
    assert line.startswith(b"HTTP/1.1 599 ") and len(line) > len(b"HTTP/1.1 599 ")
    assert line.split(b" ", 2)[2].strip()


def test_response_head_413_status_line():
    line = gp.response_head(413, []).split(b"\r\n")[0]
    # The phrase changed name across Python versions (RFC 9110: "Content Too Large").
    assert line in (b"HTTP/1.1 413 Request Entity Too Large", b"HTTP/1.1 413 Content Too Large")


def test_encode_chunk():
    assert gp.encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert gp.encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert gp.encode_chunk(b"x" * 4096).startswith(b"1000\r\n")
    assert gp.encode_chunk(b"\r\n0\r\n\r\n") == b"7\r\n\r\n0\r\n\r\n\r\n"
    # An empty piece must never come out as the last-chunk marker.
    assert gp.encode_chunk(b"") == b""
    assert gp.LAST_CHUNK == b"0\r\n\r\n"


def test_encode_chunk_round_trips_through_the_decoder():
    pieces = [b"", b"a", b"", b"0\r\n\r\n", b"x" * 300, "\u2028世界".encode(), b""]
    wire = b"".join(gp.encode_chunk(p) for p in pieces) + gp.LAST_CHUNK
    expected = b"".join(pieces)
    assert decode_whole(wire + NEXT_REQUEST) == (expected, NEXT_REQUEST)
    assert decode_bytewise(wire) == (expected, b"")


# ---- SSEParser -----------------------------------------------------------------------------

def sse_in_pieces(data, cuts):
    parser = gp.SSEParser()
    events = []
    at = 0
    for cut in sorted(cuts) + [len(data)]:
        events += parser.feed(data[at:cut])
        at = cut
    return events + parser.finish()


def sse_whole(data):
    return sse_in_pieces(data, [])


REALISTIC_STREAM = (
    b": OPENROUTER PROCESSING\r\n\r\n"
    b'data: {"choices":[{"delta":{"content":"\xe4\xb8\x96\xe7\x95\x8c\xe2\x80\xa8!"}}]}\r\n\r\n'
    b"event: error\n"
    b"data: line one\n"
    b": a comment between data lines\n"
    b"data:line two\n"
    b"id: 7\n"
    b"retry: 100\n"
    b"\n"
    b"data: [DONE]\n\n"
)
REALISTIC_EVENTS = [
    ("message", '{"choices":[{"delta":{"content":"世界\u2028!"}}]}'),
    ("error", "line one\nline two"),
    ("message", "[DONE]"),
]


def test_sse_realistic_stream_whole():
    assert sse_whole(REALISTIC_STREAM) == REALISTIC_EVENTS


def test_sse_split_at_every_byte_position():
    for cut in range(1, len(REALISTIC_STREAM)):
        assert sse_in_pieces(REALISTIC_STREAM, [cut]) == REALISTIC_EVENTS, cut


def test_sse_fed_byte_by_byte():
    assert sse_in_pieces(REALISTIC_STREAM, range(1, len(REALISTIC_STREAM))) == REALISTIC_EVENTS


def test_sse_random_three_way_splits():
    rng = random.Random(7)
    for _ in range(300):
        cuts = rng.sample(range(1, len(REALISTIC_STREAM)), 2)
        assert sse_in_pieces(REALISTIC_STREAM, cuts) == REALISTIC_EVENTS, cuts


def test_sse_events_come_out_as_soon_as_their_blank_line_arrives():
    parser = gp.SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\n") == [("message", "a")]
    assert parser.feed(b"data: b\r\n\r") == [("message", "b")]   # (the CR may be a lone one)
    assert parser.feed(b"\ndata: c\n\ndata: d") == [("message", "c")]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_sse_line_endings(ending):
    data = ending.join([b"data: one", b"", b"event: tick", b"data: two", b"data: 2", b"", b""])
    assert sse_whole(data) == [("message", "one"), ("tick", "two\n2")]


def test_sse_mixed_line_endings():
    assert sse_whole(b"data: a\r\n\ndata: b\n\r\n") == [("message", "a"), ("message", "b")]


# SSE allows a lone CR as a line end. Read in pieces, a CR that ends one piece may be half
# a CRLF: only the next piece tells.
LONE_CR_STREAM = REALISTIC_STREAM.replace(b"\r\n", b"\n").replace(b"\n", b"\r")


def test_sse_lone_cr_line_ends_split_at_every_byte_position():
    assert b"\n" not in LONE_CR_STREAM
    assert sse_whole(LONE_CR_STREAM) == REALISTIC_EVENTS
    for cut in range(1, len(LONE_CR_STREAM)):
        assert sse_in_pieces(LONE_CR_STREAM, [cut]) == REALISTIC_EVENTS, cut
    assert sse_in_pieces(LONE_CR_STREAM, range(1, len(LONE_CR_STREAM))) == REALISTIC_EVENTS


def test_sse_all_three_line_ends_mixed_and_split_anywhere():
    data = b"data: a\r\rdata: b\r\n\rdata: c\n\r\ndata: d\r\r\ndata: e\r"
    events = [("message", c) for c in "abcde"]
    for cut in range(1, len(data)):
        assert sse_in_pieces(data, [cut]) == events, cut
    assert sse_in_pieces(data, range(1, len(data))) == events


def test_a_lone_cr_ends_its_event_at_once_and_an_lf_after_it_is_its_pair():
    parser = gp.SSEParser()
    assert parser.feed(b"data: a\r\r") == [("message", "a")]
    assert parser.feed(b"data: b\r") == []
    assert parser.feed(b"\n\r") == [("message", "b")]
    assert parser.feed(b"\n") == []      # the pair of the CR before, not a blank line


def test_line_ends_make_lone_crs_crlfs_and_leave_lf_and_crlf_alone():
    ends = gp.LineEnds()
    pieces = [b"a\r", b"\nb\r", b"", b"c\r\r", b"\r\n", b"d\r\ne\n"]
    assert b"".join(ends.unify(piece) for piece in pieces) == \
        b"a\r\nb\r\nc\r\n\r\n\r\nd\r\ne\n"
    assert ends.unify(b"plain\n") == b"plain\n"


# A stream may open with a UTF-8 byte order mark, which a reader's decoding drops: kept, it
# would make the first line's field "\ufeffdata", and its event would be lost.
BOM_STREAM = gp.UTF8_BOM + b'data: {"first": true}\n\ndata: \xef\xbb\xbfkept\n\n'
BOM_EVENTS = [("message", '{"first": true}'), ("message", "\ufeffkept")]


def test_sse_drops_a_byte_order_mark_that_opens_the_stream_however_it_is_cut():
    assert sse_whole(BOM_STREAM) == BOM_EVENTS
    for cut in range(1, len(BOM_STREAM)):
        assert sse_in_pieces(BOM_STREAM, [cut]) == BOM_EVENTS, cut
    assert sse_in_pieces(BOM_STREAM, range(1, len(BOM_STREAM))) == BOM_EVENTS


def test_line_ends_drop_only_an_opening_byte_order_mark():
    ends = gp.LineEnds()
    assert [ends.unify(piece) for piece in [b"", b"\xef", b"\xbb", b"\xbf", b"\xef\xbb\xbf"]] == \
        [b"", b"", b"", b"", b"\xef\xbb\xbf"]      # the second is data
    ends = gp.LineEnds()
    assert ends.unify(b"\xef\xbbx") == b"\xef\xbbx"   # not one: nothing held back or lost
    assert ends.unify(b"\xef\xbb\xbf") == b"\xef\xbb\xbf"


@pytest.mark.parametrize("stream, sent", [
    (BOM_STREAM, BOM_STREAM[3:]),                                             # a BOM
    (REALISTIC_STREAM.replace(b"\r\n", b"\n"), None),                        # LF
    (REALISTIC_STREAM.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), None),  # CRLF
    (LONE_CR_STREAM, LONE_CR_STREAM.replace(b"\r", b"\r\n"))])               # lone CR
def test_a_passed_through_stream_cut_anywhere_keeps_its_bytes_but_lone_crs(stream, sent):
    # Clients do not all read a mix of LF and CRLF: a CRLF stream whose read ends
    # between a CR and its LF must still reach them as it came.
    for cuts in [[cut] for cut in range(1, len(stream))] + [range(1, len(stream))]:
        passing = gp.PassingStream(gp.Exchange("r", "openai", "generate"),
                                   gp.UPSTREAM_KINDS["openai"], "text/event-stream",
                                   gp.MiB, gp.Redactor())
        out, at = b"", 0
        for cut in list(cuts) + [len(stream)]:
            out += passing.take(stream[at:cut])[0]
            at = cut
        out += passing.finish()[0]
        assert out == (sent or stream), list(cuts)[:3]


def test_sse_comments_are_ignored():
    data = b": ping\n\n:\n\n: keep-alive\r\n\r\ndata: x\n: inside\ndata: y\n\n"
    assert sse_whole(data) == [("message", "x\ny")]


def test_sse_only_one_space_after_the_colon_is_removed():
    assert sse_whole(b"data:x\n\ndata:  x \n\n") == [("message", "x"), ("message", " x ")]


def test_sse_field_without_colon_and_empty_data():
    assert sse_whole(b"data\ndata\n\n") == [("message", "\n")]
    assert sse_whole(b"data:\n\n") == [("message", "")]


def test_sse_event_name_is_reset_after_each_event():
    data = b"event: delta\ndata: 1\n\ndata: 2\n\nevent: done\n\ndata: 3\n\n"
    # an event block with no data is not dispatched, and its name does not leak onward
    assert sse_whole(data) == [("delta", "1"), ("message", "2"), ("message", "3")]


def test_sse_unknown_fields_are_ignored():
    assert sse_whole(b"id: 1\nretry: 5\nfoo: bar\ndata : x\ndata: y\n\n") == [("message", "y")]


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c",
                                  "\x1d", "\x1e"])
def test_sse_unicode_line_separators_do_not_split_lines(char):
    text = '{"text":"a%sb"}' % char
    data = b"data: " + text.encode("utf-8") + b"\n\n"
    assert sse_whole(data) == [("message", text)]
    assert sse_in_pieces(data, range(1, len(data))) == [("message", text)]


def test_sse_multibyte_utf8_split_across_feeds():
    data = "data: 世界🙂\n\n".encode("utf-8")
    for cut in range(1, len(data)):
        assert sse_in_pieces(data, [cut]) == [("message", "世界🙂")], cut


def test_sse_finish_keeps_a_last_event_without_its_blank_line():
    parser = gp.SSEParser()
    assert parser.feed(b"data: first\n\nevent: last\ndata: tail\n") == [("message", "first")]
    assert parser.finish() == [("last", "tail")]
    assert parser.finish() == []


def test_sse_finish_drops_a_truncated_last_line():
    parser = gp.SSEParser()
    assert parser.feed(b'data: {"choices":[{"delta":') == []
    assert parser.finish() == []
    parser = gp.SSEParser()
    assert parser.feed(b"data: whole\ndata: cut sho") == []
    assert parser.finish() == [("message", "whole")]


def test_sse_parser_is_reusable_after_finish():
    parser = gp.SSEParser()
    parser.feed(b"event: x\ndata: partial\ndata: trunc")
    parser.finish()
    assert parser.feed(b"data: fresh\n\n") == [("message", "fresh")]


def test_sse_invalid_utf8_does_not_raise():
    events = sse_whole(b"data: a\xffb\n\n")
    assert len(events) == 1 and events[0][1].startswith("a") and events[0][1].endswith("b")


# ---- the upstream's replies: parse_reply_head and ReplyBody --------------------------------

def reply_head(data):
    """The head at the start of `data`, through reply_head_length as the client finds it."""
    buf = bytearray(data)
    length = gp.reply_head_length(buf)
    assert length, data
    return gp.parse_reply_head(bytes(buf[:length])), bytes(buf[length:])


def test_reply_head_fields_and_the_bytes_after_it():
    head, rest = reply_head(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n"
                            b"X-Thing:  spaced  \r\nx-thing: second\r\n\r\n{\"a\": 1}")
    assert head.status == 429 and rest == b'{"a": 1}'
    assert head.headers == [("retry-after", "3"), ("x-thing", "spaced"), ("x-thing", "second")]
    assert head.keep_alive


def test_reply_head_is_not_whole_before_its_blank_line():
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    for cut in range(len(data)):
        assert gp.reply_head_length(bytearray(data[:cut])) == 0, cut
    assert gp.reply_head_length(bytearray(data)) == len(data)


def test_reply_head_with_bare_lf_line_ends_and_folded_lines():
    head, rest = reply_head(b"HTTP/1.1 200 OK\nX-Long: one\n  two\nContent-Length: 2\n\nok")
    assert head.status == 200 and rest == b"ok"
    assert head.headers == [("x-long", "one two"), ("content-length", "2")]


def test_reply_head_without_a_reason_phrase():
    assert reply_head(b"HTTP/1.1 204\r\n\r\n")[0].status == 204


@pytest.mark.parametrize("version, connection, keep_alive", [
    (b"1.1", b"", True), (b"1.1", b"close", False), (b"1.1", b"Keep-Alive", True),
    (b"1.0", b"", False), (b"1.0", b"keep-alive", True), (b"1.0", b"close", False)])
def test_reply_keep_alive_follows_version_and_connection(version, connection, keep_alive):
    data = b"HTTP/%s 200 OK\r\n%s\r\n" % (version, b"Connection: %s\r\n" % connection
                                          if connection else b"")
    assert reply_head(data)[0].keep_alive is keep_alive


@pytest.mark.parametrize("status_line", [
    b"HTTP/2 200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"ICY 200 OK", b"",
    b"HTTP/1.1  200 OK", b"hello"])
def test_a_bad_status_line_is_a_bad_reply(status_line):
    with pytest.raises(gp.BadReply, match="status line"):
        gp.parse_reply_head(status_line + b"\r\n\r\n")


@pytest.mark.parametrize("line", [b"no colon here", b"bad name: x", b": empty name",
                                  b"X-A: one\rX-Smuggled: yes", b"X-A: nul\x00", b"X-A: \x1b[31m"])
def test_a_bad_header_line_is_a_bad_reply(line):
    with pytest.raises(gp.BadReply, match="header line"):
        gp.parse_reply_head(b"HTTP/1.1 200 OK\r\n" + line + b"\r\n\r\n")


WELL_FORMED_LINES = [b"Content-Type: application/json", b"X-Spaces:  \t padded \t ",
                     b"X-Empty:", b"X-Latin: caf\xe9 \xa0", b"X-Colons: a:b::c",
                     b"Connection: keep-alive", b"x-Tchar!#$%&'*+-.^_`|~: 1"]


def not_line_by_line(*_):
    raise AssertionError("a well-formed head was read line by line")


def test_well_formed_reply_headers_read_at_once_as_line_by_line(monkeypatch):
    # The one-pass reading of a head whose lines are all well formed, and the line by
    # line one that every other head takes, must agree; and the first must be taken.
    line_by_line = gp.reply_header_lines
    monkeypatch.setattr(gp, "reply_header_lines", not_line_by_line)
    for count in range(len(WELL_FORMED_LINES) + 1):
        lines = WELL_FORMED_LINES[:count]
        for end in (b"\r\n", b"\n"):
            head = gp.parse_reply_head(b"HTTP/1.1 200 OK" + end + b"".join(
                line + end for line in lines) + end)
            assert head.headers == line_by_line([line.decode("latin-1") for line in lines])
            assert len(head.headers) == count


def test_well_formed_request_headers_read_at_once_as_line_by_line(monkeypatch):
    line_by_line = gp.request_header_lines
    monkeypatch.setattr(gp, "request_header_lines", not_line_by_line)
    for count in range(len(WELL_FORMED_LINES) + 1):
        lines = [b"Host: x"] + WELL_FORMED_LINES[:count]
        head = gp.parse_request_head(b"\r\n".join([b"GET / HTTP/1.1"] + lines))
        assert head.headers == line_by_line(lines)
        assert len(head.headers) == count + 1


def test_too_many_reply_headers_is_a_bad_reply():
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(gp.MAX_REPLY_HEADERS + 1))
    with pytest.raises(gp.BadReply, match="headers"):
        gp.parse_reply_head(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n")


def body_of(head_lines, data, method="POST", status=b"200 OK"):
    """(the body ReplyBody reads from data, fed byte by byte, what it leaves, done)."""
    head = gp.parse_reply_head(b"HTTP/1.1 " + status + b"\r\n" + b"".join(
        line + b"\r\n" for line in head_lines) + b"\r\n")
    body = gp.ReplyBody(head, method)
    buf, got = bytearray(), b""
    for byte in data:
        buf.append(byte)
        got += body.feed(buf)
    return got, bytes(buf), body.done


def test_a_content_length_body_ends_at_its_length():
    assert body_of([b"Content-Length: 5"], b"helloEXTRA") == (b"hello", b"EXTRA", True)
    assert body_of([b"Content-Length: 5, 5"], b"hello") == (b"hello", b"", True)
    assert body_of([b"Content-Length: 9"], b"hello") == (b"hello", b"", False)


def test_a_chunked_body_is_decoded_and_what_follows_is_left():
    data = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nEXTRA"
    assert body_of([b"Transfer-Encoding: chunked"], data) == (b"hello world", b"EXTRA", True)


def test_chunks_that_arrived_together_are_handed_over_together():
    head = gp.parse_reply_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    body = gp.ReplyBody(head, "POST")
    buf = bytearray(b"7\r\ndata: a\r\n7\r\ndata: b\r\n3\r\nda")
    assert body.feed(buf) == b"data: adata: bda" and not body.done
    buf += b"t\r\n0\r\n\r\n"
    assert body.feed(buf) == b"t" and body.done and buf == b""


@pytest.mark.parametrize("status, method", [(b"204 No Content", "POST"),
                                            (b"304 Not Modified", "GET"), (b"200 OK", "HEAD")])
def test_replies_that_have_no_body(status, method):
    assert body_of([b"Content-Length: 5"], b"", method, status) == (b"", b"", True)


def test_a_body_without_framing_ends_with_the_connection():
    head = gp.parse_reply_head(b"HTTP/1.1 200 OK\r\n\r\n")
    body = gp.ReplyBody(head, "POST")
    buf = bytearray(b"all of it")
    assert body.feed(buf) == b"all of it" and not body.done and body.to_close
    body.end_of_connection()
    assert body.done


def test_a_chunked_body_closed_after_its_last_chunk_ends_there():
    head = gp.parse_reply_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    body = gp.ReplyBody(head, "POST")
    assert body.feed(bytearray(b"2\r\nok\r\n0\r\n")) == b"ok" and not body.done
    body.end_of_connection()              # the trailer's blank line never came: no matter
    assert body.done
    cut = gp.ReplyBody(head, "POST")
    assert cut.feed(bytearray(b"5\r\nok")) == b"ok"
    with pytest.raises(gp.BadReply, match="ended before"):
        cut.end_of_connection()


def test_a_head_searched_in_pieces_is_found_where_it_ends():
    data = b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r\nbody"
    for cut in range(1, len(data)):
        buf = bytearray(data[:cut])
        searched = len(buf) if not gp.reply_head_length(buf) else 0
        buf += data[cut:]
        assert gp.reply_head_length(buf, searched) == len(data) - 4, cut


def test_a_framed_body_cut_by_the_connection_is_a_bad_reply():
    head = gp.parse_reply_head(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    body = gp.ReplyBody(head, "POST")
    assert body.feed(bytearray(b"short")) == b"short"
    with pytest.raises(gp.BadReply, match="ended before"):
        body.end_of_connection()


@pytest.mark.parametrize("lines, why", [
    ([b"Content-Length: 5", b"Content-Length: 6"], "Content-Length"),
    ([b"Content-Length: -1"], "Content-Length"), ([b"Content-Length: 0x10"], "Content-Length"),
    ([b"Content-Length: \xc2\xb2"], "Content-Length"),    # a superscript two: no digit
    ([b"Transfer-Encoding: gzip"], "transfer coding"),
    ([b"Transfer-Encoding: chunked, gzip"], "transfer coding"),
    ([b"Transfer-Encoding: gzip, chunked"], "transfer coding"),
    # NEL and no-break space: whitespace to Python's str.strip(), not to HTTP (as a
    # request's framing: a proxy in between may read them otherwise)
    ([b"Content-Length: 5\x85"], "Content-Length"), ([b"Content-Length: \xa05"], "Content-Length"),
    ([b"Transfer-Encoding: chunked\xa0"], "transfer coding"),
    ([b"Transfer-Encoding: \x85chunked"], "transfer coding")])
def test_unreadable_body_framing_is_a_bad_reply(lines, why):
    head = gp.parse_reply_head(b"HTTP/1.1 200 OK\r\n" + b"".join(
        line + b"\r\n" for line in lines) + b"\r\n")
    with pytest.raises(gp.BadReply, match=why):
        gp.ReplyBody(head, "POST")


def test_bad_chunk_framing_in_a_reply_is_a_bad_reply():
    head = gp.parse_reply_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(gp.BadReply, match="chunk"):
        gp.ReplyBody(head, "POST").feed(bytearray(b"-5\r\nhello\r\n"))


def test_a_body_framed_both_ways_is_read_as_chunked_and_not_trusted_again():
    head = gp.parse_reply_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n")
    body = gp.ReplyBody(head, "POST")
    assert body.feed(bytearray(b"5\r\nhello\r\n0\r\n\r\n")) == b"hello" and body.done
    assert not body.reusable
    plain = gp.ReplyBody(gp.parse_reply_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"),
                         "POST")
    assert plain.reusable


@pytest.mark.parametrize("host, port, default, authority", [
    ("api.example.com", 443, 443, "api.example.com"),
    ("api.example.com", 8443, 443, "api.example.com:8443"),
    ("::1", 8080, 80, "[::1]:8080"), ("127.0.0.1", 80, 80, "127.0.0.1"),
    ("b\u00fccher.example", 443, 443, "xn--bcher-kva.example"),
    ("b\u00fccher.example", 443, 0, "xn--bcher-kva.example:443")])
def test_host_header(host, port, default, authority):
    assert gp.host_header(host, port, default) == authority


def test_absolute_form_targets_through_a_plain_proxy_bracket_ipv6():
    target = gp.UpstreamTarget("http", "::1", 8080, "/v1", proxy=("127.0.0.1", 3128))
    assert target.url("/chat") == "http://[::1]:8080/v1/chat"
    assert gp.UpstreamTarget("http", "example.com", 80, "", proxy=("p", 1)).url("/x") == \
        "http://example.com/x"
    assert gp.UpstreamTarget("http", "example.com", 80, "/v1").url("/x") == "/v1/x"
