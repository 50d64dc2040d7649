-- keyrotd schema, version 2: one owner per rotation.
--
-- A rotation (or a rollback, which is a rotation of its own kind) is driven by exactly one
-- process at a time: its owner, holding a lease that expires on the DATABASE's clock (so
-- hosts with skewed clocks agree). Another process takes a rotation over only once the
-- lease has expired, and the takeover raises owner_epoch; every step is a compare-and-set
-- on (id, step, owner_epoch), so a late write by the previous owner matches no row.
-- Rotations in flight from before this version have an expired lease (0) and no owner, so
-- the first process to look takes them over.

ALTER TABLE rotations ADD COLUMN kind TEXT NOT NULL DEFAULT 'rotate' CHECK (kind IN ('rotate', 'rollback'));
ALTER TABLE rotations ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE rotations ADD COLUMN owner_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rotations ADD COLUMN lease_expires_at INTEGER NOT NULL DEFAULT 0;
