"""A throwaway PostgreSQL server for Dagster's storage, as deploy/dagster.yaml uses it.

For the deployment test and the bench's production-path figures: Debian's postgresql package
(`make deps` installs it), a data directory of its own, trust authentication on 127.0.0.1 and
a free port, a database `dagster`; everything is removed when the block ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresMissing(RuntimeError):
    pass


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise PostgresMissing(
            "PostgreSQL is not installed: `make deps` installs Debian's postgresql.")
    return found[-1].parent


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; CI runs as root, so the server runs as `postgres`.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def free_port() -> int:
    """A TCP port of 127.0.0.1 free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server(timeout_s: float = 60) -> Iterator[dict[str, str]]:
    """Start the server; yields deploy/dagster.yaml's variables (DAGSTER_PG_*) for it, with
    its port as DAGSTER_PG_PORT."""
    bin_dir, port = pg_bin(), free_port()
    data = Path(tempfile.mkdtemp(prefix="programuser-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    server = None
    try:
        subprocess.run(
            _as_postgres([str(bin_dir / "initdb"), "-D", str(data / "db"), "-A", "trust",
                          "-U", "postgres"]),
            check=True, capture_output=True,
        )
        server = subprocess.Popen(
            _as_postgres([str(bin_dir / "postgres"), "-D", str(data / "db"), "-p", str(port),
                          "-k", str(data), "-c", "listen_addresses=127.0.0.1"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            if server.poll() is not None:
                raise RuntimeError("PostgreSQL exited during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not answer within {timeout_s:.0f} s")
            time.sleep(0.5)
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
             "dagster"],
            check=True, capture_output=True,
        )
        yield {
            "DAGSTER_PG_USERNAME": "postgres",
            "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_DB": "dagster",
            "DAGSTER_PG_PORT": str(port),
        }
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def deploy_yaml(repo: Path, folder: str = "") -> str:
    """The production instance config deploy/<folder>/dagster.yaml; it takes the server's
    address, port and login from the DAGSTER_PG_* variables postgres_server() yields."""
    return (repo / "deploy" / folder / "dagster.yaml").read_text()


def fresh_database(env: dict[str, str], name: str) -> dict[str, str]:
    """A new, empty database on the server of `env`; `env` pointing at it."""
    subprocess.run(
        [str(pg_bin() / "createdb"), "-h", env["DAGSTER_PG_HOST"], "-p", env["DAGSTER_PG_PORT"],
         "-U", env["DAGSTER_PG_USERNAME"], name],
        check=True, capture_output=True,
    )
    return {**env, "DAGSTER_PG_DB": name}
