"""The resources of a deployment, built in one place from the settings."""

from __future__ import annotations

from typing import Any

from .cassandra.client import CassandraResource
from .cassandra.io_manager import CassandraIOManager
from .kafka.resource import KafkaResource
from .secrets import env_secret
from .settings import CASSANDRA_PASSWORD, KAFKA_SASL_PASSWORD, Settings


def kafka_resource(settings: Settings) -> KafkaResource:
    return KafkaResource(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        input_topic=settings.kafka_input_topic,
        group_id=settings.kafka_group_id,
        dlq_topic=settings.kafka_dlq_topic,
        security_protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_username=settings.kafka_sasl_username,
        sasl_password=env_secret(KAFKA_SASL_PASSWORD),
        ssl_ca_location=settings.kafka_ssl_ca_location,
        delivery_timeout_s=settings.kafka_delivery_timeout_s,
        request_timeout_s=settings.kafka_request_timeout_s,
    )


def cassandra_resource(settings: Settings) -> CassandraResource:
    return CassandraResource(
        hosts=",".join(settings.cassandra_hosts),
        port=settings.cassandra_port,
        keyspace=settings.cassandra_keyspace,
        table=settings.cassandra_table,
        consistency=settings.cassandra_consistency,
        local_dc=settings.cassandra_local_dc,
        username=settings.cassandra_username,
        password=env_secret(CASSANDRA_PASSWORD),
        ssl_ca=settings.cassandra_ssl_ca,
        create_schema=settings.cassandra_create_schema,
        replication=settings.cassandra_replication,
        request_timeout_s=settings.cassandra_request_timeout_s,
    )


def cassandra_io_manager(
    settings: Settings, cassandra: CassandraResource | None = None
) -> CassandraIOManager:
    """The IO manager on `cassandra` (default: a client of its own from the settings)."""
    return CassandraIOManager(
        cassandra=cassandra or cassandra_resource(settings),
        concurrency=settings.cassandra_concurrency,
        batch_rows=settings.cassandra_batch_rows,
        batch_bytes=settings.cassandra_batch_bytes,
    )


def build_resources(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings.from_env()
    cassandra = cassandra_resource(settings)
    return {
        "kafka": kafka_resource(settings),
        "cassandra": cassandra,  # ad-hoc reads: the health sensor and asset checks
        "cassandra_io_manager": cassandra_io_manager(settings, cassandra),
    }
