-- pglock schema, version 3: who wrote a lease's data.
--
-- A lease's data outlives its holder: an acquire without data keeps what
-- the last holder left (resume progress: a step count, a checkpoint path),
-- and a pool item's data carries from claim to claim. So that a reader
-- (`pglock ls`, Locks::leases, LeasePool::items) can tell the current
-- holder's data from a previous holder's, every write of data records the
-- token and holder label of the acquisition that wrote it. NULL with data
-- present: written before this version.
ALTER TABLE leases ADD COLUMN data_token bigint, ADD COLUMN data_holder text;
