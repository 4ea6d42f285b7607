"""A throwaway PostgreSQL cluster for pglock's tests, examples and
benchmark, like the Rust tests' ``tests/support/cluster.rs``: ``initdb`` in
a temporary directory (as the ``postgres`` user when running as root), a
Unix socket there, stopped and removed when the process exits (a watchdog
stops it even if this process is killed).

Server binaries are looked up in ``$PGLOCK_PG_BIN``, then on ``PATH``, then
in ``/usr/lib/postgresql/*/bin`` (newest first).
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from typing import List, Optional


def find_bin() -> str:
    """The directory of ``initdb`` and ``pg_ctl``."""
    env = os.environ.get("PGLOCK_PG_BIN")
    if env:
        if os.path.exists(os.path.join(env, "initdb")):
            return env
        raise RuntimeError(f"PGLOCK_PG_BIN={env} holds no initdb")
    candidates: List[str] = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and os.path.exists(os.path.join(d, "initdb")) and os.path.exists(
            os.path.join(d, "pg_ctl")
        ):
            candidates.append(os.path.dirname(os.path.realpath(os.path.join(d, "initdb"))))
    debian = sorted(
        (d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(d + "/initdb")),
        key=lambda d: [int(p) if p.isdigit() else p for p in d.split("/")[4].split(".")],
    )
    candidates.extend(reversed(debian))
    if not candidates:
        raise RuntimeError(
            "no PostgreSQL server binaries found (initdb, pg_ctl). Install them "
            "(Debian/Ubuntu: `apt-get install -y postgresql`), point PGLOCK_PG_BIN at "
            "their directory, or set DATABASE_URL to a running server"
        )
    return candidates[0]


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A running throwaway cluster; :attr:`url` connects to it."""

    def __init__(self, *, durable: bool = False, tcp: bool = False) -> None:
        self.bin = find_bin()
        self.as_postgres = running_as_root()
        self.dir = os.path.join(
            tempfile.gettempdir(), f"pglock-py-{os.getpid()}-{uuid.uuid4().hex}"
        )
        os.makedirs(self.dir)
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port() if tcp else 5432
        self.tcp = tcp
        self._stopped = False
        self._watchdog()
        self._run(
            "initdb",
            ["-D", self.data, "-U", "postgres", "--auth=trust", "-N", "-E", "UTF8",
             "--locale=C"],
        )
        fast = "" if durable else "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
        listen = "127.0.0.1" if tcp else ""
        with open(os.path.join(self.data, "postgresql.auto.conf"), "w") as f:
            f.write(
                f"{fast}listen_addresses = '{listen}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.dir}'\nmax_connections = 300\n"
                "shared_buffers = 128MB\nlog_min_messages = fatal\n"
            )
        self._ctl(["start", "-w", "-t", "60"])
        atexit.register(self.stop)

    @property
    def data(self) -> str:
        return os.path.join(self.dir, "data")

    @property
    def url(self) -> str:
        """A URL that pglock, psycopg and psycopg2 all accept."""
        if self.tcp:
            return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        return f"postgresql://postgres@localhost/postgres?host={self.dir}&port={self.port}"

    def stop(self) -> None:
        """Stops the server and removes its directory (idempotent)."""
        if self._stopped or os.getpid() != self._owner:
            return
        self._stopped = True
        try:
            self._ctl(["stop", "-w", "-m", "immediate"])
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def _cmd(self, program: str, args: List[str]) -> List[str]:
        exe = os.path.join(self.bin, program)
        if self.as_postgres:
            return ["runuser", "-u", "postgres", "--", exe, *args]
        return [exe, *args]

    def _run(self, program: str, args: List[str]) -> None:
        out = subprocess.run(
            self._cmd(program, args), cwd=self.dir, stdin=subprocess.DEVNULL,
            capture_output=True, text=True,
        )
        if out.returncode != 0:
            log = ""
            try:
                with open(os.path.join(self.dir, "server.log")) as f:
                    log = f.read()
            except OSError:
                pass
            raise RuntimeError(
                f"{program} {args} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}\n{log}"
            )

    def _ctl(self, args: List[str]) -> None:
        self._run("pg_ctl", ["-D", self.data, "-l", os.path.join(self.dir, "server.log"), *args])

    def _watchdog(self) -> None:
        """A shell that stops the server once this process is gone, even
        after SIGKILL."""
        self._owner = os.getpid()
        stop = " ".join(self._cmd("pg_ctl", ["-D", self.data, "stop", "-m", "immediate"]))
        script = (
            f"while kill -0 {self._owner} 2>/dev/null; do sleep 1; done; "
            f"{stop} >/dev/null 2>&1; rm -rf {self.dir}"
        )
        subprocess.Popen(
            ["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )


_shared: Optional[Cluster] = None


def database_url(*, durable: bool = False) -> str:
    """``$DATABASE_URL``, or the URL of a throwaway cluster started for this
    process (one per process, stopped at exit)."""
    global _shared
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    if _shared is None:
        print("pglock: DATABASE_URL unset; starting a throwaway PostgreSQL cluster",
              file=sys.stderr)
        _shared = Cluster(durable=durable)
        # Child processes (examples' workers) use the same cluster.
        os.environ["DATABASE_URL"] = _shared.url
    return _shared.url
