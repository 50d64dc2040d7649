-- keyrotd schema, version 4: running totals that outlive the audit trail, revocation
-- attempts on the key versions, and a retention prune for events.
-- Plain SQL on purpose (a PostgreSQL backend ports it as is, but for the trigger body).

-- Running totals per credential (keyed by name, like events), bumped in the transaction
-- that appends the event they count. Pruning events never lowers them, and reading them
-- costs one row per credential and counter instead of a scan of every finished rotation.
CREATE TABLE credential_counters (
    credential TEXT NOT NULL,
    counter    TEXT NOT NULL,
    value      INTEGER NOT NULL,
    PRIMARY KEY (credential, counter)
);

-- Seeded from what the metrics counted before: finished rotations by result, and revoked
-- events (those that only retired a key locally say "retired (" in their detail).
INSERT INTO credential_counters (credential, counter, value)
SELECT c.name, 'rotation_success', COUNT(*) FROM rotations r JOIN credentials c ON c.id = r.credential_id
WHERE r.finished_at IS NOT NULL AND r.step = 'done' GROUP BY c.name;
INSERT INTO credential_counters (credential, counter, value)
SELECT c.name, 'rotation_failure', COUNT(*) FROM rotations r JOIN credentials c ON c.id = r.credential_id
WHERE r.finished_at IS NOT NULL AND r.step = 'failed' GROUP BY c.name;
INSERT INTO credential_counters (credential, counter, value)
SELECT credential, 'revocation_success', COUNT(*) FROM events
WHERE kind = 'revoked' AND credential IS NOT NULL AND detail NOT LIKE '% retired (%' GROUP BY credential;
INSERT INTO credential_counters (credential, counter, value)
SELECT credential, 'revocation_retired_locally', COUNT(*) FROM events
WHERE kind = 'revoked' AND credential IS NOT NULL AND detail LIKE '% retired (%' GROUP BY credential;

-- Failed revocation attempts of a version still live at the provider, and when the first
-- one failed: the retry backs off by the count, and the metrics show keys past their grace.
ALTER TABLE key_versions ADD COLUMN revoke_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE key_versions ADD COLUMN revoke_failed_at INTEGER;
CREATE INDEX key_versions_revocation_failing ON key_versions(credential_id)
    WHERE revoke_failed_at IS NOT NULL AND sealed_secret IS NOT NULL;

-- Retention. Events stay append-only for everyone but the prune: a delete is refused unless
-- the row is older than the cutoff the prune records in the same transaction. (Dropping the
-- delete trigger altogether would let any stray DELETE erase the audit trail.)
CREATE TABLE events_prune (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    cutoff INTEGER NOT NULL
);
INSERT INTO events_prune (id, cutoff) VALUES (1, 0);
CREATE INDEX events_by_at ON events(at);

DROP TRIGGER events_are_append_only_delete;
CREATE TRIGGER events_deleted_only_by_retention BEFORE DELETE ON events
WHEN OLD.at >= (SELECT cutoff FROM events_prune WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'events are append-only: only the retention prune deletes, and only events older than its cutoff'); END;
