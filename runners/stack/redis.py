"""Redis with the product catalogue: Debian's redis-server, our own process with its data under ``.stack/<name>/``.

Not the system service: ``redis-server`` runs in the foreground as a ``ManagedProcess`` with every setting
on its command line (loopback only, append-only file on), so ``make down`` stops exactly this server.
"""

import shutil
from pathlib import Path

import redis

from ingestion.generator import GeneratorConfig
from runners.stack.process import (
    Health,
    ManagedProcess,
    StackError,
    install_debian_packages,
    require_free_port,
    stack_path,
    wait_until,
)
from runners.stack.seed import seed_products
from runners.stack.settings import StackSettings


def redis_url(stack: StackSettings, db: int = 0) -> str:
    """The URL of the stack's Redis."""
    return f"redis://{stack.host}:{stack.redis_port}/{db}"


def _server_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None
    )


class Redis:
    """The stack's Redis: one hash ``product:<id>`` per catalogue product, seeded from the generator."""

    def __init__(
        self,
        stack: StackSettings,
        *,
        name: str = "redis",
        generator: GeneratorConfig | None = None,
    ) -> None:
        self.name = name
        self._stack = stack
        self._generator = generator or GeneratorConfig()
        self._proc = ManagedProcess(name)
        self._dir = stack_path(name, "redis.conf").parent

    @property
    def address(self) -> str:
        return f"{self._stack.host}:{self._stack.redis_port}"

    @property
    def url(self) -> str:
        return redis_url(self._stack)

    @property
    def pid(self) -> int | None:
        return self._proc.pid()

    def install(self) -> None:
        """Debian's redis-server if missing."""
        install_debian_packages(self.name, ["redis-server"], lambda: _server_binary() is not None)
        self._dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        """Start the server unless ours already runs, then upsert the product catalogue."""
        if not self._proc.running():
            binary = _server_binary()
            if binary is None:
                raise StackError(f"{self.name}: redis-server is not installed; run install() (`make up`) first")
            require_free_port(self._stack.host, self._stack.redis_port, self.name)
            self._dir.mkdir(parents=True, exist_ok=True)
            argv = [
                binary,
                "--bind",
                self._stack.host,
                "--port",
                str(self._stack.redis_port),
                "--dir",
                str(self._dir),
                "--daemonize",
                "no",
                "--supervised",
                "no",
                "--appendonly",
                "yes",
                "--protected-mode",
                "yes",
                "--logfile",
                "",
            ]
            self._proc.start(argv, cwd=self._dir)
        wait_until(self._ready, 30, f"{self.name} on {self.address}", self._proc.log_file)
        seed_products(self.url, self._generator)

    def stop(self) -> None:
        """SIGTERM (Redis flushes its append-only file and exits) to the server we started."""
        self._proc.stop()

    def health(self) -> Health:
        try:
            client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
            try:
                version = client.info("server")["redis_version"]
                keys = client.dbsize()
            finally:
                client.close()
        except redis.RedisError as err:
            running = "running" if self._proc.running() else "not running"
            return Health(False, f"{running}; {err}")
        return Health(True, f"Redis {version}, {keys} keys")

    def _ready(self) -> bool:
        if not self._proc.running():
            raise StackError(f"{self.name} exited during start-up; see {self._proc.log_file}")
        try:
            client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False
