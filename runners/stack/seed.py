"""Reference data for enrichment: the generator's user profiles into PostgreSQL, its products into Redis.

Upserts only, so seeding is idempotent and can run on every ``make up``; records the generator does not
produce are left alone. The stores hold exactly what ``transforms.lookups`` reads back.
"""

from collections.abc import Mapping

import psycopg
import redis

from ingestion.generator import GeneratorConfig, reference_data
from schemas.records import Product, UserProfile
from transforms.lookups import product_key

_UPSERT_PROFILE = """
INSERT INTO user_profiles (user_id, segment, loyalty_tier, signup_country)
VALUES (%s, %s, %s, %s)
ON CONFLICT (user_id) DO UPDATE
SET segment = EXCLUDED.segment, loyalty_tier = EXCLUDED.loyalty_tier, signup_country = EXCLUDED.signup_country
"""


def product_hash(product: Product) -> dict[str, str]:
    """The fields stored per product (``transforms.lookups.PRODUCT_FIELDS``; ``product_id`` is in the key)."""
    return {
        "category": product.category,
        "brand": product.brand,
        "price_minor": str(product.price_minor),
        "currency": product.currency,
    }


def upsert_user_profiles(dsn: str, users: Mapping[str, UserProfile]) -> int:
    """Insert or update ``users`` in one transaction; returns how many were written."""
    with psycopg.connect(dsn, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.executemany(_UPSERT_PROFILE, [tuple(profile) for profile in users.values()])
    return len(users)


def upsert_products(url: str, products: Mapping[str, Product]) -> int:
    """Write one hash per product in a single MULTI/EXEC; returns how many were written."""
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    try:
        with client.pipeline(transaction=True) as pipe:
            for product in products.values():
                pipe.hset(product_key(product.product_id), mapping=product_hash(product))
            pipe.execute()
    finally:
        client.close()
    return len(products)


def seed_user_profiles(dsn: str, generator: GeneratorConfig) -> int:
    """The generator's user profiles into ``user_profiles``."""
    users, _ = reference_data(generator)
    return upsert_user_profiles(dsn, users)


def seed_products(url: str, generator: GeneratorConfig) -> int:
    """The generator's product catalogue into Redis."""
    _, products = reference_data(generator)
    return upsert_products(url, products)
