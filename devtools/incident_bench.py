"""`make bench-incidents`: what verify and redrive cost, against the real local stack.

Produces N realistic events over 4 partitions, drains them with `drain`, then times, each in
its own process (so that its peak RSS is its own): `verify` over every partition, and
`redrive` of N/10 dead letters (written to the dead-letter topic as the pipeline writes them,
with values today's rules accept: letters of a rule since fixed), dry run then --apply, then
--apply again (everything already re-driven). Writes bench-incidents-results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from programuser_dagster.core.clock import now_us
from programuser_dagster.kafka.dead_letters import Source, letter
from programuser_dagster.settings import DEAD_LETTER_MAX_MESSAGE_BYTES, Settings

from .bench import Area, machine
from .samples import message_key, sample_events


def _env(s: Settings, home: str) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": home, "KAFKA_INPUT_TOPIC": s.kafka_input_topic,
            "KAFKA_GROUP_ID": s.kafka_group_id, "KAFKA_DLQ_TOPIC": s.kafka_dlq_topic,
            "CASSANDRA_KEYSPACE": s.cassandra_keyspace,
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers}


def _timed(args: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)
           ) -> tuple[float, float, str]:
    """Seconds, peak RSS (MB) and output of one CLI command in its own process; an exit
    status outside `ok` is an error."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "programuser_dagster.cli", *args],
                                env=env, stdout=out, stderr=err, text=True)
        # wait4: this child's own peak RSS (RUSAGE_CHILDREN would be the largest so far).
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode not in ok:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: "
                               f"{err.read()[-2000:]}")
        return elapsed, usage.ru_maxrss / 1024, out.read()


def _letters(s: Settings, n: int) -> None:
    """n dead letters of the input topic's partition 0, as a run sends them."""
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers, "linger.ms": 20,
                         "message.max.bytes": DEAD_LETTER_MAX_MESSAGE_BYTES})
    base = now_us()
    for i, event in enumerate(sample_events(n, seed=99)):
        source = Source(s.kafka_input_topic, 0, 10_000_000 + i, message_key(event),
                        orjson.dumps(event), [], base // 1000, base + i)
        one = letter(source, "wrong_type:requestForPIIConsent", DEAD_LETTER_MAX_MESSAGE_BYTES)
        producer.produce(s.kafka_dlq_topic, value=one.value, key=one.key, headers=one.headers)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


def run(n: int, out: Path) -> dict[str, Any]:
    base = Settings.from_env()
    area = Area.create(base, partitions=4)
    s = area.settings
    result: dict[str, Any] = {"events": n, "letters": n // 10, "machine": machine()}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-incidents-") as home:
            Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            env = _env(s, home)
            print(f"producing {n} events ...", flush=True)
            area.produce(n, seed=5)
            drained, _, _ = _timed(["drain"], env)
            print(f"drained in {drained:.1f}s; verify ...", flush=True)
            seconds, rss, report = _timed(["verify"], env, ok=(0, 1))
            result["verify"] = {"seconds": round(seconds, 1), "peak_rss_mb": round(rss),
                                "records_per_s": round(n / seconds),
                                "report_cost_line": report.strip().splitlines()[-1]}
            _letters(s, n // 10)
            for name, args in (("redrive_dry_run", ["redrive"]),
                               ("redrive_apply", ["redrive", "--apply"]),
                               ("redrive_again", ["redrive", "--apply"])):
                print(f"{' '.join(args)} ...", flush=True)
                seconds, rss, output = _timed(args, env)
                result[name] = {"seconds": round(seconds, 1), "peak_rss_mb": round(rss),
                                "letters_per_s": round((n // 10) / seconds),
                                "first_line": output.splitlines()[0]}
    finally:
        area.cleanup()
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.incident_bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=Path("bench-incidents-results.json"))
    args = parser.parse_args(argv)
    run(args.events, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
