-- keyrotd schema, version 5: leadership among replicas.
--
-- One lease row on the database's clock. A replica leads while it holds an unexpired
-- lease; taking an expired or free lease raises epoch, and every rotation write made on a
-- leader's behalf names the epoch it holds, so a replica that lost the lease (paused,
-- partitioned) cannot write once another took over. rotations.owner_leader_epoch records
-- the epoch of the leader that owns a rotation: a new leader may take such a rotation over
-- at once, since its owner is fenced by the epoch, without waiting out the rotation lease.

CREATE TABLE leadership (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

ALTER TABLE rotations ADD COLUMN owner_leader_epoch INTEGER;
