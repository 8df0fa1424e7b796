"""How the client commands (``pipeserve generate``, ``pipeserve pipeline``) call the gateway.

The channel is plaintext or TLS, with or without an API key; every failure
becomes one line on stderr and exit status 1, never a traceback. The key travels as ``authorization: Bearer <key>`` metadata on every call.
It is added by an interceptor rather than as call credentials because grpc
sends call credentials only over TLS, and a gateway may require keys while
TLS ends at a proxy in front of it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import grpc

from pipeserve.tls import channel_credentials


class _ApiKeyMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, api_key: str):
        self._metadata = (("authorization", f"Bearer {api_key}"),)

    def _with_key(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_key(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_key(client_call_details), request)


def open_channel(
    target: str,
    *,
    api_key: str | None = None,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> grpc.Channel:
    """TLS when a CA or a client certificate is given (ValueError naming the flag for a bad file)."""
    credentials = channel_credentials(
        ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key, settings=("--tls-ca", "--tls-cert", "--tls-key")
    )
    channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    if api_key:
        return grpc.intercept_channel(channel, _ApiKeyMetadata(api_key))
    return channel


class ClientError(Exception):
    """A problem with what was asked, found before any request was sent."""


def call_gateway(args: argparse.Namespace, body: Callable[[grpc.Channel], str]) -> int:
    """Dial the gateway the flags name and run body on the channel; the exit status.

    body's returned line goes to stderr (a summary). A ClientError or a bad
    flag value, and a gRPC error (with a hint at its usual cause), become one
    line on stderr and status 1; Ctrl-C is 130.
    """
    try:
        channel = open_channel(
            args.target,
            api_key=args.api_key or os.environ.get("PIPESERVE_API_KEY"),
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
        with channel:
            summary = body(channel)
    except (ClientError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        tls = any(value is not None for value in (args.tls_ca, args.tls_cert, args.tls_key))
        print(describe_rpc_error(exc, args.target, tls=tls), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more can be written, and Python
        # must not fail again flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if summary:
        print(summary, file=sys.stderr)
    return 0


def describe_rpc_error(error: grpc.RpcError, target: str, tls: bool = False) -> str:
    """One line for the error, and a hint when the usual cause is on the caller's side (tls: dialled with TLS)."""
    code = error.code()
    line = f"error: {code.name}: {error.details()}"
    details = (error.details() or "").lower()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        line += "\n(pass --api-key, or set PIPESERVE_API_KEY, with a key the gateway's operator gave you)"
    elif code == grpc.StatusCode.UNAVAILABLE and ("ssl" in details or "handshake" in details or tls):
        line += (
            f"\n(is a gateway running at {target}? If so, check TLS: --tls-ca must have signed its certificate, "
            "and a gateway with mutual TLS wants --tls-cert and --tls-key)"
        )
    elif code == grpc.StatusCode.UNAVAILABLE and "connect" in details:
        line += f"\n(is a gateway running at {target}? start the stack with `pipeserve serve-all`, or pass --target)"
    return line
