"""The local server stack: real Kafka (KRaft) and Cassandra 5.0 run from Maven Central jars.

`up`, `down` and `status` back the `python -m devtools stack ...` command (`main_stack`);
`ensure_topics`, `delete_topics`, `ensure_schema`, `drop_keyspace` and `cassandra_cluster` are
reused by the tests to create their own topics and keyspaces.

Cassandra runs with PasswordAuthenticator so that its guardrails (items_per_collection_fail_
threshold: 1000) apply: clients log in as the ordinary role from `cassandra_credentials()`
(CASSANDRA_USERNAME / CASSANDRA_PASSWORD, default programuser / programuser), which `up()`
creates; `cassandra_cluster()` does that login for you.
"""

from .launcher import (
    CASSANDRA_SUPERUSER,
    DEAD_LETTER_TOPIC_CONFIG,
    INPUT_TOPIC_CONFIG,
    SERVERS,
    ServerStatus,
    StackError,
    cassandra_answers,
    cassandra_auth_enabled,
    cassandra_cluster,
    cassandra_credentials,
    delete_topics,
    down,
    drop_keyspace,
    ensure_cassandra_role,
    ensure_libs,
    ensure_schema,
    ensure_topics,
    find_java17,
    kafka_answers,
    log_file,
    main_stack,
    stack_dir,
    stack_lock,
    status,
    temporary_servers,
    up,
)

__all__ = [
    "CASSANDRA_SUPERUSER",
    "DEAD_LETTER_TOPIC_CONFIG",
    "INPUT_TOPIC_CONFIG",
    "SERVERS",
    "ServerStatus",
    "StackError",
    "cassandra_answers",
    "cassandra_auth_enabled",
    "cassandra_cluster",
    "cassandra_credentials",
    "delete_topics",
    "down",
    "drop_keyspace",
    "ensure_cassandra_role",
    "ensure_libs",
    "ensure_schema",
    "ensure_topics",
    "find_java17",
    "kafka_answers",
    "log_file",
    "main_stack",
    "stack_dir",
    "stack_lock",
    "status",
    "temporary_servers",
    "up",
]
