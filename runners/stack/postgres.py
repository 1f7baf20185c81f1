"""PostgreSQL with the user profiles: Debian's binaries, our own cluster under ``.stack/<name>/``.

The system service (``pg_ctlcluster``) is never used: ``initdb`` and ``postgres`` run directly, the
server as a ``ManagedProcess`` listening on loopback only, so ``make down`` stops exactly this server.
PostgreSQL refuses to run as root; as root the cluster belongs to the ``postgres`` system user that
the Debian package creates, and every server process is started through ``setpriv`` (no extra fork).
"""

import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

from ingestion.generator import GeneratorConfig
from runners.stack.process import (
    Health,
    ManagedProcess,
    StackError,
    _alive,
    install_debian_packages,
    require_free_port,
    stack_path,
    wait_until,
)
from runners.stack.seed import seed_user_profiles
from runners.stack.settings import StackSettings

DATABASE = "clickstream"
USER = "clickstream"
PASSWORD = "clickstream"  # a local loopback-only dev cluster; the DSN is built from these
OS_USER = "postgres"  # who owns the cluster when the stack runs as root (created by Debian's package)

SCHEMA = """
CREATE TABLE IF NOT EXISTS user_profiles (
    user_id text PRIMARY KEY,
    segment text NOT NULL,
    loyalty_tier text NOT NULL,
    signup_country text NOT NULL
)
"""

_SOCKET_PATH_MAX = 100  # the kernel's limit for a unix socket path is 107 bytes, ".s.PGSQL.<port>" included


def postgres_dsn(stack: StackSettings, database: str = DATABASE) -> str:
    """The libpq URL of the stack's database (TCP on loopback, password auth)."""
    return f"postgresql://{USER}:{PASSWORD}@{stack.host}:{stack.postgres_port}/{database}"


def _bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin/ (Debian keeps initdb and postgres out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class Postgres:
    """The stack's PostgreSQL: database ``clickstream`` with ``user_profiles``, seeded from the generator."""

    def __init__(
        self,
        stack: StackSettings,
        *,
        name: str = "postgres",
        generator: GeneratorConfig | None = None,
    ) -> None:
        self.name = name
        self._stack = stack
        self._generator = generator or GeneratorConfig()
        self._proc = ManagedProcess(name)
        self._home = stack_path(name, "data").parent
        self._data = self._home / "data"
        self._sockets = self._home / "run"

    @property
    def address(self) -> str:
        return f"{self._stack.host}:{self._stack.postgres_port}"

    @property
    def dsn(self) -> str:
        return postgres_dsn(self._stack)

    @property
    def pid(self) -> int | None:
        return self._proc.pid()

    def install(self) -> None:
        """Debian's postgresql if missing, then a fresh cluster (initdb) if there is none yet."""
        install_debian_packages(self.name, ["postgresql"], lambda: _bin_dir() is not None)
        if (self._data / "PG_VERSION").exists():
            return
        owner = self._owner()
        staging = self._home / "data.initdb"  # initdb into a staging dir: a half-made cluster is never "the" cluster
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700, parents=True)
        pwfile = self._home / "initdb.pw"
        pwfile.write_text(PASSWORD + "\n")
        pwfile.chmod(0o600)
        if owner is not None:
            self._check_traversable(owner)
            os.chown(staging, owner.pw_uid, owner.pw_gid)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        argv = [
            str(_bin_dir() / "initdb"),
            f"--pgdata={staging}",
            f"--username={USER}",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        ]
        try:
            done = subprocess.run(self._as_owner(argv), capture_output=True, text=True, timeout=300, cwd=self._home)
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise StackError(f"{self.name}: initdb failed: {(done.stderr or done.stdout).strip()[-2000:]}")
        staging.rename(self._data)

    def start(self) -> None:
        """Start the server unless ours already runs, then make sure the schema and the seed data are there."""
        if not self._proc.running():
            if not (self._data / "PG_VERSION").exists():
                raise StackError(f"{self.name}: no cluster in {self._data}; run install() (`make up`) first")
            require_free_port(self._stack.host, self._stack.postgres_port, self.name)
            sockets = self._socket_dir()
            owner = self._owner()
            if owner is not None:
                os.chown(sockets, owner.pw_uid, owner.pw_gid)
            argv = [
                str(_bin_dir() / "postgres"),
                "-D",
                str(self._data),
                "-k",
                str(sockets),
                "-h",
                self._stack.host,
                "-p",
                str(self._stack.postgres_port),
            ]
            self._proc.start(self._as_owner(argv), cwd=self._home)
        wait_until(self._ready, 60, f"{self.name} on {self.address}", self._proc.log_file)
        self._ensure_schema()
        seed_user_profiles(self.dsn, self._generator)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected) of the server we started, then SIGKILL if stuck."""
        pid = self._proc.pid()
        if pid is not None:
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _alive(pid):  # not running(): that still sees a zombie
                time.sleep(0.1)
        self._proc.stop()

    def health(self) -> Health:
        try:
            with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                version = conn.execute("SHOW server_version").fetchone()[0]
                profiles = conn.execute("SELECT count(*) FROM user_profiles").fetchone()[0]
        except psycopg.Error as err:
            running = "running" if self._proc.running() else "not running"
            lines = str(err).strip().splitlines()
            return Health(False, f"{running}; {lines[0] if lines else type(err).__name__}")
        return Health(True, f"PostgreSQL {version}, {profiles} user profiles")

    # -----------------------------------------------------------------------------------------------------

    def _ready(self) -> bool:
        if not self._proc.running():
            raise StackError(f"{self.name} exited during start-up; see {self._proc.log_file}")
        try:
            with psycopg.connect(postgres_dsn(self._stack, "postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def _ensure_schema(self) -> None:
        with psycopg.connect(postgres_dsn(self._stack, "postgres"), autocommit=True, connect_timeout=5) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(SCHEMA)

    def _socket_dir(self) -> Path:
        """Unix sockets under .stack, or under /tmp when that path would be too long for a socket."""
        sockets = self._sockets
        if len(str(sockets / f".s.PGSQL.{self._stack.postgres_port}")) > _SOCKET_PATH_MAX:
            sockets = Path("/tmp") / f"clickstream-{self.name}-{os.getuid()}"
        sockets.mkdir(mode=0o700, parents=True, exist_ok=True)
        return sockets

    @staticmethod
    def _owner() -> pwd.struct_passwd | None:
        """The OS user that owns and runs the cluster: ``postgres`` as root (initdb refuses root), else None."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(OS_USER)
        except KeyError:
            raise StackError(
                f"postgres: running as root needs the '{OS_USER}' system user (Debian's package)"
            ) from None

    @staticmethod
    def _as_owner(argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["setpriv", f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups", "--", *argv]

    def _check_traversable(self, owner: pwd.struct_passwd) -> None:
        """Every folder above the data directory must let the ``postgres`` user through."""
        for folder in [self._home, *self._home.parents]:
            st = folder.stat()
            if not (st.st_mode & 0o001 or (st.st_uid == owner.pw_uid and st.st_mode & 0o100)):
                raise StackError(
                    f"{self.name}: user '{owner.pw_name}' cannot enter {folder} (mode {oct(st.st_mode & 0o777)}); "
                    f"run `chmod o+x {folder}` or set STACK_DIR to a folder it can reach"
                )
