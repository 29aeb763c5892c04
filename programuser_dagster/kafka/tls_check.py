"""Why a server fails TLS verification, in words: the clients' own errors say it late or not at
all (librdkafka retries a failed handshake until a request times out, naming no cause).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path


def verification_failure(
    host: str, port: int, ca: str | None, timeout: float = 5.0
) -> str | None:
    """Why the server at host:port fails verification against `ca` (a CA file, a folder of
    them, or None / "probe" for the system's; librdkafka's ssl.ca.location takes the same) -
    its certificate or the host name it is for -, or None when it passes. OSError (ssl.SSLError
    is one) when it cannot be reached or the handshake fails otherwise: the client's own error
    reports that."""
    if ca in (None, "", "probe"):
        context = ssl.create_default_context()
    elif Path(ca).is_dir():
        context = ssl.create_default_context(capath=ca)
    else:
        context = ssl.create_default_context(cafile=ca)
    try:
        with (socket.create_connection((host, port), timeout=timeout) as sock,
              context.wrap_socket(sock, server_hostname=host)):
            return None
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message or str(exc)
