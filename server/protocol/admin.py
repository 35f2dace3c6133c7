"""Who may change what is served: the gate in front of model load and unload.

- With `--admin-token-file`, a call needs `authorization: Bearer <token>` (gRPC metadata or an
  HTTP header) whose sha256 is a line of the file: none (or not Bearer) is UNAUTHENTICATED / 401,
  a token not in the file PERMISSION_DENIED / 403. The token's hash is compared with every stored
  hash in constant time, and the token itself is never logged, echoed or kept.
- Without it, load and unload are served only when every port serving them listens on loopback
  (only this host's processes can reach them); elsewhere PERMISSION_DENIED, saying how to enable.

The file: one `sha256:<64 hex> [name]` a line (the name says in the log which admin acted), `#`
comments and blank lines; a regular file (not a link), at most MAX_FILE_BYTES and MAX_LINES, UTF-8.
It is re-read when its inode, size or times change, looked at on use at most every RECHECK_S
seconds, off the event loop. A check on use rather than on SIGHUP: SIGHUP already means "look for
new versions" here, a rotation takes effect without anyone signalling the process, and an idle
server never looks at the file. A file that turns bad keeps the tokens read before (logged once).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vae_serve.errors import PermissionDenied, StartError, Unauthenticated

if TYPE_CHECKING:
    from vae_serve.server.settings import Settings

__all__ = [
    "MAX_TOKEN",
    "NAME",
    "Admin",
    "ControlGate",
    "TokenFile",
    "TokenFileError",
    "authorization_of",
    "check_token",
    "hash_line",
    "is_loopback",
    "new_token",
    "read_token_file",
    "serves_loopback_only",
]

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 128 * 1024  # about 900 named tokens: an admin list, not a user database
MAX_LINES = 1024
MAX_TOKEN = 1024  # characters; a longer one is no token of ours and is not even hashed
MIN_NEW_TOKEN = 16  # what hash-token takes: anything shorter could be guessed
RECHECK_S = 1.0
_NONE = object()
HEADER = "authorization"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")  # an admin's name: plain in a log line
_LINE = re.compile(rf"sha256:([0-9a-fA-F]{{64}})(?:[ \t]+({NAME.pattern}))?")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what gRPC metadata and an HTTP header carry as is
_FORMAT = "sha256:<64 hex digits> and an optional name"
NO_HEADER = "model load and unload need 'authorization: Bearer <token>', a token of --admin-token-file"
NOT_BEARER = "authorization: send one 'Bearer <token>'"
WRONG_TOKEN = "this token may not load or unload models"
NOT_ON_LOOPBACK = (
    "model load and unload are refused: the server listens beyond loopback ({hosts}) and has no "
    "--admin-token-file; give it one (lines from `vae-serve hash-token --new`), or listen on "
    "127.0.0.1 / ::1 only (--host, --http-host)"
)


class TokenFileError(ValueError):
    """The token file cannot be used; one line naming the file and why (never a line's text)."""


@dataclass(frozen=True, slots=True)
class Admin:
    digest: bytes  # sha256 of the token
    name: str  # as the file names it, else the hash's start: what the log says


def hash_line(token: str, name: str | None = None) -> str:
    """The token file's line for `token`."""
    line = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    return f"{line} {name}" if name else line


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 random bits


def check_token(token: str) -> str:
    """`token` if the server could take it (visible ASCII, MIN_NEW_TOKEN to MAX_TOKEN characters);
    raises ValueError saying which rule it breaks, without echoing it."""
    if not _TOKEN.fullmatch(token):
        raise ValueError("a token is visible ASCII characters, no spaces")
    if not MIN_NEW_TOKEN <= len(token) <= MAX_TOKEN:
        raise ValueError(f"a token is {MIN_NEW_TOKEN} to {MAX_TOKEN} characters (--new makes one)")
    return token


def read_token_file(path: Path) -> tuple[Admin, ...]:
    """The admins the file lists; raises TokenFileError. Opened without blocking (a FIFO is
    refused, not waited on) and read no further than its cap. A symbolic link to a regular file is
    followed: the operator names the file, and Kubernetes mounts a Secret's keys as links."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TokenFileError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TokenFileError(f"{path}: not a regular file")
    with open(fd, "rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise TokenFileError(f"{path}: over {MAX_FILE_BYTES} bytes; not a token file")
    try:
        lines = data.decode().splitlines()
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if len(lines) > MAX_LINES:
        raise TokenFileError(f"{path}: over {MAX_LINES} lines; not a token file")
    return _parse(path, lines)


def _parse(path: Path, lines: list[str]) -> tuple[Admin, ...]:
    admins: dict[bytes, tuple[int, Admin]] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = _LINE.fullmatch(line)
        if found is None:  # its text may be a token pasted by mistake: never shown
            raise TokenFileError(
                f"{path}: line {number} is not {_FORMAT} (letters, digits, '.', '_', '@', '+', '-'); "
                f"`vae-serve hash-token` makes the line for a token"
            )
        hexdigest, name = found.group(1).lower(), found.group(2)
        digest = bytes.fromhex(hexdigest)
        if digest in admins:
            raise TokenFileError(f"{path}: line {number} repeats the hash of line {admins[digest][0]}")
        admins[digest] = (number, Admin(digest, name or f"sha256:{hexdigest[:12]}"))
    return tuple(admin for _, admin in admins.values())


def _signature(path: Path) -> tuple[int, ...] | None:
    """What changes when the file is replaced or rewritten, through any links (a Secret volume
    swaps the directory its links point into); None when it is gone."""
    try:
        s = os.stat(path)
    except OSError:
        return None
    return (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)


class TokenFile:
    """The admins of `--admin-token-file`, re-read when it changes (checked on use, at most every
    `recheck_s`); a file that turns bad keeps the previous admins, logged once per change."""

    def __init__(self, path: Path, recheck_s: float = RECHECK_S) -> None:
        """Reads the file now (start-up, before serving); raises TokenFileError."""
        self.path, self.recheck_s = path, recheck_s
        self._seen = _signature(path)
        self.admins = read_token_file(path)
        self._checked = time.monotonic()
        self._failed: object = _NONE  # the signature of the file last refused
        self._lock: asyncio.Lock | None = None  # made on the serving loop, at first use

    async def current(self) -> tuple[Admin, ...]:
        if time.monotonic() - self._checked >= self.recheck_s:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:  # callers at once share one look
                if time.monotonic() - self._checked >= self.recheck_s:
                    await asyncio.to_thread(self._refresh)
                    self._checked = time.monotonic()
        return self.admins

    def _refresh(self) -> None:
        """In a worker thread: re-read the file if it changed since it was last read."""
        seen = _signature(self.path)
        if seen == self._seen or seen == self._failed:
            return
        try:
            admins = read_token_file(self.path)
        except TokenFileError as exc:
            self._failed = seen
            log.warning("admin tokens not reloaded, the %d read before stay: %s", len(self.admins), exc)
            return
        self.admins, self._seen, self._failed = admins, seen, _NONE
        log.info("admin tokens reloaded from %s: %d", self.path, len(admins))


def authorization_of(metadata: Iterable[tuple[str, Any]] | None) -> list[str]:
    """The `authorization` values of a call's gRPC metadata."""
    return [value for key, value in metadata or () if key == HEADER]


def _bearer(values: Sequence[object]) -> str:
    """The token of the one `Bearer` credential sent; raises Unauthenticated."""
    if not values:
        raise Unauthenticated(NO_HEADER)
    scheme, _, token = values[0].strip().partition(" ") if isinstance(values[0], str) else ("", "", "")
    if len(values) > 1 or scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(NOT_BEARER)
    return token.strip()


def _match(token: str, admins: Sequence[Admin]) -> Admin | None:
    """The admin whose hash is the token's: every hash compared, in constant time each, whether
    or not one matched before."""
    digest = hashlib.sha256(token.encode()).digest()
    found = None
    for admin in admins:
        same = hmac.compare_digest(digest, admin.digest)
        if same and found is None:
            found = admin
    return found


def is_loopback(host: str) -> bool:
    """Whether listening on `host` is reachable from this machine alone."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a wildcard (""), or a name that could resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _control_hosts(settings: Settings) -> list[str]:
    """The addresses of the ports that serve load and unload: gRPC, and HTTP when it is on."""
    hosts = [settings.host]
    if settings.http:
        hosts.append(settings.http_host if settings.http_host is not None else settings.host)
    return hosts


def serves_loopback_only(settings: Settings) -> bool:
    return all(is_loopback(host) for host in _control_hosts(settings))


class ControlGate:
    """Says who a load or unload comes from, or refuses it (see the module docstring)."""

    def __init__(self, tokens: TokenFile | None, loopback_only: bool, hosts: str = "") -> None:
        self.tokens, self.loopback_only, self.hosts = tokens, loopback_only, hosts

    @classmethod
    def from_settings(cls, settings: Settings) -> ControlGate:
        """The gate the settings ask for, the token file read; raises StartError in one line."""
        hosts = ", ".join(dict.fromkeys(_control_hosts(settings)))
        loopback = serves_loopback_only(settings)
        path = settings.admin_token_file
        if path is None:
            if not loopback:
                log.warning("%s", NOT_ON_LOOPBACK.format(hosts=hosts))
            return cls(None, loopback, hosts)
        try:
            tokens = TokenFile(path)
        except TokenFileError as exc:
            raise StartError(f"--admin-token-file {exc}") from None
        log.info("model load and unload need an admin token: %d in %s", len(tokens.admins), path)
        return cls(tokens, loopback, hosts)

    async def admit(self, authorization: Sequence[object]) -> str:
        """Who asks (for the log), given the call's `authorization` values; raises
        Unauthenticated or PermissionDenied."""
        if self.tokens is None:
            if self.loopback_only:
                return "a caller on loopback (no --admin-token-file)"
            raise PermissionDenied(NOT_ON_LOOPBACK.format(hosts=self.hosts))
        token = _bearer(authorization)
        if len(token) > MAX_TOKEN:
            raise PermissionDenied(WRONG_TOKEN)
        admin = _match(token, await self.tokens.current())
        if admin is None:
            raise PermissionDenied(WRONG_TOKEN)
        return f"admin {admin.name}"
