//! Connection tests: Airflow's `Connection.test_connection` (the Test button of the
//! Connections page, `POST /api/v2/connections/test`), with the clients the operators use:
//! SQL connections connect and run `SELECT 1`, `http` ones GET their base URL, `kafka` ones
//! fetch the cluster's metadata, `smtp` ones connect, greet and log in. Other types say they
//! cannot be tested. Nothing here is stored or logged with the connection's secrets.

use std::time::Duration;

use flow_model::Connection;

use crate::operators::{email, http, sql};

/// How long a whole test may take (connect, log in, answer).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Airflow's message for a test that passed.
pub const SUCCESS: &str = "Connection successfully tested";

/// Tests `conn`: `Ok` with Airflow's success message (and what answered), or `Err` with why
/// it failed.
pub async fn test_connection(conn: &Connection) -> Result<String, String> {
    match tokio::time::timeout(TEST_TIMEOUT, test_inner(conn)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} s", TEST_TIMEOUT.as_secs())),
    }
}

async fn test_inner(conn: &Connection) -> Result<String, String> {
    match conn.conn_type.as_str() {
        "postgres" | "postgresql" | "mysql" | "mariadb" | "sqlite" => {
            sql::ping(conn).await?;
            Ok(SUCCESS.to_owned())
        }
        "http" | "https" => {
            let line = http::probe(conn, TEST_TIMEOUT).await?;
            Ok(format!("{SUCCESS} ({line})"))
        }
        "smtp" | "email" => {
            let line = email::probe(conn, TEST_TIMEOUT).await?;
            Ok(format!("{SUCCESS} ({line})"))
        }
        "kafka" => kafka(conn).await,
        other => Err(format!(
            "testing connections of type `{other}` is not supported (flow tests postgres, \
             mysql, sqlite, http, kafka and smtp connections)"
        )),
    }
}

async fn kafka(conn: &Connection) -> Result<String, String> {
    let settings = flow_kafka::client_settings(conn).map_err(|e| e.to_string())?;
    // librdkafka's metadata request blocks; the timeout leaves room under TEST_TIMEOUT.
    let wait = TEST_TIMEOUT - Duration::from_secs(3);
    let fetched =
        tokio::task::spawn_blocking(move || flow_kafka::fetch_metadata(&settings, wait)).await;
    match fetched {
        Ok(Ok((brokers, topics))) => Ok(format!(
            "{SUCCESS} ({brokers} broker(s), {topics} topic(s))"
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("the Kafka client failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn sqlite_files_are_tested_and_never_created() {
        let dir = std::env::temp_dir().join(format!("flow-conn-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("probe.db");
        let _ = std::fs::remove_file(&path);
        let mut c = Connection::new("lite", "sqlite").unwrap();
        c.host = Some(path.to_string_lossy().into_owned());
        let err = test_connection(&c).await.unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        assert!(!path.exists(), "a test must not create the file");
        std::fs::write(&path, b"").unwrap();
        assert_eq!(test_connection(&c).await.unwrap(), SUCCESS);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn postgres_runs_select_1_and_says_why_it_cannot() {
        let Some(db) = flow_store::testing::TestDb::postgres().await.unwrap() else {
            return; // no server outside CI: skipped loudly by TestDb
        };
        let c = Connection::from_uri("pg", &db.url).unwrap();
        assert_eq!(test_connection(&c).await.unwrap(), SUCCESS);
        let mut missing = c.clone();
        missing.schema = Some("no_such_database_here".into());
        let err = test_connection(&missing).await.unwrap_err();
        assert!(err.contains("no_such_database_here"), "{err}");
        db.drop_db().await.unwrap();
    }

    #[tokio::test]
    async fn unsupported_types_say_so() {
        let c = Connection::new("x", "ftp").unwrap();
        let err = test_connection(&c).await.unwrap_err();
        assert!(err.contains("type `ftp` is not supported"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_http_server_fails_with_the_reason() {
        // Port 9 on localhost: nothing listens there.
        let mut c = Connection::new("web", "http").unwrap();
        c.host = Some("127.0.0.1".into());
        c.port = Some(9);
        c.password = Some("pw-never-shown".into());
        c.login = Some("me".into());
        let err = test_connection(&c).await.unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
        assert!(!err.contains("pw-never-shown"), "{err}");
    }
}
