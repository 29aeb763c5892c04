"""The driver's policies for a cluster (programuser_dagster/cassandra/policies.py): what is retried
where.

How they behave against real nodes that die, stall or are cut off is tested in tests/cluster.
"""

from __future__ import annotations

from cassandra import ConsistencyLevel, WriteType
from cassandra.policies import ConstantSpeculativeExecutionPolicy, RetryPolicy
from cassandra.query import SimpleStatement

from programuser_dagster.cassandra.policies import (
    SPECULATIVE_ATTEMPTS,
    SPECULATIVE_DELAY_S,
    WRITE_TIMEOUT_RETRIES,
    IdempotentRetryPolicy,
    profile_options,
)

LQ = ConsistencyLevel.LOCAL_QUORUM
IDEMPOTENT = SimpleStatement("INSERT ...", is_idempotent=True)
NOT_IDEMPOTENT = SimpleStatement("INSERT ...")


def write_timeout(query: SimpleStatement, retry_num: int, kind: int = WriteType.UNLOGGED_BATCH):
    return IdempotentRetryPolicy().on_write_timeout(query, LQ, kind, 2, 1, retry_num)


def test_an_idempotent_write_that_timed_out_goes_to_the_next_node_a_bounded_number_of_times():
    for attempt in range(WRITE_TIMEOUT_RETRIES):
        assert write_timeout(IDEMPOTENT, attempt) == (RetryPolicy.RETRY_NEXT_HOST, LQ)
    assert write_timeout(IDEMPOTENT, WRITE_TIMEOUT_RETRIES) == (RetryPolicy.RETHROW, None)


def test_a_write_not_marked_idempotent_that_timed_out_is_not_retried():
    for kind in (WriteType.SIMPLE, WriteType.UNLOGGED_BATCH):
        assert write_timeout(NOT_IDEMPOTENT, 0, kind) == (RetryPolicy.RETHROW, None)


def test_a_failed_connection_retries_only_idempotent_requests_elsewhere():
    policy = IdempotentRetryPolicy()
    error = ConnectionError("Connection to 127.0.0.12:9042 was closed")
    assert policy.on_request_error(IDEMPOTENT, LQ, error, 0) == (RetryPolicy.RETRY_NEXT_HOST, None)
    assert policy.on_request_error(NOT_IDEMPOTENT, LQ, error, 0) == (RetryPolicy.RETHROW, None)


def test_unavailable_is_asked_of_one_other_node_then_reported():
    policy = IdempotentRetryPolicy()
    assert policy.on_unavailable(IDEMPOTENT, LQ, 2, 1, 0) == (RetryPolicy.RETRY_NEXT_HOST, None)
    assert policy.on_unavailable(IDEMPOTENT, LQ, 2, 1, 1) == (RetryPolicy.RETHROW, None)


def test_the_profile_speculates_and_routes_to_the_local_dc():
    options = profile_options("dc1")
    spec = options["speculative_execution_policy"]
    assert isinstance(spec, ConstantSpeculativeExecutionPolicy)
    assert (spec.delay, spec.max_attempts) == (SPECULATIVE_DELAY_S, SPECULATIVE_ATTEMPTS)
    assert options["load_balancing_policy"]._child_policy.local_dc == "dc1"
    assert isinstance(options["retry_policy"], IdempotentRetryPolicy)


def test_a_missing_quorum_is_named_whichever_way_cassandra_reports_it():
    from cassandra import Unauthorized, Unavailable, WriteTimeout
    from cassandra.cluster import NoHostAvailable

    from programuser_dagster.cassandra.io_manager import CassandraIOManager

    hint = CassandraIOManager().writer()._quorum_hint
    timeout = WriteTimeout("timed out", write_type=WriteType.SIMPLE, consistency=LQ,
                           required_responses=2,
                           received_responses=1)
    for failure in (
        Unavailable("no", consistency=LQ, required_replicas=2, alive_replicas=1),
        timeout,
        NoHostAvailable("all tried", {"127.0.0.11:9042": timeout}),
        Unauthorized("Unable to perform authorization of super-user permission: "
                     "Cannot achieve consistency level LOCAL_QUORUM"),
        Unauthorized("Unable to perform authorization of super-user permission: "
                     "Operation timed out - received only 1 responses."),
    ):
        assert "A quorum of replicas is not available" in hint(failure), failure
    assert hint(Unauthorized("User x has no MODIFY permission")) == ""
    assert hint(NoHostAvailable("all tried", {"h": ConnectionError("closed")})) == ""
