"""Certificates made for a test (trustme): a CA, a server certificate for 127.0.0.1/localhost, client
certificates, and a second, untrusted CA with a client certificate of its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # Signed by a CA the servers do not trust.
    stranger_ca: Path
    stranger_cert: Path
    stranger_key: Path


def write_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca, stranger_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("pipeserve-gateway")
    stranger = stranger_ca.issue_cert("pipeserve-gateway")

    def write(name: str, blob: trustme.Blob) -> Path:
        path = directory / name
        blob.write_to_path(str(path))
        return path

    def chain(name: str, leaf: trustme.LeafCert) -> Path:
        path = directory / name
        path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        return path

    return TlsFiles(
        ca=write("ca.pem", ca.cert_pem),
        server_cert=chain("server.pem", server),
        server_key=write("server.key", server.private_key_pem),
        client_cert=chain("client.pem", client),
        client_key=write("client.key", client.private_key_pem),
        stranger_ca=write("stranger-ca.pem", stranger_ca.cert_pem),
        stranger_cert=chain("stranger.pem", stranger),
        stranger_key=write("stranger.key", stranger.private_key_pem),
    )
