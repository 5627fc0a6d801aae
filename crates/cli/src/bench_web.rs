//! `flow bench web`: server time of the heaviest pages, through the real router (no network),
//! on a fresh database. Figures for the issue notes, not tests.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use axum::body::Body;
use axum::http::{Request, header};
use chrono::Utc;
use flow_dag::Dag;
use flow_http::{AppState, WebConfig, url_encode};
use flow_model::Role;
use flow_store::{NewUser, Store, TriggerRequest};
use tower::ServiceExt as _;

use crate::bench::{dag_file, scratch_dir};

/// The Viewer `bench` (password `bench-password`) the web and API benchmarks log in as.
pub(crate) async fn bench_viewer(store: &Store) -> Result<()> {
    let hash_pw =
        flow_http::auth::hash_password("bench-password").map_err(|e| anyhow::anyhow!("{e}"))?;
    store
        .user_create(
            &NewUser {
                username: "bench",
                email: "",
                first_name: "",
                last_name: "",
                password_hash: &hash_pw,
                role: Role::Viewer,
            },
            Utc::now(),
        )
        .await?;
    Ok(())
}

pub(crate) fn big_dag(tasks: usize) -> String {
    let mut s = String::from("bench_big:\n  tasks:\n");
    for i in 0..tasks {
        s.push_str(&format!("    t{i:03}:\n      operator: empty\n"));
        if i > 0 {
            // A wide, layered shape: each task depends on one of the previous ten.
            s.push_str(&format!(
                "      dependencies: [t{:03}]\n",
                i - 1 - (i % 10).min(i - 1)
            ));
        }
    }
    s
}

/// One request through the router; returns (status, body, set-cookie headers).
async fn send(router: &axum::Router, req: Request<Body>) -> Result<(u16, String, Vec<String>)> {
    let resp = router.clone().oneshot(req).await?;
    let status = resp.status().as_u16();
    let cookies = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .collect();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024).await?;
    Ok((
        status,
        String::from_utf8_lossy(&bytes).into_owned(),
        cookies,
    ))
}

fn with_peer(mut req: Request<Body>) -> Request<Body> {
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            1,
        ))));
    req
}

async fn login(router: &axum::Router) -> Result<String> {
    let (_, body, cookies) = send(
        router,
        with_peer(Request::get("/login").body(Body::empty())?),
    )
    .await?;
    let token = body
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("no csrf token on the login page")?;
    let form = format!("username=bench&password=bench-password&csrf_token={token}&next=%2F");
    let req = Request::post("/login")
        .header(header::COOKIE, cookies.join("; "))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form))?;
    let (status, _, cookies) = send(router, with_peer(req)).await?;
    if status != 303 {
        bail!("login failed with {status}");
    }
    cookies
        .into_iter()
        .find(|c| c.starts_with("flow_session="))
        .context("no session cookie")
}

pub async fn web(
    database_url: Option<String>,
    n_dags: usize,
    n_runs: usize,
    n_tasks: usize,
    keep: bool,
) -> Result<ExitCode> {
    let dir = scratch_dir();
    let dags = dir.join("dags");
    std::fs::create_dir_all(&dags)?;
    for i in 0..n_dags {
        std::fs::write(dags.join(format!("dag_{i:05}.yaml")), dag_file(i, 10))?;
    }
    std::fs::write(dags.join("big.yaml"), big_dag(n_tasks))?;
    let url = database_url.unwrap_or_else(|| dir.join("bench.db").display().to_string());
    let store = crate::bench::fresh_store(&url).await?;
    println!("backend: {:?} ({})", store.backend(), store.redacted_url());
    let mut processor = flow_scheduler::DagProcessor::new(store.clone(), dags.clone(), false);
    processor.run_once(Utc::now()).await?;
    let (data, hash) = store
        .serialized_dag_get("bench_big")
        .await?
        .context("bench_big did not load")?;
    let dag = Dag::from_json(&data)?;
    for _ in 0..n_runs {
        store
            .dag_run_trigger(
                &dag,
                &hash,
                &TriggerRequest::manual(serde_json::json!({})),
                Utc::now(),
            )
            .await?;
    }
    bench_viewer(&store).await?;
    let router = flow_http::router(AppState::new(
        store.clone(),
        WebConfig {
            secret_key: b"bench key bench key bench key bench".to_vec(),
            secure_cookies: false,
            cipher: None,
            exposed_config: None,
            connection_testing: flow_http::ConnectionTesting::disabled(),
            default_ui_timezone: chrono_tz::UTC,
        },
    ));
    let cookie = login(&router).await?;
    // The newest run and a task in the middle: what the details panel shows.
    let newest = store
        .dag_run_list("bench_big", 1)
        .await?
        .into_iter()
        .next()
        .context("no run")?
        .run_id;
    let task = format!("t{:03}", n_tasks / 2);
    let run = url_encode(&newest);
    let pages = [
        (
            format!("DAG list ({n_dags} DAGs, first page)"),
            "/".to_owned(),
        ),
        (
            format!("grid, default page (25 of {n_runs} runs x {n_tasks} tasks)"),
            "/dags/bench_big".to_owned(),
        ),
        (
            format!("grid ({n_runs} runs x {n_tasks} tasks, at most 100 x 200 a page)"),
            format!("/dags/bench_big?runs={n_runs}"),
        ),
        (
            format!("grid with the details panel ({n_runs} runs x {n_tasks} tasks)"),
            format!("/dags/bench_big?tab=grid&runs={n_runs}&run_id={run}&task_id={task}"),
        ),
        (
            "details panel alone (a task instance)".to_owned(),
            format!("/dags/bench_big/grid/details?run_id={run}&task_id={task}"),
        ),
        ("cluster page".to_owned(), "/cluster".to_owned()),
    ];
    for (label, path) in &pages {
        let mut times = Vec::new();
        for i in 0..21 {
            let req = Request::get(path.as_str())
                .header(header::COOKIE, &cookie)
                .body(Body::empty())?;
            let start = Instant::now();
            let (status, body, _) = send(&router, with_peer(req)).await?;
            let took = start.elapsed().as_secs_f64() * 1000.0;
            if status != 200 {
                bail!("{path} answered {status}");
            }
            if i == 0 {
                println!("  {path}: {} KiB of HTML", body.len() / 1024);
                continue; // warm-up
            }
            times.push(took);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{label}: median {:.1} ms, max {:.1} ms over {} requests (server time)",
            times[times.len() / 2],
            times[times.len() - 1],
            times.len()
        );
    }
    store.close().await;
    if keep {
        println!(
            "kept: serve it with\n  FLOW_HOME={home} FLOW__DATABASE__URL={url} flow webserver -p 8099\n\
             and log in as bench / bench-password; the pages timed above:",
            home = dir.display()
        );
        for (_, path) in &pages {
            println!("  {path}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
