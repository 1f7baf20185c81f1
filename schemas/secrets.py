"""Credentials that cross into a pipeline graph travel as the *name* of the environment variable holding them.

Everything a DoFn holds is pickled into the graph (job service, staged artifacts, any dump of it), and a
pydantic ``SecretStr`` pickles its value. So settings keep credentials as ``SecretStr``; what goes into the
graph is an ``EnvSecret``, revealed in a worker's ``setup()`` (or lazily on the worker); the launcher of a
LOOPBACK job exports the values into its own environment, a cluster deployment into the workers'.
"""

import os
from dataclasses import dataclass

from pydantic import SecretStr


class MissingSecretError(RuntimeError):
    """The worker's environment lacks a credential; the message names the variable, never a value."""


@dataclass(frozen=True)
class EnvSecret:
    """A credential by environment variable name: safe to pickle, log and repr."""

    env: str

    def reveal(self) -> str:
        """The value; call it on the worker only."""
        value = os.environ.get(self.env)
        if value is None:
            raise MissingSecretError(f"environment variable {self.env} must be set on the worker")
        return value


Credential = SecretStr | EnvSecret


def reveal(credential: Credential) -> str:
    """The value of a ``SecretStr`` (in-process clients) or an ``EnvSecret`` (workers)."""
    return credential.get_secret_value() if isinstance(credential, SecretStr) else credential.reveal()
