-- One checkpoint per projection: where it stands in the log, and its state at that point.
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name            TEXT PRIMARY KEY,
    last_seq        BIGINT NOT NULL,
    last_event_id   UUID,
    schema_version  INTEGER NOT NULL,
    snapshot        BYTEA NOT NULL,
    sha256          TEXT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Checkpoints found corrupt, foreign or outdated are moved here, never silently dropped.
CREATE TABLE IF NOT EXISTS projection_checkpoints_set_aside (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT NOT NULL,
    reason          TEXT NOT NULL,
    last_seq        BIGINT NOT NULL,
    schema_version  INTEGER NOT NULL,
    snapshot        BYTEA NOT NULL,
    sha256          TEXT NOT NULL,
    set_aside_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
