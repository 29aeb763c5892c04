"""Unit tests: pure logic, no server (run in seconds)."""
