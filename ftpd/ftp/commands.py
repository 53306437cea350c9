"""FTP's control channel, sans-IO: bytes in, validated ``Command`` objects out; the table.

``LineBuffer`` collects what the socket gave and hands out whole lines, refusing a line
over ``MAX_LINE`` bytes before it keeps more (vsftpd's cap is 4,096 too).  ``parse``
turns one line into a ``Command``: Telnet controls (RFC 854 IAC sequences, which ABOR
is sent with) are dropped, CR and NUL inside the line are refused, the verb is checked
against ``COMMANDS``.  ``COMMANDS`` is the model of pyftpdlib's ``proto_cmds``: per
verb, whether it needs a login, whether its argument is required, forbidden or
optional, and its HELP line.  The session looks a verb up here first and only then
calls ``ftp_<method>``.

This module must never touch a socket, a file or the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftpd.errors import BadRequestError, HeaderTooLargeError, UnknownCommandError

#: Longest command line kept, terminator included (vsftpd: 4,096; pyftpdlib: 2,048).
MAX_LINE = 4096
REQUIRED, OPTIONAL, FORBIDDEN = "required", "optional", "forbidden"
_IAC = 0xFF
_TELNET_WITH_OPTION = (0xFB, 0xFC, 0xFD, 0xFE)  # WILL WONT DO DONT take one more byte


class LineTooLongError(HeaderTooLargeError):
    """A command line over ``MAX_LINE``: answered, then the connection is closed."""


class UnimplementedError(UnknownCommandError):
    """A verb RFC 959 knows that this server does not implement (502)."""


@dataclass(frozen=True)
class Spec:
    """One row of the table.  ``method``: the ``ftp_<method>`` that serves the verb."""

    name: str
    login: bool
    arg: str
    help: str
    method: str


@dataclass(frozen=True)
class Command:
    """A parsed line: ``verb`` upper-case, ``arg`` the text after the first space."""

    verb: str
    arg: str
    spec: Spec

    @property
    def shown(self) -> str:
        """The line for a log (the password masked)."""
        if self.verb == "PASS":
            return "PASS ****"
        return f"{self.verb} {self.arg}" if self.arg else self.verb


def _spec(name: str, login: bool, arg: str, help: str, method: str = "") -> Spec:
    return Spec(name, login, arg, help, (method or name).lower())


_R, _O, _F = REQUIRED, OPTIONAL, FORBIDDEN

#: The only verbs a client can reach; a test keeps this and the ``ftp_*`` methods in step.
COMMANDS: dict[str, Spec] = {
    s.name: s
    for s in (
        # Allowed before login (RFC 4217 clients send PBSZ and PROT before USER).
        _spec("USER", False, _R, "USER <name>: say who you are"),
        _spec("PASS", False, _O, "PASS <password>: log in"),
        _spec("ACCT", False, _R, "ACCT <account>: not needed here"),
        _spec("AUTH", False, _R, "AUTH TLS: switch the control connection to TLS"),
        _spec("PBSZ", False, _R, "PBSZ 0: protection buffer size (after AUTH)"),
        _spec("PROT", False, _R, "PROT P|C: protect data connections (P) or not (C)"),
        _spec("FEAT", False, _F, "FEAT: list the extensions"),
        _spec("OPTS", False, _R, "OPTS UTF8 ON | MLST <facts> | HASH <algo>"),
        _spec("SYST", False, _F, "SYST: the system type"),
        _spec("NOOP", False, _F, "NOOP: do nothing"),
        _spec("QUIT", False, _F, "QUIT: log out and close"),
        _spec("HELP", False, _O, "HELP [<verb>]: this help"),
        _spec("CLNT", False, _O, "CLNT <name>: the client's name (ignored)"),
        # Everything else needs a login.
        _spec("REIN", True, _F, "REIN: log out, keep the connection"),
        _spec("STAT", True, _O, "STAT [<path>]: session status, or a listing"),
        _spec("SITE", True, _R, "SITE HELP: site commands"),
        _spec("PWD", True, _F, "PWD: print the working directory"),
        _spec("XPWD", True, _F, "XPWD: PWD", "pwd"),
        _spec("CWD", True, _O, "CWD <path>: change the working directory"),
        _spec("XCWD", True, _O, "XCWD <path>: CWD", "cwd"),
        _spec("CDUP", True, _F, "CDUP: go to the parent directory"),
        _spec("XCUP", True, _F, "XCUP: CDUP", "cdup"),
        _spec("MKD", True, _R, "MKD <path>: make a directory"),
        _spec("XMKD", True, _R, "XMKD <path>: MKD", "mkd"),
        _spec("RMD", True, _R, "RMD <path>: remove an empty directory"),
        _spec("XRMD", True, _R, "XRMD <path>: RMD", "rmd"),
        _spec("DELE", True, _R, "DELE <path>: delete a file"),
        _spec("RNFR", True, _R, "RNFR <path>: rename from"),
        _spec("RNTO", True, _R, "RNTO <path>: rename to"),
        _spec("TYPE", True, _R, "TYPE A|I: transfer type (both are binary here)"),
        _spec("MODE", True, _R, "MODE S: stream mode only"),
        _spec("STRU", True, _R, "STRU F: file structure only"),
        _spec("PASV", True, _F, "PASV: passive data connection (IPv4)"),
        _spec("EPSV", True, _O, "EPSV [1|2|ALL]: extended passive data connection"),
        _spec("PORT", True, _R, "PORT h1,h2,h3,h4,p1,p2: active data connection"),
        _spec("EPRT", True, _R, "EPRT |proto|addr|port|: extended active data connection"),
        _spec("LIST", True, _O, "LIST [<path>]: list in ls -l form"),
        _spec("NLST", True, _O, "NLST [<path>]: list names"),
        _spec("MLSD", True, _O, "MLSD [<path>]: list with facts (RFC 3659)"),
        _spec("MLST", True, _O, "MLST [<path>]: facts of one entry (RFC 3659)"),
        _spec("SIZE", True, _R, "SIZE <path>: size in bytes"),
        _spec("MDTM", True, _R, "MDTM <path>: modification time"),
        _spec("MFMT", True, _R, "MFMT <YYYYMMDDHHMMSS> <path>: set the modification time"),
        _spec("REST", True, _R, "REST <offset>: restart the next transfer at a byte"),
        _spec("RETR", True, _R, "RETR <path>: download"),
        _spec("STOR", True, _R, "STOR <path>: upload (atomic: installed when complete)"),
        _spec("APPE", True, _R, "APPE <path>: append (atomic)"),
        _spec("STOU", True, _O, "STOU [<name>]: upload under a new unique name"),
        _spec("ALLO", True, _R, "ALLO <bytes>: check that an upload fits the quota"),
        _spec("ABOR", True, _F, "ABOR: abort the running transfer"),
        _spec("HASH", True, _R, "HASH <path>: the file's digest (draft-bryan-ftpext-hash)"),
        _spec("XMD5", True, _R, "XMD5 <path>: the file's md5"),
        _spec("XSHA1", True, _R, "XSHA1 <path>: the file's sha1"),
    )
}

#: Verbs that RFC 959 and its extensions define and this server does not implement.
UNIMPLEMENTED = frozenset(
    ("SMNT", "LPRT", "LPSV", "ADAT", "CCC", "CONF", "ENC", "MIC", "XRCP", "XRSQ", "XSEM")
    + ("XSEN", "XMAS", "LANG", "AVBL", "DSIZ", "CSID", "RMDA", "THMB", "XCRC", "XSHA256")
)
#: Verbs the table allows before login (issue 10: everything else gets 530).
BEFORE_LOGIN = frozenset(name for name, spec in COMMANDS.items() if not spec.login)


class LineBuffer:
    """Bytes from the control connection, cut into lines.  One per session thread."""

    def __init__(self, cap: int = MAX_LINE) -> None:
        self.cap = cap
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Keep ``data``; a line that has already passed the cap is refused here.

        Raises:
            LineTooLongError: no line end within ``cap`` bytes.
        """
        self._buf += data
        end = self._buf.find(b"\n")
        if (end < 0 and len(self._buf) > self.cap) or end >= self.cap:
            self._buf.clear()
            raise LineTooLongError(f"command line over {self.cap} bytes")

    def pending(self) -> bool:
        """Whether a whole line is waiting."""
        return b"\n" in self._buf

    def next_line(self) -> bytes | None:
        """The next line without its LF (and one CR before it), or None.

        Raises:
            LineTooLongError: the line passed the cap.
        """
        end = self._buf.find(b"\n")
        if end < 0:
            return None
        if end >= self.cap:
            self._buf.clear()
            raise LineTooLongError(f"command line over {self.cap} bytes")
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line


def strip_telnet(raw: bytes) -> bytes:
    """Drop Telnet commands (IAC IP, IAC DM, WILL/DO negotiation); IAC IAC is 0xFF."""
    if _IAC not in raw:
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte != _IAC:
            out.append(byte)
            i += 1
            continue
        nxt = raw[i + 1] if i + 1 < len(raw) else None
        if nxt == _IAC:
            out.append(_IAC)
            i += 2
        elif nxt in _TELNET_WITH_OPTION:
            i += 3
        else:
            i += 2
    return bytes(out)


def parse(raw: bytes) -> Command:
    """One line (without its line end) -> a ``Command`` whose verb is in the table.

    The argument is UTF-8 (RFC 2640); bytes that are not stay as surrogate escapes,
    which the path service refuses with a clear error, never a crash.

    Raises:
        BadRequestError: CR or NUL inside the line.
        UnimplementedError: a known verb this server does not implement (502).
        UnknownCommandError: anything else that is not in ``COMMANDS`` (500).
    """
    line = strip_telnet(raw)
    if b"\r" in line or b"\0" in line:
        raise BadRequestError("CR and NUL are not allowed inside a command line")
    text = line.decode("utf-8", "surrogateescape")
    verb, _, arg = text.lstrip(" ").partition(" ")
    verb = verb.upper()
    spec = COMMANDS.get(verb) if verb.isascii() else None
    if spec is None:
        if verb in UNIMPLEMENTED:
            raise UnimplementedError(f"{verb} is not implemented")
        shown = verb[:16].encode("ascii", "backslashreplace").decode("ascii")
        raise UnknownCommandError(f"unknown command {shown!r}" if verb else "empty command")
    return Command(verb, arg, spec)


def check_arg(command: Command) -> None:
    """Apply the table's argument rule.

    Raises:
        BadRequestError: a required argument is missing, or a forbidden one is given.
    """
    rule = command.spec.arg
    if rule == REQUIRED and not command.arg.strip():
        raise BadRequestError(f"{command.verb} needs an argument")
    if rule == FORBIDDEN and command.arg.strip():
        raise BadRequestError(f"{command.verb} takes no argument")


def help_lines() -> list[str]:
    """HELP's body: the verbs, eight to a line."""
    names = sorted(COMMANDS)
    return [" ".join(f"{n:<5}" for n in names[i : i + 8]).rstrip() for i in range(0, len(names), 8)]
