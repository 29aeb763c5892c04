"""Why a server fails TLS verification, in words: the clients' own errors say it late or not at
all (librdkafka retries a failed handshake until a request times out, naming no cause).
"""

from __future__ import annotations

import socket
import ssl


def verification_failure(
    host: str, port: int, ca_file: str | None, timeout: float = 5.0
) -> str | None:
    """Why the server at host:port fails verification against `ca_file` (its certificate or the
    host name it is for), or None when it passes. OSError (ssl.SSLError is one) when it cannot
    be reached or the handshake fails otherwise: the client's own error reports that."""
    context = ssl.create_default_context(cafile=ca_file)
    try:
        with (socket.create_connection((host, port), timeout=timeout) as sock,
              context.wrap_socket(sock, server_hostname=host)):
            return None
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message or str(exc)
