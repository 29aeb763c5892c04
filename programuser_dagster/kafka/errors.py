"""What the Kafka side raises: the callers (ops, sensor, CLI) tell these apart."""

from __future__ import annotations


class KafkaUnavailable(RuntimeError):
    """The broker did not answer or refused an operation; the message says what to check."""


class CommitUnknown(KafkaUnavailable):
    """The broker did not answer a commit, nor the read that would tell whether it landed: the
    commit may have happened or not; the message says how to find out."""


class Superseded(RuntimeError):
    """Another run of the partition committed (or began committing) since this run started;
    this run's commit was refused and nothing of it was committed."""

