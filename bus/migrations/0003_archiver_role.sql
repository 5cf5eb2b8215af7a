-- Least privilege. The schema belongs to the role that runs these migrations; the role processes
-- use (rbee: the queens' archiver, recovery and checkpoints) may read and append events and keep
-- checkpoints, and nothing else: no UPDATE, DELETE or TRUNCATE of events, no DDL, no triggers.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'rbee') AND current_user <> 'rbee' THEN
        GRANT USAGE ON SCHEMA public TO rbee;
        GRANT SELECT, INSERT ON events TO rbee;
        GRANT USAGE ON SEQUENCE events_position_seq TO rbee;
        GRANT SELECT, INSERT, UPDATE, DELETE ON projection_checkpoints TO rbee;
        GRANT SELECT, INSERT ON projection_checkpoints_set_aside TO rbee;
        GRANT USAGE ON SEQUENCE projection_checkpoints_set_aside_id_seq TO rbee;
        GRANT SELECT ON _sqlx_migrations TO rbee;
    END IF;
END
$$;
