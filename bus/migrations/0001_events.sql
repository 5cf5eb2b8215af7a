-- The long-term record of the RBEE stream. Append-only: the database itself refuses changes.
CREATE TABLE IF NOT EXISTS events (
    position      BIGSERIAL PRIMARY KEY,
    stream_seq    BIGINT NOT NULL UNIQUE,
    event_id      UUID NOT NULL UNIQUE,
    subject       TEXT NOT NULL,
    aggregate     TEXT NOT NULL,
    version       BIGINT NOT NULL,
    event_type    TEXT NOT NULL,
    schema        SMALLINT NOT NULL,
    payload       BYTEA NOT NULL,
    headers       JSONB NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (aggregate, version)
);

CREATE OR REPLACE FUNCTION events_are_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % refused', TG_OP USING ERRCODE = 'P0001';
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS events_append_only ON events;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
