"""memory.release_memory: a finished run's memory is given back once the process has grown."""

from __future__ import annotations

import pytest

from programuser_dagster import memory


def test_memory_is_given_back_only_once_the_process_grew(monkeypatch: pytest.MonkeyPatch) -> None:
    rss = [500 * 2**20]
    collections: list[int] = []
    monkeypatch.setattr(memory, "_rss_bytes", lambda: rss[0])
    monkeypatch.setattr(memory.gc, "collect", lambda *a: collections.append(rss[0]) or 0)
    monkeypatch.setattr(memory, "_released_at", None)

    memory.release_memory()  # the first run of the process: always
    rss[0] += memory.RELEASE_AFTER_GROWTH - 1
    memory.release_memory()  # grew less than the threshold: nothing to do
    rss[0] += 1
    memory.release_memory()  # grew by the threshold since the last release
    memory.release_memory()  # and not since
    assert collections == [500 * 2**20, 500 * 2**20 + memory.RELEASE_AFTER_GROWTH]


def test_without_a_way_to_read_the_rss_memory_is_always_given_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collections: list[int] = []
    monkeypatch.setattr(memory, "_rss_bytes", lambda: None)
    monkeypatch.setattr(memory.gc, "collect", lambda *a: collections.append(1) or 0)
    monkeypatch.setattr(memory, "_released_at", None)
    for _ in range(3):
        memory.release_memory()
    assert len(collections) == 3
