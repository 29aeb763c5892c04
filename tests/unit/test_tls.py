"""The cluster stack's certificates (devtools/stack/tls.py) and the TLS check the Kafka resource
makes before its first client (programuser_dagster/kafka/tls_check.py), against a TLS listener on
loopback."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.stack.tls import ensure_tls
from programuser_dagster.kafka.tls_check import verification_failure


@contextlib.contextmanager
def tls_listener(directory: Path, certificate_for: str, host: str) -> Iterator[int]:
    """A listener on host presenting the stack's certificate for `certificate_for`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    name = directory / certificate_for
    context.load_cert_chain(f"{name}.pem", f"{name}.key")
    server = socket.create_server((host, 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


# `make test` runs tests side by side; this module's stay on one worker so that
# the certificates are made once.
pytestmark = pytest.mark.xdist_group("test_tls")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    ensure_tls(directory, ["127.0.0.1"])
    return directory


def test_a_node_certificate_verifies_against_the_stack_ca(certificates: Path) -> None:
    with tls_listener(certificates, "127.0.0.1", "127.0.0.1") as port:
        assert verification_failure("127.0.0.1", port, str(certificates / "ca.pem")) is None


def test_another_ca_is_named_as_the_cause(certificates: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ensure_tls(other, [])
    with tls_listener(certificates, "127.0.0.1", "127.0.0.1") as port:
        why = verification_failure("127.0.0.1", port, str(other / "ca.pem"))
    assert why is not None and "issuer" in why


def test_a_certificate_for_another_address_is_a_host_name_mismatch(certificates: Path) -> None:
    with tls_listener(certificates, "127.0.0.1", "127.0.0.2") as port:
        why = verification_failure("127.0.0.2", port, str(certificates / "ca.pem"))
    assert why is not None and "mismatch" in why


def test_a_server_that_cannot_be_reached_is_left_to_the_client(certificates: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    with pytest.raises(OSError):
        verification_failure("127.0.0.1", port, str(certificates / "ca.pem"))


def test_keys_and_the_keystore_password_are_the_owners_only(certificates: Path) -> None:
    assert certificates.stat().st_mode & 0o777 == 0o700
    for path in certificates.iterdir():
        expected = 0o644 if path.name == "ca.pem" else 0o600
        assert path.stat().st_mode & 0o777 == expected, path.name


def test_a_new_ca_makes_every_node_certificate_again(tmp_path: Path) -> None:
    ensure_tls(tmp_path, ["127.0.0.1"])
    (tmp_path / "ca.pem").unlink()
    ensure_tls(tmp_path, ["127.0.0.1"])
    with tls_listener(tmp_path, "127.0.0.1", "127.0.0.1") as port:
        assert verification_failure("127.0.0.1", port, str(tmp_path / "ca.pem")) is None
