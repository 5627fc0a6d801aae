-- Users of the web UI and API, their sessions, and the audit log of what they did.
CREATE TABLE flow_user (
    username       TEXT PRIMARY KEY,
    email          TEXT NOT NULL DEFAULT '',
    first_name     TEXT NOT NULL DEFAULT '',
    last_name      TEXT NOT NULL DEFAULT '',
    -- argon2id PHC string; never the password itself
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL,
    active         BIGINT NOT NULL DEFAULT 1,
    created_at     BIGINT NOT NULL,
    last_login     BIGINT
);

-- A logged-in browser. The cookie carries the id, signed; the row makes logout and
-- expiry effective at once.
CREATE TABLE web_session (
    id          TEXT PRIMARY KEY,
    username    TEXT NOT NULL REFERENCES flow_user (username) ON DELETE CASCADE,
    csrf_token  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX web_session_user ON web_session (username);

CREATE TABLE audit_log (
    id        BIGSERIAL PRIMARY KEY,
    at        BIGINT NOT NULL,
    username  TEXT NOT NULL,
    event     TEXT NOT NULL,
    dag_id    TEXT,
    run_id    TEXT,
    task_id   TEXT,
    extra     TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
