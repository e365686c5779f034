"""The seed's AI operations agent, simulated: writes recommendations into Lakebase.

Inserts a row into `agentic_hmi.agent_recommendations` every `interval` seconds (the
`recommendation_inserted` trigger announces it) and, a few seconds later, plays the operator:
approves, rejects or defers it (`recommendation_status_changed`). The notify bridge relays both
to the live page.
"""

from __future__ import annotations

import random
import time

import psycopg

ISSUES = [
    (
        "HAUL-001",
        "plant1/mine/haulage/HAUL-001",
        "high_temperature",
        "Engine at 92.5 degC: reduce payload to 80% and schedule a coolant check",
    ),
    (
        "CRUSH-001",
        "plant1/mine/crushing/CRUSH-001",
        "high_vibration",
        "Vibration 4.8 mm/s: inspect the bearing on the drive end",
    ),
    ("CONV-002", "plant1/mine/conveying/CONV-002", "belt_slip", "Belt slip 6%: raise take-up tension one step"),
    ("PUMP-003", "plant1/mine/dewatering/PUMP-003", "low_flow", "Flow 20% below setpoint: check the suction strainer"),
]


def run_recommendations(database_url: str, tenant: str, interval: float, seconds: float | None) -> int:
    rng = random.Random(5)
    made = 0
    pending: list[tuple[float, str]] = []
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        print(f"recommendations: writing to agentic_hmi.agent_recommendations every {interval}s", flush=True)  # noqa: T201
        next_insert = started
        while seconds is None or time.monotonic() - started < seconds:
            now = time.monotonic()
            if now >= next_insert:
                equipment, subject, issue, action = rng.choice(ISSUES)
                row = conn.execute(
                    "INSERT INTO agentic_hmi.agent_recommendations (tenant, equipment_id, subject, issue_type,"
                    " severity, issue_description, recommended_action, confidence_score)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING recommendation_id",
                    (
                        tenant,
                        equipment,
                        subject,
                        issue,
                        rng.choice(["medium", "high", "critical"]),
                        f"{issue.replace('_', ' ')} detected by the anomaly model",
                        action,
                        round(rng.uniform(0.7, 0.99), 2),
                    ),
                ).fetchone()
                if row is not None:
                    pending.append((now + rng.uniform(3, 8), str(row[0])))
                made += 1
                next_insert = now + interval
            for due, rec in [p for p in pending if p[0] <= now]:
                pending.remove((due, rec))
                conn.execute(
                    "UPDATE agentic_hmi.agent_recommendations SET status = %s, operator_id = 'operator-7'"
                    " WHERE recommendation_id = %s",
                    (rng.choice(["approved", "approved", "rejected", "deferred"]), rec),
                )
            time.sleep(0.2)
    return made
