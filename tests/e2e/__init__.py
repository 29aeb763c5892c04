"""End-to-end tests: real dagster dev, daemon, subprocesses, browser, PostgreSQL."""
