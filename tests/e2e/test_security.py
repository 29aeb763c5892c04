"""Secrets and personal data stay where they belong, against the real `dagster dev`.

The sensor of a real `dagster dev` (webserver + daemon) ingests events full of recognisable
personal data, with a Cassandra password and a Kafka SASL password set in its environment.
Afterwards neither secret nor any personal value may appear in what Dagster kept (run configs,
event logs, step outputs, compute logs: every byte under DAGSTER_HOME) or in what `dagster dev`
printed; and no secret may appear in a dead letter.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from devtools.stack import CASSANDRA_SUPERUSER, cassandra_cluster
from programuser_dagster.cassandra.client import CassandraResource
from programuser_dagster.settings import Settings
from tests.support.dagster_dev import dagster_dev, settings_env
from tests.support.pipeline import dead_letters, offsets, produce

pytestmark = pytest.mark.stack


@pytest.mark.parametrize("name", ["bad-name", "1starts_with_digit", "ks; DROP TABLE x", ""])
def test_a_keyspace_or_table_that_is_not_a_plain_identifier_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a plain identifier"):
        Settings(cassandra_keyspace=name)
    with pytest.raises(ValueError, match="not a plain identifier"):
        Settings(cassandra_table=name)
    with pytest.raises(ValueError, match="not a plain identifier"):
        CassandraResource(keyspace=name).session()


def _files_containing(root: Path, needles: dict[str, bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{label} in {path}" for label, n in needles.items() if n in data]
    return found


def test_no_secret_or_personal_value_reaches_dagster_or_its_output(
    kafka_topics: Settings, cassandra_session, tmp_path: Path
) -> None:
    s = kafka_topics
    tag = uuid.uuid4().hex[:12]
    cassandra_secret = f"CassPw-{tag}"
    kafka_secret = f"SaslPw-{tag}"
    role = f"sec_{tag}"
    admin = cassandra_cluster(["127.0.0.1"], s.cassandra_port, credentials=CASSANDRA_SUPERUSER)
    try:
        admin.connect().execute(
            f"CREATE ROLE {role} WITH PASSWORD = %s AND LOGIN = true", (cassandra_secret,)
        )
    finally:
        admin.shutdown()

    personal = {
        "user id": f"pii-user-{tag}",
        "program name": f"PII-PROGRAM-{tag}",
        "location name": f"PII-LOCATION-{tag}",
        "organisation": f"PII-ORG-{tag}",
    }
    good = {
        "_id": "harmless-id",
        "programId": "prog-1",
        "userId": personal["user id"],
        "programName": personal["program name"],
        "userProfile": {
            "userLocations": [{"type": "state", "name": personal["location name"]}],
            "rootOrg": {"id": "o1", "orgName": personal["organisation"]},
        },
    }
    bad = {**good, "createdAt": f"not-a-date {personal['user id']}"}  # dead-lettered
    produce(s, [good, bad], partition=1)

    home = tmp_path / "dagster_home"
    out = tmp_path / "dagster-dev.log"
    env = {
        **settings_env(s),
        "CASSANDRA_USERNAME": role,
        "CASSANDRA_PASSWORD": cassandra_secret,
        "KAFKA_SASL_PASSWORD": kafka_secret,
        "PROGRAMUSER_SENSOR_INTERVAL_S": "5",
    }
    with dagster_dev(home, out, env) as dev:
        deadline = time.monotonic() + 240
        while offsets(s, 1).committed != 2:
            assert dev.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, "the sensor's run did not commit in 4 min"
            time.sleep(2)

    # The rows really went through, with the role from the environment.
    written = cassandra_session.execute(
        f"SELECT program_name FROM {s.cassandra_keyspace}.{s.cassandra_table} "
        "WHERE program_id='prog-1' AND user_id=%s",
        (personal["user id"],),
    ).one()
    assert written is not None and written.program_name == personal["program name"]

    needles = {
        "Cassandra password": cassandra_secret.encode(),
        "Kafka SASL password": kafka_secret.encode(),
        **{k: v.encode() for k, v in personal.items()},
    }
    printed = out.read_bytes()
    assert b"RUN_SUCCESS" in printed or b"Committed" in printed  # the log really was captured
    assert [label for label, n in needles.items() if n in printed] == []
    assert _files_containing(home, needles) == []

    [letter] = dead_letters(s, expected=1)
    assert dict(letter.headers())["reason"] == b"bad_date:createdAt"
    raw = letter.value() + b"".join(v for _, v in letter.headers())
    assert cassandra_secret.encode() not in raw and kafka_secret.encode() not in raw
