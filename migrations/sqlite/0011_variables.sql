-- Airflow's variables. `val` holds a Fernet token when `is_encrypted` is 1 (the key or the
-- description names a secret: password, token, api_key, ...).
CREATE TABLE variable (
    key           TEXT PRIMARY KEY,
    val           TEXT NOT NULL,
    description   TEXT,
    is_encrypted  BIGINT NOT NULL DEFAULT 0,
    updated_at    BIGINT NOT NULL
);
