"""Check-then-use races on paths: a second session of the same user swaps a directory and
a symlink while the first one works, and no operation may land outside the home.

A daemon that checks a path by name and later uses the name again (``ftpd/jail.py``
resolved to a real path string, which the session then handed to ``open``, ``mkdir``,
``rename`` ...) loses to another session of the same user that ``mv``s the checked
directory away and ``mv``s a link into its place in between.  Links are placed
by the admin (``os.symlink`` on disk, as ``docs/security.md`` allows), or are links that
point inside the home where they stand but outside once moved (``sub2/up -> ..``).

Per test: alice's home holds ``sub`` (a real directory with alice's own files) and a link
that the flipping session swaps in for it.  Three worlds:

* ``bob``: ``out -> <bob's home>`` (absolute); ``sub/secret`` is then bob's secret.
* ``outside``: ``out -> <project>/outside`` (absolute), a folder outside ``home_root``.
* ``relative``: ``sub2/up -> ..`` (points at alice's home: harmless where it stands);
  moved to ``/sub`` it points at ``home_root``, so ``sub/bob/secret`` is bob's secret.
  alice's real ``sub/bob/`` is a decoy folder of her own.

Invariants after every test: everything under the project root except alice's home is
byte for byte as before (names, types, link targets, contents); no download returned a
victim's bytes; no listing showed a victim's names; no victim bytes were copied into
alice's home.  A racing operation may fail with a clean error (403, 404, 409 ...); a
500 ``internal_error`` or a dropped connection is a failure.

The upload test is deterministic (the flip happens between the 150 and the end of the
body, synchronised by events).  The others are real races: RACERS sessions loop on the
operation while the flipper swaps, bounded by FLIP_CYCLES and RACE_SECONDS, and stop at
the first proof of an escape.  Against a daemon with the check-then-use gap each of them
finds an escape in most runs, not in every run; they never fail against a sound one.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ftp_client.connection import Connection
from ftpd import errors
from ftpd.framed.protocol import READY_FOR_DATA, Data, End, Request
from tests.conftest import Project, RunningServer

#: Bounds of one race: flip cycles (2 + 2 * TOGGLES ``mv`` each), racing sessions,
#: operations per racing session, seconds.
FLIP_CYCLES = 200
TOGGLES = 3
RACERS = 3
RACE_OPS = 4000
RACE_SECONDS = 1.25
EVENT_WAIT = 10.0

BOB_SECRET = b"BOB-SECRET:" + hashlib.sha256(b"bob").hexdigest().encode() * 4
OUTSIDE_SECRET = b"OUTSIDE-SECRET:" + hashlib.sha256(b"outside").hexdigest().encode() * 4
ALICE_DECOY = b"alice's own file, harmless\n"
#: Names that only the victims' folders hold; a listing showing one of them leaked.
VICTIM_NAMES = {"secret", "victim-only.txt"}


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --- the world ------------------------------------------------------------------------


@dataclass
class World:
    """One race setup: who is attacked, and how the flipping session swaps ``sub``."""

    kind: str
    project: Project
    server: RunningServer
    home: Path  # alice's home (real path)
    victim: Path  # the folder the swapped-in link reaches
    secret: bytes  # the victim's file ``secret``
    op_dir: str  # the virtual folder the racing session works in ("sub" or "sub/bob")
    real_op_dir: Path  # that folder in alice's home while ``sub`` is the real directory
    link: str  # the virtual name of the link swapped in for ``sub``
    before: dict[str, Any] = field(default_factory=dict)

    @property
    def flip_out(self) -> list[tuple[str, str]]:
        return [("sub", "tmp"), (self.link, "sub")]

    def outside_alice(self) -> dict[str, Any]:
        """Everything under the project root except alice's home (and the server's logs)."""
        skip = {self.project.home("alice"), self.project.root / "logs"}
        return tree(self.project.root, skip)

    def check_untouched(self) -> None:
        after = self.outside_alice()
        if after != self.before:
            added = sorted(set(after) - set(self.before))
            removed = sorted(set(self.before) - set(after))
            changed = sorted(k for k in set(after) & set(self.before) if after[k] != self.before[k])
            raise AssertionError(
                f"[{self.kind}] the daemon changed files OUTSIDE alice's home: "
                f"added={added} removed={removed} changed={changed}"
            )
        stolen = [p for p, v in tree(self.home, set()).items() if v == ("file", self.secret)]
        assert not stolen, (
            f"[{self.kind}] the victim's secret was copied into alice's home: {stolen}"
        )


def tree(root: Path, skip: set[Path]) -> dict[str, Any]:
    """relative path -> ("dir",) | ("link", target) | ("file", bytes) | ("other",).

    No link is followed.
    """
    out: dict[str, Any] = {}
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        dirs[:] = [d for d in dirs if base / d not in skip]
        for name in dirs + files:
            path = base / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            elif path.is_file():
                out[rel] = ("file", path.read_bytes())
            else:
                out[rel] = ("other",)
    return out


def build_world(kind: str, project: Project, server_factory: Callable[..., RunningServer]) -> World:
    """Homes on disk (as the admin made them), then the server."""
    for user in ("alice", "alice2", "bob", "carol"):
        project.home(user).mkdir(parents=True, exist_ok=True, mode=0o700)
    bob = project.home("bob")
    (bob / "secret").write_bytes(BOB_SECRET)
    outside = project.root / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(OUTSIDE_SECRET)
    (outside / "victim-only.txt").write_bytes(b"outside only")
    (project.home("alice2") / "secret").write_bytes(b"alice2 secret")

    home = Path(os.path.realpath(project.home("alice")))
    (home / "sub").mkdir()
    (home / "sub2").mkdir()
    (home / "stash").mkdir()
    if kind == "bob":
        (home / "out").symlink_to(bob)
        victim, secret, op_dir, link = bob, BOB_SECRET, "sub", "out"
    elif kind == "outside":
        (home / "out").symlink_to(outside)
        victim, secret, op_dir, link = outside, OUTSIDE_SECRET, "sub", "out"
    elif kind == "relative":
        # Inside where it stands (sub2/up -> alice's home); outside once moved to /sub.
        (home / "sub2" / "up").symlink_to("..")
        (home / "sub" / "bob").mkdir()  # alice's own decoy folder named like bob's home
        victim, secret, op_dir, link = bob, BOB_SECRET, "sub/bob", "sub2/up"
        assert Path(os.path.realpath(home / "sub2" / "up")) == home
    else:
        raise ValueError(kind)
    server = server_factory()
    real_op_dir = home / op_dir
    return World(kind, project, server, home, victim, secret, op_dir, real_op_dir, link)


# --- the flipping session and the racing sessions -------------------------------------------


class Flipper(threading.Thread):
    """alice's second session: swaps ``sub`` and the link with ``mv``, whole cycles only.

    One cycle: ``sub`` -> ``tmp``, then the link in and out of ``sub`` TOGGLES times (the
    step that matters: ``sub`` goes from missing to a link), then ``tmp`` -> ``sub``.
    Bounded by ``cycles``, by ``seconds`` and by ``stop`` (checked between cycles, so the
    world is back to its stable state whenever the flipper ends).  A refused ``mv`` (a
    fixed daemon may refuse to move such a link) ends the flipping, and the world is put
    back: ``sub`` the real folder, the link under its own name.
    """

    def __init__(
        self,
        conn: Connection,
        world: World,
        cycles: int = FLIP_CYCLES,
        seconds: float = RACE_SECONDS,
    ) -> None:
        super().__init__(daemon=True)
        self.conn, self.world = conn, world
        self.cycles_max, self.deadline = cycles, time.monotonic() + seconds
        self.stop = threading.Event()
        self.done = threading.Event()
        self.cycles = 0
        self.refused: list[str] = []
        self.fatal: list[str] = []

    def run(self) -> None:
        link = self.world.link
        cycle = [("sub", "tmp")] + [(link, "sub"), ("sub", link)] * TOGGLES + [("tmp", "sub")]
        try:
            while (
                self.cycles < self.cycles_max
                and not self.stop.is_set()
                and time.monotonic() < self.deadline
            ):
                for src, dst in cycle:
                    try:
                        self.conn.call("mv", src=src, dst=dst)
                    except errors.FTPError as exc:
                        failed = f"mv {src} {dst}: {exc.code} {exc.name} {exc.message}"
                        if exc.fatal or exc.name == "internal_error":
                            self.fatal.append(failed)
                        else:
                            self.refused.append(failed)
                            self.restore()
                        return
                self.cycles += 1
        finally:
            self.done.set()

    def restore(self) -> None:
        """After a refused step: the link back under its name, the folder back to ``sub``."""
        home = self.world.home
        try:
            if (home / "sub").is_symlink():
                self.conn.call("mv", src="sub", dst=self.world.link)
            if (home / "tmp").is_dir() and not os.path.lexists(home / "sub"):
                self.conn.call("mv", src="tmp", dst="sub")
        except errors.FTPError as exc:
            self.refused.append(f"restore: {exc.code} {exc.name} {exc.message}")

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=EVENT_WAIT)
        assert not self.is_alive(), "the flipping session did not end"
        assert not self.fatal, f"the flipping session hit a server fault: {self.fatal}"


class _Stop(Exception):
    """This racing session cannot go on (its connection is closed), or a leak is proven."""


@dataclass
class Tally:
    """What the racing sessions saw (shared by their threads)."""

    ok: int = 0
    clean: dict[str, int] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    flips: int = 0  # whole flip cycles the flipper completed
    refused_flips: list[str] = field(default_factory=list)
    halt: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, what: str, op: Callable[[], Any]) -> Any:
        """Run one racing operation; a clean refusal is fine, a fault is recorded."""
        try:
            result = op()
        except errors.FTPError as exc:
            with self.lock:
                if exc.fatal or exc.name == "internal_error":
                    self.faults.append(f"{what}: {exc.code} {exc.name} {exc.message}")
                    raise _Stop() from exc
                key = f"{exc.code} {exc.name}"
                self.clean[key] = self.clean.get(key, 0) + 1
            return None
        with self.lock:
            self.ok += 1
        return result

    def leak(self, text: str) -> None:
        """Record proof of an escape; every racer stops (one proof is enough)."""
        with self.lock:
            self.leaks.append(text)
        self.halt.set()
        raise _Stop()


@dataclass
class Sessions:
    racers: list[Connection]  # RACERS sessions of alice doing the operation under test
    flipper: Connection  # alice's session that swaps the folder and the link


@pytest.fixture(params=["bob", "outside", "relative"])
def world(
    request: pytest.FixtureRequest, project: Project, server_factory: Callable[..., RunningServer]
) -> World:
    return build_world(request.param, project, server_factory)


@pytest.fixture
def sessions(world: World) -> Iterator[Sessions]:
    """alice's racing and flipping sessions; the snapshot is taken after they logged in."""
    conns = [world.server.login("alice") for _ in range(RACERS + 1)]
    world.before = world.outside_alice()
    assert world.before, "the snapshot must see the victims"
    yield Sessions(conns[:-1], conns[-1])
    for conn in conns:
        conn.close()


Step = Callable[[Connection, int, int, Tally], None]


def race(world: World, sessions: Sessions, step: Step) -> Tally:
    """Run ``step(conn, racer, i, tally)`` in RACERS threads while the flipper swaps."""
    tally = Tally()
    flipper = Flipper(sessions.flipper, world)
    crashed: list[BaseException] = []

    def racer(conn: Connection, rid: int) -> None:
        deadline = time.monotonic() + RACE_SECONDS + 1
        try:
            for i in range(RACE_OPS):
                if flipper.done.is_set() or tally.halt.is_set() or time.monotonic() > deadline:
                    return
                step(conn, rid, i, tally)
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - a bug in the test itself: re-raised below
            crashed.append(exc)

    threads = [
        threading.Thread(target=racer, args=(c, n), daemon=True)
        for n, c in enumerate(sessions.racers)
    ]
    flipper.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=RACE_SECONDS + EVENT_WAIT)
    flipper.finish()
    tally.flips, tally.refused_flips = flipper.cycles, flipper.refused
    assert not any(t.is_alive() for t in threads), "a racing session did not end"
    if crashed:
        raise crashed[0]
    return tally


def assert_clean(world: World, tally: Tally) -> None:
    world.check_untouched()
    assert not tally.leaks, f"[{world.kind}] leak across the home's edge: {tally.leaks[:3]}"
    assert not tally.faults, f"[{world.kind}] server faults while racing: {tally.faults}"


# --- (a) upload: the deterministic case ---------------------------------------------------


def test_jail_race_upload_flipped_during_body_stays_inside(
    world: World, sessions: Sessions
) -> None:
    """put sub/x is checked before the 150; the folder becomes a link out mid-body.

    The flip happens after the daemon resolved the target and before it installs the
    file: the upload must end inside alice's home (in the folder it was checked in, now
    called ``tmp``) or be refused cleanly, never be installed in the victim's folder.
    """
    racer, flip_conn = sessions.racers[0], sessions.flipper
    data = os.urandom(64 * 1024)
    target = f"{world.op_dir}/x"
    half_sent, flipped = threading.Event(), threading.Event()
    flip_errors: list[str] = []

    def flip_once() -> None:
        try:
            if not half_sent.wait(EVENT_WAIT):
                flip_errors.append("the upload never reached its middle")
                return
            for src, dst in world.flip_out:
                flip_conn.call("mv", src=src, dst=dst)
        except errors.FTPError as exc:  # a fixed daemon may refuse to move the link
            flip_errors.append(f"{exc.code} {exc.name}: {exc.message}")
        finally:
            flipped.set()

    flipper = threading.Thread(target=flip_once, daemon=True)
    flipper.start()

    racer.send(Request("put", {"path": target, "size": len(data)}))
    ready = racer.read_response()
    assert ready.code == READY_FOR_DATA and ready.data["offset"] == 0
    racer.send(Data(len(data), 0))
    pieces = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    middle = len(pieces) // 2
    for piece in pieces[:middle]:
        racer.sock.sendall(piece)
    half_sent.set()
    assert flipped.wait(EVENT_WAIT), "the flip did not happen"
    flipper.join(timeout=EVENT_WAIT)
    # The flip itself is allowed today; a fixed daemon may refuse it (fine: no escape then).
    flip_done = not flip_errors
    if flip_done:
        assert (world.home / "sub").is_symlink(), "the flip must have swapped the link in"
    for piece in pieces[middle:]:
        racer.sock.sendall(piece)
    racer.send(End(md5(data)))
    try:
        answer = racer.read_response()
        stored = True
    except errors.FTPError as exc:
        assert not (exc.fatal or exc.name == "internal_error"), (
            f"server fault: {exc.code} {exc.name} {exc.message}"
        )
        stored = False
    escaped = [
        str(p)
        for p in world.victim.rglob("*")
        if p.is_file() and not p.is_symlink() and p.read_bytes() == data
    ]
    assert not escaped, (
        f"[{world.kind}] the upload checked as alice's {target} was installed OUTSIDE "
        f"her home: {escaped} (flip done: {flip_done})"
    )
    world.check_untouched()
    if stored:
        assert answer.code == 200
        inside = [p for p, v in tree(world.home, set()).items() if v == ("file", data)]
        assert len(inside) == 1, (
            f"the stored upload must be in alice's home exactly once, found {inside}"
        )
    racer.call("pwd")  # the session is still usable


# --- (b) download -------------------------------------------------------------------------


def test_jail_race_get_never_returns_the_victims_bytes(world: World, sessions: Sessions) -> None:
    (world.real_op_dir / "secret").write_bytes(ALICE_DECOY)
    path = f"{world.op_dir}/secret"

    def step(conn: Connection, rid: int, i: int, tally: Tally) -> None:
        body = tally.attempt("get", lambda: conn.read_body(conn.call("get", path=path)))
        if body is not None and body != ALICE_DECOY:
            tally.leak(f"get {path} returned {body[:40]!r}")

    tally = race(world, sessions, step)
    assert_clean(world, tally)
    conn = sessions.racers[0]
    assert conn.read_body(conn.call("get", path=path)) == ALICE_DECOY  # stable again: works


# --- (c) remove ---------------------------------------------------------------------------


def test_jail_race_rm_never_removes_the_victims_file(world: World, sessions: Sessions) -> None:
    (world.real_op_dir / "secret").write_bytes(ALICE_DECOY)
    path = f"{world.op_dir}/secret"

    def step(conn: Connection, rid: int, i: int, tally: Tally) -> None:
        tally.attempt("rm", lambda: conn.call("rm", path=path))
        if not (world.victim / "secret").exists():
            tally.leak(f"rm {path} removed {world.victim / 'secret'}")

    tally = race(world, sessions, step)
    assert_clean(world, tally)


# --- (d) list -----------------------------------------------------------------------------


def test_jail_race_ls_never_shows_the_victims_names(world: World, sessions: Sessions) -> None:
    (world.real_op_dir / "mine.txt").write_bytes(ALICE_DECOY)
    assert VICTIM_NAMES & {p.name for p in world.victim.iterdir()}
    # alice's folder holds mine.txt only; a racing ls may at worst describe the folder
    # itself (its own name); any other name was read from a folder that is not hers.
    allowed = {"mine.txt", world.op_dir.rsplit("/", 1)[-1]}

    def step(conn: Connection, rid: int, i: int, tally: Tally) -> None:
        entries = tally.attempt("ls", lambda: conn.listdir(world.op_dir))
        if entries is not None:
            seen = {e["name"] for e in entries}
            if seen - allowed:
                tally.leak(f"ls {world.op_dir} listed {sorted(seen)}")

    tally = race(world, sessions, step)
    assert_clean(world, tally)
    assert [e["name"] for e in sessions.racers[0].listdir(world.op_dir)] == ["mine.txt"]


# --- (e) mkdir ----------------------------------------------------------------------------


def test_jail_race_mkdir_never_creates_outside(world: World, sessions: Sessions) -> None:
    def step(conn: Connection, rid: int, i: int, tally: Tally) -> None:
        name = f"newdir-{rid}-{i}"
        tally.attempt("mkdir", lambda: conn.call("mkdir", path=f"{world.op_dir}/{name}"))
        if os.path.lexists(world.victim / name):
            tally.leak(f"mkdir {world.op_dir}/{name} created {world.victim / name}")

    tally = race(world, sessions, step)
    assert_clean(world, tally)
    made = [p.name for p in world.real_op_dir.iterdir() if p.name.startswith("newdir-")]
    assert len(made) == tally.ok, "every mkdir that succeeded made its folder in alice's sub"


# --- (f) rename ---------------------------------------------------------------------------


def test_jail_race_mv_never_moves_across_the_edge(world: World, sessions: Sessions) -> None:
    """Renames inside the swapped folder, out of it (stealing) and into it (planting).

    Racer 0 renames alice's ``secret`` inside the folder and out of it and back; every
    racer also moves a file of its own (``stash/p-N``) into the folder and back.
    """
    (world.real_op_dir / "secret").write_bytes(ALICE_DECOY)
    own = {rid: f"racer {rid}'s own file".encode() for rid in range(RACERS)}
    for rid, data in own.items():
        (world.home / "stash" / f"p-{rid}").write_bytes(data)
    d = world.op_dir
    secret_moves = [
        (f"{d}/secret", f"{d}/renamed"),  # inside the swapped folder
        (f"{d}/renamed", f"{d}/secret"),
        (f"{d}/secret", "stash/s"),  # out of it: would steal the victim's file
        ("stash/s", f"{d}/secret"),  # into it: would replace the victim's file
    ]
    victim_names = sorted(os.listdir(world.victim))
    victim_file = world.victim / "secret"

    def step(conn: Connection, rid: int, i: int, tally: Tally) -> None:
        plant = [(f"stash/p-{rid}", f"{d}/p-{rid}"), (f"{d}/p-{rid}", f"stash/p-{rid}")]
        moves = plant + secret_moves if rid == 0 else plant
        src, dst = moves[i % len(moves)]
        tally.attempt("mv", lambda: conn.call("mv", src=src, dst=dst))
        if (
            sorted(os.listdir(world.victim)) != victim_names
            or victim_file.read_bytes() != world.secret
        ):
            now = sorted(os.listdir(world.victim))
            tally.leak(f"after mv {src} {dst}: {world.victim} changed, it holds {now}")

    tally = race(world, sessions, step)
    assert_clean(world, tally)
    files = tree(world.home, set()).items()
    for data in [ALICE_DECOY, *own.values()]:
        found = [p for p, v in files if v == ("file", data)]
        assert len(found) == 1, f"{data!r} must still be in alice's home exactly once: {found}"


# --- inside links keep working ------------------------------------------------------------


@pytest.fixture
def inner_world(project: Project, server_factory: Callable[..., RunningServer]) -> World:
    """``inner -> sub2`` (relative, inside the home) is the link swapped in for ``sub``."""
    w = build_world("bob", project, server_factory)
    (w.home / "out").unlink()
    (w.home / "inner").symlink_to("sub2")
    (w.home / "sub2" / "f.txt").write_bytes(b"in sub2")
    (w.home / "sub" / "f.txt").write_bytes(b"in sub")
    w.kind, w.link = "inner", "inner"
    return w


def test_jail_race_inside_link_works_when_stable_and_flipping_stays_inside(
    inner_world: World,
) -> None:
    w = inner_world
    conns = [w.server.login("alice") for _ in range(RACERS + 1)]
    sessions = Sessions(conns[:-1], conns[-1])
    conn = conns[0]
    w.before = w.outside_alice()
    try:
        # Stable: a link that stays inside is followed by every command.
        payload = b"through the inner link"
        conn.call(
            "put", body=payload, path="inner/new.txt", size=len(payload), checksum=md5(payload)
        )
        assert (w.home / "sub2" / "new.txt").read_bytes() == payload
        assert conn.read_body(conn.call("get", path="inner/f.txt")) == b"in sub2"
        assert sorted(e["name"] for e in conn.listdir("inner")) == ["f.txt", "new.txt"]
        assert conn.call("stat", path="inner/new.txt").data["size"] == len(payload)
        mkdir_ok = conn.call("mkdir", path="inner/made")
        assert mkdir_ok.code == 200 and (w.home / "sub2" / "made").is_dir()

        stored: list[bytes] = []

        def step(c: Connection, rid: int, i: int, tally: Tally) -> None:
            kind = i % 3
            if kind == 0:
                data = f"upload {rid}-{i}".encode()
                path = f"sub/up-{rid}-{i}"

                def put() -> Any:
                    return c.call("put", body=data, path=path, size=len(data), checksum=md5(data))

                if tally.attempt("put", put) is not None:
                    with tally.lock:
                        stored.append(data)
            elif kind == 1:
                body = tally.attempt("get", lambda: c.read_body(c.call("get", path="sub/f.txt")))
                if body is not None and body not in (b"in sub", b"in sub2"):
                    tally.leak(f"get sub/f.txt returned {body!r}")
            else:
                entries = tally.attempt("ls", lambda: c.listdir("sub"))
                if entries is not None and VICTIM_NAMES & {e["name"] for e in entries}:
                    tally.leak(f"ls sub listed {entries}")

        tally = race(w, sessions, step)
        assert_clean(w, tally)
        if tally.flips >= 10:  # (unless the daemon refused to swap the link at all)
            assert tally.ok > 0, "some operations must succeed while an inside link is swapped"
        on_disk = {v[1] for v in tree(w.home, set()).values() if v[0] == "file"}
        missing = [d for d in stored if d not in on_disk]
        assert not missing, f"acknowledged uploads not found in alice's home: {missing[:3]}"

        # Stable again (the flipper ends on whole cycles): the inside link works as before.
        assert (w.home / "inner").is_symlink() and (w.home / "sub").is_dir()
        again = b"after the flipping"
        conn.call("put", body=again, path="inner/again.txt", size=len(again), checksum=md5(again))
        assert (w.home / "sub2" / "again.txt").read_bytes() == again
        assert conn.read_body(conn.call("get", path="inner/again.txt")) == again
        assert "again.txt" in {e["name"] for e in conn.listdir("inner")}
    finally:
        for c in conns:
            c.close()
