"""API keys: when the gateway is given a keys file, only calls carrying one of its keys get in.

The file holds one key per line (blank lines and ``#`` comments are
skipped), typically a Kubernetes Secret mounted as a volume. It is re-read
when it changes, so rotating the Secret needs no restart. Health checks and
reflection stay open: Kubernetes probes and ``grpcurl list`` send no
metadata.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

OPEN_SERVICES = frozenset({health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME})
BEARER_PREFIX = "bearer "
# How often, at most, a call checks whether the keys file changed (one stat).
RELOAD_INTERVAL_S = 5.0
HOW_TO_SEND = "send the metadata 'authorization: Bearer <key>' (or 'x-api-key: <key>')"


class ApiKeysError(ValueError):
    """The keys file cannot serve: missing, unreadable or empty. Raised at start-up only."""


def _digest(key: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent of the keys' lengths too.
    return hashlib.sha256(key.encode()).digest()


def read_keys(path: Path) -> tuple[bytes, ...]:
    """The digests of the file's keys; raises ApiKeysError naming the file when there are none."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeysError(f"PIPESERVE_API_KEYS_FILE={path}: cannot read it ({exc})") from None
    keys = [line.strip() for line in text.splitlines()]
    keys = [key for key in keys if key and not key.startswith("#")]
    if not keys:
        raise ApiKeysError(
            f"PIPESERVE_API_KEYS_FILE={path} lists no keys; put one key per line, or unset it to turn API keys off"
        )
    return tuple(_digest(key) for key in keys)


class ApiKeys:
    """The accepted keys (as digests), refreshed from their file when it changes."""

    def __init__(self, path: Path):
        self._path = Path(path)
        self._signature = self._stat()
        self._digests = read_keys(self._path)
        self._checked_at = time.monotonic()

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, presented: str) -> bool:
        """Constant time in which key matched and in their lengths: every key is compared, by digest."""
        self._refresh()
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self._path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_ino, stat.st_size

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < RELOAD_INTERVAL_S:
            return
        self._checked_at = now
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            self._digests = read_keys(self._path)
        except ApiKeysError as exc:
            # Locking every client out because of a bad edit would be worse than keeping the last good keys.
            log.error("%s; still accepting the %d keys read before", exc, len(self._digests))
            return
        log.info("API keys reloaded from %s: %d keys", self._path, len(self._digests))


def presented_keys(metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[list[str], str | None]:
    """The keys a call carries, and a complaint about a malformed authorization header, if any."""
    keys: list[str] = []
    complaint = None
    for name, value in metadata or ():
        if isinstance(value, bytes):
            continue
        if name == "x-api-key":
            keys.append(value.strip())
        elif name == "authorization":
            if value[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
                keys.append(value[len(BEARER_PREFIX) :].strip())
            else:
                complaint = "the authorization metadata is not 'Bearer <key>'"
    return [key for key in keys if key], complaint


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but health and reflection with UNAUTHENTICATED unless it carries an accepted key.

    The refusal happens before the request message is read or decoded, and
    the key is never logged or echoed.
    """

    def __init__(self, keys: ApiKeys):
        self._keys = keys

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method
        if method.lstrip("/").partition("/")[0] in OPEN_SERVICES:
            return await continuation(handler_call_details)
        keys, complaint = presented_keys(handler_call_details.invocation_metadata)
        if any(self._keys.accepts(key) for key in keys):
            return await continuation(handler_call_details)
        if keys:
            reason = "the API key is not accepted; check that it is current (keys are rotated by the operator)"
        elif complaint:
            reason = f"{complaint}; {HOW_TO_SEND}"
        else:
            reason = f"this gateway requires an API key: {HOW_TO_SEND}"
        return _refusal(await continuation(handler_call_details), method, reason)


def _refusal(handler: grpc.RpcMethodHandler | None, method: str, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as the method's that aborts with UNAUTHENTICATED, reading raw bytes only."""

    async def refuse(_request, context: grpc.aio.ServicerContext):
        log.warning("refused %s from %s: %s", method, context.peer(), reason)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    kind = (handler.request_streaming, handler.response_streaming) if handler else (False, False)
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[kind]
    return factory(refuse)
