-- Airflow's connections. `password` and `extra` hold Fernet tokens when their
-- is_encrypted / is_extra_encrypted flag is 1; the key never reaches the database.
CREATE TABLE connection (
    conn_id             TEXT PRIMARY KEY,
    conn_type           TEXT NOT NULL,
    description         TEXT,
    host                TEXT,
    schema_name         TEXT,
    login               TEXT,
    password            TEXT,
    port                BIGINT,
    extra               TEXT,
    is_encrypted        BIGINT NOT NULL DEFAULT 0,
    is_extra_encrypted  BIGINT NOT NULL DEFAULT 0,
    updated_at          BIGINT NOT NULL
);
