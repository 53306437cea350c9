"""Property tests (hypothesis): the decoder, request validation and path confinement.

FUZZ_EXAMPLES sets the examples per property: the default keeps CI fast, a local run can
go long (FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py).  Properties:

- the frame decoder, fed any bytes in any pieces, raises nothing but FTPError;
- near-valid request frames through parse_header + to_request raise only known wire errors,
  and whatever they accept is a well-formed request;
- the file service (``FileService.normalize``/``resolve``/``stat``/``cd`` over the storage
  walk) never yields a real path outside the home (or into .ftpd), with or without a farm
  of symlinks, and only raises FTPError.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ftpd.accounts.throttle import LoginThrottle
from ftpd.accounts.users import User, UserStore
from ftpd.core.files import FileService
from ftpd.core.login import Accounts
from ftpd.core.runtime import Runtime
from ftpd.errors import ERROR_CLASSES, FTPError, ProtocolError
from ftpd.framed import protocol
from ftpd.framed.protocol import (
    COMMANDS,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    MAX_INLINE_BODY,
    MAX_TIME_S,
    BodyChunk,
    Frame,
)
from ftpd.state.local import LocalClaims, LocalLedgers
from ftpd.storage.base import PARTIAL_PREFIX, RESERVED
from ftpd.storage.local import LocalStorage

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    database=None,  # write nothing outside tmp_path (the .hypothesis example store)
    suppress_health_check=[HealthCheck.too_slow],
)
KNOWN = set(ERROR_CLASSES)


def _assert_wire_error(exc: BaseException) -> None:
    assert isinstance(exc, FTPError), repr(exc)
    assert (exc.code, exc.name) in KNOWN, (exc.code, exc.name)
    frame = protocol.encode(protocol.error_response(exc))  # the handler can always answer
    assert len(frame) <= protocol.LENGTH_SIZE + MAX_HEADER_BYTES


# --- the frame decoder on arbitrary bytes ---------------------------------------------------


@st.composite
def _framed(draw: st.DrawFn) -> bytes:
    """A length prefix (often right, sometimes wild) followed by random bytes."""
    payload = draw(
        st.one_of(
            st.binary(max_size=120),
            st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
            st.builds(
                lambda h: json.dumps(h).encode(),
                st.dictionaries(st.text(max_size=5), st.integers()),
            ),
            st.builds(
                lambda n, b: json.dumps({"body": n}).encode() + b,
                st.integers(-3, 300),
                st.binary(max_size=40),
            ),
        )
    )
    declared = draw(
        st.one_of(
            st.just(len(payload)),
            st.integers(0, len(payload) + 4),
            st.sampled_from([0, MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1, 0xFFFFFFFF]),
            st.integers(0, 0xFFFFFFFF),
        )
    )
    return protocol.LENGTH.pack(declared) + payload


_streams = st.one_of(st.binary(max_size=400), st.lists(_framed(), max_size=6).map(b"".join))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@FUZZ
@given(data=_streams, cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_fuzz_decoder_raises_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    decoder = protocol.FrameDecoder()
    announced = received = 0
    try:
        for piece in _split(data, cuts):
            for event in decoder.feed(piece):
                if isinstance(event, Frame):
                    assert isinstance(event.header, dict)
                    assert received == announced  # a header never starts inside a body
                    announced, received = event.header.get("body") or 0, 0
                else:
                    assert isinstance(event, BodyChunk) and event.data
                    received += len(event.data)
                    assert received <= announced
                    assert event.last == (received == announced)
        decoder.eof()
    except Exception as exc:  # noqa: BLE001 - the property is about what may escape
        assert isinstance(exc, ProtocolError), repr(exc)
        _assert_wire_error(exc)


# --- near-valid request frames --------------------------------------------------------------

_ARG_NAMES = sorted({name for spec in COMMANDS.values() for name in spec.args})
# Any code point, lone surrogates included: what os.fsdecode makes of undecodable names.
_any_text = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(exclude_categories=()), max_size=10),
    st.sampled_from(["a\udcff", "\udc80.txt", "\ud800"]),
)
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from(
        [0, 1, -1, MAX_BODY_BYTES, MAX_BODY_BYTES + 1, MAX_INLINE_BODY, MAX_INLINE_BODY + 1]
    ),
    st.floats(allow_nan=False, allow_infinity=False),
    _any_text,
    st.sampled_from(["/", "..", "../../etc/passwd", "\x00", RESERVED, "a" * 300, "md5", "0" * 32]),
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    )


_json_values = st.recursive(_json_scalars, _containers, max_leaves=8)
_RIGHT_KIND = {
    str: _any_text,
    int: st.integers(0, MAX_BODY_BYTES),
    bool: st.booleans(),
    float: st.one_of(  # a time: any number of seconds from 0 to MAX_TIME_S
        st.integers(0, int(MAX_TIME_S)),
        st.floats(0, MAX_TIME_S),
        st.sampled_from([0, 0.0, 1.5, MAX_TIME_S]),
    ),
}
_cmd_names = st.one_of(
    st.sampled_from(sorted(COMMANDS)),
    st.sampled_from(
        ["handle", "__init__", "setup", "dispatch", "cmd_ls", "", "LS", "finish", "respond"]
    ),
    st.text(max_size=12),
)


@st.composite
def _request_headers(draw: st.DrawFn) -> dict[str, Any]:
    cmd = (
        draw(st.one_of(_cmd_names, _json_values))
        if draw(st.integers(0, 9)) == 0
        else draw(_cmd_names)
    )
    header: dict[str, Any] = {"cmd": cmd}
    spec = COMMANDS.get(cmd) if isinstance(cmd, str) else None
    if draw(st.integers(0, 9)) == 0:
        header["args"] = draw(_json_values)  # maybe not even an object
    else:
        args: dict[str, Any] = {}
        for name, arg in spec.args.items() if spec else ():
            if draw(st.booleans()) or (arg.required and draw(st.integers(0, 5))):
                right = draw(st.integers(0, 3)) > 0
                args[name] = draw(_RIGHT_KIND[arg.kind] if right else _json_values)
        for name in draw(
            st.lists(st.one_of(st.sampled_from(_ARG_NAMES), st.text(max_size=8)), max_size=2)
        ):
            args[name] = draw(_json_values)
        header["args"] = args
    if draw(st.integers(0, 3)) == 0:
        header["body"] = draw(st.one_of(st.integers(-2, MAX_INLINE_BODY + 2), _json_values))
    if draw(st.integers(0, 9)) == 0:
        header[draw(st.text(max_size=6))] = draw(_json_values)
    return header


def _check_request(request: protocol.Request, header: dict[str, Any]) -> None:
    spec = COMMANDS[request.cmd]
    assert request.cmd == header["cmd"]
    for name, value in request.args.items():
        kind = spec.args[name].kind
        if kind is float:  # a time: an int or a float, never a bool, never NaN
            assert type(value) in (int, float)
            assert 0 <= value <= MAX_TIME_S
            continue
        assert type(value) is kind
        if kind is int:
            assert 0 <= value <= MAX_BODY_BYTES
    assert all(name in request.args for name, arg in spec.args.items() if arg.required)
    if request.body is not None:
        assert spec.body and 0 <= request.body <= MAX_INLINE_BODY


@FUZZ
@given(header=_request_headers(), ascii_only=st.booleans())
def test_fuzz_request_frames_raise_only_known_errors(
    header: dict[str, Any], ascii_only: bool
) -> None:
    raw = json.dumps(header, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    frame = protocol.LENGTH.pack(len(raw)) + raw
    try:
        [event] = [e for e in protocol.FrameDecoder().feed(frame) if isinstance(e, Frame)]
        request = protocol.to_request(event.header)
    except Exception as exc:  # noqa: BLE001
        _assert_wire_error(exc)
        return
    _check_request(request, header)


@FUZZ
@given(header=_request_headers())
@example(header={"cmd": "cd", "args": {"path": "a\udcff"}})  # was: invalid UTF-8 on the wire
@example(header={"cmd": "put", "args": {"path": "\ud800", "size": 0}})
def test_fuzz_encoded_requests_decode_or_refuse_locally(header: dict[str, Any]) -> None:
    """What encode() emits, the peer's decoder accepts: no frame that kills the session."""
    try:
        request = protocol.to_request(header)
    except FTPError:
        return
    try:
        frame = protocol.encode(request)
    except FTPError as exc:  # refused before sending: the session survives
        _assert_wire_error(exc)
        return
    [event] = list(protocol.FrameDecoder().feed(frame))
    assert protocol.to_request(event.header) == request


# --- path confinement ------------------------------------------------------------------------

_TOKENS = [
    "..",
    ".",
    "/",
    "//",
    "\\",
    "\x00",
    "\n",
    "\x7f",
    RESERVED,
    PARTIAL_PREFIX,
    "a",
    "b",
    "docs",
    "文件",
    "😀",
    "x" * 256,
    "é" * 128,
    "alice2",
    "~",
    " ",
    "...",
    "-",
]
_LINKS = [
    "out",
    "out_rel",
    "out_file",
    "sib",
    "up",
    "self",
    "to_res",
    "chain",
    "loop1",
    "dangle",
    "abs_in",
    "abs_root",
    "docs/up2",
]


def _vpaths(extra_tokens: list[str]) -> st.SearchStrategy[str]:
    token = st.one_of(st.sampled_from(_TOKENS + extra_tokens), st.text(max_size=6))
    parts = st.lists(token, max_size=14).map("".join)
    deep = st.builds(
        lambda n, step, tail: step * n + tail,
        st.integers(0, 2000),
        st.sampled_from(["../", "a/", "./", "//", "a/../", "self/", "up/", "chain/b/top/"]),
        parts,
    )
    return st.one_of(parts, deep, st.lists(token, max_size=8).map("/".join))


def _files(home: Path) -> FileService:
    storage = LocalStorage(home.parent, fsync=False)
    users = UserStore({home.name: User(home.name, "!", None)})
    accounts = Accounts(users, LoginThrottle(5, 60, 0), storage, LocalLedgers())
    return FileService(accounts.context(home.name), accounts, Runtime(8, 8, LocalClaims()))


def _assert_inside(real: Path, root: Path) -> None:
    assert real.is_absolute()
    normal = Path(os.path.normpath(real))
    assert normal.is_relative_to(root), (real, root)
    rel = normal.relative_to(root)
    assert not (rel.parts and rel.parts[0] == RESERVED), real


def _assert_parts_inside(parts: tuple[str, ...], root: Path, follow: bool) -> None:
    """Real parts from the walk: plain names, not reserved, and inside on disk too."""
    assert all(p not in ("", ".", "..") and "/" not in p for p in parts), parts
    assert not (parts and parts[0] == RESERVED), parts
    assert not any(p.startswith(PARTIAL_PREFIX) for p in parts), parts
    real = root.joinpath(*parts)
    _assert_inside(real, root)
    if follow and os.path.lexists(real):
        _assert_inside(Path(os.path.realpath(real)), root)
    else:  # a missing name, or the entry itself (maybe a link): its folder is inside
        _assert_inside(Path(os.path.realpath(real.parent if parts else real)), root)


def _probe(files: FileService, vpath: str) -> None:
    root = Path(files.tree.root)  # type: ignore[attr-defined]
    try:
        virtual = files.normalize(vpath)
    except Exception as exc:  # noqa: BLE001
        _assert_wire_error(exc)
    else:
        assert isinstance(virtual, PurePosixPath) and virtual.is_absolute()
        assert ".." not in virtual.parts and "." not in virtual.parts
        assert not (len(virtual.parts) > 1 and virtual.parts[1] == RESERVED)
    for follow in (True, False):
        try:
            shown, parts, entry = files.resolve(vpath, follow)
        except Exception as exc:  # noqa: BLE001
            _assert_wire_error(exc)
        else:
            assert shown == str(files.normalize(vpath))
            _assert_parts_inside(parts, root, follow)
            if entry is not None and entry.kind == "link":
                assert not follow  # a followed link is described or refused
    try:
        files.stat(vpath)
    except Exception as exc:  # noqa: BLE001
        _assert_wire_error(exc)
    cwd = files.cwd
    try:
        files.cd(vpath)
    except Exception as exc:  # noqa: BLE001
        _assert_wire_error(exc)
        assert files.cwd == cwd
    else:
        _, parts, entry = files.resolve("")
        assert entry is not None and entry.kind == "dir"
        _assert_parts_inside(parts, root, True)
        assert Path(os.path.realpath(root.joinpath(*parts))).is_dir()
    finally:
        files.cwd = cwd


@pytest.fixture(scope="module")
def plain_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("plain")
    home = base / "home" / "alice"
    (home / "docs" / "a").mkdir(parents=True)
    (home / RESERVED / "partial").mkdir(parents=True)
    (base / "home" / "alice2" / "private").mkdir(parents=True)
    (home / "docs" / "f.txt").write_bytes(b"f")
    return home


@pytest.fixture(scope="module")
def farm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home full of symlinks, several pointing outside, to itself, to .ftpd, or in loops."""
    base = tmp_path_factory.mktemp("farm")
    home, outside = base / "home" / "alice", base / "outside"
    (home / "docs" / "a" / "b").mkdir(parents=True)
    (home / RESERVED / "partial").mkdir(parents=True)
    (base / "home" / "alice2" / "private").mkdir(parents=True)
    (outside / "dir").mkdir(parents=True)
    (outside / "secret").write_bytes(b"s")
    (home / "docs" / "f.txt").write_bytes(b"f")
    links = {
        "out": outside,
        "out_rel": Path("../../outside/dir"),
        "out_file": outside / "secret",
        "sib": Path("../alice2"),
        "up": Path(".."),
        "self": Path("."),
        "to_res": Path(RESERVED),
        "chain": Path("docs/a"),
        "loop1": Path("loop2"),
        "loop2": Path("loop1"),
        "dangle": Path("nowhere/deeper"),
        "abs_in": home / "docs",
        "abs_root": home,
        "docs/up2": Path("../.."),
        "docs/a/b/top": Path("../../.."),
        "docs/a/b/res": Path("../../../" + RESERVED + "/partial"),
        "docs/a/b/part": Path("../" + PARTIAL_PREFIX + "x"),
        "docs/evil": Path("../loop1/../../outside"),
    }
    for name, target in links.items():
        (home / name).symlink_to(target)
    return home


def _snapshot(root: Path) -> list[tuple[str, ...]]:
    return sorted(tuple(sorted(names)) for _, _, names in os.walk(root.parent.parent))


@FUZZ
@given(vpath=_vpaths([]), cwd=st.sampled_from(["/", "/docs", "/docs/a"]))
def test_fuzz_paths_stay_inside(plain_home: Path, vpath: str, cwd: str) -> None:
    files = _files(plain_home)
    files.cd(cwd)
    _probe(files, vpath)


@FUZZ
@given(vpath=_vpaths(_LINKS), cwd=st.sampled_from(["/", "/docs", "/chain", "/docs/a/b"]))
def test_fuzz_paths_stay_inside_with_symlink_farm(farm_home: Path, vpath: str, cwd: str) -> None:
    before = _snapshot(farm_home)
    files = _files(farm_home)
    files.cd(cwd)
    _probe(files, vpath)
    assert _snapshot(farm_home) == before  # looking changes nothing


@pytest.mark.parametrize(
    "vpath",
    [
        "out",
        "out_rel/x",
        "sib/private",
        "up/alice2",
        "docs/up2/outside",
        "to_res",
        "self/" + RESERVED,
        "docs/a/b/top/outside/secret",
        "docs/a/b/res",
        "docs/a/b/part",
        "docs/evil",
        "chain/b/top/../alice2",
        "loop1/x",
        "abs_root/" + RESERVED,
        "self/" * 50 + "docs",
    ],
)
def test_fuzz_farm_examples(farm_home: Path, vpath: str) -> None:
    """The farm's known traps, as fixed cases (they run even with FUZZ_EXAMPLES=1)."""
    files = _files(farm_home)
    _probe(files, vpath)
    for follow in (True, False):
        try:
            _, parts, entry = files.resolve(vpath, follow)
        except FTPError:
            continue
        assert entry is None or entry.kind in ("dir", "file", "link")
