//! Users of the web UI and API, their browser sessions, and the audit log.
//!
//! The store keeps password hashes only; hashing and verifying happen in the caller
//! (flow-http), so that no SQL ever sees a password.

use chrono::{DateTime, Utc};
use flow_model::Role;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, from_micros, opt_from_micros, to_micros};

/// A user, without the password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub username: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub role: Role,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub last_login: Option<DateTime<Utc>>,
}

/// What creating a user needs.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
}

/// What a guarded change to a user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    Done,
    /// No such user.
    Missing,
    /// Refused: the user is the last active Admin.
    LastAdmin,
}

/// A live session, joined with its user.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
    pub user: UserRow,
}

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub username: String,
    pub event: String,
    pub dag_id: Option<String>,
    pub run_id: Option<String>,
    pub task_id: Option<String>,
    pub extra: Option<String>,
}

/// An action to record in the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent<'a> {
    pub username: &'a str,
    pub event: &'a str,
    pub dag_id: Option<&'a str>,
    pub run_id: Option<&'a str>,
    pub task_id: Option<&'a str>,
    pub extra: Option<&'a str>,
}

const USER_COLUMNS: &str =
    "u.username, u.email, u.first_name, u.last_name, u.role, u.active, u.created_at, u.last_login";

fn user_row(r: &AnyRow) -> Result<UserRow> {
    let role: String = r.try_get("role")?;
    Ok(UserRow {
        username: r.try_get("username")?,
        email: r.try_get("email")?,
        first_name: r.try_get("first_name")?,
        last_name: r.try_get("last_name")?,
        role: Role::parse(&role).map_err(|e| StoreError::Invalid(e.to_string()))?,
        active: r.try_get::<i64, _>("active")? != 0,
        created_at: from_micros(r.try_get("created_at")?),
        last_login: opt_from_micros(r.try_get("last_login")?),
    })
}

impl Store {
    /// Creates a user. Returns false if the username is taken.
    pub async fn user_create(&self, user: &NewUser<'_>, now: DateTime<Utc>) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "INSERT INTO flow_user (username, email, first_name, last_name, password_hash, role, \
             active, created_at) VALUES ($1, $2, $3, $4, $5, $6, 1, $7) \
             ON CONFLICT (username) DO NOTHING",
        )
        .bind(user.username)
        .bind(user.email)
        .bind(user.first_name)
        .bind(user.last_name)
        .bind(user.password_hash)
        .bind(user.role.as_str())
        .bind(to_micros(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.commit(tx).await?;
        Ok(n > 0)
    }

    /// Deletes a user and their sessions, unless they are the last active Admin (a site
    /// without one could never manage users again).
    pub async fn user_delete(&self, username: &str) -> Result<UserChange> {
        let mut tx = self.begin().await?;
        match self.admin_guard(&mut tx, username, None).await? {
            UserChange::Done => {}
            refused => return Ok(refused),
        }
        sqlx::query("DELETE FROM web_session WHERE username = $1")
            .bind(username)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM flow_user WHERE username = $1")
            .bind(username)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(UserChange::Done)
    }

    /// Gives a user another role, unless that would demote the last active Admin.
    pub async fn user_set_role(&self, username: &str, role: Role) -> Result<UserChange> {
        let mut tx = self.begin().await?;
        match self.admin_guard(&mut tx, username, Some(role)).await? {
            UserChange::Done => {}
            refused => return Ok(refused),
        }
        sqlx::query("UPDATE flow_user SET role = $1 WHERE username = $2")
            .bind(role.as_str())
            .bind(username)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(UserChange::Done)
    }

    /// Replaces a user's password hash and ends their sessions, all but `keep_session` (the
    /// one making the change, when users reset their own password). API tokens die with the
    /// old hash (they are bound to it). Returns false if there was no such user.
    pub async fn user_set_password(
        &self,
        username: &str,
        password_hash: &str,
        keep_session: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("UPDATE flow_user SET password_hash = $1 WHERE username = $2")
            .bind(password_hash)
            .bind(username)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        // Session ids are never empty, so "" keeps none.
        sqlx::query("DELETE FROM web_session WHERE username = $1 AND id <> $2")
            .bind(username)
            .bind(keep_session.unwrap_or(""))
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(true)
    }

    /// Whether `username` may be deleted (`new_role` None) or given `new_role`: refused if it
    /// is missing, or the last active Admin losing the role. The Admin rows stay locked until
    /// the transaction ends (on SQLite the write lock serializes writers anyway), so two
    /// Admins demoting each other at once cannot both succeed.
    async fn admin_guard(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        username: &str,
        new_role: Option<Role>,
    ) -> Result<UserChange> {
        let lock = match self.backend() {
            crate::Backend::Postgres => " FOR UPDATE",
            crate::Backend::Sqlite => "",
        };
        let admins: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT username FROM flow_user WHERE role = 'Admin' AND active = 1{lock}"
        ))
        .fetch_all(&mut **tx)
        .await?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT username FROM flow_user WHERE username = $1")
                .bind(username)
                .fetch_optional(&mut **tx)
                .await?;
        if exists.is_none() {
            return Ok(UserChange::Missing);
        }
        let loses_admin = new_role != Some(Role::Admin);
        if loses_admin && admins.len() == 1 && admins.iter().any(|a| a == username) {
            return Ok(UserChange::LastAdmin);
        }
        Ok(UserChange::Done)
    }

    pub async fn user_list(&self) -> Result<Vec<UserRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM flow_user u ORDER BY u.username"
        ))
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(user_row).collect()
    }

    pub async fn user_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM flow_user")
            .fetch_one(self.read_pool())
            .await?)
    }

    /// A user and their password hash, for logging in.
    pub async fn user_for_login(&self, username: &str) -> Result<Option<(UserRow, String)>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, u.password_hash FROM flow_user u WHERE u.username = $1"
        ))
        .bind(username)
        .fetch_optional(self.read_pool())
        .await?;
        row.map(|r| Ok((user_row(&r)?, r.try_get("password_hash")?)))
            .transpose()
    }

    /// Starts a session after a successful login; the user's other sessions stay valid.
    pub async fn session_create(
        &self,
        id: &str,
        username: &str,
        csrf_token: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        // Expired sessions are swept here rather than by a timer.
        sqlx::query("DELETE FROM web_session WHERE expires_at < $1")
            .bind(to_micros(now))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO web_session (id, username, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(username)
        .bind(csrf_token)
        .bind(to_micros(now))
        .bind(to_micros(expires_at))
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE flow_user SET last_login = $1 WHERE username = $2")
            .bind(to_micros(now))
            .bind(username)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// The live session with this id, if it has not expired and its user is active.
    pub async fn session_get(&self, id: &str, now: DateTime<Utc>) -> Result<Option<SessionRow>> {
        let row = sqlx::query(&format!(
            "SELECT s.id, s.csrf_token, s.expires_at, {USER_COLUMNS} FROM web_session s \
             JOIN flow_user u ON u.username = s.username \
             WHERE s.id = $1 AND s.expires_at > $2 AND u.active = 1"
        ))
        .bind(id)
        .bind(to_micros(now))
        .fetch_optional(self.read_pool())
        .await?;
        row.map(|r| {
            Ok(SessionRow {
                id: r.try_get("id")?,
                csrf_token: r.try_get("csrf_token")?,
                expires_at: from_micros(r.try_get("expires_at")?),
                user: user_row(&r)?,
            })
        })
        .transpose()
    }

    pub async fn session_delete(&self, id: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM web_session WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(())
    }

    pub async fn audit_record(&self, e: &AuditEvent<'_>, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO audit_log (at, username, event, dag_id, run_id, task_id, extra) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(to_micros(now))
        .bind(e.username)
        .bind(e.event)
        .bind(e.dag_id)
        .bind(e.run_id)
        .bind(e.task_id)
        .bind(e.extra)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// The newest audit entries first, optionally for one DAG.
    /// One audit log entry by id.
    pub async fn audit_get(&self, id: i64) -> Result<Option<AuditRow>> {
        let row = sqlx::query(
            "SELECT id, at, username, event, dag_id, run_id, task_id, extra FROM audit_log \
             WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.read_pool())
        .await?;
        row.as_ref().map(audit_row).transpose()
    }

    pub async fn audit_list(&self, dag_id: Option<&str>, limit: i64) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT id, at, username, event, dag_id, run_id, task_id, extra FROM audit_log \
             WHERE ($1 IS NULL OR dag_id = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(dag_id)
        .bind(limit)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(audit_row).collect()
    }
}

fn audit_row(r: &AnyRow) -> Result<AuditRow> {
    Ok(AuditRow {
        id: r.try_get("id")?,
        at: from_micros(r.try_get("at")?),
        username: r.try_get("username")?,
        event: r.try_get("event")?,
        dag_id: r.try_get("dag_id")?,
        run_id: r.try_get("run_id")?,
        task_id: r.try_get("task_id")?,
        extra: r.try_get("extra")?,
    })
}
