-- keyrotd schema, version 1.
-- Times are Unix seconds (INTEGER). Secrets are sealed (AEAD) blobs, never plaintext.

CREATE TABLE credentials (
    id                   INTEGER PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    provider             TEXT NOT NULL,
    provider_kind        TEXT NOT NULL,
    created_at           INTEGER NOT NULL,
    -- Set when the credential disappears from the config; history is kept, metrics skip it.
    removed_at           INTEGER,
    -- Rotation bookkeeping: the cron library is only a trigger, the store is the truth.
    next_rotation_at     INTEGER,
    last_rotated_at      INTEGER,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    -- Last check of the current key.
    check_status         TEXT CHECK (check_status IN ('valid','invalid','exhausted','rate_limited','unreachable')),
    -- 1 valid, 0 invalid, NULL until the first conclusive check.
    valid                INTEGER,
    last_check_at        INTEGER,
    check_detail         TEXT
);

CREATE TABLE key_versions (
    id               INTEGER PRIMARY KEY,
    credential_id    INTEGER NOT NULL REFERENCES credentials(id),
    stage            TEXT NOT NULL CHECK (stage IN ('pending','current','previous','revoked','failed')),
    fingerprint      TEXT NOT NULL,
    provider_key_id  TEXT,
    rotation_id      TEXT,
    -- nonce || ciphertext || tag; NULL once revoked (secret material dropped).
    sealed_secret    BLOB,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER,
    stage_changed_at INTEGER NOT NULL,
    last_check_at    INTEGER,
    last_check_status TEXT
);

-- One current key per credential, enforced by the database itself.
CREATE UNIQUE INDEX key_versions_one_current ON key_versions(credential_id) WHERE stage = 'current';
CREATE INDEX key_versions_by_credential ON key_versions(credential_id, stage);

CREATE TABLE rotations (
    id             TEXT PRIMARY KEY,
    credential_id  INTEGER NOT NULL REFERENCES credentials(id),
    -- planned, issued, verified, delivered, promoted, done, failed
    step           TEXT NOT NULL,
    new_version_id INTEGER REFERENCES key_versions(id),
    started_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    attempts       INTEGER NOT NULL DEFAULT 0,
    error          TEXT
);

-- At most one unfinished rotation per credential.
CREATE UNIQUE INDEX rotations_one_in_flight ON rotations(credential_id) WHERE finished_at IS NULL;

-- Balance or limit remaining as last reported by the provider, per unit (usd, cny, ...).
CREATE TABLE credits (
    credential_id INTEGER NOT NULL REFERENCES credentials(id),
    unit          TEXT NOT NULL,
    remaining     REAL NOT NULL,
    reported_at   INTEGER NOT NULL,
    PRIMARY KEY (credential_id, unit)
);

-- Append-only audit trail. Holds fingerprints, never secrets.
CREATE TABLE events (
    id            INTEGER PRIMARY KEY,
    at            INTEGER NOT NULL,
    credential    TEXT,
    version_id    INTEGER,
    kind          TEXT NOT NULL,
    actor         TEXT NOT NULL,
    detail        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_by_credential ON events(credential, id);

CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;

-- Bumped by every write transaction so readers (the metrics endpoint) can tell whether
-- anything changed without re-reading everything.
CREATE TABLE store_generation (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO store_generation (id, value) VALUES (1, 0);
