"""How the Cassandra driver is set up for a cluster: who coordinates, what is retried, when
another node is asked, and how soon a node that stops answering is left alone.

Every row the pipeline writes or reads goes in a statement marked idempotent (`is_idempotent`):
the upserts carry their own write times (core/clock.py), so sending one twice leaves the same cells;
receipts and re-drive records are keyed rows rewritten with the same values; reads change
nothing. That is what makes the choices below safe. Schema statements are not marked: DDL sent
to two coordinators at once can make two versions of a table.
"""

from __future__ import annotations

from typing import Any

from cassandra.policies import (
    ConstantSpeculativeExecutionPolicy,
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    RetryPolicy,
    TokenAwarePolicy,
)
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage

# A write the coordinator timed out on (a replica slow or just killed) is sent again to the
# next node this many times.
WRITE_TIMEOUT_RETRIES = 2
# An idempotent request with no answer after this long is also sent to the next node, and the
# first answer wins: a coordinator that stalls (a long GC pause, SIGSTOP) costs a request this
# delay, not its whole timeout. Each such request holds one of CASSANDRA_CONCURRENCY slots for
# the delay, so it sets the write rate while a node stalls, until the heartbeat below drops the
# node (docs/deploying.md). It must stay well above a batch's latency under
# load (~0.35 s on the cluster's bench, by Little's law), or busy nodes get requests twice.
SPECULATIVE_DELAY_S = 2.0
SPECULATIVE_ATTEMPTS = 2
# A connection that has received nothing for this long is sent a heartbeat, and closed when the
# heartbeat goes unanswered as long: a stalled node's connections are closed within 10-15 s and
# requests skip it from then on (the driver's 30 + 30 s kept it in use for a minute). Busy
# connections are never sent one, so a loaded node is not mistaken for a stalled one.
HEARTBEAT_S = 5
# A node that went away is tried again at 1, 2, 4... s, at most every 30 s: a node back from a
# rolling restart is used again within half a minute even if its "up" event was missed.
RECONNECT_BASE_S, RECONNECT_MAX_S = 1.0, 30.0
# The control connection's own queries (peers, schema) on a loaded 2-core node can take longer
# than the driver's 2 s; a timeout there would drop the control connection for nothing.
CONTROL_CONNECTION_TIMEOUT_S = 10.0


class IdempotentRetryPolicy(RetryPolicy):
    """The driver's RetryPolicy, plus: an idempotent write that timed out is retried on the next
    node (the default rethrows every write timeout but a batch log's); minus: a request whose
    connection failed is retried on the next node only when idempotent (the default retries any
    statement, even one that may already have been applied). A node that refused the request
    unexecuted (overloaded, bootstrapping) is left for the next one either way."""

    def on_write_timeout(
        self, query: Any, consistency: Any, write_type: Any, required_responses: int,
        received_responses: int, retry_num: int,
    ) -> tuple[int, Any]:
        if getattr(query, "is_idempotent", False) and retry_num < WRITE_TIMEOUT_RETRIES:
            return self.RETRY_NEXT_HOST, consistency
        return super().on_write_timeout(query, consistency, write_type, required_responses,
                                        received_responses, retry_num)

    def on_request_error(
        self, query: Any, consistency: Any, error: Exception, retry_num: int
    ) -> tuple[int, Any]:
        unexecuted = isinstance(error, (OverloadedErrorMessage, IsBootstrappingErrorMessage))
        if not unexecuted and not getattr(query, "is_idempotent", False):
            return self.RETHROW, None
        return super().on_request_error(query, consistency, error, retry_num)


def load_balancing(local_dc: str | None) -> TokenAwarePolicy:
    """Requests go to a replica of their partition in the local data centre (CASSANDRA_LOCAL_DC;
    unset: the contact points' own), never to another one: LOCAL_QUORUM means that DC's nodes."""
    return TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc))


def profile_options(local_dc: str | None) -> dict[str, Any]:
    """ExecutionProfile arguments besides the consistency level and request timeout."""
    return {
        "load_balancing_policy": load_balancing(local_dc),
        "retry_policy": IdempotentRetryPolicy(),
        "speculative_execution_policy": ConstantSpeculativeExecutionPolicy(
            SPECULATIVE_DELAY_S, SPECULATIVE_ATTEMPTS),
    }


def cluster_options() -> dict[str, Any]:
    """Cluster arguments besides contact points, port, profiles, login and TLS."""
    return {
        "reconnection_policy": ExponentialReconnectionPolicy(RECONNECT_BASE_S, RECONNECT_MAX_S),
        "idle_heartbeat_interval": HEARTBEAT_S,
        "idle_heartbeat_timeout": HEARTBEAT_S,
        "control_connection_timeout": CONTROL_CONNECTION_TIMEOUT_S,
    }
