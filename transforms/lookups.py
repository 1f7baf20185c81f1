"""Real lookup stores for ``transforms.enrich``: user profiles in PostgreSQL, products in Redis.

Both follow the ``LookupHandler`` contract: picklable (live clients are dropped by ``__getstate__``),
clients made lazily on the event loop that calls ``lookup`` (a new loop gets new clients: asyncio
sockets belong to one loop), exactly one store call per ``lookup``, None for a missing key, and any
store error raised: timeouts, retries and caching belong to ``EnrichEvents``. Store-level retries are
therefore switched off, and a connection is never reused after an error or a cancellation (the
caller's timeout), because its state is then unknown. The PostgreSQL DSN (it holds the password) is a
``Credential``: an ``EnvSecret`` in a pipeline graph, revealed only when a connection is made on the worker.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg import sql
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from schemas.records import Product, UserProfile
from schemas.secrets import Credential, reveal

PRODUCT_KEY_PREFIX = "product:"
PRODUCT_FIELDS = ("category", "brand", "price_minor", "currency")


class StoreError(RuntimeError):
    """A store call failed. Its message keeps the client error's type and text, because its repr becomes the
    enrichment's degrade reason and redis-py's own repr (``network:ConnectionError``) drops the text."""


def product_key(product_id: str, prefix: str = PRODUCT_KEY_PREFIX) -> str:
    """The Redis key of one product's hash (fields ``PRODUCT_FIELDS``, all strings)."""
    return f"{prefix}{product_id}"


def product_from_hash(product_id: str, fields: dict[str, str], key: str) -> Product:
    """The ``Product`` stored in hash ``key`` (``product_id`` is not a field); a hash lacking a field is an error."""
    missing = [name for name in PRODUCT_FIELDS if name not in fields]
    if missing:
        raise ValueError(f"hash {key} lacks {', '.join(missing)}")
    return Product(product_id, fields["category"], fields["brand"], int(fields["price_minor"]), fields["currency"])


def user_query(table: str = "user_profiles") -> sql.Composed:
    """The one indexed SELECT of a ``UserProfile`` by ``user_id`` (columns in ``UserProfile`` order)."""
    return sql.SQL("SELECT user_id, segment, loyalty_tier, signup_country FROM {} WHERE user_id = %s").format(
        sql.Identifier(table)
    )


@dataclass
class _PgConnections:
    """Idle connections of one event loop, at most ``slots`` in use at once."""

    loop: asyncio.AbstractEventLoop
    slots: asyncio.Semaphore
    idle: list[psycopg.AsyncConnection] = field(default_factory=list)


class PostgresUserLookup:
    """``UserProfile`` by ``user_id`` from a PostgreSQL table, one indexed SELECT per call.

    Up to ``max_connections`` queries run at once per handler; further lookups wait for a connection
    (inside the caller's timeout, which is the back-pressure on a slow database).
    """

    def __init__(
        self,
        dsn: Credential,
        *,
        table: str = "user_profiles",
        max_connections: int = 4,
        connect_timeout_seconds: int = 5,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.name = "user"
        self._dsn = dsn
        self._table = table
        self._max_connections = max_connections
        self._connect_timeout_seconds = connect_timeout_seconds
        self._connections: _PgConnections | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_connections": None}

    def __repr__(self) -> str:
        return f"PostgresUserLookup(table={self._table!r})"  # the DSN may hold a password

    async def lookup(self, key: str) -> UserProfile | None:
        pool = self._pool()
        query = user_query(self._table)
        async with pool.slots:
            conn = pool.idle.pop() if pool.idle else await self._connect()
            try:
                cursor = await conn.execute(query, (key,))
                row = await cursor.fetchone()
            except BaseException:
                await conn.close()  # failed or cancelled mid-query: its state is unknown, never reuse it
                raise
            pool.idle.append(conn)
        return UserProfile(*row) if row is not None else None

    async def aclose(self) -> None:
        """Close the idle connections of the current loop (optional: workers simply exit)."""
        pool, self._connections = self._connections, None
        for conn in pool.idle if pool else ():
            await conn.close()

    def _pool(self) -> _PgConnections:
        loop = asyncio.get_running_loop()
        if self._connections is None or self._connections.loop is not loop:
            self._connections = _PgConnections(loop, asyncio.Semaphore(self._max_connections))
        return self._connections

    async def _connect(self) -> psycopg.AsyncConnection:
        # autocommit: a lookup must never leave a transaction open ("idle in transaction") between calls
        return await psycopg.AsyncConnection.connect(
            reveal(self._dsn), autocommit=True, connect_timeout=self._connect_timeout_seconds
        )


class RedisProductLookup:
    """``Product`` by ``product_id`` from a Redis hash ``product:<id>``, one HGETALL per call."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = PRODUCT_KEY_PREFIX,
        max_connections: int = 16,
        connect_timeout_seconds: float = 5.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.name = "product"
        self._url = url
        self._key_prefix = key_prefix
        self._max_connections = max_connections
        self._connect_timeout_seconds = connect_timeout_seconds
        self._client: tuple[asyncio.AbstractEventLoop, aioredis.Redis] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def __repr__(self) -> str:
        return f"RedisProductLookup(key_prefix={self._key_prefix!r})"  # the URL may hold a password

    async def lookup(self, key: str) -> Product | None:
        try:
            fields = await self._redis().hgetall(product_key(key, self._key_prefix))
        except aioredis.RedisError as err:
            raise StoreError(f"redis {type(err).__name__}: {err}") from err
        if not fields:
            return None
        return product_from_hash(key, fields, product_key(key, self._key_prefix))

    async def aclose(self) -> None:
        """Close the current loop's client (optional: workers simply exit)."""
        client, self._client = self._client, None
        if client is not None:
            await client[1].aclose(close_connection_pool=True)

    def _redis(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url,
                max_connections=self._max_connections,
                timeout=None,  # wait for a free connection; the caller's timeout bounds the wait
                socket_connect_timeout=self._connect_timeout_seconds,
                decode_responses=True,
                retry=Retry(NoBackoff(), 0),  # one attempt per call: retries are the caller's
            )
            self._client = (loop, aioredis.Redis(connection_pool=pool))
        return self._client[1]
