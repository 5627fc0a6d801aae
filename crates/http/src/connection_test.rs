//! Connection tests as the web server offers them: Airflow's `[core] test_connection` switch
//! (`Disabled` by default: a test makes the server reach out wherever a connection points,
//! so it is for deployments that trust everyone who may edit connections) and the function
//! that tests. The function comes from the binary, which links the operators' clients; the
//! web server does not depend on the executor.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use flow_model::Connection;

/// Airflow's answer when testing is not enabled (the API's 403 and the page's note).
pub const DISABLED_MESSAGE: &str = "Testing connections is disabled in Airflow configuration. \
     Contact your deployment admin to enable it.";

/// Airflow's `[core] test_connection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestConnectionMode {
    /// No tests; the Test button shows, disabled.
    Disabled,
    Enabled,
    /// No tests and no Test button.
    Hidden,
}

impl TestConnectionMode {
    /// Airflow's values, in any case.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "disabled" => Ok(Self::Disabled),
            "enabled" => Ok(Self::Enabled),
            "hidden" => Ok(Self::Hidden),
            _ => Err(format!("`{value}` is not one of Disabled, Enabled, Hidden")),
        }
    }
}

/// What a test says: `Ok` with a success message, `Err` with the reason it failed.
pub type TestFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

type TestFn = Arc<dyn Fn(Connection) -> TestFuture + Send + Sync>;

/// Whether and how this server tests connections.
#[derive(Clone)]
pub struct ConnectionTesting {
    mode: TestConnectionMode,
    tester: Option<TestFn>,
}

impl std::fmt::Debug for ConnectionTesting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionTesting")
            .field("mode", &self.mode)
            .field("tester", &self.tester.as_ref().map(|_| ".."))
            .finish()
    }
}

impl ConnectionTesting {
    /// Airflow's default: no tests, the button shown disabled.
    pub fn disabled() -> Self {
        ConnectionTesting {
            mode: TestConnectionMode::Disabled,
            tester: None,
        }
    }

    /// Tests with `tester` when `mode` is `Enabled`.
    pub fn new<F, Fut>(mode: TestConnectionMode, tester: F) -> Self
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let tester: TestFn = Arc::new(move |c| Box::pin(tester(c)));
        ConnectionTesting {
            mode,
            tester: Some(tester),
        }
    }

    pub(crate) fn mode(&self) -> TestConnectionMode {
        self.mode
    }

    /// Tests `conn`: `None` when testing is not enabled, else whether it passed and the
    /// message.
    pub(crate) async fn run(&self, conn: Connection) -> Option<(bool, String)> {
        if self.mode != TestConnectionMode::Enabled {
            return None;
        }
        let tester = self.tester.as_ref()?;
        Some(match tester(conn).await {
            Ok(message) => (true, message),
            Err(message) => (false, message),
        })
    }
}
