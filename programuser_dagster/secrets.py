"""Secrets reach the resources as dagster.EnvVar, so that no run config or UI page shows them."""

from __future__ import annotations

import os

from dagster import EnvVar


def env_secret(name: str) -> EnvVar | None:
    """EnvVar(name) when the variable is set, else None (no secret configured)."""
    return EnvVar(name) if os.environ.get(name) else None


def reveal(value: str | None) -> str | None:
    """The secret's value for a client library. Inside a run Dagster has already resolved
    EnvVar fields; a resource used directly (CLI, tests) still holds the EnvVar itself."""
    if isinstance(value, EnvVar):
        return value.get_value()
    return value
