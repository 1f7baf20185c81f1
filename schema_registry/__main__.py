"""``python -m schema_registry``: serve the registry with uvicorn on loopback."""

import argparse
import logging
import sys

import uvicorn

from schema_registry.app import create_app
from schemas import endpoints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schema_registry", description=__doc__)
    parser.add_argument("--host", default=endpoints.HOST, help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=endpoints.REGISTRY_PORT)
    parser.add_argument("--bootstrap", default=endpoints.KAFKA_BOOTSTRAP, help="Kafka bootstrap servers")
    parser.add_argument("--topic", default="_schemas", help="compacted topic holding the registry's state")
    parser.add_argument("--timeout", type=float, default=30.0, help="Kafka timeout for loading and writes (s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.bootstrap, args.topic, args.timeout)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
