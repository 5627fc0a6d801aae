//! `flow bench api`: REST API latency under a steady request rate, over real TCP, as a load
//! generator on loopback sees it. Seeds 1,000 DAGs and a 200-task DAG with enough runs for
//! 100,000 task instances, then requests `GET /api/v2/dags?limit=50` and the task instance
//! list of one 200-task run at a fixed rate, first with no scheduler running, then while the
//! 1,000-task fan-out benchmark (`flow bench engine`, another process, on a second database
//! of the same server) runs over and over. Figures for the issue notes, not tests.
//!
//! The generator is open-loop: request `i` is due at `start + i / rate`, and its latency is
//! counted from when it was due, so a slow server cannot hide its queueing delay.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use flow_dag::Dag;
use flow_http::{AppState, WebConfig};
use flow_store::{Store, TriggerRequest};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::bench::{dag_file, scratch_dir};
use crate::bench_engine::percentile;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiBench {
    #[arg(long)]
    pub database_url: String,
    #[arg(long, default_value_t = 1000)]
    pub dags: usize,
    #[arg(long, default_value_t = 200)]
    pub tasks: usize,
    #[arg(long, default_value_t = 100_000)]
    pub task_instances: usize,
    /// Requests per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Seconds of load per endpoint and phase.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
}

/// Seeds the database: `dags` generated DAGs, the big DAG, and runs of it until
/// `task_instances` exist. Returns the id of a run to list.
async fn seed(store: &Store, dir: &std::path::Path, b: &ApiBench) -> Result<String> {
    let dags = dir.join("dags");
    std::fs::create_dir_all(&dags)?;
    for i in 0..b.dags {
        std::fs::write(dags.join(format!("dag_{i:05}.yaml")), dag_file(i, 10))?;
    }
    std::fs::write(dags.join("big.yaml"), crate::bench_web::big_dag(b.tasks))?;
    let mut processor = flow_scheduler::DagProcessor::new(store.clone(), dags, false);
    processor.run_once(Utc::now()).await?;
    let (data, hash) = store
        .serialized_dag_get("bench_big")
        .await?
        .context("bench_big did not load")?;
    let dag = Dag::from_json(&data)?;
    let runs = b.task_instances.div_ceil(b.tasks.max(1));
    let mut run_id = String::new();
    for i in 0..runs {
        let mut request = TriggerRequest::manual(serde_json::json!({}));
        request.run_id = Some(format!("seed_{i:05}"));
        run_id = store
            .dag_run_trigger(&dag, &hash, &request, Utc::now())
            .await?
            .run_id;
    }
    crate::bench_web::bench_viewer(store).await?;
    println!(
        "seeded {} DAGs, {runs} runs of a {}-task DAG ({} task instances)",
        b.dags + 1,
        b.tasks,
        runs * b.tasks
    );
    Ok(run_id)
}

/// One HTTP/1.1 request on a kept-alive connection; returns the status and body.
async fn request(conn: &mut TcpStream, raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    conn.write_all(raw).await?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .context("no content-length")?;
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, buf[head_end..head_end + length].to_vec()))
}

/// Requests `path` at `rate` per second for `seconds`, open-loop; returns latencies in ms.
async fn load(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    b: &ApiBench,
) -> Result<Vec<f64>> {
    let raw: Arc<Vec<u8>> = Arc::new(
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
        )
        .into_bytes(),
    );
    let pool: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
    let total = u64::from(b.rate) * b.seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(b.rate.max(1)));
    let start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for i in 0..total {
        let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due).await;
        let (raw, pool) = (Arc::clone(&raw), Arc::clone(&pool));
        handles.push(tokio::spawn(async move {
            let conn = pool.lock().await.pop();
            let mut conn = match conn {
                Some(c) => c,
                None => TcpStream::connect(addr).await?,
            };
            conn.set_nodelay(true)?;
            let (status, body) = request(&mut conn, &raw).await?;
            let took = due.elapsed().as_secs_f64() * 1000.0;
            if status != 200 {
                bail!("answered {status}: {}", String::from_utf8_lossy(&body));
            }
            pool.lock().await.push(conn);
            Ok::<_, anyhow::Error>((took, body.len()))
        }));
    }
    let mut times = Vec::with_capacity(handles.len());
    let mut bytes = 0;
    for h in handles {
        let (took, len) = h.await??;
        times.push(took);
        bytes = len;
    }
    times.sort_by(f64::total_cmp);
    println!(
        "    {path}: {} requests at {}/s, {} KiB each: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        times.len(),
        b.rate,
        bytes / 1024,
        percentile(&times, 0.50),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or(0.0)
    );
    Ok(times)
}

async fn token(addr: std::net::SocketAddr) -> Result<String> {
    let body = r#"{"username": "bench", "password": "bench-password"}"#;
    let raw = format!(
        "POST /auth/token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut conn = TcpStream::connect(addr).await?;
    let (status, body) = request(&mut conn, raw.as_bytes()).await?;
    if status != 201 {
        bail!("token: {status}");
    }
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(json["access_token"]
        .as_str()
        .context("no access_token")?
        .to_owned())
}

pub async fn api(b: ApiBench) -> Result<ExitCode> {
    let dir = scratch_dir();
    let store = crate::bench::fresh_store(&b.database_url).await?;
    println!("backend: {:?} ({})", store.backend(), store.redacted_url());
    let run_id = seed(&store, &dir, &b).await?;
    store.analyze().await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = AppState::new(
        store.clone(),
        WebConfig {
            secret_key: b"bench key bench key bench key bench".to_vec(),
            secure_cookies: false,
            cipher: None,
            exposed_config: None,
            connection_testing: flow_http::ConnectionTesting::disabled(),
            default_ui_timezone: chrono_tz::UTC,
        },
    );
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(flow_http::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let token = token(addr).await?;
    let paths = [
        format!("/api/v2/dags/bench_big/dagRuns/{run_id}/taskInstances?limit=100"),
        "/api/v2/dags?limit=50".to_owned(),
        format!("/api/v2/dags/bench_big/dagRuns/{run_id}/taskInstances?limit=100&offset=100"),
    ];
    // Warm-up: connections, caches, the database's buffers.
    let warm = ApiBench {
        seconds: 2,
        ..b.clone()
    };
    for p in &paths {
        load(addr, p, &token, &warm).await?;
    }

    println!("scheduler idle:");
    for p in &paths {
        load(addr, p, &token, &b).await?;
    }

    // The fan-out benchmark as its own process (`flow bench engine`), over and over, on a
    // second database of the same server, made here if the server does not have it yet.
    let fanout_url = fanout_database(&b.database_url);
    flow_store::create_database_if_missing(&fanout_url)
        .await
        .with_context(|| {
            format!(
                "creating the fan-out database {}",
                flow_store::redact_url(&fanout_url)
            )
        })?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "engine", "--database-url"])
        .arg(&fanout_url)
        .args(["--chain", "1", "--fanout", "1000", "--latency-runs", "1"])
        .args(["--fanout-rounds", "100000"])
        .env("FLOW__LOGGING__LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let errors = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut text = String::new();
        let _ = std::io::BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // The fan-out starts right after the one-task chain.
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) if line.starts_with("(a) chain") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let said = errors.join().unwrap_or_default();
                bail!(
                    "the fan-out process (flow bench engine --database-url {}) stopped before \
                     its fan-out ({e}): {}",
                    flow_store::redact_url(&fanout_url),
                    said.trim()
                );
            }
        }
    }
    println!("while the 1,000-task fan-out runs (32 slots, another process):");
    for p in &paths {
        load(addr, p, &token, &b).await?;
    }
    let _ = child.kill();
    let _ = child.wait();
    let rates: Vec<f64> = rx
        .try_iter()
        .filter(|l| l.starts_with("(b) fan-out"))
        .filter_map(|l| {
            l.rsplit(", ")
                .next()?
                .strip_suffix(" tasks/s")?
                .parse()
                .ok()
        })
        .collect();
    println!(
        "    fan-out meanwhile: {} rounds, {:.0} tasks/s on average",
        rates.len(),
        rates.iter().sum::<f64>() / rates.len().max(1) as f64
    );
    let _ = stop_server.send(());
    let _ = server.await;
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}

/// The second database for the fan-out: `<name>_fanout` beside a PostgreSQL database, or a
/// file beside a SQLite one.
fn fanout_database(url: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, name)) if url.starts_with("postgres") => {
            let (name, query) = name.split_once('?').map_or((name, ""), |(n, q)| (n, q));
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            format!("{base}/{name}_fanout{query}")
        }
        _ => format!("{url}.fanout"),
    }
}
