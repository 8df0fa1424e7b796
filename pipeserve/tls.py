"""TLS credentials for pipeserve's gRPC servers and channels, built from PEM files named in settings.

One place reads the files, so a missing or unreadable one is reported at
start-up with the setting that named it, not as a handshake failure later.
"""

from __future__ import annotations

from pathlib import Path

import grpc


def read_pem(path: Path, setting: str) -> bytes:
    """The file's bytes; OSError becomes a ValueError naming the setting to fix."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}={path}: cannot read it ({exc.strerror or exc})") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"{setting}={path}: not a PEM file (no '-----BEGIN' line)")
    return data


def server_credentials(
    *,
    cert_file: Path | None,
    key_file: Path | None,
    client_ca_file: Path | None,
    settings_prefix: str,
) -> grpc.ServerCredentials | None:
    """TLS for a server, mutual when client_ca_file is given; None (plaintext) when no certificate is given.

    settings_prefix is the environment prefix of the three settings (e.g.
    "PIPESERVE_TLS_"), so that errors name exactly what the operator set.
    """
    if cert_file is None and key_file is None:
        if client_ca_file is not None:
            raise ValueError(
                f"{settings_prefix}CLIENT_CA_FILE is set but {settings_prefix}CERT_FILE and "
                f"{settings_prefix}KEY_FILE are not; client certificates need TLS, so set both"
            )
        return None
    if cert_file is None or key_file is None:
        missing = "CERT_FILE" if cert_file is None else "KEY_FILE"
        raise ValueError(
            f"TLS needs both {settings_prefix}CERT_FILE and {settings_prefix}KEY_FILE; set {settings_prefix}{missing}"
        )
    pair = (read_pem(key_file, f"{settings_prefix}KEY_FILE"), read_pem(cert_file, f"{settings_prefix}CERT_FILE"))
    client_ca = read_pem(client_ca_file, f"{settings_prefix}CLIENT_CA_FILE") if client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def channel_credentials(
    *,
    ca_file: Path | None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    settings: tuple[str, str, str],
) -> grpc.ChannelCredentials | None:
    """TLS for a client channel, presenting a client certificate when one is given; None means plaintext.

    settings names the (CA, certificate, key) settings for error messages.
    A client certificate without a CA still turns TLS on, verified against
    the system's roots.
    """
    ca_setting, cert_setting, key_setting = settings
    if (cert_file is None) != (key_file is None):
        missing = cert_setting if cert_file is None else key_setting
        raise ValueError(f"a client certificate needs both {cert_setting} and {key_setting}; set {missing}")
    if ca_file is None and cert_file is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca_file, ca_setting) if ca_file else None,
        private_key=read_pem(key_file, key_setting) if key_file else None,
        certificate_chain=read_pem(cert_file, cert_setting) if cert_file else None,
    )


def add_port(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind address with TLS when credentials are given, in plaintext otherwise; returns the port."""
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}; is another process using the port?") from exc
