"""The channel ``pipeserve generate`` dials the gateway with: plaintext or TLS, with or without an API key.

The key travels as ``authorization: Bearer <key>`` metadata on every call.
It is added by an interceptor rather than as call credentials because grpc
sends call credentials only over TLS, and a gateway may require keys while
TLS ends at a proxy in front of it.
"""

from __future__ import annotations

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
