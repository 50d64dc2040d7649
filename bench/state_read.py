#!/usr/bin/env python3
"""Cost of the metrics' per-credential totals read (`visit_states`), before and after the
running totals of migration 0004, on the real schema.

    bench/state_read.py [CREDENTIALS] [FINISHED_ROTATIONS]   # default 100 and 100000

Applies migrations/*.sql in order to an on-disk SQLite file, seeds the credentials and the
finished rotations (the migration's seed turns them into running totals), then times each
query (median of 50 runs) and prints its EXPLAIN QUERY PLAN. Python's sqlite3 module, not
the daemon's bundled SQLite: the plans are the same, the absolute figures close.
"""
import glob
import os
import sqlite3
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BEFORE = """SELECT c.name, SUM(r.step = 'done'), SUM(r.step = 'failed') FROM rotations r
JOIN credentials c ON c.id = r.credential_id
WHERE c.removed_at IS NULL AND r.finished_at IS NOT NULL GROUP BY c.name"""

AFTER_COUNTERS = """SELECT k.credential, k.counter, k.value FROM credential_counters k
JOIN credentials c ON c.name = k.credential WHERE c.removed_at IS NULL"""

AFTER_FAILING = """SELECT c.name, COUNT(*), MIN(v.revoke_failed_at) FROM key_versions v
JOIN credentials c ON c.id = v.credential_id
WHERE v.revoke_failed_at IS NOT NULL AND v.sealed_secret IS NOT NULL
  AND v.stage IN ('previous', 'failed') AND c.removed_at IS NULL
GROUP BY c.name"""


def main():
    credentials = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    rotations = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "k.db"))
        migrations = sorted(glob.glob(os.path.join(ROOT, "migrations", "*.sql")))
        # The seed comes before 0004 so that its backfill is exercised too.
        for path in migrations:
            if os.path.basename(path) >= "0004":
                break
            db.executescript(open(path).read())
        db.executemany(
            "INSERT INTO credentials (name, provider, provider_kind, created_at) VALUES (?, 'p', 'simulated', 0)",
            [(f"c{i:05}",) for i in range(credentials)],
        )
        db.executemany(
            "INSERT INTO rotations (id, credential_id, step, started_at, updated_at, finished_at) VALUES (?, ?, ?, 0, 0, 1)",
            [(f"r{i}", 1 + i % credentials, "failed" if i % 10 == 0 else "done") for i in range(rotations)],
        )
        db.commit()
        for path in migrations:
            if os.path.basename(path) >= "0004":
                db.executescript(open(path).read())
        db.commit()

        def timed(sql):
            runs = []
            for _ in range(50):
                start = time.perf_counter()
                rows = db.execute(sql).fetchall()
                runs.append((time.perf_counter() - start) * 1000)
            return statistics.median(runs), len(rows)

        print(f"{credentials} credentials, {rotations} finished rotations")
        for name, sql in [("before: aggregate over rotations", BEFORE),
                          ("after: running totals", AFTER_COUNTERS),
                          ("after: keys past grace (partial index)", AFTER_FAILING)]:
            ms, n = timed(sql)
            plan = "; ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql))
            print(f"{name}: {ms:.2f} ms median, {n} rows\n    plan: {plan}")
        before = {r[0]: (r[1], r[2]) for r in db.execute(BEFORE)}
        after = {}
        for name, counter, value in db.execute(AFTER_COUNTERS):
            done, failed = after.get(name, (0, 0))
            if counter == "rotation_success":
                done = value
            elif counter == "rotation_failure":
                failed = value
            after[name] = (done, failed)
        assert before == after, "the seeded totals differ from the aggregate"
        print("seeded totals equal the aggregate: ok")


if __name__ == "__main__":
    main()
