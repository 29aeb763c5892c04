"""The cluster stack's own certificate authority and server certificates (openssl).

Everything lives in `<stack dir>/tls/`, readable by its owner only, and is made once:

    ca.pem                  the CA certificate clients verify against (CASSANDRA_SSL_CA,
                            KAFKA_SSL_CA_LOCATION); the only file meant to leave the folder
    ca.key                  the CA's private key
    <address>.key/.pem      each node's key and certificate, its address as the IP SAN
    <address>.p12           the two as the PKCS12 keystore the JVMs read
    keystore.password       the keystores' random password

A certificate names exactly one address, so a client that verifies host names (both of ours
do) refuses a node that presents another node's certificate.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .launcher import StackError

DAYS = 825  # the longest validity clients accept for a server certificate


@dataclass(frozen=True)
class Tls:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def keystore(self, address: str) -> Path:
        return self.directory / f"{address}.p12"

    def password(self) -> str:
        return (self.directory / "keystore.password").read_text().strip()


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StackError("openssl not found; install it with: apt-get install -y openssl")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise StackError(f"openssl {args[0]} failed (exit {result.returncode}): "
                         f"{result.stderr.strip()[-2000:]}")


def ensure_tls(directory: Path, addresses: Sequence[str]) -> Tls:
    """Make the CA, and a key, certificate and keystore for each address, where missing."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    tls = Tls(directory)
    password_file = directory / "keystore.password"
    if not password_file.is_file() or not tls.ca.is_file():
        # A new CA or password: every node's certificate and keystore is made again with it.
        for old in directory.iterdir():
            old.unlink()
        password_file.write_text(secrets.token_hex(16) + "\n")
        password_file.chmod(0o600)
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                 "-days", str(DAYS), "-keyout", "ca.key", "-out", "ca.pem",
                 "-subj", "/CN=programuser-dagster cluster stack CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    for address in addresses:
        if tls.keystore(address).is_file():
            continue
        ext = directory / f"{address}.ext"
        ext.write_text(f"subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth\n"
                       "keyUsage=critical,digitalSignature,keyEncipherment\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-sha256",
                 "-keyout", f"{address}.key", "-out", f"{address}.csr",
                 "-subj", f"/CN={address}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{address}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", str(DAYS), "-sha256", "-extfile", ext.name,
                 "-out", f"{address}.pem", cwd=directory)
        _openssl("pkcs12", "-export", "-inkey", f"{address}.key", "-in", f"{address}.pem",
                 "-certfile", "ca.pem", "-name", "node", "-out", f"{address}.p12",
                 "-passout", f"file:{password_file.name}", cwd=directory)
        for leftover in (ext, directory / f"{address}.csr"):
            leftover.unlink()
    for path in directory.iterdir():
        path.chmod(0o600)
    tls.ca.chmod(0o644)
    return tls
