"""Credentials never travel in the pipeline graph: the graph built for the live run is grepped for them."""

import pickle

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines.settings import load_settings
from runners.live import build_live_pipeline, export_worker_secrets, registry_for
from schemas.registry import ConfluentRegistry, InMemoryRegistry
from schemas.secrets import EnvSecret, MissingSecretError

SECRETS = ("pg-N33DLE-pw", "reg-N33DLE-pw", "sasl-N33DLE-pw")


def test_the_live_graph_holds_no_credential(monkeypatch):
    settings = load_settings(
        overrides=(
            f"stores.postgres_dsn=postgresql://clickstream:{SECRETS[0]}@127.0.0.1:1/clickstream",
            f"registry.basic_auth=user:{SECRETS[1]}",
            "kafka.sasl_username=svc",
            f"kafka.sasl_password={SECRETS[2]}",
        )
    )
    for env in settings.worker_secrets():
        monkeypatch.delenv(env, raising=False)
    export_worker_secrets(settings)  # what the workers will read: the process environment, not the graph
    pipeline = build_live_pipeline(settings, PipelineOptions(["--streaming"]), InMemoryRegistry(), follow=True)
    graph = pipeline.to_runner_api().SerializeToString()
    for secret in SECRETS:
        assert secret.encode() not in graph, secret
    registry = registry_for(settings)
    assert SECRETS[1] not in repr(registry) and SECRETS[1].encode() not in pickle.dumps(registry)


def test_a_missing_registry_credential_fails_at_once_instead_of_being_waited_out(monkeypatch):
    """Decode/encode retry ``RegistryUnavailableError`` for minutes; a worker without its secret never recovers."""
    monkeypatch.delenv("IT_NO_SUCH_REGISTRY_AUTH", raising=False)
    registry = ConfluentRegistry("http://127.0.0.1:9", EnvSecret("IT_NO_SUCH_REGISTRY_AUTH"))
    with pytest.raises(MissingSecretError, match="IT_NO_SUCH_REGISTRY_AUTH"):
        registry.schema_by_id(1)
