"""Client settings shipped to workers without their secrets.

Everything in a DoFn is pickled into the pipeline graph, so a password there would sit in the job
service, in staged artifacts and in any dump of the graph. ``ClientConfig`` therefore carries only the
*names* of environment variables for secret librdkafka properties (e.g. ``sasl.password``) and reads
them in the worker's ``setup()``; the launcher of a LOOPBACK job exports them into its own environment,
a cluster deployment into the workers' environment.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


class KafkaConfigError(RuntimeError):
    """The worker cannot build a Kafka client from its configuration; the message never holds a secret."""


@dataclass(frozen=True)
class ClientConfig:
    """librdkafka properties plus secret properties by environment variable name."""

    properties: Mapping[str, str]
    secret_env: Mapping[str, str] = field(default_factory=dict)  # librdkafka property -> environment variable

    def resolve(self) -> dict[str, str]:
        """The full librdkafka configuration; call it on the worker only (it reads the secrets)."""
        missing = sorted(env for env in self.secret_env.values() if env not in os.environ)
        if missing:
            raise KafkaConfigError(
                f"environment variable(s) {', '.join(missing)} must be set on the worker for "
                f"{', '.join(sorted(self.secret_env))}"
            )
        return {**self.properties, **{prop: os.environ[env] for prop, env in self.secret_env.items()}}

    @property
    def bootstrap_servers(self) -> str:
        return self.properties.get("bootstrap.servers", "")
