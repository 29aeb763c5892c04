"""A Docker engine of the project's own, the run image (deploy/Dockerfile) built in it, and the
code location served from that image, as deploy/docker/ describes the deployment.

The engine is Debian's docker.io, started as `dockerd --bridge=none --iptables=false`: no
bridge, no firewall rules, so containers use `--network host` and everything they reach stays
on loopback. Its data root lives under CACHE, outside the clone, so images (and the base
tarball beside them) survive between runs and a second build takes seconds. Only an engine
this module started is stopped by it, and what it leaves (processes, mounts) is checked.

There is no image registry here: the base image is made from Debian packages (debootstrap of
bookworm, `docker import`), the run image from it and PyPI.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PROGRAMUSER_DOCKER_CACHE") or "/var/cache/programuser-dagster")
RUN_DIR = Path("/run/programuser-dagster")  # the engine's socket, pid file and exec root
SOCKET = RUN_DIR / "docker.sock"
DOCKER_HOST = f"unix://{SOCKET}"
DEBIAN_MIRROR = os.environ.get("PROGRAMUSER_DEBIAN_MIRROR") or "http://deb.debian.org/debian"
# What the base image holds beyond debootstrap's minbase: Python 3.11 and its venv, and CA
# certificates (TLS to Kafka, Cassandra and PyPI). Changing this list names a new base.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_IMAGE = "programuser-dagster-base:bookworm-1"
RUN_IMAGE = "programuser-dagster:local"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
# The host's CA bundle, given to the build's pip steps as a secret: where PyPI is reached
# through a TLS-inspecting proxy (as on these machines), its CA is in there.
CA_BUNDLE = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
# Debian's docker.io client, the same release as its dockerd (another client on PATH may be
# newer than this engine's API or want a buildx plugin).
DOCKER_CLI = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
# Where the rootfs is slimmed before it is imported: documentation, locales, package lists and
# the downloaded .debs are not needed at run time (~100 MB).
_SLIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "var/cache/apt/archives", "var/lib/apt/lists")


class DockerMissing(RuntimeError):
    pass


def _require(path: str, package: str) -> str:
    found = shutil.which(path)
    if not found:
        raise DockerMissing(f"{path} is not installed: `make docker-deps` installs Debian's "
                            f"{package}.")
    return found


def docker(*args: str, check: bool = True, capture: bool = True, timeout: float | None = 600,
           env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The docker CLI against this module's engine; `env`: more variables for the CLI (values
    that `--env NAME` takes from it, so that no secret is on a command line). A failure
    raises with the CLI's own message."""
    cli = _require(DOCKER_CLI, "docker.io")
    done = subprocess.run([cli, *args], check=False, text=True, timeout=timeout,
                          capture_output=capture,
                          env={**os.environ, **(env or {}), "DOCKER_HOST": DOCKER_HOST})
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {args[0]} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout or '').strip()[-2000:]}")
    return done


def answers() -> bool:
    """Whether an engine answers on this module's socket."""
    if not SOCKET.exists():
        return False
    return docker("version", "--format", "{{.Server.Version}}", check=False,
                  timeout=30).returncode == 0


@dataclass
class Engine:
    """The engine in use; `started` says whether this process started it (and will stop it)."""

    host: str
    started: bool
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """What a client (the docker CLI, docker-py, DockerRunLauncher) needs to reach it."""
        return {"DOCKER_HOST": self.host}


def _ours(args: list[str]) -> bool:
    """Whether a command line is of this module's engine: dockerd (its data root), containerd
    and the shims (their files in the exec root)."""
    return any(a == str(CACHE / "docker") or a == DOCKER_HOST or a.startswith(f"{RUN_DIR}/")
               for a in args)


def _engine_processes() -> list[int]:
    """dockerd, its containerd and every shim of this module's engine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with suppress(OSError):
                args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if _ours(args):
                    found.append(int(entry.name))
    return found


def _engine_mounts() -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith((f"{RUN_DIR}/", f"{CACHE / 'docker'}/"))]


def leftovers() -> list[str]:
    """Processes and mounts of this module's engine still there (none once it stopped)."""
    return ([f"process {pid}" for pid in _engine_processes()]
            + [f"mount {m}" for m in _engine_mounts()])


def _dockerd_pid() -> int | None:
    """The pid in the engine's pid file, if that process is this module's dockerd."""
    with suppress(OSError, ValueError):
        pid = int((RUN_DIR / "dockerd.pid").read_text().strip())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        if args and Path(args[0]).name == "dockerd" and _ours(args):
            return pid
    return None


@contextmanager
def _start_lock() -> Iterator[None]:
    """One process at a time decides whether to start the engine (and starts it)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with (RUN_DIR / "start.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _wait_answering(process: subprocess.Popen[bytes] | None, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not answers():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"dockerd exited during start-up (code {process.returncode}):"
                               f" {log.read_text(errors='replace')[-1500:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"dockerd did not answer within {timeout_s:.0f} s; see {log}")
        time.sleep(0.3)


@contextmanager
def engine(timeout_s: float = 60) -> Iterator[Engine]:
    """This module's engine: the one already running (or starting) on its socket, else one
    started here and stopped (with its containerd) when the block ends."""
    dockerd = _require(DOCKERD, "docker.io")
    log = CACHE / "dockerd.log"
    with _start_lock():
        if _dockerd_pid() is not None:  # running, or still starting: wait for it
            _wait_answering(None, log, timeout_s)
            process = None
        else:
            (CACHE / "docker").mkdir(parents=True, exist_ok=True)
            _clear()  # what an engine that was killed left: its socket, mounts, shims
            with log.open("ab") as out:
                process = subprocess.Popen(
                    [dockerd, "--bridge=none", "--iptables=false", "--ip6tables=false",
                     "--data-root", str(CACHE / "docker"), "--exec-root", str(RUN_DIR / "exec"),
                     "--pidfile", str(RUN_DIR / "dockerd.pid"), "--host", DOCKER_HOST],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )
            try:
                _wait_answering(process, log, timeout_s)
                # Containers of earlier sessions (this engine's only): none outlives a session.
                docker("container", "prune", "--force", check=False)
            except BaseException:
                _stop(process)
                raise
    if process is None:
        yield Engine(DOCKER_HOST, started=False, log=log)
        return
    try:
        yield Engine(DOCKER_HOST, started=True, log=log)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to dockerd (it stops its containers and its containerd), then whatever of its
    process group is left is killed."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    _clear()


def _clear() -> None:
    """What a stopped engine may leave: shims re-parented away from its group, dockerd's bind
    mount of the default network namespace (exec-root/netns/default), its socket. Only called
    when no dockerd of this module runs."""
    for pid in _engine_processes():
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for mount in reversed(_engine_mounts()):
        subprocess.run(["umount", mount], check=False, capture_output=True)
    with suppress(FileNotFoundError):
        SOCKET.unlink()


def stop_engine(timeout_s: float = 60) -> bool:
    """Stop this module's engine if one runs (one a killed session left, say); True if it did."""
    with _start_lock():
        pid = _dockerd_pid()
        if pid is None:
            found = bool(_engine_processes() or _engine_mounts())
            _clear()
            return found
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        _clear()
        return True


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def base_tarball() -> Path:
    """The base rootfs as a tar under CACHE, made by debootstrap once (~1 min)."""
    tarball = CACHE / f"{BASE_IMAGE.replace(':', '-')}.tar"
    if tarball.exists():
        return tarball
    debootstrap = _require("debootstrap", "debootstrap")
    with tempfile.TemporaryDirectory(prefix="programuser-rootfs-", dir=CACHE) as work:
        rootfs = Path(work) / "rootfs"
        done = subprocess.run(
            [debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
             "bookworm", str(rootfs), DEBIAN_MIRROR],
            check=False, capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap of the base image from {DEBIAN_MIRROR} failed "
                               f"({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
        for part in _SLIM:
            target = rootfs / part
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        partial = tarball.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(rootfs, arcname=".")
        partial.rename(tarball)  # a tarball is only ever whole
    return tarball


def base_image() -> str:
    """The base image in the engine, imported from the cached tarball if it is not there."""
    if not image_exists(BASE_IMAGE):
        with base_tarball().open("rb") as tar:
            subprocess.run([_require(DOCKER_CLI, "docker.io"), "import", "-", BASE_IMAGE],
                           stdin=tar, check=True, capture_output=True,
                           env={**os.environ, "DOCKER_HOST": DOCKER_HOST})
    return BASE_IMAGE


def build_image(tag: str = RUN_IMAGE) -> str:
    """deploy/Dockerfile built from the repository, on the base image; returns the tag. The
    build's steps use the host's network, so pip reaches its index."""
    base = base_image()
    secret = ["--secret", f"id=ca_bundle,src={CA_BUNDLE}"] if CA_BUNDLE.is_file() else []
    result = subprocess.run(
        [_require(DOCKER_CLI, "docker.io"), "build", "--network", "host", "--progress", "plain",
         "--build-arg", f"BASE={base}", *secret, "-f", str(DOCKERFILE), "-t", tag, str(REPO)],
        check=False, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "DOCKER_HOST": DOCKER_HOST, "DOCKER_BUILDKIT": "1"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker build failed:\n{(result.stdout + result.stderr)[-4000:]}")
    # The images the tag moved away from: the cache stays bounded over many builds.
    docker("image", "prune", "--force", check=False)
    return tag


def image_size_bytes(tag: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


def code_server(image: str, port: int, env: Mapping[str, str], name: str,
                labels: Sequence[str] = ()) -> str:
    """The code location served by the image (`dagster api grpc`) on 127.0.0.1:`port` with
    host networking; returns the container's id. The variables in `env` are the container's
    whole environment besides the image's own; their values reach docker through its own
    environment (`--env NAME`), never its command line."""
    args = ["run", "--detach", "--network", "host", "--name", name,
            "--label", "programuser-dagster/role=code-server"]
    for label in labels:
        args += ["--label", label]
    for key in env:
        args += ["--env", key]
    args += [image, "dagster", "api", "grpc", "--host", "127.0.0.1", "--port", str(port),
             "--module-name", "programuser_dagster.definitions"]
    return docker(*args, env=env).stdout.strip()


def wait_serving(container: str, port: int, timeout_s: float = 120) -> None:
    """Until the code server in `container` answers `dagster api grpc-health-check`."""
    deadline = time.monotonic() + timeout_s
    while docker("exec", container, "dagster", "api", "grpc-health-check", "--host",
                 "127.0.0.1", "--port", str(port), check=False).returncode != 0:
        state = docker("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
        if state != "running":
            logs = docker("logs", "--tail", "40", container, check=False)
            raise RuntimeError(f"the code server container is {state}:\n"
                               f"{logs.stdout}{logs.stderr}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the code server did not answer within {timeout_s:.0f} s")
        time.sleep(1)


def env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of an env file such as deploy/docker/daemon.env (no quoting)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def remove_containers(label: str) -> list[str]:
    """Remove (forcibly) every container with `label` (key=value); returns their ids."""
    ids = docker("ps", "--all", "--quiet", "--filter", f"label={label}").stdout.split()
    if ids:
        docker("rm", "--force", "--volumes", *ids)
    return ids


def main() -> None:
    """`python -m devtools.stack.docker build [TAG]` (`make image`): the run image
    in this module's engine (started for the build and stopped after, unless it was running);
    `... stop` (`make docker-down`): stop that engine, whoever started it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devtools.stack.docker")
    parser.add_argument("action", choices=["build", "stop"])
    parser.add_argument("tag", nargs="?", default=RUN_IMAGE)
    args = parser.parse_args()
    if args.action == "stop":
        print("stopped the engine" if stop_engine() else "no engine of ours was running")
        return
    began = time.monotonic()
    with engine() as running:
        tag = build_image(args.tag)
        print(f"built {tag} in {time.monotonic() - began:.1f} s "
              f"({image_size_bytes(tag) / 1e6:.0f} MB) in the engine at {running.host} "
              f"(data root {CACHE / 'docker'}"
              f"{'; stopped again' if running.started else ''})")


if __name__ == "__main__":
    main()
