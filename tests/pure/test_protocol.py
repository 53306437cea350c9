"""Pure tests of the wire format: frames <-> Request/Response/Data/End, and the COMMANDS table.

Bytes in, objects out: no sockets, no files (STYLE.md, test layer 1).  The byte-by-byte
decode is h11's ``tr()`` idea: any split of a valid stream must decode the same.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ftpd.errors import (
    BadRequestError,
    HeaderTooLargeError,
    ProtocolError,
    UnknownCommandError,
)
from ftpd.framed import protocol
from ftpd.framed.protocol import (
    COMMANDS,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    MAX_INLINE_BODY,
    BodyChunk,
    Data,
    End,
    Frame,
    FrameDecoder,
    Request,
    Response,
)
from ftpd.framed.session import FramedSession

MD5_EMPTY = "d41d8cd98f00b204e9800998ecf8427e"


def _frame(header: dict[str, Any] | bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return protocol.LENGTH.pack(len(raw)) + raw


def _decode_header(frame: bytes) -> dict[str, Any]:
    length = protocol.parse_length(frame[: protocol.LENGTH_SIZE])
    assert length == len(frame) - protocol.LENGTH_SIZE
    return protocol.parse_header(frame[protocol.LENGTH_SIZE :])


def _events(
    decoder: FrameDecoder, pieces: list[bytes], complete: bool = True
) -> list[tuple[str, Any]]:
    """Feed ``pieces``; return frames and whole bodies (chunks joined), checking ``last``."""
    out: list[tuple[str, Any]] = []
    body = bytearray()
    for piece in pieces:
        for event in decoder.feed(piece):
            if isinstance(event, Frame):
                assert not body, "a frame arrived inside a body"
                out.append(("frame", event.header))
            else:
                assert isinstance(event, BodyChunk)
                assert event.data, "empty body chunk"
                body += event.data
                if event.last:
                    out.append(("body", bytes(body)))
                    body.clear()
    assert not (complete and body), "a body never got its last chunk"
    return out


# A stream with every kind of message and bodies of several sizes (including empty).
STREAM_PARTS: list[tuple[bytes, bytes]] = [
    (protocol.encode(Response(True, 220, "ftpd ready", data={"version": 1})), b""),
    (protocol.encode(Request("login", {"user": "alice", "password": "pw"})), b""),
    (
        protocol.encode(Request("put", {"path": "/a", "size": 5, "checksum": "0" * 32}, body=5)),
        b"hello",
    ),
    (protocol.encode(Response(True, 200, "ok", data={"size": 3}, body=3)), b"\x00\xff\n"),
    (protocol.encode(Request("put", {"path": "/empty", "size": 0}, body=0)), b""),
    (protocol.encode(Data(4, offset=0)), b"\r\n\r\n"),
    (protocol.encode(End(MD5_EMPTY)), b""),
    (protocol.encode(Request("cd", {"path": "文件/😀"})), b""),
]
STREAM = b"".join(frame + body for frame, body in STREAM_PARTS)


def _expected_events() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for frame, body in STREAM_PARTS:
        header = _decode_header(frame)
        out.append(("frame", header))
        if header.get("body"):
            out.append(("body", body))
    return out


def _boundaries() -> set[int]:
    ends, pos = {0}, 0
    for frame, body in STREAM_PARTS:
        pos += len(frame) + len(body)
        ends.add(pos)
    return ends


# --- encode / parse round trips -----------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        Request("pwd"),
        Request("login", {"user": "alice", "password": 'p"w\\\n'}),
        Request("ls", {"path": "/文件", "all": True}),
        Request("get", {"path": "/a", "offset": 0, "checksum": MD5_EMPTY, "digest": "md5"}),
        Request(
            "put", {"path": "/a", "size": MAX_INLINE_BODY, "resume": False}, body=MAX_INLINE_BODY
        ),
        Request("put", {"path": "/😀", "size": 0}, body=0),
        Request("put", {"path": "/big", "size": MAX_BODY_BYTES}),
    ],
)
def test_protocol_request_round_trip(request_: Request) -> None:
    assert protocol.to_request(_decode_header(protocol.encode(request_))) == request_


@pytest.mark.parametrize(
    "response",
    [
        Response(True, 220, "ftpd ready", data={"version": 1, "server": "ftpd"}),
        Response(False, 404, "/x: no such file", "not_found"),
        Response(False, 413, "quota", "quota_exceeded", {"available": 12}),
        Response(True, 200, "3 entries", data={"count": 3}, body=120),
        Response(True, 200, "", body=0),
        Response(True, 150, "send", data={"offset": 10, "prefix_checksum": MD5_EMPTY}),
    ],
)
def test_protocol_response_round_trip(response: Response) -> None:
    assert protocol.to_response(_decode_header(protocol.encode(response))) == response


@pytest.mark.parametrize(
    "data", [Data(0), Data(5), Data(7, offset=0), Data(MAX_BODY_BYTES, offset=3)]
)
def test_protocol_data_round_trip(data: Data) -> None:
    assert protocol.to_data(_decode_header(protocol.encode(data))) == data


@pytest.mark.parametrize("checksum", [MD5_EMPTY, "a" * 40, "0123456789abcdef" * 8])
def test_protocol_end_round_trip(checksum: str) -> None:
    assert protocol.to_end(_decode_header(protocol.encode(End(checksum)))) == End(checksum)


def test_protocol_encode_is_compact_utf8() -> None:
    frame = protocol.encode(Request("cd", {"path": "é"}))
    assert frame == _frame(b'{"cmd":"cd","args":{"path":"\xc3\xa9"}}')


def test_protocol_encode_refuses_oversize_header() -> None:
    with pytest.raises(HeaderTooLargeError) as info:
        protocol.encode(Response(True, 200, "x" * MAX_HEADER_BYTES))
    assert info.value.code == 431


@pytest.mark.parametrize("text", ["a\udcff", "\udc80.txt", "\ud800", "ok/\udfff"])
def test_protocol_encode_refuses_lone_surrogates(text: str) -> None:
    """Regression: surrogateescape put invalid UTF-8 on the wire; the peer dropped the session."""
    for message in (Request("cd", {"path": text}), Response(False, 404, text, "not_found")):
        with pytest.raises(BadRequestError) as info:
            protocol.encode(message)
        assert not info.value.fatal


def test_protocol_encoded_frames_always_decode() -> None:
    for frame, _ in STREAM_PARTS:
        assert list(FrameDecoder().feed(frame))


def test_protocol_error_response_drops_body_field() -> None:
    exc = UnknownCommandError("unknown command 'x'", body=10)
    response = protocol.error_response(exc)
    assert response == Response(False, 501, "unknown command 'x'", "unknown_command", {})
    assert response.body is None


# --- the incremental decoder --------------------------------------------------------------


def test_protocol_decoder_whole_stream() -> None:
    decoder = FrameDecoder()
    assert _events(decoder, [STREAM]) == _expected_events()
    assert decoder.idle
    decoder.eof()


def test_protocol_decoder_byte_by_byte_matches_whole() -> None:
    decoder = FrameDecoder()
    pieces = [STREAM[i : i + 1] for i in range(len(STREAM))]
    assert _events(decoder, pieces) == _expected_events()
    assert decoder.idle
    decoder.eof()


@pytest.mark.parametrize("size", [2, 3, 5, 7, 64])
def test_protocol_decoder_any_piece_size_matches_whole(size: int) -> None:
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert _events(FrameDecoder(), pieces) == _expected_events()


def test_protocol_decoder_byte_by_byte_body_chunks() -> None:
    """Fed one byte at a time, a 5-byte body arrives as 5 chunks, only the last marked."""
    decoder = FrameDecoder()
    frame = protocol.encode(Data(5))
    assert list(decoder.feed(frame)) == [Frame({"body": 5})]
    chunks = [event for b in b"hello" for event in decoder.feed(bytes([b]))]
    assert chunks == [BodyChunk(bytes([b]), i == 4) for i, b in enumerate(b"hello")]
    assert decoder.idle


def test_protocol_decoder_every_truncation_is_eof_error() -> None:
    boundaries = _boundaries()
    cuts = [cut for cut in range(1, len(STREAM)) if cut not in boundaries]
    assert len(cuts) > 200  # the stream really is walked through
    for cut in cuts:
        decoder = FrameDecoder()
        _events(decoder, [STREAM[:cut]], complete=False)
        assert not decoder.idle, cut
        with pytest.raises(ProtocolError):
            decoder.eof()


def test_protocol_decoder_boundaries_are_idle() -> None:
    for cut in sorted(_boundaries()):
        decoder = FrameDecoder()
        _events(decoder, [STREAM[:cut]])
        assert decoder.idle, cut
        decoder.eof()


@pytest.mark.parametrize("length", [MAX_HEADER_BYTES + 1, 1 << 20, 0xFFFFFFFF])
def test_protocol_decoder_refuses_oversize_from_length_alone(length: int) -> None:
    decoder = FrameDecoder()
    prefix = protocol.LENGTH.pack(length)
    assert list(decoder.feed(prefix[:3])) == []  # 3 bytes: nothing to decide yet
    with pytest.raises(HeaderTooLargeError) as info:
        list(decoder.feed(prefix[3:]))  # the 4th length byte, no header byte at all
    assert info.value.code == 431
    assert info.value.fatal


@pytest.mark.parametrize("length", [MAX_HEADER_BYTES + 1, 0xFFFFFFFF])
def test_protocol_parse_length_refuses_oversize(length: int) -> None:
    with pytest.raises(HeaderTooLargeError):
        protocol.parse_length(protocol.LENGTH.pack(length))


def test_protocol_max_header_length_is_accepted() -> None:
    assert protocol.parse_length(protocol.LENGTH.pack(MAX_HEADER_BYTES)) == MAX_HEADER_BYTES
    decoder = FrameDecoder()
    assert list(decoder.feed(protocol.LENGTH.pack(MAX_HEADER_BYTES))) == []
    assert not decoder.idle


def test_protocol_max_header_frame_decodes() -> None:
    pad = MAX_HEADER_BYTES - len(b'{"x":""}')
    frame = _frame(b'{"x":"' + b"a" * pad + b'"}')
    assert len(frame) == 4 + MAX_HEADER_BYTES
    assert list(FrameDecoder().feed(frame)) == [Frame({"x": "a" * pad})]


def test_protocol_zero_length_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        list(FrameDecoder().feed(b"\x00\x00\x00\x00"))
    assert type(info.value) is ProtocolError


@pytest.mark.parametrize("prefix", [b"", b"\x00", b"\x00\x00\x01"])
def test_protocol_parse_length_truncated(prefix: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.parse_length(prefix)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"cmd":"\xed\xa0\x80"}', id="utf8-surrogate"),
        pytest.param(b"{cmd: ls}", id="not-json"),
        pytest.param(b'{"cmd":"ls"', id="unterminated"),
        pytest.param(b'{"cmd":"ls"} x', id="trailing-garbage"),
        pytest.param(b'{"a":NaN}', id="nan"),
        pytest.param(b'{"a":Infinity}', id="infinity"),
        pytest.param(b'{"a":-Infinity}', id="minus-infinity"),
        pytest.param(b'["cmd","ls"]', id="list"),
        pytest.param(b'"ls"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="bool"),
        pytest.param(b"[" * 60000, id="deep-list"),
        pytest.param(b'{"a":' * 10000 + b"1" + b"}" * 10000, id="deep-object"),
        pytest.param(b'{"a":' + b"1" * 5000 + b"}", id="int-too-many-digits"),
    ],
)
def test_protocol_bad_header_is_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_header(raw)
    assert info.value.code == 400 and info.value.fatal
    assert len(raw) <= MAX_HEADER_BYTES
    with pytest.raises(ProtocolError):
        list(FrameDecoder().feed(_frame(raw)))


@pytest.mark.parametrize("body", [-1, True, "5", 1.5, MAX_BODY_BYTES + 1, [], {}])
def test_protocol_decoder_refuses_bad_body_field(body: object) -> None:
    with pytest.raises(ProtocolError):
        list(FrameDecoder().feed(_frame({"body": body})))


def test_protocol_decoder_eof_after_error_free_idle() -> None:
    decoder = FrameDecoder()
    assert decoder.idle
    decoder.eof()
    assert list(decoder.feed(b"")) == []
    assert decoder.idle


# --- to_request: names, arguments, bodies -------------------------------------------------


@pytest.mark.parametrize(
    "cmd",
    [
        "handle",
        "__init__",
        "setup",
        "dispatch",
        "cmd_ls",
        "",
        "LS",
        "Ls",
        "ls ",
        "respond",
        "finish",
        "__class__",
        "send",
        "_fail",
        "account",
        "server",
        "login\x00",
    ],
)
def test_protocol_unknown_command_is_501(cmd: str) -> None:
    with pytest.raises(UnknownCommandError) as info:
        protocol.to_request({"cmd": cmd, "args": {}})
    assert (info.value.code, info.value.name) == (501, "unknown_command")
    assert not info.value.fatal


def test_protocol_unknown_command_keeps_body_for_draining() -> None:
    with pytest.raises(UnknownCommandError) as info:
        protocol.to_request({"cmd": "upload", "args": {}, "body": 10})
    assert info.value.data["body"] == 10


def test_protocol_unknown_command_message_is_bounded() -> None:
    with pytest.raises(UnknownCommandError) as info:
        protocol.to_request({"cmd": "x" * 10000})
    assert len(info.value.message) <= 200


@pytest.mark.parametrize("cmd", [None, 5, True, ["ls"], {"ls": 1}])
def test_protocol_cmd_not_a_string_is_protocol_error(cmd: object) -> None:
    with pytest.raises(ProtocolError):
        protocol.to_request({"cmd": cmd, "args": {}})


def test_protocol_missing_cmd_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        protocol.to_request({"args": {}})


@pytest.mark.parametrize(
    ("cmd", "args"),
    [
        pytest.param("get", {"path": "/a", "offset": True}, id="bool-for-int"),
        pytest.param("get", {"path": "/a", "offset": False}, id="false-for-int"),
        pytest.param("get", {"path": "/a", "offset": -1}, id="negative-int"),
        pytest.param("put", {"path": "/a", "size": MAX_BODY_BYTES + 1}, id="int-too-big"),
        pytest.param("put", {"path": "/a", "size": 1.5}, id="float-for-int"),
        pytest.param("put", {"path": "/a", "size": 1.0}, id="whole-float-for-int"),
        pytest.param("put", {"path": "/a", "size": "5"}, id="str-for-int"),
        pytest.param("cd", {"path": 5}, id="int-for-str"),
        pytest.param("cd", {"path": True}, id="bool-for-str"),
        pytest.param("cd", {"path": ["/a"]}, id="list-for-str"),
        pytest.param("cd", {"path": {"p": "/a"}}, id="object-for-str"),
        pytest.param("cd", {"path": None}, id="null-for-str"),
        pytest.param("ls", {"all": 1}, id="int-for-bool"),
        pytest.param("ls", {"all": "true"}, id="str-for-bool"),
        pytest.param("ls", {"all": None}, id="null-for-bool"),
        pytest.param("login", {"user": "alice"}, id="missing-password"),
        pytest.param("login", {}, id="missing-both"),
        pytest.param("cd", {}, id="missing-path"),
        pytest.param("put", {"path": "/a"}, id="missing-size"),
        pytest.param("mv", {"src": "/a"}, id="missing-dst"),
        pytest.param("pwd", {"path": "/"}, id="arg-on-no-arg-command"),
        pytest.param("cd", {"path": "/a", "force": True}, id="unknown-arg"),
        pytest.param("cd", {"Path": "/a"}, id="wrong-case-arg"),
    ],
)
def test_protocol_bad_args_are_400(cmd: str, args: dict[str, Any]) -> None:
    with pytest.raises(BadRequestError) as info:
        protocol.to_request({"cmd": cmd, "args": args})
    assert type(info.value) is BadRequestError
    assert (info.value.code, info.value.name) == (400, "bad_request")
    assert not info.value.fatal


@pytest.mark.parametrize("args", [[], "path", 5, None, True])
def test_protocol_args_not_an_object_is_400(args: object) -> None:
    with pytest.raises(BadRequestError) as info:
        protocol.to_request({"cmd": "pwd", "args": args})
    assert type(info.value) is BadRequestError


def test_protocol_unknown_header_field_is_400() -> None:
    with pytest.raises(BadRequestError) as info:
        protocol.to_request({"cmd": "pwd", "args": {}, "sudo": True})
    assert type(info.value) is BadRequestError


def test_protocol_args_may_be_omitted() -> None:
    assert protocol.to_request({"cmd": "pwd"}) == Request("pwd", {})


@pytest.mark.parametrize("cmd", sorted(name for name, spec in COMMANDS.items() if not spec.body))
def test_protocol_body_on_bodiless_command_is_protocol_error(cmd: str) -> None:
    with pytest.raises(ProtocolError):
        protocol.to_request({"cmd": cmd, "args": {}, "body": 1})


def test_protocol_body_zero_on_bodiless_command_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        protocol.to_request({"cmd": "pwd", "body": 0})


def test_protocol_body_over_inline_cap_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        protocol.to_request(
            {
                "cmd": "put",
                "args": {"path": "/a", "size": MAX_INLINE_BODY + 1},
                "body": MAX_INLINE_BODY + 1,
            }
        )


def test_protocol_body_at_inline_cap_is_accepted() -> None:
    request = protocol.to_request(
        {"cmd": "put", "args": {"path": "/a", "size": MAX_INLINE_BODY}, "body": MAX_INLINE_BODY}
    )
    assert request.body == MAX_INLINE_BODY


@pytest.mark.parametrize("body", [-1, True, "1", 1.0, None])
def test_protocol_request_body_field_types(body: object) -> None:
    header = {"cmd": "put", "args": {"path": "/a", "size": 1}, "body": body}
    if body is None:  # "body": null means no body
        assert protocol.to_request(header).body is None
    else:
        with pytest.raises(ProtocolError):
            protocol.to_request(header)


def test_protocol_bad_args_error_keeps_body_for_draining() -> None:
    with pytest.raises(BadRequestError) as info:
        protocol.to_request({"cmd": "put", "args": {"path": "/a"}, "body": 3})
    assert info.value.data["body"] == 3


# --- to_response / to_data / to_end validation --------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        {"code": 200},
        {"ok": True},
        {"ok": 1, "code": 200},
        {"ok": True, "code": True},
        {"ok": True, "code": "200"},
        {"ok": True, "code": 200.0},
        {"ok": True, "code": 200, "message": 5},
        {"ok": False, "code": 404, "error": None},
        {"ok": True, "code": 200, "data": []},
        {"ok": True, "code": 200, "body": -1},
    ],
)
def test_protocol_to_response_rejects(header: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        protocol.to_response(header)


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"offset": 0},
        {"body": None},
        {"body": -1},
        {"body": "5"},
        {"body": True},
        {"body": 5, "offset": -1},
        {"body": 5, "offset": True},
        {"body": 5, "offset": "0"},
        {"body": 5, "offset": MAX_BODY_BYTES + 1},
        {"body": 5, "checksum": MD5_EMPTY},
        {"body": 5, "cmd": "put"},
    ],
)
def test_protocol_to_data_rejects(header: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        protocol.to_data(header)


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"checksum": None},
        {"checksum": MD5_EMPTY.upper()},
        {"checksum": MD5_EMPTY[:-1] + "g"},
        {"checksum": "ab"},
        {"checksum": MD5_EMPTY, "body": 0},
        {"checksum": MD5_EMPTY, "size": 0},
        {"checksum": 12345678901234567890123456789012},
    ],
)
def test_protocol_to_end_rejects(header: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        protocol.to_end(header)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (MD5_EMPTY, True),
        ("0" * 32, True),
        ("f" * 40, True),  # sha1
        ("f" * 128, True),  # blake2b
        ("f" * 31, False),
        ("f" * 129, False),
        (MD5_EMPTY.upper(), False),
        (" " + MD5_EMPTY[1:], False),
        ("g" * 32, False),
        ("", False),
        (None, False),
        (0, False),
        (b"0" * 32, False),
        (["0"] * 32, False),
    ],
)
def test_protocol_is_hex_digest(value: object, expected: bool) -> None:
    assert protocol.is_hex_digest(value) is expected


# --- the table and the handler stay in step ------------------------------------------------


def test_protocol_commands_match_handler_methods() -> None:
    methods = {name[len("cmd_") :] for name in dir(FramedSession) if name.startswith("cmd_")}
    assert methods == set(COMMANDS)
    for name in COMMANDS:
        assert callable(getattr(FramedSession, "cmd_" + name))


def test_protocol_commands_table_is_consistent() -> None:
    for name, spec in COMMANDS.items():
        assert spec.name == name
        assert spec.summary
        assert name.isidentifier() and name.islower()
        for arg in spec.args.values():
            assert arg.kind in (str, int, bool, float)
    assert not COMMANDS["login"].login_required and not COMMANDS["quit"].login_required
    assert [n for n, spec in COMMANDS.items() if spec.body] == ["put"]
