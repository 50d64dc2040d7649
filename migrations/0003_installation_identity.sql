-- keyrotd schema, version 3: the installation's identity and the master-key fence.

-- One row, written at first open: `installation_id` is this database's identity (a fresh
-- database gets a new one; a restored backup keeps its own). It is part of the provider-side
-- name of every key this database issues, so the orphan sweep deletes only its own keys.
-- `master_key_id` names the master key every sealed secret is sealed under (NULL until the
-- first secret is sealed or the store is opened with a master key); every sealing write
-- compares it with its own key's id in the same transaction.
CREATE TABLE installation (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    installation_id TEXT NOT NULL,
    master_key_id   TEXT
);

-- The id of the master key this row's secret is sealed under (NULL for rows sealed before
-- version 3 until the first open with a master key stamps them, and for revoked rows).
ALTER TABLE key_versions ADD COLUMN sealing_key_id TEXT;
