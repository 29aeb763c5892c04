"""Integration tests: in-process runs against the real local Kafka and Cassandra (the stack
fixture)."""
