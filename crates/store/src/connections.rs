//! Connections, with their password and extra encrypted at rest (Fernet, Airflow's key
//! format). The key comes from the caller ([`Cipher`]); the database only ever sees tokens.

use chrono::{DateTime, Utc};
use fernet::{Fernet, MultiFernet};
use flow_model::Connection;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, to_micros};

/// Fernet keys: the first encrypts, every one decrypts, so a key is rotated by putting the
/// new one first (`new,old`) and re-encrypting (`Store::connections_rotate`).
#[derive(Clone)]
pub struct Cipher {
    keys: MultiFernet,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(***)")
    }
}

impl Cipher {
    /// `keys` is Airflow's `fernet_key`: comma-separated url-safe base64 keys of 32 bytes.
    pub fn new(keys: &str) -> Result<Cipher> {
        let mut parsed = Vec::new();
        for (i, key) in keys.split(',').map(str::trim).enumerate() {
            if key.is_empty() {
                continue;
            }
            let fernet = Fernet::new(key).ok_or_else(|| {
                StoreError::Invalid(format!(
                    "fernet key #{} is not a url-safe base64 encoding of 32 bytes \
                     (generate one with `flow connections generate-key`)",
                    i + 1
                ))
            })?;
            parsed.push(fernet);
        }
        if parsed.is_empty() {
            return Err(StoreError::Invalid("no fernet key given".into()));
        }
        Ok(Cipher {
            keys: MultiFernet::new(parsed),
        })
    }

    /// A new random key in Airflow's format.
    pub fn generate_key() -> String {
        Fernet::generate_key()
    }

    pub fn encrypt(&self, plain: &str) -> String {
        self.keys.encrypt(plain.as_bytes())
    }

    pub fn decrypt(&self, token: &str) -> Result<String> {
        let bytes = self.keys.decrypt(token).map_err(|_| {
            StoreError::Invalid(
                "cannot decrypt with the configured fernet key(s); was FLOW__CORE__FERNET_KEY \
                 changed without keeping the old key after the new one?"
                    .into(),
            )
        })?;
        String::from_utf8(bytes)
            .map_err(|_| StoreError::Corrupt("decrypted text is not UTF-8".into()))
    }
}

/// Where connections come from: environment overrides (`FLOW_CONN_<ID>` /
/// `AIRFLOW_CONN_<ID>`, read by the binary) first, then the metadata database.
#[derive(Debug, Clone)]
pub struct ConnectionSource {
    pub cipher: Cipher,
    /// Keyed by conn_id as written (lower case, as Airflow lower-cases the variable name).
    pub overrides: std::collections::HashMap<String, Connection>,
}

impl ConnectionSource {
    pub fn new(cipher: Cipher) -> Self {
        ConnectionSource {
            cipher,
            overrides: Default::default(),
        }
    }
}

const COLUMNS: &str = "conn_id, conn_type, description, host, schema_name, login, password, port, \
                       extra, is_encrypted, is_extra_encrypted";

fn connection_row(r: &AnyRow, cipher: &Cipher) -> Result<Connection> {
    let conn_id: String = r.try_get("conn_id")?;
    let secret = |column: &str, flag: &str| -> Result<Option<String>> {
        let value: Option<String> = r.try_get(column)?;
        let encrypted = r.try_get::<i64, _>(flag)? != 0;
        match value {
            Some(v) if encrypted => cipher
                .decrypt(&v)
                .map(Some)
                .map_err(|e| StoreError::Invalid(format!("connection `{conn_id}` {column}: {e}"))),
            other => Ok(other),
        }
    };
    let port: Option<i64> = r.try_get("port")?;
    Ok(Connection {
        conn_id: conn_id.clone(),
        conn_type: r.try_get("conn_type")?,
        description: r.try_get("description")?,
        host: r.try_get("host")?,
        schema: r.try_get("schema_name")?,
        login: r.try_get("login")?,
        password: secret("password", "is_encrypted")?,
        port: port.and_then(|p| u16::try_from(p).ok()),
        extra: secret("extra", "is_extra_encrypted")?,
    })
}

/// `$1..$12` of the insert and the update: the fields, the secrets as tokens, their flags and
/// the time.
fn bind_connection<'q>(
    sql: &'q str,
    conn: &'q Connection,
    cipher: &Cipher,
    now: DateTime<Utc>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(sql)
        .bind(&conn.conn_id)
        .bind(&conn.conn_type)
        .bind(conn.description.as_deref())
        .bind(conn.host.as_deref())
        .bind(conn.schema.as_deref())
        .bind(conn.login.as_deref())
        .bind(conn.password.as_deref().map(|p| cipher.encrypt(p)))
        .bind(conn.port.map(i64::from))
        .bind(conn.extra.as_deref().map(|e| cipher.encrypt(e)))
        .bind(i64::from(conn.password.is_some()))
        .bind(i64::from(conn.extra.is_some()))
        .bind(to_micros(now))
}

const UPDATE_SQL: &str = "UPDATE connection SET conn_type = $2, description = $3, host = $4, \
    schema_name = $5, login = $6, password = $7, port = $8, extra = $9, is_encrypted = $10, \
    is_extra_encrypted = $11, updated_at = $12 WHERE conn_id = $1";

impl Store {
    /// Adds a connection. Returns false if `conn_id` is taken (Airflow refuses too).
    pub async fn connection_add(
        &self,
        conn: &Connection,
        cipher: &Cipher,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "INSERT INTO connection ({COLUMNS}, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (conn_id) DO NOTHING"
        );
        let n = bind_connection(&sql, conn, cipher, now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(n > 0)
    }

    pub async fn connection_get(
        &self,
        conn_id: &str,
        cipher: &Cipher,
    ) -> Result<Option<Connection>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM connection WHERE conn_id = $1"
        ))
        .bind(conn_id)
        .fetch_optional(self.read_pool())
        .await?;
        row.map(|r| connection_row(&r, cipher)).transpose()
    }

    /// Replaces a connection's fields. Returns false if there is no such connection.
    pub async fn connection_update(
        &self,
        conn: &Connection,
        cipher: &Cipher,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = bind_connection(UPDATE_SQL, conn, cipher, now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(n > 0)
    }

    /// A connection by id: an environment override if there is one, else the database's.
    pub async fn connection_resolve(
        &self,
        conn_id: &str,
        source: &ConnectionSource,
    ) -> Result<Option<Connection>> {
        if let Some(c) = source.overrides.get(conn_id) {
            return Ok(Some(c.clone()));
        }
        self.connection_get(conn_id, &source.cipher).await
    }

    pub async fn connection_list(&self, cipher: &Cipher) -> Result<Vec<Connection>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM connection ORDER BY conn_id"
        ))
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(|r| connection_row(r, cipher)).collect()
    }

    /// Returns false if there was no such connection.
    pub async fn connection_delete(&self, conn_id: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM connection WHERE conn_id = $1")
            .bind(conn_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(n > 0)
    }

    /// Re-encrypts every secret with the cipher's first key (Airflow's `rotate-fernet-key`),
    /// in one transaction. Returns how many connections were rewritten.
    pub async fn connections_rotate(&self, cipher: &Cipher, now: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM connection ORDER BY conn_id"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let mut n = 0;
        for row in &rows {
            let conn = connection_row(row, cipher)?;
            bind_connection(UPDATE_SQL, &conn, cipher, now)
                .execute(&mut *tx)
                .await?;
            n += 1;
        }
        sqlx::query("UPDATE flow_meta SET value = $1 WHERE key = $2")
            .bind(cipher.encrypt(FERNET_CHECK_PLAIN))
            .bind(FERNET_CHECK_KEY)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(n)
    }

    /// Whether `cipher` reads this database's secrets: the check token (written by the first
    /// process that asks, with its key), or on a database from before the token, a stored
    /// secret. A process whose Fernet key differs from its cluster's must not start: it would
    /// fail every task that needs a connection, or write secrets nobody else can read.
    pub async fn fernet_check(&self, cipher: &Cipher) -> Result<bool> {
        if let Some(token) = self.fernet_check_token().await? {
            return Ok(cipher.decrypt(&token).is_ok());
        }
        let secret: Option<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT password, extra FROM connection \
             WHERE password IS NOT NULL OR extra IS NOT NULL LIMIT 1",
        )
        .fetch_optional(self.read_pool())
        .await?;
        if let Some((password, extra)) = secret
            && let Some(token) = password.or(extra)
            && cipher.decrypt(&token).is_err()
        {
            return Ok(false);
        }
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO flow_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(FERNET_CHECK_KEY)
        .bind(cipher.encrypt(FERNET_CHECK_PLAIN))
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        // Another process may have written its token first.
        let token = self.fernet_check_token().await?.unwrap_or_default();
        Ok(cipher.decrypt(&token).is_ok())
    }

    async fn fernet_check_token(&self) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM flow_meta WHERE key = $1")
                .bind(FERNET_CHECK_KEY)
                .fetch_optional(self.read_pool())
                .await?,
        )
    }
}

const FERNET_CHECK_KEY: &str = "fernet_check";
const FERNET_CHECK_PLAIN: &str = "flow fernet check";
