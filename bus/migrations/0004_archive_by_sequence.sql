-- The archive is keyed by the log's sequence alone: everything the log holds is archived, once.
-- An event whose aggregate and version clash with an archived one (it could only have been written
-- around optimistic concurrency) or whose body cannot be decoded is archived too, and flagged.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_aggregate_version_key;
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_event_id_key;
CREATE INDEX IF NOT EXISTS events_by_aggregate ON events (aggregate, version);
CREATE INDEX IF NOT EXISTS events_by_event_id ON events (event_id);
-- NULL for an ordinary event; `version_clash` or `undecodable: <why>` otherwise.
ALTER TABLE events ADD COLUMN IF NOT EXISTS flag TEXT;
