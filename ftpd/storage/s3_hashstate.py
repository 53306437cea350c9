"""Hashers whose running state can be saved and restored on any node (md5, sha1).

A resume must answer the digest of the bytes already held, but the parts of a pending
multipart upload cannot be read back.  So the upload keeps the hash state at each part
boundary instead.  hashlib cannot export its state, so these hashers run on libcrypto's
low-level public functions (``MD5_Init``/``MD5_Update``/``MD5_Final``, the same for SHA1)
over a context this module owns: ``MD5_CTX`` and ``SHA_CTX`` are public structs of
``<openssl/md5.h>`` and ``<openssl/sha.h>`` (the chaining values, the byte count, the
unhashed tail of the last block), the same in OpenSSL 1.1 and 3, so their bytes go into
the upload's state and back into a hasher on another node.  ctypes releases the GIL
during each call, so hashing runs beside the other threads, as hashlib's does.

Nothing is trusted blindly: at first use a self-test checks every digest against
hashlib on data of many lengths, and a saved state records the digest of its prefix,
which a restore recomputes and compares.  Where libcrypto or a function is missing, or
the self-test fails, ``new`` and ``restore`` return None, and a resume of that digest
starts from byte 0 (safe).  blake2b has no such state: it always starts from 0.

This module must never read or write memory it did not allocate itself.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

#: name -> (context size in bytes, digest size, its Init, Update and Final functions).
#: The sizes are those of the public structs (md5.h: 4+2 words, 16-word block, num;
#: sha.h: 5+2 words, 16-word block, num).
_KINDS = {
    "md5": (92, 16, "MD5_Init", "MD5_Update", "MD5_Final"),
    "sha1": (96, 20, "SHA1_Init", "SHA1_Update", "SHA1_Final"),
}
#: Room past the struct, so that a libcrypto with a larger one could never write past
#: what we allocated (the self-test would then fail, and nothing would be saved).
_SLACK = 64
#: Saved states carry this, so that a change of format is never misread.
_FORMAT = "openssl-ctx-1"

_lock = threading.Lock()
_checked: dict[str, bool] = {}
_lib: Any = None


def _libcrypto() -> Any:
    """A libcrypto with the low-level digest functions, or None."""
    global _lib
    if _lib is None:
        _lib = False
        name = ctypes.util.find_library("crypto")
        try:
            lib = ctypes.CDLL(name or "libcrypto.so.3")
            for _size, _dsize, init, update, final in _KINDS.values():
                getattr(lib, init).argtypes = [ctypes.c_void_p]
                getattr(lib, update).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
                getattr(lib, final).argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            _lib = lib
        except (OSError, AttributeError) as exc:
            logger.info("hash states cannot be saved here (%s): resumes restart from 0", exc)
    return _lib or None


class SavedHasher:
    """An md5 or sha1 hasher with hashlib's interface whose state is plain bytes."""

    def __init__(self, name: str, ctx: bytes | None = None) -> None:
        lib = _libcrypto()
        self._size, self.digest_size, init, update, final = _KINDS[name]
        self.name = name
        self._update, self._final = getattr(lib, update), getattr(lib, final)
        self._ctx = ctypes.create_string_buffer(self._size + _SLACK)
        if ctx is None:
            getattr(lib, init)(self._ctx)
        else:
            ctypes.memmove(self._ctx, ctx, self._size)

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        if view.readonly:
            self._update(self._ctx, bytes(view), view.nbytes)
            return
        buf = (ctypes.c_char * view.nbytes).from_buffer(view)
        try:
            self._update(self._ctx, buf, view.nbytes)
        finally:
            del buf

    def copy(self) -> SavedHasher:
        return SavedHasher(self.name, self._ctx.raw[: self._size])

    def digest(self) -> bytes:
        ctx = ctypes.create_string_buffer(self._ctx.raw, len(self._ctx))  # Final spends it
        out = ctypes.create_string_buffer(self.digest_size)
        self._final(out, ctx)
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()

    def state(self) -> dict[str, str]:
        """What ``restore`` needs, JSON-ready: the digest's name, the context's bytes
        and the digest of what was hashed so far (checked on restore)."""
        return {
            "name": self.name,
            "format": _FORMAT,
            "ctx": base64.b64encode(self._ctx.raw[: self._size]).decode("ascii"),
            "digest": self.hexdigest(),
        }


def supported(name: str) -> bool:
    """Whether ``name`` hashers can be saved and restored here (a self-test against
    hashlib at first call, for each digest)."""
    with _lock:
        if name not in _checked:
            try:
                _checked[name] = name in _KINDS and _libcrypto() is not None and _self_test(name)
            except Exception as exc:  # noqa: BLE001 - any surprise means "not here"
                logger.info("hash state of %s cannot be saved here: %s", name, exc)
                _checked[name] = False
        return _checked[name]


def _self_test(name: str) -> bool:
    data = bytes(range(256)) * 9
    for cut in (0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, len(data)):
        ours = SavedHasher(name)
        ours.update(data[:cut])
        moved = SavedHasher(name, base64.b64decode(ours.state()["ctx"]))
        moved.update(bytearray(data[cut:]))
        if moved.hexdigest() != hashlib.new(name, data, usedforsecurity=False).hexdigest():
            return False
    return True


def new(name: str) -> SavedHasher | None:
    """A fresh hasher whose state can be saved, or None where that is not possible."""
    return SavedHasher(name) if supported(name) else None


def restore(state: Any, name: str | None = None) -> SavedHasher | None:
    """The hasher a ``state()`` was taken from, on any node; None when it cannot be
    used here, is of another digest than ``name``, or does not give back the digest it
    recorded."""
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        return None
    kind = state.get("name")
    if not isinstance(kind, str) or (name is not None and kind != name) or not supported(kind):
        return None
    try:
        raw = base64.b64decode(str(state["ctx"]), validate=True)
    except (KeyError, ValueError):
        return None
    if len(raw) != _KINDS[kind][0]:
        return None
    hasher = SavedHasher(kind, raw)
    return hasher if hasher.hexdigest() == state.get("digest") else None
