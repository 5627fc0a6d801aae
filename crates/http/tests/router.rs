//! Every page and action through the real router, on a real SQLite file and (with the server)
//! PostgreSQL: status codes, role checks, CSRF refusal, redirects, escaping.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use chrono::Utc;
use flow_http::{AppState, WebConfig, auth};
use flow_model::Role;
use flow_store::testing::TestDb;
use flow_store::{NewUser, Store};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const XSS: &str = "<img src=x onerror=alert(1)>";

fn dags_yaml() -> String {
    format!(
        r#"
etl:
  description: "loads {XSS}"
  tags: [nightly]
  params:
    region: eu
    batch: {{__type__: airflow.models.param.Param, default: 3, type: integer, description: "rows per batch"}}
  tasks:
    extract: {{operator: bash, bash_command: "echo extract"}}
    load: {{operator: bash, bash_command: "echo load", dependencies: [extract]}}
other:
  tasks:
    only: {{operator: empty}}
"#
    )
}

struct Site {
    router: Router,
    store: Store,
    /// The DAG processor that loaded the dags folder, as the scheduler keeps it.
    processor: tokio::sync::Mutex<flow_scheduler::DagProcessor>,
    /// The web server's fernet key.
    cipher: Option<flow_store::Cipher>,
    _dir: std::path::PathBuf,
}

async fn site(db: &TestDb) -> Site {
    site_exposing(db, None).await
}

/// A site whose `GET /api/v2/config` shows `exposed_config` (`None`: not exposed).
async fn site_exposing(db: &TestDb, exposed_config: Option<flow_http::ExposedConfig>) -> Site {
    site_with(db, exposed_config, fake_connection_tests()).await
}

/// Connection tests enabled, with a stand-in for the binary's tester (flow-executor's, tested
/// there and in the browser test): it passes for host `ok.example` and says how long the
/// password it was given is, so that a test can see the stored one reached it unshown.
fn fake_connection_tests() -> flow_http::ConnectionTesting {
    flow_http::ConnectionTesting::new(
        flow_http::TestConnectionMode::Enabled,
        |c: flow_model::Connection| async move {
            let host = c.host.unwrap_or_default();
            let chars = c.password.map_or(0, |p| p.chars().count());
            if host == "ok.example" {
                Ok(format!(
                    "reached {host} with a password of {chars} characters"
                ))
            } else {
                Err(format!("cannot connect to `{host}`"))
            }
        },
    )
}

async fn site_with(
    db: &TestDb,
    exposed_config: Option<flow_http::ExposedConfig>,
    connection_testing: flow_http::ConnectionTesting,
) -> Site {
    let store = db.store.clone();
    let dir = std::env::temp_dir().join(format!(
        "flow-http-test-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dags.yaml"), dags_yaml()).unwrap();
    let mut processor = flow_scheduler::DagProcessor::new(store.clone(), dir.clone(), false);
    let report = processor.run_once(Utc::now()).await.unwrap();
    assert_eq!(report.files_written, 1);
    for (name, role) in [
        ("ada", Role::Admin),
        ("oli", Role::Op),
        ("uma", Role::User),
        ("vic", Role::Viewer),
    ] {
        let hash = auth::hash_password("correct horse").unwrap();
        let user = NewUser {
            username: name,
            email: "",
            first_name: "",
            last_name: "",
            password_hash: &hash,
            role,
        };
        assert!(store.user_create(&user, Utc::now()).await.unwrap());
    }
    let cipher = flow_store::Cipher::new(&flow_store::Cipher::generate_key()).unwrap();
    let state = AppState::new(
        store.clone(),
        WebConfig {
            secret_key: b"test key test key test key test key!".to_vec(),
            secure_cookies: false,
            cipher: Some(cipher.clone()),
            exposed_config,
            connection_testing,
            default_ui_timezone: chrono_tz::UTC,
        },
    );
    Site {
        router: flow_http::router(state),
        store,
        processor: tokio::sync::Mutex::new(processor),
        cipher: Some(cipher),
        _dir: dir,
    }
}

/// A browser: keeps cookies, sends requests through the router.
struct Browser<'a> {
    site: &'a Site,
    cookies: HashMap<String, String>,
    ip: [u8; 4],
}

struct Page {
    status: StatusCode,
    location: Option<String>,
    body: String,
    headers: axum::http::HeaderMap,
}

impl Page {
    fn csrf(&self) -> String {
        let re = regex::Regex::new(r#"name="csrf_token" value="([^"]+)""#).unwrap();
        re.captures(&self.body)
            .unwrap_or_else(|| panic!("no csrf token in page:\n{}", self.body))[1]
            .to_owned()
    }
}

impl<'a> Browser<'a> {
    fn new(site: &'a Site) -> Self {
        Browser {
            site,
            cookies: HashMap::new(),
            ip: [127, 0, 0, 1],
        }
    }

    async fn send(&mut self, method: &str, uri: &str, form: Option<&[(&str, &str)]>) -> Page {
        let mut req = Request::builder().method(method).uri(uri);
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header(header::COOKIE, jar.join("; "));
        }
        let body = match form {
            Some(fields) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                let encoded: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                    .collect();
                Body::from(encoded.join("&"))
            }
            None => Body::empty(),
        };
        let mut req = req.body(body).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((self.ip, 40000))));
        let resp = self.site.router.clone().oneshot(req).await.unwrap();
        for v in resp.headers().get_all(header::SET_COOKIE) {
            let text = v.to_str().unwrap();
            let (pair, attrs) = text.split_once(';').unwrap_or((text, ""));
            let (k, val) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), val.to_owned());
            }
        }
        let status = resp.status();
        let headers = resp.headers().clone();
        let location = headers
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Page {
            status,
            location,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            headers,
        }
    }

    async fn get(&mut self, uri: &str) -> Page {
        self.send("GET", uri, None).await
    }

    async fn post(&mut self, uri: &str, form: &[(&str, &str)]) -> Page {
        self.send("POST", uri, Some(form)).await
    }

    async fn login(&mut self, user: &str, password: &str, next: &str) -> Page {
        let form = self.get(&format!("/login?next={}", enc(next))).await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = form.csrf();
        self.post(
            "/login",
            &[
                ("username", user),
                ("password", password),
                ("csrf_token", &csrf),
                ("next", next),
            ],
        )
        .await
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn databases() -> Vec<TestDb> {
    TestDb::all().await.unwrap()
}

#[tokio::test]
async fn login_sessions_and_redirects() {
    for db in databases().await {
        let site = site(&db).await;
        let mut b = Browser::new(&site);
        // Public: health, static assets, login. Everything else sends you to log in.
        let health = b.get("/health").await;
        assert_eq!(health.status, StatusCode::OK);
        let health: serde_json::Value = serde_json::from_str(&health.body).unwrap();
        assert_eq!(health["metadatabase"]["status"], "healthy");
        assert_eq!(
            health["scheduler"]["status"], "unhealthy",
            "no scheduler runs here"
        );
        assert_eq!(b.get("/static/flow.css").await.status, StatusCode::OK);
        assert_eq!(
            b.get("/static/nope.css").await.status,
            StatusCode::NOT_FOUND
        );
        for path in ["/", "/dags/etl", "/audit", "/import-errors"] {
            let p = b.get(path).await;
            assert_eq!(p.status, StatusCode::SEE_OTHER, "{path}");
            assert_eq!(
                p.location.as_deref(),
                Some(format!("/login?next={}", enc(path)).as_str())
            );
        }
        // Strict headers everywhere.
        let p = b.get("/login").await;
        let csp = p.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));

        // A login without the form's CSRF cookie is refused.
        let mut other = Browser::new(&site);
        let p = other
            .post(
                "/login",
                &[
                    ("username", "ada"),
                    ("password", "correct horse"),
                    ("csrf_token", "x"),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);

        // Wrong password: 401 and the form again; right one: back to `next`.
        let p = b.login("ada", "wrong", "/dags/etl").await;
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        assert!(p.body.contains("Wrong username or password"));
        let p = b.login("ada", "correct horse", "/dags/etl").await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(p.location.as_deref(), Some("/dags/etl"));
        let first_session = b.cookies["flow_session"].clone();
        let cookie = p.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
        let all: Vec<String> = p
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let session_cookie = all.iter().find(|c| c.starts_with("flow_session=")).unwrap();
        assert!(
            session_cookie.contains("HttpOnly") && session_cookie.contains("SameSite=Lax"),
            "{cookie}"
        );
        let dag_page = b.get("/dags/etl").await;
        assert_eq!(dag_page.status, StatusCode::OK);
        // Signed-in pages are never cached; static assets are.
        assert_eq!(dag_page.headers[header::CACHE_CONTROL], "no-store");
        let css = b.get("/static/flow.css").await;
        assert_ne!(css.headers[header::CACHE_CONTROL], "no-store");

        // Logging in again rotates the session id.
        b.login("ada", "correct horse", "/").await;
        assert_ne!(b.cookies["flow_session"], first_session);

        // Off-site `next` targets become `/`.
        for evil in [
            "https://evil.example/",
            "//evil.example/x",
            "/\\evil.example",
        ] {
            let mut c = Browser::new(&site);
            c.ip = [10, 0, 0, 9];
            let p = c.login("ada", "correct horse", evil).await;
            assert_eq!(p.location.as_deref(), Some("/"), "{evil}");
        }

        // A forged or tampered cookie is no session.
        let mut forged = Browser::new(&site);
        forged
            .cookies
            .insert("flow_session".into(), first_session.replace('.', "x."));
        assert_eq!(forged.get("/").await.status, StatusCode::SEE_OTHER);

        // Logout needs the CSRF token, then ends the session for good.
        let home = b.get("/").await;
        let stale = b.cookies["flow_session"].clone();
        assert_eq!(
            b.post("/logout", &[("csrf_token", "nope")]).await.status,
            StatusCode::FORBIDDEN
        );
        let p = b.post("/logout", &[("csrf_token", &home.csrf())]).await;
        assert_eq!(p.location.as_deref(), Some("/login"));
        let mut replay = Browser::new(&site);
        replay.cookies.insert("flow_session".into(), stale);
        assert_eq!(replay.get("/").await.status, StatusCode::SEE_OTHER);
        db.drop_db().await.unwrap();
    }
}

#[tokio::test]
async fn failed_logins_are_rate_limited() {
    let db = TestDb::sqlite().await.unwrap();
    let site = site(&db).await;
    let mut b = Browser::new(&site);
    b.ip = [192, 168, 1, 7];
    for _ in 0..5 {
        assert_eq!(
            b.login("uma", "guess", "/").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // Even the right password is refused now, from this address...
    assert_eq!(
        b.login("uma", "correct horse", "/").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...but not from another one: guessing cannot lock a user out.
    let mut elsewhere = Browser::new(&site);
    elsewhere.ip = [192, 168, 1, 8];
    assert_eq!(
        elsewhere.login("uma", "correct horse", "/").await.status,
        StatusCode::SEE_OTHER
    );
    // Nor does it lock out others behind the same address (a proxy, an office).
    let mut colleague = Browser::new(&site);
    colleague.ip = [192, 168, 1, 7];
    assert_eq!(
        colleague.login("ada", "correct horse", "/").await.status,
        StatusCode::SEE_OTHER
    );
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn pages_roles_actions_and_escaping() {
    for db in databases().await {
        let site = site(&db).await;
        let mut viewer = Browser::new(&site);
        viewer.login("vic", "correct horse", "/").await;
        let mut user = Browser::new(&site);
        user.login("uma", "correct horse", "/").await;

        // The DAG list: both DAGs, escaped description, no actions for a Viewer.
        let home = viewer.get("/").await;
        assert_eq!(home.status, StatusCode::OK);
        assert!(home.body.contains("etl") && home.body.contains("other"));
        assert!(!home.body.contains(XSS), "raw HTML in the page");
        assert!(
            home.body.contains("&lt;img src=x onerror=alert(1)&gt;")
                || home.body.contains("&#60;img")
        );
        assert!(!home.body.contains("/pause\""), "viewer sees a pause form");
        assert!(
            !home.body.contains("Trigger"),
            "viewer sees a trigger button"
        );
        let home = user.get("/").await;
        assert!(home.body.contains("/dags/etl/pause"));
        assert!(home.body.contains("/dags/etl/trigger"));
        // Search and tag filters.
        let p = user.get("/?search=oth").await;
        assert!(p.body.contains("other") && !p.body.contains("/dags/etl\""));
        let p = user.get("/?tag=nightly").await;
        assert!(p.body.contains("/dags/etl\"") && !p.body.contains("/dags/other\""));

        // Viewer: forms refused by the server even with a valid token.
        let csrf_v = viewer.get("/").await.csrf();
        let p = viewer
            .post(
                "/dags/etl/pause",
                &[("csrf_token", &csrf_v), ("is_paused", "true")],
            )
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        assert_eq!(
            viewer.get("/dags/etl/trigger").await.status,
            StatusCode::FORBIDDEN
        );

        // User: a forged form is refused; a real one pauses, and the audit log says so.
        let csrf = user.get("/").await.csrf();
        let p = user
            .post(
                "/dags/etl/pause",
                &[("csrf_token", "forged"), ("is_paused", "true")],
            )
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        assert!(!site.store.dag_get("etl").await.unwrap().unwrap().is_paused);
        let p = user
            .post(
                "/dags/etl/pause",
                &[("csrf_token", &csrf), ("is_paused", "true")],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert!(site.store.dag_get("etl").await.unwrap().unwrap().is_paused);

        // Trigger: the form has the params; bad conf is refused with a message; a good one
        // creates the run.
        let form = user.get("/dags/etl/trigger").await;
        assert!(form.body.contains("param.region") && form.body.contains("param.batch"));
        let p = user
            .post(
                "/dags/etl/trigger",
                &[("csrf_token", &csrf), ("conf", "{not json")],
            )
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert!(p.body.contains("not valid JSON"), "{}", p.body);
        let p = user
            .post(
                "/dags/etl/trigger",
                &[
                    ("csrf_token", &csrf),
                    ("param.region", "us"),
                    ("param.batch", "x"),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert!(p.body.contains("must be an integer"));
        let p = user
            .post(
                "/dags/etl/trigger",
                &[
                    ("csrf_token", &csrf),
                    ("param.region", XSS),
                    ("param.batch", "7"),
                    ("run_id", "ui_run_1"),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        let run = site
            .store
            .dag_run_get("etl", "ui_run_1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.conf["batch"], 7);
        assert_eq!(run.conf["region"], XSS);
        // A raw conf the typed params refuse: the form again with Airflow's message.
        let form = user.get("/dags/etl/trigger").await;
        let p = user
            .post(
                "/dags/etl/trigger",
                &[
                    ("csrf_token", &form.csrf()),
                    ("conf", r#"{"batch": "x; touch /tmp/pwned"}"#),
                    ("run_id", "ui_bad_conf"),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
        assert!(
            p.body.contains("Invalid input for param batch:"),
            "{}",
            p.body
        );
        assert!(
            site.store
                .dag_run_get("etl", "ui_bad_conf")
                .await
                .unwrap()
                .is_none()
        );

        // The list counts the latest run's task states (two tasks, no state yet).
        let list = viewer.get("/").await;
        assert!(
            list.body
                .contains("title=\"none\"><i class=\"dot st-none\"></i>2"),
            "{}",
            list.body
        );

        // Every page of the DAG renders, with the conf escaped.
        for tab in ["grid", "graph", "gantt", "runs", "code", "details"] {
            let p = viewer.get(&format!("/dags/etl?tab={tab}")).await;
            assert_eq!(p.status, StatusCode::OK, "{tab}");
            assert!(!p.body.contains(XSS), "{tab} has raw HTML");
        }
        let graph = viewer.get("/dags/etl?tab=graph&run_id=ui_run_1").await;
        assert!(graph.body.contains("<svg") && graph.body.contains("class=\"edge\""));
        assert!(graph.body.contains("/dags/etl/runs/ui_run_1/tasks/load"));
        let grid = viewer.get("/dags/etl").await;
        assert!(grid.body.contains("data-run=\"ui_run_1\""), "{}", grid.body);
        assert!(grid.body.contains("data-task=\"extract\""));
        assert!(grid.body.contains("data-base=\"/dags/etl/runs/\""));
        let task = viewer.get("/dags/etl/runs/ui_run_1/tasks/extract").await;
        assert_eq!(task.status, StatusCode::OK);
        assert!(!task.body.contains("Mark success"), "viewer sees actions");
        let log = viewer
            .get("/dags/etl/runs/ui_run_1/tasks/extract/log?try=1&after=0")
            .await;
        assert_eq!(log.status, StatusCode::OK);
        assert!(log.body.contains("\"lines\""));
        assert_eq!(
            viewer
                .get("/dags/etl/runs/ui_run_1/tasks/nope")
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(viewer.get("/dags/nope").await.status, StatusCode::NOT_FOUND);

        // Mark a task, see the clear confirmation list it with its downstream, clear it.
        let p = user
            .post(
                "/dags/etl/runs/ui_run_1/tasks/extract/mark",
                &[("csrf_token", &csrf), ("state", "success")],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        let key = flow_store::TiKey::new("etl", "ui_run_1", "extract", -1);
        assert_eq!(
            site.store.ti_get(&key).await.unwrap().unwrap().state,
            flow_model::TaskInstanceState::Success
        );
        let confirm = user
            .get("/dags/etl/runs/ui_run_1/clear?task_id=extract&downstream=true")
            .await;
        assert_eq!(confirm.status, StatusCode::OK);
        assert!(
            confirm.body.contains("Clear 1 task instance"),
            "{}",
            confirm.body
        );
        let p = user
            .post(
                "/dags/etl/runs/ui_run_1/clear",
                &[
                    ("csrf_token", &csrf),
                    ("task_id", "extract"),
                    ("downstream", "true"),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(
            site.store.ti_get(&key).await.unwrap().unwrap().state,
            flow_model::TaskInstanceState::NoStatus
        );

        // The log as server-sent events: the stored lines, the state, then the end (the try
        // is not running); and as plain text.
        let line = flow_store::LogLine {
            at: Utc::now(),
            stream: "stdout".into(),
            line: format!("\u{1b}[31mred\u{1b}[0m {XSS}"),
        };
        site.store.log_append(&key, 0, &[line]).await.unwrap();
        let sse = viewer
            .get("/dags/etl/runs/ui_run_1/tasks/extract/log/stream?try=0")
            .await;
        assert_eq!(sse.status, StatusCode::OK);
        assert_eq!(sse.headers[header::CONTENT_TYPE], "text/event-stream");
        let lines_at = sse.body.find("event: lines").expect(&sse.body);
        let state_at = sse.body.find("event: state").expect(&sse.body);
        let end_at = sse.body.find("event: end").expect(&sse.body);
        assert!(lines_at < state_at && state_at < end_at, "{}", sse.body);
        assert!(sse.body.contains("ansi-red"), "{}", sse.body);
        let raw = viewer
            .get("/dags/etl/runs/ui_run_1/tasks/extract/log/raw?try=0")
            .await;
        assert!(
            raw.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert!(
            raw.body.contains(XSS),
            "plain text keeps the line as it was"
        );

        // Mark the run failed, then delete it.
        let p = user
            .post(
                "/dags/etl/runs/ui_run_1/mark",
                &[("csrf_token", &csrf), ("state", "failed")],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        let p = viewer
            .post("/dags/etl/runs/ui_run_1/delete", &[("csrf_token", &csrf_v)])
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        let p = user
            .post("/dags/etl/runs/ui_run_1/delete", &[("csrf_token", &csrf)])
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert!(
            site.store
                .dag_run_get("etl", "ui_run_1")
                .await
                .unwrap()
                .is_none()
        );

        // The audit log has every action, by whom.
        let audit = viewer.get("/audit").await;
        assert_eq!(audit.status, StatusCode::OK);
        for event in [
            "paused",
            "trigger",
            "mark success",
            "clear",
            "mark run failed",
            "delete run",
        ] {
            assert!(audit.body.contains(event), "audit lacks {event}");
        }
        assert!(audit.body.contains("uma"));
        assert!(!audit.body.contains(XSS));
        assert_eq!(viewer.get("/import-errors").await.status, StatusCode::OK);
        let filtered = viewer.get("/audit?dag_id=other").await;
        assert!(
            !filtered.body.contains("trigger"),
            "the filter kept other DAGs' entries"
        );

        // Pools: everyone reads; only Op and Admin change them.
        let pools = viewer.get("/pools").await;
        assert!(pools.body.contains("default_pool") && !pools.body.contains("Create or resize"));
        let p = user
            .post(
                "/pools",
                &[("csrf_token", &csrf), ("pool", "gpu"), ("slots", "2")],
            )
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "User is below Op");
        let mut admin = Browser::new(&site);
        admin.ip = [10, 1, 1, 1];
        admin.login("ada", "correct horse", "/").await;
        let csrf_a = admin.get("/pools").await.csrf();
        let p = admin
            .post(
                "/pools",
                &[
                    ("csrf_token", &csrf_a),
                    ("pool", "bad name!"),
                    ("slots", "2"),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        let p = admin
            .post(
                "/pools",
                &[("csrf_token", &csrf_a), ("pool", "gpu"), ("slots", "2")],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(site.store.pool_list().await.unwrap()["gpu"], 2);
        let listed = admin.get("/pools").await;
        assert!(
            listed.body.contains(r#"data-pool="gpu""#),
            "{}",
            listed.body
        );
        // Deleting: User refused, default_pool refused, gpu gone.
        let p = user
            .post("/pools/delete", &[("csrf_token", &csrf), ("pool", "gpu")])
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        let p = admin
            .post(
                "/pools/delete",
                &[("csrf_token", &csrf_a), ("pool", "default_pool")],
            )
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        let p = admin
            .post("/pools/delete", &[("csrf_token", &csrf_a), ("pool", "gpu")])
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert!(!site.store.pool_list().await.unwrap().contains_key("gpu"));

        // The log as text, and as server-sent events that end once the try is over.
        let raw = viewer
            .get("/dags/etl/runs/ui_run_1/tasks/extract/log/raw")
            .await;
        assert_eq!(
            raw.status,
            StatusCode::NOT_FOUND,
            "the run was deleted above"
        );
        db.drop_db().await.unwrap();
    }
}

/// One API request: method, path, optional `Authorization`, optional (content type, body).
async fn api(
    site: &Site,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Option<(&str, &str)>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let body = match body {
        Some((ct, text)) => {
            req = req.header(header::CONTENT_TYPE, ct);
            Body::from(text.to_owned())
        }
        None => Body::empty(),
    };
    let mut req = req.body(body).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 2], 40000))));
    let resp = site.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

async fn token_for(site: &Site, user: &str) -> String {
    let body = format!(r#"{{"username": "{user}", "password": "correct horse"}}"#);
    let (status, _, json) = api(
        site,
        "POST",
        "/auth/token",
        None,
        Some(("application/json", &body)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    format!("Bearer {}", json["access_token"].as_str().unwrap())
}

#[tokio::test]
async fn api_tokens_roles_and_dags() {
    for db in databases().await {
        let site = site(&db).await;
        // Tokens: JSON or form; bad credentials, empty fields, other media types refused.
        let (s, _, j) = api(
            &site,
            "POST",
            "/auth/token",
            None,
            Some((
                "application/json",
                r#"{"username": "ada", "password": "nope"}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{j}");
        assert_eq!(j["detail"], "Invalid credentials");
        let (s, _, _) = api(
            &site,
            "POST",
            "/auth/token",
            None,
            Some(("application/json", r#"{"username": "", "password": ""}"#)),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _, _) = api(
            &site,
            "POST",
            "/auth/token",
            None,
            Some(("text/plain", "x")),
        )
        .await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (s, _, j) = api(
            &site,
            "POST",
            "/auth/token",
            None,
            Some((
                "application/x-www-form-urlencoded",
                "username=uma&password=correct%20horse",
            )),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{j}");
        let admin = token_for(&site, "ada").await;
        let user = token_for(&site, "uma").await;
        let viewer = token_for(&site, "vic").await;

        // No credentials: 401 with WWW-Authenticate; version and health are public.
        let (s, h, j) = api(&site, "GET", "/api/v2/dags", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(j["detail"], "Not authenticated");
        assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
        let (s, _, j) = api(&site, "GET", "/api/v2/version", None, None).await;
        assert_eq!(s, StatusCode::OK);
        assert!(j["version"].is_string());
        let (s, _, j) = api(&site, "GET", "/api/v2/monitor/health", None, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(j["metadatabase"]["status"], "healthy");
        assert!(j["triggerer"]["status"].is_null());

        // Forged, unsigned and expired tokens.
        let (s, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags",
            Some("Bearer abc.def.ghi"),
            None,
        )
        .await;
        assert_eq!(
            (s, j["detail"].as_str()),
            (StatusCode::FORBIDDEN, Some("Invalid JWT token"))
        );
        let payload = admin
            .trim_start_matches("Bearer ")
            .split('.')
            .nth(1)
            .unwrap();
        let none = format!("Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        let (s, _, _) = api(&site, "GET", "/api/v2/dags", Some(&none), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "alg none must fail");
        let expired = flow_http::api::jwt::sign(
            b"test key test key test key test key!",
            &flow_http::api::jwt::Claims {
                sub: "ada".into(),
                ver: "x".into(),
                iat: 0,
                exp: 1,
            },
        )
        .unwrap();
        let (s, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags",
            Some(&format!("Bearer {expired}")),
            None,
        )
        .await;
        assert_eq!(
            (s, j["detail"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("Token Expired"))
        );

        // The list: Airflow's envelope and fields, filters, paging, bad parameters.
        let (s, _, j) = api(&site, "GET", "/api/v2/dags", Some(&viewer), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["total_entries"], 2);
        assert_eq!(j["dags"][0]["dag_id"], "etl");
        assert_eq!(j["dags"][0]["tags"][0]["name"], "nightly");
        assert_eq!(j["dags"][0]["is_paused"], false);
        assert!(
            j["dags"][0]["last_parsed_time"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                "vic:correct horse"
            )
        );
        let (s, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags?dag_id_pattern=oth&limit=10",
            Some(&basic),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(j["total_entries"], 1);
        assert_eq!(j["dags"][0]["dag_id"], "other");
        let (_, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags?tags=nightly&tags=none",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(j["total_entries"], 1);
        let (_, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags?limit=1&offset=1&order_by=-dag_id",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(j["dags"][0]["dag_id"], "etl");
        assert_eq!(j["dags"].as_array().unwrap().len(), 1);
        let (s, _, j) = api(&site, "GET", "/api/v2/dags?limit=abc", Some(&viewer), None).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(j["detail"][0]["loc"][1], "limit");
        let (s, _, _) = api(
            &site,
            "GET",
            "/api/v2/dags?order_by=bogus",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        // One DAG, pause by role, bad bodies, unknown ids.
        let (s, _, j) = api(&site, "GET", "/api/v2/dags/nope", Some(&viewer), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(j["detail"].as_str().unwrap().contains("nope"));
        let body = Some(("application/json", r#"{"is_paused": true}"#));
        let (s, _, _) = api(&site, "PATCH", "/api/v2/dags/etl", Some(&viewer), body).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _, j) = api(&site, "PATCH", "/api/v2/dags/etl", Some(&user), body).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["is_paused"], true);
        assert!(site.store.dag_get("etl").await.unwrap().unwrap().is_paused);
        let (s, _, _) = api(
            &site,
            "PATCH",
            "/api/v2/dags/etl",
            Some(&user),
            Some(("application/json", r#"{"is_paused": "yes"}"#)),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _, _) = api(&site, "PATCH", "/api/v2/dags/nope", Some(&admin), body).await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // Dag runs: trigger (200, as Airflow declares), duplicates, bad input, roles.
        let trigger = |body: &'static str| Some(("application/json", body));
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns",
            Some(&user),
            trigger(r#"{"dag_run_id": "api_1", "logical_date": null, "conf": {"batch": 5}, "note": "from CI"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["dag_run_id"], "api_1");
        assert_eq!(j["state"], "queued");
        assert_eq!(j["run_type"], "manual");
        assert_eq!(j["triggered_by"], "rest_api");
        assert_eq!(j["triggering_user_name"], "uma");
        assert_eq!(j["conf"]["batch"], 5);
        assert!(j["dag_versions"].is_array());
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns",
            Some(&user),
            trigger(r#"{"dag_run_id": "api_1"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT, "{j}");
        assert_eq!(j["detail"]["reason"], "Unique constraint violation");
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns",
            Some(&user),
            trigger(r#"{"logical_date": "2025-01-01T00:00:00"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "a naive datetime: {j}");
        assert_eq!(j["detail"][0]["loc"][1], "logical_date");
        let (s, _, _) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns",
            Some(&user),
            trigger(r#"{"execution_date": "2025-01-01T00:00:00Z"}"#),
        )
        .await;
        assert_eq!(
            s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Airflow 2 fields are refused"
        );
        let (s, _, _) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns",
            Some(&user),
            trigger(r#"{"conf": [1]}"#),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        // A conf its typed params refuse: Airflow's 400, and no run.
        let runs_before = site.store.dag_run_count("etl").await.unwrap();
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns",
            Some(&user),
            trigger(r#"{"dag_run_id": "bad_conf", "logical_date": null, "conf": {"batch": "5; rm -rf /"}}"#),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
        assert!(
            j["detail"].as_str().unwrap().starts_with(
                "Invalid input for param batch: '5; rm -rf /' is not of type 'integer'"
            ),
            "{j}"
        );
        assert_eq!(site.store.dag_run_count("etl").await.unwrap(), runs_before);
        // Manual runs may not take a run id reserved for another kind of run.
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns",
            Some(&user),
            trigger(
                r#"{"dag_run_id": "scheduled__2025-01-01T00:00:00+00:00", "logical_date": null}"#,
            ),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
        assert!(
            j["detail"].as_str().unwrap().starts_with(
                "A manual DAG run cannot use ID 'scheduled__2025-01-01T00:00:00+00:00' since it is reserved for scheduled runs"
            ),
            "{j}"
        );
        for bad in ["..", "."] {
            let body = format!(r#"{{"dag_run_id": "{bad}", "logical_date": null}}"#);
            let (s, _, j) = api(
                &site,
                "POST",
                "/api/v2/dags/etl/dagRuns",
                Some(&user),
                Some(("application/json", &body)),
            )
            .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {j}");
        }
        let (s, _, _) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns",
            Some(&viewer),
            trigger("{}"),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _, _) = api(
            &site,
            "POST",
            "/api/v2/dags/nope/dagRuns",
            Some(&user),
            trigger("{}"),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/other/dagRuns",
            Some(&user),
            trigger(r#"{"logical_date": "2025-03-01T00:00:00+0000"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["logical_date"], "2025-03-01T00:00:00Z");

        // Task instances of a run: list (states null before they run), one, mark with
        // downstream; a second identical mark changes nothing (409).
        let (s, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/api_1/taskInstances",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["total_entries"], 2);
        assert!(j["task_instances"][0]["state"].is_null());
        assert_eq!(j["task_instances"][0]["id"].as_str().unwrap().len(), 36);
        let (_, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/~/taskInstances?task_id=load",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(j["total_entries"], 1);
        let (s, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/api_1/taskInstances/extract",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(
            (s, j["task_id"].as_str()),
            (StatusCode::OK, Some("extract"))
        );
        let (s, _, _) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/api_1/taskInstances/nope",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let mark = Some((
            "application/json",
            r#"{"new_state": "skipped", "include_downstream": true}"#,
        ));
        let (s, _, _) = api(
            &site,
            "PATCH",
            "/api/v2/dags/etl/dagRuns/api_1/taskInstances/extract",
            Some(&viewer),
            mark,
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _, j) = api(
            &site,
            "PATCH",
            "/api/v2/dags/etl/dagRuns/api_1/taskInstances/extract",
            Some(&user),
            mark,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["total_entries"], 2, "extract and its downstream load");
        assert_eq!(j["task_instances"][0]["state"], "skipped");
        let (s, _, _) = api(
            &site,
            "PATCH",
            "/api/v2/dags/etl/dagRuns/api_1/taskInstances/extract",
            Some(&user),
            mark,
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT);
        let (s, _, _) = api(
            &site,
            "PATCH",
            "/api/v2/dags/etl/dagRuns/api_1/taskInstances/extract",
            Some(&user),
            Some(("application/json", r#"{"new_state": "running"}"#)),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

        // Logs (JSON, plain text; other types refused), XCom 404, clear (dry run by
        // default, over failed task instances only).
        let key = flow_store::TiKey::new("etl", "api_1", "extract", -1);
        let line = flow_store::LogLine {
            at: Utc::now(),
            stream: "stdout".into(),
            line: "hello from the log".into(),
        };
        site.store.log_append(&key, 1, &[line]).await.unwrap();
        let (s, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/api_1/taskInstances/extract/logs/1",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["content"][0]["event"], "hello from the log");
        assert!(j["continuation_token"].is_null());
        let log_with = |accept: &'static str| {
            let mut req =
                Request::get("/api/v2/dags/etl/dagRuns/api_1/taskInstances/extract/logs/1")
                    .header(header::AUTHORIZATION, &viewer)
                    .header(header::ACCEPT, accept)
                    .body(Body::empty())
                    .unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 2], 1))));
            site.router.clone().oneshot(req)
        };
        let resp = log_with("text/plain").await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&text[..], b"hello from the log\n");
        let resp = log_with("application/xml").await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);
        let (s, _, _) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/api_1/taskInstances/extract/xcomEntries/return_value",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (_, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/api_1/taskInstances/~/xcomEntries",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(j["total_entries"], 0);
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/clearTaskInstances",
            Some(&user),
            Some((
                "application/json",
                r#"{"dag_run_id": "api_1", "only_failed": false}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(
            j["total_entries"], 2,
            "a dry run lists both skipped task instances"
        );
        let still = site.store.ti_get(&key).await.unwrap().unwrap();
        assert_eq!(
            still.state,
            flow_model::TaskInstanceState::Skipped,
            "dry run changed nothing"
        );
        let (s, _, _) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/clearTaskInstances",
            Some(&viewer),
            Some(("application/json", "{}")),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        // Lists, one run, marking, deleting.
        let (s, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/~/dagRuns?order_by=-id",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["total_entries"], 2);
        assert_eq!(j["dag_runs"][1]["dag_run_id"], "api_1");
        let (_, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns?state=queued&state=running",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(j["total_entries"], 1);
        let (s, _, _) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns?state=bogus",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _, _) = api(
            &site,
            "GET",
            "/api/v2/dags/nope/dagRuns",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/api_1",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!((s, j["note"].as_str()), (StatusCode::OK, Some("from CI")));
        let (s, _, j) = api(
            &site,
            "PATCH",
            "/api/v2/dags/etl/dagRuns/api_1",
            Some(&user),
            Some(("application/json", r#"{"state": "failed"}"#)),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["state"], "failed");
        let (s, _, _) = api(
            &site,
            "PATCH",
            "/api/v2/dags/etl/dagRuns/api_1",
            Some(&user),
            Some(("application/json", r#"{"state": "running"}"#)),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _, _) = api(
            &site,
            "DELETE",
            "/api/v2/dags/etl/dagRuns/api_1",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _, _) = api(
            &site,
            "DELETE",
            "/api/v2/dags/etl/dagRuns/api_1",
            Some(&user),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _, _) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/api_1",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // Sources (JSON or text), tags, import errors, event logs.
        let (s, _, j) = api(&site, "GET", "/api/v2/dagSources/etl", Some(&viewer), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert!(j["content"].as_str().unwrap().contains("extract"));
        let (_, _, j) = api(&site, "GET", "/api/v2/dagTags", Some(&viewer), None).await;
        assert_eq!(j["tags"], serde_json::json!(["nightly"]));
        let (s, _, j) = api(&site, "GET", "/api/v2/importErrors", Some(&viewer), None).await;
        assert_eq!((s, j["total_entries"].as_u64()), (StatusCode::OK, Some(0)));
        let (s, _, _) = api(&site, "GET", "/api/v2/importErrors/7", Some(&viewer), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, _) = api(&site, "GET", "/api/v2/importErrors/x", Some(&viewer), None).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _, j) = api(
            &site,
            "GET",
            "/api/v2/eventLogs?dag_id=etl&event=trigger",
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert!(j["total_entries"].as_u64().unwrap() >= 1, "{j}");
        assert_eq!(j["event_logs"][0]["owner"], "uma");

        // Deleting a user invalidates their tokens at once.
        assert_eq!(
            site.store.user_delete("uma").await.unwrap(),
            flow_store::UserChange::Done
        );
        let (s, _, _) = api(&site, "GET", "/api/v2/dags", Some(&user), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        db.drop_db().await.unwrap();
    }
}

/// Replaces each `{param}` of an OpenAPI path with `x` (or a number where one is expected).
fn fill_path(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').unwrap() + start;
        let name = &rest[start + 1..end];
        out.push_str(
            if name.contains("number")
                || name.ends_with("error_id")
                || name == "map_index"
                || name == "asset_id"
                || name == "backfill_id"
            {
                "1"
            } else {
                "x"
            },
        );
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The spec lists every route the issue names, each protected route declares its auth, and
/// walking the spec route by route: no credentials get 401, a Viewer's token gets 403 on
/// every write.
#[tokio::test]
async fn api_spec_lists_every_route_and_each_enforces_auth() {
    for db in databases().await {
        let site = site(&db).await;
        let viewer = token_for(&site, "vic").await;
        let (s, h, spec) = api(&site, "GET", "/api/v2/openapi.json", None, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        let ti = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances";
        let required = [
            ("post", "/auth/token".to_owned()),
            ("get", "/api/v2/dags".into()),
            ("patch", "/api/v2/dags".into()),
            ("get", "/api/v2/dags/{dag_id}".into()),
            ("patch", "/api/v2/dags/{dag_id}".into()),
            ("delete", "/api/v2/dags/{dag_id}".into()),
            ("get", "/api/v2/dags/{dag_id}/details".into()),
            ("get", "/api/v2/dags/{dag_id}/tasks".into()),
            ("get", "/api/v2/dags/{dag_id}/tasks/{task_id}".into()),
            ("get", "/api/v2/dagSources/{dag_id}".into()),
            ("get", "/api/v2/dagTags".into()),
            ("post", "/api/v2/dags/{dag_id}/dagRuns".into()),
            ("get", "/api/v2/dags/{dag_id}/dagRuns".into()),
            ("post", "/api/v2/dags/~/dagRuns/list".into()),
            ("get", "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}".into()),
            ("patch", "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}".into()),
            (
                "delete",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}".into(),
            ),
            (
                "post",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/clear".into(),
            ),
            ("get", ti.into()),
            ("get", format!("{ti}/{{task_id}}")),
            ("patch", format!("{ti}/{{task_id}}")),
            ("get", format!("{ti}/{{task_id}}/tries")),
            ("get", format!("{ti}/{{task_id}}/tries/{{task_try_number}}")),
            ("get", format!("{ti}/{{task_id}}/{{map_index}}")),
            ("patch", format!("{ti}/{{task_id}}/{{map_index}}")),
            ("get", format!("{ti}/{{task_id}}/listMapped")),
            ("get", format!("{ti}/{{task_id}}/{{map_index}}/tries")),
            (
                "get",
                format!("{ti}/{{task_id}}/{{map_index}}/tries/{{task_try_number}}"),
            ),
            ("post", "/api/v2/dags/{dag_id}/clearTaskInstances".into()),
            ("get", format!("{ti}/{{task_id}}/logs/{{try_number}}")),
            ("get", format!("{ti}/{{task_id}}/xcomEntries")),
            ("get", format!("{ti}/{{task_id}}/xcomEntries/{{xcom_key}}")),
            ("get", "/api/v2/importErrors".into()),
            ("get", "/api/v2/importErrors/{import_error_id}".into()),
            ("get", "/api/v2/eventLogs".into()),
            ("get", "/api/v2/jobs".into()),
            ("get", "/api/v2/monitor/health".into()),
            ("get", "/api/v2/version".into()),
            ("get", "/api/v2/connections".into()),
            ("post", "/api/v2/connections".into()),
            ("get", "/api/v2/connections/{connection_id}".into()),
            ("patch", "/api/v2/connections/{connection_id}".into()),
            ("delete", "/api/v2/connections/{connection_id}".into()),
            ("post", "/api/v2/connections/test".into()),
            (
                "post",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/list".into(),
            ),
            ("get", "/api/v2/variables".into()),
            ("post", "/api/v2/variables".into()),
            ("patch", "/api/v2/variables".into()),
            ("get", "/api/v2/variables/{variable_key}".into()),
            ("patch", "/api/v2/variables/{variable_key}".into()),
            ("delete", "/api/v2/variables/{variable_key}".into()),
            ("get", "/api/v2/pools".into()),
            ("post", "/api/v2/pools".into()),
            ("patch", "/api/v2/pools".into()),
            ("get", "/api/v2/pools/{pool_name}".into()),
            ("patch", "/api/v2/pools/{pool_name}".into()),
            ("delete", "/api/v2/pools/{pool_name}".into()),
            (
                "get",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/dependencies"
                    .into(),
            ),
            (
                "post",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries"
                    .into(),
            ),
            (
                "patch",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}"
                    .into(),
            ),
            (
                "delete",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}"
                    .into(),
            ),
            (
                "get",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}/dependencies"
                    .into(),
            ),
            ("get", "/api/v2/assets".into()),
            ("get", "/api/v2/assets/{asset_id}".into()),
            ("get", "/api/v2/assets/events".into()),
            ("post", "/api/v2/assets/events".into()),
            ("get", "/api/v2/dags/{dag_id}/assets/queuedEvents".into()),
            ("delete", "/api/v2/dags/{dag_id}/assets/queuedEvents".into()),
            ("get", "/api/v2/assets/{asset_id}/queuedEvents".into()),
            ("delete", "/api/v2/assets/{asset_id}/queuedEvents".into()),
            ("get", "/api/v2/backfills".into()),
            ("post", "/api/v2/backfills".into()),
            ("post", "/api/v2/backfills/dry_run".into()),
            ("get", "/api/v2/backfills/{backfill_id}".into()),
            ("put", "/api/v2/backfills/{backfill_id}/pause".into()),
            ("put", "/api/v2/backfills/{backfill_id}/unpause".into()),
            ("put", "/api/v2/backfills/{backfill_id}/cancel".into()),
            ("get", "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/wait".into()),
            ("get", "/api/v2/dags/{dag_id}/dagVersions".into()),
            ("post", "/api/v2/dags/{dag_id}/clearDagRuns".into()),
            ("patch", "/api/v2/dags/{dag_id}/dagRuns".into()),
            ("get", "/api/v2/dagStats".into()),
            ("get", "/api/v2/dagWarnings".into()),
            ("get", "/api/v2/eventLogs/{event_log_id}".into()),
            ("get", "/api/v2/plugins".into()),
            ("get", "/api/v2/plugins/importErrors".into()),
            ("get", "/api/v2/providers".into()),
            ("post", "/api/v2/dags/{dag_id}/favorite".into()),
            ("post", "/api/v2/dags/{dag_id}/unfavorite".into()),
            (
                "get",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/links".into(),
            ),
            (
                "get",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/externalLogUrl/{try_number}".into(),
            ),
            ("get", "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/hitlDetails".into()),
            (
                "get",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}/hitlDetails".into(),
            ),
            (
                "patch",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskGroupInstances/{group_id}".into(),
            ),
            (
                "patch",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskGroupInstances/{group_id}/dry_run"
                    .into(),
            ),
            (
                "get",
                "/api/v2/dags/{dag_id}/dagVersions/{version_number}".into(),
            ),
            (
                "get",
                "/api/v2/dags/{dag_id}/assets/{asset_id}/queuedEvents".into(),
            ),
            (
                "delete",
                "/api/v2/dags/{dag_id}/assets/{asset_id}/queuedEvents".into(),
            ),
            (
                "get",
                "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/upstreamAssetEvents".into(),
            ),
            ("get", "/api/v2/config".into()),
            (
                "get",
                "/api/v2/config/section/{section}/option/{option}".into(),
            ),
        ];
        for (method, path) in &required {
            assert!(
                spec["paths"][path.as_str()][method].is_object(),
                "{method} {path} is missing from the spec"
            );
        }
        assert_eq!(
            spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"],
            "bearer"
        );

        let public = ["/auth/token", "/api/v2/version", "/api/v2/monitor/health"];
        let (mut anonymous, mut viewer_writes) = (0, 0);
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let upper = method.to_uppercase();
                let uri = fill_path(path);
                let body = op.get("requestBody").map(|_| ("application/json", "{}"));
                if public.contains(&path.as_str()) {
                    assert!(op.get("security").is_none(), "{method} {path} is public");
                    continue;
                }
                let security = op["security"].as_array();
                assert!(
                    security.is_some_and(|s| s.iter().any(|r| r.get("HTTPBearer").is_some())),
                    "{method} {path} declares no auth"
                );
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path}: no 401"
                );
                let (s, h, j) = api(&site, &upper, &uri, None, body).await;
                assert_eq!(
                    s,
                    StatusCode::UNAUTHORIZED,
                    "{method} {uri} without a token"
                );
                assert_eq!(j["detail"], "Not authenticated", "{method} {uri}");
                assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
                anonymous += 1;
                // Listing by POST, and a user's own favourites (Airflow asks only for read
                // access to the DAG), are a Viewer's too.
                let is_read = method == "get"
                    || path.ends_with("/dagRuns/list")
                    || path.ends_with("/taskInstances/list")
                    || path.ends_with("/favorite")
                    || path.ends_with("/unfavorite");
                if !is_read {
                    let (s, _, j) = api(&site, &upper, &uri, Some(&viewer), body).await;
                    assert_eq!(s, StatusCode::FORBIDDEN, "{method} {uri} as a Viewer: {j}");
                    viewer_writes += 1;
                }
            }
        }
        assert_eq!(
            anonymous,
            required.len() - public.len(),
            "protected operations"
        );
        assert!(viewer_writes >= 9, "only {viewer_writes} writes");

        // Interactive docs, served from the binary.
        let req = Request::builder().uri("/docs").body(Body::empty()).unwrap();
        let resp = site.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let page = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&page).contains("/docs/swagger-ui-bundle.js"));
        let req = Request::builder()
            .uri("/docs/swagger-ui-bundle.js")
            .body(Body::empty())
            .unwrap();
        let resp = site.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        db.drop_db().await.unwrap();
    }
}

/// The routes added with the spec: bulk pause, delete, details, tasks, the run batch list,
/// run notes and clear, tries; and errors in Airflow's shape for oversized bodies, wrong
/// methods and unknown paths.
#[tokio::test]
async fn api_dag_details_tasks_runs_and_error_shapes() {
    for db in databases().await {
        let site = site(&db).await;
        let user = token_for(&site, "uma").await;
        let viewer = token_for(&site, "vic").await;
        let call = |method: &'static str, uri: String, token: &str, body: Option<String>| {
            let site = &site;
            let token = token.to_owned();
            async move {
                let body = body.as_deref().map(|b| ("application/json", b));
                api(site, method, &uri, Some(&token), body).await
            }
        };

        let (s, _, j) = call("GET", "/api/v2/dags/etl/details".into(), &viewer, None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["dag_id"], "etl");
        assert_eq!(j["params"]["batch"]["value"], 3);
        assert_eq!(j["params"]["batch"]["description"], "rows per batch");
        assert_eq!(j["timezone"], "UTC");
        assert_eq!(j["active_runs_count"], 0);
        let (s, _, j) = call("GET", "/api/v2/dags/etl/tasks".into(), &viewer, None).await;
        assert_eq!(
            (s, j["total_entries"].as_u64()),
            (StatusCode::OK, Some(2)),
            "{j}"
        );
        assert_eq!(j["tasks"][0]["task_id"], "extract");
        assert_eq!(
            j["tasks"][0]["downstream_task_ids"],
            serde_json::json!(["load"])
        );
        assert_eq!(j["tasks"][0]["retry_delay"]["__type"], "TimeDelta");
        assert_eq!(j["tasks"][0]["operator_name"], "BashOperator");
        let (_, _, j) = call(
            "GET",
            "/api/v2/dags/etl/tasks?order_by=-task_id".into(),
            &viewer,
            None,
        )
        .await;
        assert_eq!(j["tasks"][0]["task_id"], "load");
        let (s, _, _) = call(
            "GET",
            "/api/v2/dags/etl/tasks?order_by=nope".into(),
            &viewer,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _, j) = call("GET", "/api/v2/dags/etl/tasks/load".into(), &viewer, None).await;
        assert_eq!(
            (s, j["trigger_rule"].as_str()),
            (StatusCode::OK, Some("all_success"))
        );
        let (s, _, _) = call("GET", "/api/v2/dags/etl/tasks/nope".into(), &viewer, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // Bulk pause: nothing without a pattern, everything with `~`; only `is_paused`.
        let unpause = Some(r#"{"is_paused": false}"#.to_owned());
        let (s, _, j) = call("PATCH", "/api/v2/dags".into(), &user, unpause.clone()).await;
        assert_eq!(
            (s, j["total_entries"].as_u64()),
            (StatusCode::OK, Some(0)),
            "{j}"
        );
        let (s, _, j) = call(
            "PATCH",
            "/api/v2/dags?dag_id_pattern=~".into(),
            &user,
            unpause.clone(),
        )
        .await;
        assert_eq!(
            (s, j["total_entries"].as_u64()),
            (StatusCode::OK, Some(2)),
            "{j}"
        );
        assert!(
            j["dags"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["is_paused"] == false)
        );
        assert!(
            !site
                .store
                .dag_get("other")
                .await
                .unwrap()
                .unwrap()
                .is_paused
        );
        let (s, _, _) = call(
            "PATCH",
            "/api/v2/dags?dag_id_pattern=~&update_mask=tags".into(),
            &user,
            unpause,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        // Runs across DAGs, filters in the body.
        let (s, _, j) = call(
            "POST",
            "/api/v2/dags/etl/dagRuns".into(),
            &user,
            Some(r#"{"dag_run_id": "r1"}"#.into()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        for (body, want) in [
            (r#"{"dag_ids": ["etl"]}"#, 1),
            (r#"{"dag_ids": ["other"]}"#, 0),
            (r#"{"states": ["queued", "running"]}"#, 1),
            (r#"{"states": ["success"]}"#, 0),
            (r#"{}"#, 1),
        ] {
            let (s, _, j) = call(
                "POST",
                "/api/v2/dags/~/dagRuns/list".into(),
                &viewer,
                Some(body.into()),
            )
            .await;
            assert_eq!(
                (s, j["total_entries"].as_i64()),
                (StatusCode::OK, Some(want)),
                "{body}: {j}"
            );
        }
        for bad in [
            r#"{"page_limit": -1}"#,
            r#"{"states": ["bogus"]}"#,
            r#"{"dag_id": "etl"}"#,
        ] {
            let (s, _, j) = call(
                "POST",
                "/api/v2/dags/~/dagRuns/list".into(),
                &viewer,
                Some(bad.into()),
            )
            .await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {j}");
        }
        let (_, _, j) = call(
            "GET",
            "/api/v2/dags/~/dagRuns?limit=1&order_by=-id".into(),
            &viewer,
            None,
        )
        .await;
        assert_eq!(j["dag_runs"][0]["dag_run_id"], "r1");

        // Notes.
        let run = "/api/v2/dags/etl/dagRuns/r1";
        let (s, _, j) = call(
            "PATCH",
            run.into(),
            &user,
            Some(r#"{"note": "checked by uma"}"#.into()),
        )
        .await;
        assert_eq!(
            (s, j["note"].as_str()),
            (StatusCode::OK, Some("checked by uma")),
            "{j}"
        );
        let long = format!(r#"{{"note": "{}"}}"#, "x".repeat(1001));
        let (s, _, j) = call("PATCH", run.into(), &user, Some(long)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{j}");
        assert_eq!(j["detail"][0]["loc"], serde_json::json!(["body", "note"]));

        // Clearing a run: a dry run lists what has run; a real one queues the run again.
        let (s, _, j) = call(
            "PATCH",
            format!("{run}/taskInstances/extract"),
            &user,
            Some(r#"{"new_state": "success"}"#.into()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let (s, _, j) = call("POST", format!("{run}/clear"), &user, Some("{}".into())).await;
        assert_eq!(
            (s, j["total_entries"].as_u64()),
            (StatusCode::OK, Some(1)),
            "{j}"
        );
        assert_eq!(j["task_instances"][0]["task_id"], "extract");
        let ti = site
            .store
            .ti_get(&flow_store::TiKey::new("etl", "r1", "extract", -1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ti.state,
            flow_model::TaskInstanceState::Success,
            "a dry run changes nothing"
        );
        let (s, _, j) = call(
            "POST",
            format!("{run}/clear"),
            &user,
            Some(r#"{"dry_run": false}"#.into()),
        )
        .await;
        assert_eq!(
            (s, j["state"].as_str()),
            (StatusCode::OK, Some("queued")),
            "{j}"
        );
        let (_, _, j) = call("GET", format!("{run}/taskInstances/extract"), &viewer, None).await;
        assert_eq!(j["state"], serde_json::Value::Null, "{j}");
        let (s, _, j) = call(
            "GET",
            format!("{run}/taskInstances/extract/tries"),
            &viewer,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert!(j["task_instances"].is_array());
        let (s, _, _) = call(
            "GET",
            format!("{run}/taskInstances/extract/tries/9"),
            &viewer,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // Deleting a DAG's metadata: 204, then 404; a Viewer may not.
        let (s, _, _) = call("DELETE", "/api/v2/dags/other".into(), &viewer, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _, _) = call("DELETE", "/api/v2/dags/other".into(), &user, None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _, _) = call("GET", "/api/v2/dags/other".into(), &viewer, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, _) = call("DELETE", "/api/v2/dags/other".into(), &user, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(
            site.store.dag_get("etl").await.unwrap().is_some(),
            "other DAGs stay"
        );
        // Its file is still there: the processor's next full scan brings the DAG back.
        {
            let mut processor = site.processor.lock().await;
            processor.resync_from_store().await.unwrap();
            processor.run_once(Utc::now()).await.unwrap();
        }
        let (s, _, j) = call("GET", "/api/v2/dags/other".into(), &viewer, None).await;
        assert_eq!(s, StatusCode::OK, "{j}");

        // Errors in Airflow's shape: oversized body, wrong method, unknown path, no JSON.
        let huge = format!(r#"{{"conf": {{"blob": "{}"}}}}"#, "x".repeat(2 << 20));
        let (s, _, j) = call("POST", "/api/v2/dags/etl/dagRuns".into(), &user, Some(huge)).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(j["detail"].as_str().unwrap().contains("too large"), "{j}");
        let (s, h, j) = call("PUT", "/api/v2/dags".into(), &user, None).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert!(j["detail"].is_string(), "{j}");
        assert!(h.contains_key(header::ALLOW));
        let (s, _, j) = call("GET", "/api/v2/no/such/thing".into(), &user, None).await;
        assert_eq!(
            (s, j["detail"].as_str()),
            (StatusCode::NOT_FOUND, Some("Not Found"))
        );
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns",
            Some(&user),
            Some(("text/plain", "{}")),
        )
        .await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{j}");
        db.drop_db().await.unwrap();
    }
}

/// `/api/v2/connections`: add, read (secrets masked), change (a masked secret sent back
/// keeps its value), delete; encrypted in the store; Op and above only.
#[tokio::test]
async fn api_connections_mask_secrets_and_keep_them_encrypted() {
    for db in databases().await {
        let site = site(&db).await;
        let admin = token_for(&site, "ada").await;
        let user = token_for(&site, "uma").await;
        let json = |b: serde_json::Value| b.to_string();
        let body = json(serde_json::json!({
            "connection_id": "kafka_prod", "conn_type": "kafka", "host": "b1", "port": 9092,
            "login": "svc", "password": "pw-secret-42",
            "extra": "{\"bootstrap.servers\": \"b1:9092\", \"sasl.password\": \"extra-secret-7\"}"
        }));
        let send =
            |method: &'static str, uri: &'static str, token: String, body: Option<String>| {
                let site = &site;
                async move {
                    let body = body.as_deref().map(|b| ("application/json", b));
                    api(site, method, uri, Some(&token), body).await
                }
            };
        let (s, _, j) = send(
            "POST",
            "/api/v2/connections",
            user.clone(),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "a User may not manage connections: {j}"
        );
        let (s, _, j) = send(
            "POST",
            "/api/v2/connections",
            admin.clone(),
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{j}");
        assert_eq!(j["password"], "***");
        assert!(!j.to_string().contains("extra-secret-7"), "{j}");
        let (s, _, _) = send("POST", "/api/v2/connections", admin.clone(), Some(body)).await;
        assert_eq!(s, StatusCode::CONFLICT);
        let raw = site
            .store
            .raw_connection_columns("kafka_prod")
            .await
            .unwrap();
        assert!(!raw.contains("pw-secret-42") && !raw.contains("extra-secret-7"));

        let (s, _, j) = send("GET", "/api/v2/connections", admin.clone(), None).await;
        assert_eq!(
            (s, j["total_entries"].as_u64()),
            (StatusCode::OK, Some(1)),
            "{j}"
        );
        let got = &j["connections"][0];
        assert_eq!(got["host"], "b1");
        assert!(!j.to_string().contains("pw-secret-42"));

        // The masked values sent back keep the secrets; the host changes.
        let mut back = got.clone();
        back["host"] = "b2".into();
        let (s, _, j) = send(
            "PATCH",
            "/api/v2/connections/kafka_prod",
            admin.clone(),
            Some(back.to_string()),
        )
        .await;
        assert_eq!((s, j["host"].as_str()), (StatusCode::OK, Some("b2")), "{j}");
        let cipher_conn = site
            .store
            .connection_list(&flow_store::Cipher::new(&flow_store::Cipher::generate_key()).unwrap())
            .await;
        assert!(cipher_conn.is_err(), "another key cannot read them");
        let (s, _, j) = send("GET", "/api/v2/connections/nope", admin.clone(), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{j}");
        let (s, _, j) = send(
            "POST",
            "/api/v2/connections",
            admin.clone(),
            Some(r#"{"connection_id": "x", "conn_type": "kafka", "extra": "[1]"}"#.into()),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{j}");
        let (s, _, _) = send(
            "DELETE",
            "/api/v2/connections/kafka_prod",
            admin.clone(),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _, _) = send("DELETE", "/api/v2/connections/kafka_prod", admin, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        db.drop_db().await.unwrap();
    }
}

/// Mapped task instances over the API, in Airflow 3's shapes: one entry per map index in the
/// list, `{task_id}/{map_index}` routes, `listMapped`, Airflow's 404s, marking and clearing one
/// map index, the rendered label.
#[tokio::test]
async fn api_mapped_task_instances() {
    for db in databases().await {
        let site = site(&db).await;
        std::fs::write(
            site._dir.join("mapped.yaml"),
            "fanned:\n  tasks:\n    m: {operator: bash, map_index_template: \"{{ ti.map_index }}\", expand: {bash_command: [\"echo a\", \"echo b\", \"echo c\"]}}\n    after: {operator: empty, dependencies: [m]}\n",
        )
        .unwrap();
        site.processor
            .lock()
            .await
            .run_once(Utc::now())
            .await
            .unwrap();
        let admin = token_for(&site, "ada").await;
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/fanned/dagRuns",
            Some(&admin),
            Some((
                "application/json",
                r#"{"dag_run_id": "r1", "logical_date": null}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let (data, _) = site
            .store
            .serialized_dag_get("fanned")
            .await
            .unwrap()
            .unwrap();
        let dag = flow_dag::Dag::from_json(&data).unwrap();
        let template = flow_store::new_task_instances(&dag)
            .into_iter()
            .find(|t| t.task_id == "m")
            .unwrap();
        let ready = site
            .store
            .ti_expand("fanned", "r1", &template, 3, Utc::now())
            .await
            .unwrap();
        assert_eq!(ready, [0, 1, 2]);
        site.store
            .execute_raw(
                "UPDATE task_instance SET rendered_map_index = 'second' WHERE map_index = 1",
            )
            .await
            .unwrap();
        let base = "/api/v2/dags/fanned/dagRuns/r1/taskInstances";

        let (s, _, j) = api(&site, "GET", base, Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK);
        let listed: Vec<(String, i64)> = j["task_instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["task_id"].as_str().unwrap().to_owned(),
                    t["map_index"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("after".to_owned(), -1),
                ("m".to_owned(), 0),
                ("m".to_owned(), 1),
                ("m".to_owned(), 2)
            ]
        );

        let (s, _, j) = api(&site, "GET", &format!("{base}/m"), Some(&admin), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(
            j["detail"],
            "Task instance is mapped, add the map_index value to the URL"
        );
        let (s, _, j) = api(&site, "GET", &format!("{base}/m/1"), Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["map_index"], 1);
        assert_eq!(j["rendered_map_index"], "second");
        let (s, _, j) = api(&site, "GET", &format!("{base}/m/7"), Some(&admin), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(
            j["detail"]
                .as_str()
                .unwrap()
                .starts_with("The Mapped Task Instance with dag_id: `fanned`"),
            "{j}"
        );
        let (s, _, j) = api(
            &site,
            "GET",
            &format!("{base}/m/listMapped?order_by=-map_index&limit=2"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["total_entries"], 3);
        assert_eq!(j["task_instances"][0]["map_index"], 2);
        assert_eq!(j["task_instances"][1]["map_index"], 1);
        let (s, _, j) = api(
            &site,
            "GET",
            &format!("{base}/after/listMapped"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(j["detail"], "Task id after is not mapped");
        let (s, _, j) = api(
            &site,
            "GET",
            &format!("{base}/m/2/tries"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");

        // Marking one map index changes that one alone; again is a 409.
        let failed = Some(("application/json", r#"{"new_state": "failed"}"#));
        let (s, _, j) = api(&site, "PATCH", &format!("{base}/m/1"), Some(&admin), failed).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["total_entries"], 1);
        assert_eq!(j["task_instances"][0]["map_index"], 1);
        assert_eq!(j["task_instances"][0]["state"], "failed");
        let (s, _, j) = api(&site, "PATCH", &format!("{base}/m/1"), Some(&admin), failed).await;
        assert_eq!(s, StatusCode::CONFLICT, "{j}");
        let states = |rows: Vec<flow_store::TiRow>| -> Vec<String> {
            rows.into_iter()
                .filter(|t| t.key.task_id == "m")
                .map(|t| t.state.to_string())
                .collect()
        };
        assert_eq!(
            states(site.store.ti_list_for_run("fanned", "r1").await.unwrap()),
            ["none", "failed", "none"]
        );
        // Clearing `[task_id, map_index]` clears that instance alone.
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/fanned/clearTaskInstances",
            Some(&admin),
            Some((
                "application/json",
                r#"{"dry_run": false, "only_failed": false, "dag_run_id": "r1", "task_ids": [["m", 1]]}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["total_entries"], 1, "{j}");
        assert_eq!(
            states(site.store.ti_list_for_run("fanned", "r1").await.unwrap()),
            ["none", "none", "none"]
        );

        // The web UI: the grid shows the mapped task as one cell with its count, the task
        // page lists the instances, each has its own page and can be marked alone. (The
        // clear forgot m[1]'s label; a try would set it again.)
        site.store
            .execute_raw(
                "UPDATE task_instance SET rendered_map_index = 'second' WHERE map_index = 1",
            )
            .await
            .unwrap();
        let mut b = Browser::new(&site);
        b.login("ada", "correct horse", "/").await;
        let grid = b.get("/dags/fanned").await;
        assert_eq!(grid.status, StatusCode::OK);
        assert!(grid.body.contains(r#"data-mapped="3""#), "{}", grid.body);
        assert!(grid.body.contains("3 none"), "{}", grid.body);
        let list = b.get("/dags/fanned/runs/r1/tasks/m").await;
        assert_eq!(list.status, StatusCode::OK);
        assert!(list.body.contains("mapped: 3 instance(s)"), "{}", list.body);
        assert!(list.body.contains("tasks/m?map_index=2"), "{}", list.body);
        assert!(list.body.contains("<td>second</td>"), "{}", list.body);
        let one = b.get("/dags/fanned/runs/r1/tasks/m?map_index=1").await;
        assert_eq!(one.status, StatusCode::OK);
        assert!(one.body.contains("m[1]"), "{}", one.body);
        let p = b
            .post(
                "/dags/fanned/runs/r1/tasks/m/mark",
                &[
                    ("csrf_token", &one.csrf()),
                    ("state", "success"),
                    ("map_index", "2"),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(
            p.location.as_deref(),
            Some("/dags/fanned/runs/r1/tasks/m?map_index=2")
        );
        assert_eq!(
            states(site.store.ti_list_for_run("fanned", "r1").await.unwrap()),
            ["none", "none", "success"]
        );
        db.drop_db().await.unwrap();
    }
}

/// `/api/v2/pools`: Airflow's shapes with slot counts by state, Op and above to change them,
/// `default_pool` resized but never renamed or deleted, and the bulk route.
#[tokio::test]
async fn api_pools_count_slots_and_guard_the_default_pool() {
    for db in databases().await {
        let site = site(&db).await;
        let admin = token_for(&site, "ada").await;
        let user = token_for(&site, "uma").await;
        let viewer = token_for(&site, "vic").await;
        let call = |method: &'static str, uri: String, token: String, body: Option<String>| {
            let site = &site;
            async move {
                let body = body.as_deref().map(|b| ("application/json", b));
                api(site, method, &uri, Some(&token), body).await
            }
        };
        let etl = r#"{"name": "etl", "slots": 4, "description": "nightly loads"}"#.to_owned();
        let (s, _, j) = call(
            "POST",
            "/api/v2/pools".into(),
            user.clone(),
            Some(etl.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "a User may not manage pools: {j}");
        let (s, _, j) = call(
            "POST",
            "/api/v2/pools".into(),
            admin.clone(),
            Some(etl.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{j}");
        assert_eq!(
            (j["name"].as_str(), j["slots"].as_i64()),
            (Some("etl"), Some(4))
        );
        assert_eq!(j["include_deferred"], false);
        let (s, _, _) = call("POST", "/api/v2/pools".into(), admin.clone(), Some(etl)).await;
        assert_eq!(s, StatusCode::CONFLICT);
        let (s, _, j) = call(
            "POST",
            "/api/v2/pools".into(),
            admin.clone(),
            Some(r#"{"name": "bad", "slots": -2}"#.into()),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{j}");

        // Task instances in the pool, by state (pool_slots 2 for the running one).
        for (task, state, slots) in [
            ("r", "running", 2),
            ("q", "queued", 1),
            ("s", "scheduled", 1),
            ("d", "deferred", 1),
            ("x", "success", 1),
        ] {
            site.store
                .execute_raw(&format!(
                    "INSERT INTO task_instance (dag_id, run_id, task_id, map_index, state, \
                     pool, pool_slots, updated_at) VALUES ('d', 'r', '{task}', -1, '{state}', \
                     'etl', {slots}, 0)"
                ))
                .await
                .unwrap();
        }
        let (s, _, j) = call("GET", "/api/v2/pools/etl".into(), viewer.clone(), None).await;
        assert_eq!(s, StatusCode::OK, "a Viewer reads pools: {j}");
        let counts = |j: &serde_json::Value| {
            [
                "running_slots",
                "queued_slots",
                "scheduled_slots",
                "deferred_slots",
                "occupied_slots",
                "open_slots",
            ]
            .map(|k| j[k].as_i64().unwrap())
        };
        assert_eq!(counts(&j), [2, 1, 1, 1, 3, 1], "{j}");
        // Deferred task instances take slots once the pool includes them.
        let (s, _, j) = call(
            "PATCH",
            "/api/v2/pools/etl?update_mask=include_deferred".into(),
            admin.clone(),
            Some(r#"{"include_deferred": true, "slots": 99}"#.into()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["slots"], 4, "the mask leaves slots alone: {j}");
        assert_eq!(counts(&j), [2, 1, 1, 1, 4, 0], "{j}");

        let (s, _, j) = call(
            "PATCH",
            "/api/v2/pools/default_pool".into(),
            admin.clone(),
            Some(r#"{"description": "renamed?"}"#.into()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
        let (s, _, j) = call(
            "PATCH",
            "/api/v2/pools/default_pool".into(),
            admin.clone(),
            Some(r#"{"slots": 64}"#.into()),
        )
        .await;
        assert_eq!((s, j["slots"].as_i64()), (StatusCode::OK, Some(64)), "{j}");
        let (s, _, j) = call(
            "DELETE",
            "/api/v2/pools/default_pool".into(),
            admin.clone(),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
        assert_eq!(j["detail"], "Default Pool can't be deleted");

        let (s, _, j) = call(
            "GET",
            "/api/v2/pools?pool_name_pattern=E_L&order_by=-slots".into(),
            viewer.clone(),
            None,
        )
        .await;
        assert_eq!(
            (s, j["total_entries"].as_u64()),
            (StatusCode::OK, Some(1)),
            "{j}"
        );
        assert_eq!(j["pools"][0]["name"], "etl");

        let bulk = serde_json::json!({"actions": [
            {"action": "create", "entities": [{"name": "etl", "slots": 1}, {"name": "ml", "slots": 2}]},
            {"action": "update", "entities": [{"name": "ml", "slots": 3}]},
            {"action": "delete", "entities": ["etl", "nope"], "action_on_non_existence": "skip"},
        ]});
        let (s, _, j) = call(
            "PATCH",
            "/api/v2/pools".into(),
            admin.clone(),
            Some(bulk.to_string()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["create"]["success"], serde_json::json!(["ml"]), "{j}");
        assert_eq!(j["create"]["errors"][0]["status_code"], 409, "{j}");
        assert_eq!(j["update"]["success"], serde_json::json!(["ml"]), "{j}");
        assert_eq!(j["delete"]["success"], serde_json::json!(["etl"]), "{j}");
        let (s, _, _) = call("GET", "/api/v2/pools/etl".into(), viewer.clone(), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (_, _, j) = call("GET", "/api/v2/pools/ml".into(), viewer.clone(), None).await;
        assert_eq!(j["slots"], 3, "{j}");
        let (s, _, _) = call("DELETE", "/api/v2/pools/ml".into(), admin.clone(), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        db.drop_db().await.unwrap();
    }
}

/// `/api/v2/variables`: Airflow's shapes; a secret variable (by key or description) is
/// encrypted at rest and shown as `***`, and `***` sent back keeps it; as in Airflow, only Op
/// and Admin read or change variables.
#[tokio::test]
async fn api_variables_mask_secrets_and_keep_them_encrypted() {
    for db in databases().await {
        let site = site(&db).await;
        let admin = token_for(&site, "ada").await;
        let user = token_for(&site, "uma").await;
        let viewer = token_for(&site, "vic").await;
        let call = |method: &'static str, uri: String, token: String, body: Option<String>| {
            let site = &site;
            async move {
                let body = body.as_deref().map(|b| ("application/json", b));
                api(site, method, &uri, Some(&token), body).await
            }
        };
        let region = r#"{"key": "region", "value": "eu-west-1", "description": "where"}"#;
        let (s, _, j) = call(
            "POST",
            "/api/v2/variables".into(),
            user.clone(),
            Some(region.into()),
        )
        .await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "a User may not manage variables: {j}"
        );
        let (s, _, j) = call(
            "POST",
            "/api/v2/variables".into(),
            admin.clone(),
            Some(region.into()),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{j}");
        assert_eq!(
            (j["value"].as_str(), j["is_encrypted"].as_bool()),
            (Some("eu-west-1"), Some(false))
        );
        let (s, _, _) = call(
            "POST",
            "/api/v2/variables".into(),
            admin.clone(),
            Some(region.into()),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT);
        // A JSON value is stored as its text.
        let cfg = r#"{"key": "cfg", "value": {"batch": 500}}"#;
        let (s, _, j) = call(
            "POST",
            "/api/v2/variables".into(),
            admin.clone(),
            Some(cfg.into()),
        )
        .await;
        assert_eq!(
            (s, j["value"].as_str()),
            (StatusCode::CREATED, Some(r#"{"batch":500}"#)),
            "{j}"
        );
        // Secret by key, and by description.
        for body in [
            r#"{"key": "db_password", "value": "hunter2-very-secret"}"#,
            r#"{"key": "plain_name", "value": "tok-123456789", "description": "an API token"}"#,
        ] {
            let (s, _, j) = call(
                "POST",
                "/api/v2/variables".into(),
                admin.clone(),
                Some(body.into()),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{j}");
            assert_eq!(
                (j["value"].as_str(), j["is_encrypted"].as_bool()),
                (Some("***"), Some(true)),
                "{j}"
            );
        }
        for (key, secret) in [("db_password", "hunter2"), ("plain_name", "tok-123")] {
            let raw = site.store.raw_variable_value(key).await.unwrap();
            assert!(!raw.contains(secret), "{key} is stored in clear: {raw}");
        }
        let (s, _, j) = call("GET", "/api/v2/variables".into(), viewer.clone(), None).await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "as in Airflow, Viewers do not read variables: {j}"
        );
        let (s, _, j) = call("GET", "/api/v2/variables".into(), admin.clone(), None).await;
        assert_eq!(
            (s, j["total_entries"].as_u64()),
            (StatusCode::OK, Some(4)),
            "{j}"
        );
        assert!(
            !j.to_string().contains("hunter2") && !j.to_string().contains("tok-123"),
            "{j}"
        );
        let (_, _, j) = call(
            "GET",
            "/api/v2/variables?variable_key_pattern=PASS&order_by=-key".into(),
            admin.clone(),
            None,
        )
        .await;
        assert_eq!(j["variables"][0]["key"], "db_password", "{j}");
        assert_eq!(j["total_entries"], 1, "{j}");

        // `***` sent back keeps the secret; the description changes.
        let back = r#"{"key": "db_password", "value": "***", "description": "rotated"}"#;
        let (s, _, j) = call(
            "PATCH",
            "/api/v2/variables/db_password".into(),
            admin.clone(),
            Some(back.into()),
        )
        .await;
        assert_eq!(
            (s, j["description"].as_str()),
            (StatusCode::OK, Some("rotated")),
            "{j}"
        );
        let kept = site
            .store
            .variable_get("db_password", site.cipher.as_ref())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.value, "hunter2-very-secret");
        // With a mask only the named field changes.
        let (s, _, j) = call(
            "PATCH",
            "/api/v2/variables/region?update_mask=value".into(),
            admin.clone(),
            Some(r#"{"key": "region", "value": "us-east-1", "description": "ignored"}"#.into()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(
            (j["value"].as_str(), j["description"].as_str()),
            (Some("us-east-1"), Some("where"))
        );
        let (s, _, _) = call(
            "PATCH",
            "/api/v2/variables/region".into(),
            admin.clone(),
            Some(r#"{"key": "other", "value": "x"}"#.into()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        let bulk = serde_json::json!({"actions": [
            {"action": "create", "entities": [{"key": "region", "value": "x"}, {"key": "new_one", "value": 1}]},
            {"action": "delete", "entities": ["cfg", "missing"], "action_on_non_existence": "skip"},
        ]});
        let (s, _, j) = call(
            "PATCH",
            "/api/v2/variables".into(),
            admin.clone(),
            Some(bulk.to_string()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(
            j["create"]["success"],
            serde_json::json!(["new_one"]),
            "{j}"
        );
        assert_eq!(j["create"]["errors"][0]["status_code"], 409, "{j}");
        assert_eq!(j["delete"]["success"], serde_json::json!(["cfg"]), "{j}");
        let (s, _, _) = call(
            "DELETE",
            "/api/v2/variables/region".into(),
            admin.clone(),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _, j) = call(
            "GET",
            "/api/v2/variables/region".into(),
            admin.clone(),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{j}");
        db.drop_db().await.unwrap();
    }
}

/// The Variables page: Op and Admin read (a secret's value as `***`), set and delete; a
/// Viewer and a User get nothing.
#[tokio::test]
async fn variables_page_masks_secrets_and_only_op_edits() {
    for db in databases().await {
        let site = site(&db).await;
        let mut viewer = Browser::new(&site);
        viewer.login("vic", "correct horse", "/").await;
        let mut user = Browser::new(&site);
        user.ip = [10, 2, 2, 2];
        user.login("uma", "correct horse", "/").await;
        let mut admin = Browser::new(&site);
        admin.ip = [10, 1, 1, 1];
        admin.login("ada", "correct horse", "/").await;
        let csrf_u = user.get("/").await.csrf();
        let p = user
            .post(
                "/variables",
                &[("csrf_token", &csrf_u), ("key", "region"), ("value", "eu")],
            )
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "User is below Op");
        let csrf_a = admin.get("/variables").await.csrf();
        for (key, value) in [("region", "eu-central"), ("smtp_password", "pw-zz-998877")] {
            let p = admin
                .post(
                    "/variables",
                    &[("csrf_token", &csrf_a), ("key", key), ("value", value)],
                )
                .await;
            assert_eq!(p.status, StatusCode::SEE_OTHER, "{key}");
        }
        assert_eq!(
            viewer.get("/variables").await.status,
            StatusCode::FORBIDDEN,
            "as in Airflow, variables are for Op and Admin"
        );
        let page = admin.get("/variables").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("eu-central"), "{}", page.body);
        assert!(page.body.contains(r#"data-key="smtp_password""#));
        assert!(!page.body.contains("pw-zz-998877"), "the secret leaked");
        assert!(page.body.contains("Set a variable"));
        let p = admin
            .post(
                "/variables/delete",
                &[("csrf_token", &csrf_a), ("key", "region")],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        let cipher = site.cipher.as_ref();
        assert!(
            site.store
                .variable_get("region", cipher)
                .await
                .unwrap()
                .is_none()
        );
        db.drop_db().await.unwrap();
    }
}

/// `POST .../dags/~/dagRuns/~/taskInstances/list`: task instances across DAGs and runs,
/// filtered by the body (DAGs, runs, tasks, states with `null` for no state), paged.
#[tokio::test]
async fn api_task_instance_batch_list_filters_across_dags() {
    for db in databases().await {
        let site = site(&db).await;
        let admin = token_for(&site, "ada").await;
        let viewer = token_for(&site, "vic").await;
        let post = |uri: &'static str, token: String, body: String| {
            let site = &site;
            async move {
                api(
                    site,
                    "POST",
                    uri,
                    Some(&token),
                    Some(("application/json", &body)),
                )
                .await
            }
        };
        for (dag, run) in [("etl", "r1"), ("etl", "r2"), ("other", "o1")] {
            let uri: &'static str =
                Box::leak(format!("/api/v2/dags/{dag}/dagRuns").into_boxed_str());
            let (s, _, j) = post(
                uri,
                admin.clone(),
                format!(r#"{{"dag_run_id": "{run}", "logical_date": null}}"#),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{j}");
        }
        let list = "/api/v2/dags/~/dagRuns/~/taskInstances/list";
        let (s, _, j) = post(list, viewer.clone(), "{}".into()).await;
        assert_eq!(
            (s, j["total_entries"].as_u64()),
            (StatusCode::OK, Some(5)),
            "{j}"
        );
        let (_, _, j) = post(
            list,
            viewer.clone(),
            r#"{"dag_ids": ["etl"], "task_ids": ["load"], "state": [null], "order_by": "-run_id"}"#
                .into(),
        )
        .await;
        assert_eq!(j["total_entries"], 2, "{j}");
        assert!(
            j["task_instances"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["task_id"] == "load")
        );
        let (_, _, j) = post(
            "/api/v2/dags/etl/dagRuns/r2/taskInstances/list",
            viewer.clone(),
            r#"{"page_limit": 1, "page_offset": 1}"#.into(),
        )
        .await;
        assert_eq!(j["total_entries"], 2, "{j}");
        assert_eq!(j["task_instances"].as_array().unwrap().len(), 1, "{j}");
        assert_eq!(j["task_instances"][0]["dag_run_id"], "r2", "{j}");
        let (_, _, j) = post(list, viewer.clone(), r#"{"state": ["success"]}"#.into()).await;
        assert_eq!(j["total_entries"], 0, "nothing ran: {j}");
        let (s, _, j) = post(list, viewer.clone(), r#"{"state": ["bogus"]}"#.into()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{j}");
        let (s, _, j) = post(list, viewer.clone(), r#"{"unknown_field": 1}"#.into()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{j}");
        let (s, _, _) = post(
            "/api/v2/dags/nope/dagRuns/~/taskInstances/list",
            viewer.clone(),
            "{}".into(),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        db.drop_db().await.unwrap();
    }
}

/// `GET .../taskInstances/{task_id}/dependencies` says why a task instance is not running, in
/// Airflow's shape: the queued run, the paused DAG, the trigger rule with its upstream counts,
/// a full pool; nothing for a task instance that already ran.
#[tokio::test]
async fn api_task_instance_dependencies_say_why_it_waits() {
    for db in databases().await {
        let site = site(&db).await;
        let admin = token_for(&site, "ada").await;
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns",
            Some(&admin),
            Some((
                "application/json",
                r#"{"dag_run_id": "d1", "logical_date": null}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let (s, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/d1/taskInstances/load/dependencies",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let deps = j["dependencies"].as_array().unwrap();
        let names: Vec<&str> = deps.iter().map(|d| d["name"].as_str().unwrap()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "sorted by name: {j}");
        assert!(names.contains(&"Dagrun Running"), "{j}");
        let rule = deps
            .iter()
            .find(|d| d["name"] == "Trigger Rule")
            .expect("trigger rule");
        let reason = rule["reason"].as_str().unwrap();
        assert!(
            reason.contains("'all_success'") && reason.contains("upstream_task_ids={extract}"),
            "{reason}"
        );

        // A full pool: the default pool with no slots left for the first task.
        site.store
            .pool_update("default_pool", "default_pool", 0, "", false)
            .await
            .unwrap();
        let (_, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/d1/taskInstances/extract/dependencies",
            Some(&admin),
            None,
        )
        .await;
        let pool = j["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "Pool Slots Available")
            .unwrap_or_else(|| panic!("no pool dependency: {j}"));
        assert!(
            pool["reason"]
                .as_str()
                .unwrap()
                .contains("0 open slots in pool default_pool"),
            "{j}"
        );
        assert!(
            !j["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["name"] == "Trigger Rule"),
            "extract has no upstream: {j}"
        );

        // Queued on a queue no live worker serves; deferred on a trigger no triggerer took.
        let reason_of = |j: &serde_json::Value, name: &str| -> String {
            j["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["name"] == name)
                .and_then(|d| d["reason"].as_str())
                .unwrap_or_else(|| panic!("no `{name}`: {j}"))
                .to_owned()
        };
        site.store
            .execute_raw(
                "UPDATE task_instance SET state = 'queued', queue = 'gpu', queued_dttm = 0 \
                 WHERE run_id = 'd1' AND task_id = 'extract'",
            )
            .await
            .unwrap();
        let (_, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/d1/taskInstances/extract/dependencies",
            Some(&admin),
            None,
        )
        .await;
        let reason = reason_of(&j, "Worker Serving Queue");
        assert!(
            reason.contains("queue 'gpu'") && reason.contains("flow worker --queues gpu"),
            "{reason}"
        );
        site.store
            .execute_raw(
                "INSERT INTO trigger (id, classpath, kwargs, created_date) \
                 VALUES (4242, 'flow.triggers.DateTimeTrigger', '{}', 0)",
            )
            .await
            .unwrap();
        site.store
            .execute_raw(
                "UPDATE task_instance SET state = 'deferred', trigger_id = 4242 \
                 WHERE run_id = 'd1' AND task_id = 'extract'",
            )
            .await
            .unwrap();
        let (_, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/d1/taskInstances/extract/dependencies",
            Some(&admin),
            None,
        )
        .await;
        let reason = reason_of(&j, "Trigger");
        assert!(
            reason.contains("trigger 4242 (flow.triggers.DateTimeTrigger)")
                && reason.contains("no triggerer has taken it yet"),
            "{reason}"
        );

        // Unknown task instance: 404; a mapped path with a bad index: 422.
        let (s, _, _) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/d1/taskInstances/nope/dependencies",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, _) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/d1/taskInstances/load/x/dependencies",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    }
}

/// XCom create, update and delete over the API, in Airflow 3's shapes: 201 then 409 for a
/// second create, the value read back, 404 for a missing XCom or task instance, 403 for a
/// Viewer.
#[tokio::test]
async fn api_xcom_create_update_delete() {
    for db in databases().await {
        let site = site(&db).await;
        let admin = token_for(&site, "ada").await;
        let viewer = token_for(&site, "vic").await;
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns",
            Some(&admin),
            Some((
                "application/json",
                r#"{"dag_run_id": "x1", "logical_date": null}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let base = "/api/v2/dags/etl/dagRuns/x1/taskInstances/load/xcomEntries";
        let body = r#"{"key": "rows", "value": {"n": 3}}"#;
        let (s, _, j) = api(
            &site,
            "POST",
            base,
            Some(&admin),
            Some(("application/json", body)),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{j}");
        assert_eq!(
            (j["key"].clone(), j["value"]["n"].clone()),
            ("rows".into(), 3.into()),
            "{j}"
        );
        let (s, _, _) = api(
            &site,
            "POST",
            base,
            Some(&admin),
            Some(("application/json", body)),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT);
        let (s, _, _) = api(
            &site,
            "POST",
            base,
            Some(&viewer),
            Some(("application/json", body)),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let one = "/api/v2/dags/etl/dagRuns/x1/taskInstances/load/xcomEntries/rows";
        let (s, _, j) = api(
            &site,
            "PATCH",
            one,
            Some(&admin),
            Some(("application/json", r#"{"value": [1, 2]}"#)),
        )
        .await;
        assert_eq!(
            (s, j["value"].clone()),
            (StatusCode::OK, serde_json::json!([1, 2])),
            "{j}"
        );
        let (s, _, j) = api(&site, "GET", one, Some(&viewer), None).await;
        assert_eq!(
            (s, j["value"].clone()),
            (StatusCode::OK, serde_json::json!([1, 2])),
            "{j}"
        );
        let (s, _, _) = api(&site, "DELETE", one, Some(&admin), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        for method in ["GET", "DELETE"] {
            let (s, _, _) = api(&site, method, one, Some(&admin), None).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{method} after delete");
        }
        let (s, _, _) = api(
            &site,
            "PATCH",
            one,
            Some(&admin),
            Some(("application/json", r#"{"value": 1}"#)),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, _) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns/x1/taskInstances/nope/xcomEntries",
            Some(&admin),
            Some(("application/json", body)),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}

/// Every version of a DAG with its source (`dagVersions`, `dagSources?version_number=`),
/// and a run's state streamed until it ends (`dagRuns/{id}/wait`), with its tasks' results.
#[tokio::test]
async fn api_dag_versions_and_run_wait() {
    for db in databases().await {
        let site = site(&db).await;
        let admin = token_for(&site, "ada").await;
        let (s, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagVersions",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["total_entries"], 1, "{j}");
        assert_eq!(j["dag_versions"][0]["version_number"], 1);
        let first_hash = j["dag_versions"][0]["dag_hash"]
            .as_str()
            .unwrap()
            .to_owned();
        // A changed DAG is a new version; its old source stays readable.
        let changed = dags_yaml().replace("tags: [nightly]", "tags: [nightly, v2]");
        std::fs::write(site._dir.join("dags.yaml"), changed).unwrap();
        let later = Utc::now() + chrono::Duration::seconds(5);
        site.processor.lock().await.run_once(later).await.unwrap();
        let (_, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagVersions?order_by=-version_number",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(j["total_entries"], 2, "{j}");
        assert_eq!(j["dag_versions"][0]["version_number"], 2);
        assert_ne!(j["dag_versions"][0]["dag_hash"], first_hash.as_str());
        let (s, _, j) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagVersions/1",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(
            (s, j["dag_hash"].as_str()),
            (StatusCode::OK, Some(first_hash.as_str()))
        );
        let (s, _, _) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagVersions/9",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (_, _, old) = api(
            &site,
            "GET",
            "/api/v2/dagSources/etl?version_number=1",
            Some(&admin),
            None,
        )
        .await;
        let (_, _, new) = api(&site, "GET", "/api/v2/dagSources/etl", Some(&admin), None).await;
        assert!(!old["content"].as_str().unwrap().contains("v2"), "{old}");
        assert!(new["content"].as_str().unwrap().contains("v2"), "{new}");
        assert_eq!(new["version_number"], 2);

        // wait: a finished run answers at once, with the results asked for.
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns",
            Some(&admin),
            Some((
                "application/json",
                r#"{"dag_run_id": "w1", "logical_date": null}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/dagRuns/w1/taskInstances/load/xcomEntries",
            Some(&admin),
            Some((
                "application/json",
                r#"{"key": "return_value", "value": 42}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{j}");
        let (s, _, j) = api(
            &site,
            "PATCH",
            "/api/v2/dags/etl/dagRuns/w1",
            Some(&admin),
            Some(("application/json", r#"{"state": "success"}"#)),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let req = Request::builder()
            .uri("/api/v2/dags/etl/dagRuns/w1/wait?interval=0.1&result=load")
            .header(header::AUTHORIZATION, &admin)
            .body(Body::empty())
            .unwrap();
        let resp = site.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/x-ndjson");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["state"], "success");
        assert_eq!(lines[0]["results"]["load"], 42);
        let (s, _, _) = api(
            &site,
            "GET",
            "/api/v2/dags/etl/dagRuns/w1/wait",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        db.drop_db().await.unwrap();
    }
}

/// `taskGroupInstances`: every task of a group (nested ones too) marked at once, a dry run
/// first, 409 when nothing changes, 404 for an unknown group.
#[tokio::test]
async fn api_task_group_instances_mark_the_group() {
    for db in databases().await {
        let site = site(&db).await;
        let admin = token_for(&site, "ada").await;
        std::fs::write(
            site._dir.join("grouped.yaml"),
            r#"grouped:
  task_groups:
    - {group_name: load}
    - {group_name: inner, parent_group_name: load}
  tasks:
    start: {operator: empty}
    a: {operator: empty, task_group_name: load, dependencies: [start]}
    b: {operator: empty, task_group_name: inner, dependencies: [start]}
    end: {operator: empty, dependencies: [load]}
"#,
        )
        .unwrap();
        site.processor
            .lock()
            .await
            .run_once(Utc::now() + chrono::Duration::seconds(5))
            .await
            .unwrap();
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/grouped/dagRuns",
            Some(&admin),
            Some((
                "application/json",
                r#"{"dag_run_id": "g1", "logical_date": null}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let base = "/api/v2/dags/grouped/dagRuns/g1/taskGroupInstances/load";
        let body = Some(("application/json", r#"{"new_state": "success"}"#));
        let (s, _, j) = api(
            &site,
            "PATCH",
            &format!("{base}/dry_run"),
            Some(&admin),
            body,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let mut ids: Vec<&str> = j["task_instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["task_id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, ["load.a", "load.inner.b"], "{j}");
        let (s, _, j) = api(&site, "PATCH", base, Some(&admin), body).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["total_entries"], 2, "{j}");
        assert!(
            j["task_instances"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["state"] == "success")
        );
        let (s, _, _) = api(&site, "PATCH", base, Some(&admin), body).await;
        assert_eq!(s, StatusCode::CONFLICT);
        let (s, _, _) = api(
            &site,
            "PATCH",
            "/api/v2/dags/grouped/dagRuns/g1/taskGroupInstances/nope",
            Some(&admin),
            body,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        db.drop_db().await.unwrap();
    }
}

/// `clearDagRuns`: several runs in one request, dry run by default; `~` needs each entry's
/// DAG; an entry of another DAG is refused.
#[tokio::test]
async fn api_clear_dag_runs_clears_several() {
    for db in databases().await {
        let site = site(&db).await;
        let admin = token_for(&site, "ada").await;
        for id in ["c1", "c2"] {
            let body = format!(r#"{{"dag_run_id": "{id}", "logical_date": null}}"#);
            let (s, _, j) = api(
                &site,
                "POST",
                "/api/v2/dags/etl/dagRuns",
                Some(&admin),
                Some(("application/json", &body)),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{j}");
            let (s, _, j) = api(
                &site,
                "PATCH",
                &format!("/api/v2/dags/etl/dagRuns/{id}"),
                Some(&admin),
                Some(("application/json", r#"{"state": "failed"}"#)),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{j}");
        }
        let runs = r#"{"dag_runs": [{"dag_run_id": "c1"}, {"dag_run_id": "c2"}]}"#;
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/clearDagRuns",
            Some(&admin),
            Some(("application/json", runs)),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert!(
            j["task_instances"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "dry run: {j}"
        );
        let real = r#"{"dry_run": false, "dag_runs": [{"dag_run_id": "c1"}, {"dag_run_id": "c2", "dag_id": "etl"}]}"#;
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/clearDagRuns",
            Some(&admin),
            Some(("application/json", real)),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["total_entries"], 2, "{j}");
        assert!(
            j["dag_runs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["state"] == "queued"),
            "{j}"
        );
        let (s, _, _) = api(
            &site,
            "POST",
            "/api/v2/dags/~/clearDagRuns",
            Some(&admin),
            Some(("application/json", runs)),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _, _) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/clearDagRuns",
            Some(&admin),
            Some((
                "application/json",
                r#"{"dag_runs": [{"dag_run_id": "c1", "dag_id": "other"}]}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _, _) = api(
            &site,
            "POST",
            "/api/v2/dags/etl/clearDagRuns",
            Some(&admin),
            Some((
                "application/json",
                r#"{"dag_runs": [{"dag_run_id": "nope"}]}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        db.drop_db().await.unwrap();
    }
}

/// Bulk `PATCH /api/v2/dags/{dag_id}/dagRuns` (Airflow 3.3's `BulkDagRunService`): update
/// state and note, delete (never a running run), create refused, each entity answered.
#[tokio::test]
async fn api_bulk_dag_runs_update_and_delete() {
    for db in databases().await {
        let site = site(&db).await;
        let admin = token_for(&site, "ada").await;
        let viewer = token_for(&site, "vic").await;
        for id in ["b1", "b2", "b3", "b4"] {
            let body = format!(r#"{{"dag_run_id": "{id}", "logical_date": null}}"#);
            let (s, _, j) = api(
                &site,
                "POST",
                "/api/v2/dags/etl/dagRuns",
                Some(&admin),
                Some(("application/json", &body)),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{j}");
        }
        site.store
            .execute_raw("UPDATE dag_run SET state = 'running' WHERE run_id = 'b4'")
            .await
            .unwrap();
        let body = r#"{"actions": [
            {"action": "create", "entities": [{"dag_run_id": "new"}]},
            {"action": "update", "entities": [
                {"dag_run_id": "b1", "state": "failed", "note": "bad input"},
                {"dag_run_id": "b2", "note": "looked at"},
                "b3",
                {"dag_run_id": "gone", "state": "success"}
            ]},
            {"action": "delete", "entities": ["b3", {"dag_run_id": "b4"}, "nope"]}
        ]}"#;
        let (s, _, j) = api(
            &site,
            "PATCH",
            "/api/v2/dags/etl/dagRuns",
            Some(&viewer),
            Some(("application/json", body)),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "a Viewer may not: {j}");
        let (s, _, j) = api(
            &site,
            "PATCH",
            "/api/v2/dags/etl/dagRuns",
            Some(&admin),
            Some(("application/json", body)),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["create"]["success"], serde_json::json!([]), "{j}");
        assert_eq!(j["create"]["errors"][0]["status_code"], 405, "{j}");
        assert_eq!(
            j["update"]["success"],
            serde_json::json!(["etl.b1", "etl.b2"]),
            "{j}"
        );
        let codes = |errors: &serde_json::Value| -> Vec<i64> {
            errors
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["status_code"].as_i64().unwrap())
                .collect()
        };
        assert_eq!(codes(&j["update"]["errors"]), vec![400, 404], "{j}");
        assert_eq!(j["delete"]["success"], serde_json::json!(["etl.b3"]), "{j}");
        assert_eq!(codes(&j["delete"]["errors"]), vec![409, 404], "{j}");
        let run = |id: &'static str| {
            let site = &site;
            let admin = admin.clone();
            async move {
                api(
                    site,
                    "GET",
                    &format!("/api/v2/dags/etl/dagRuns/{id}"),
                    Some(&admin),
                    None,
                )
                .await
            }
        };
        let (_, _, b1) = run("b1").await;
        assert_eq!(
            (b1["state"].as_str(), b1["note"].as_str()),
            (Some("failed"), Some("bad input"))
        );
        let (_, _, b2) = run("b2").await;
        assert_eq!(
            (b2["state"].as_str(), b2["note"].as_str()),
            (Some("queued"), Some("looked at"))
        );
        let (s, _, _) = run("b3").await;
        assert_eq!(s, StatusCode::NOT_FOUND, "b3 was deleted");
        let (_, _, b4) = run("b4").await;
        assert_eq!(b4["state"], "running", "a running run is kept");

        // `~` needs each entity's DAG; missing runs are skipped when asked; an empty note
        // removes the note.
        let body = r#"{"actions": [
            {"action": "update", "action_on_non_existence": "skip", "entities": [
                {"dag_run_id": "b1", "dag_id": "etl", "note": ""},
                {"dag_run_id": "b2", "note": "x"},
                {"dag_run_id": "gone", "dag_id": "etl", "state": "success"}
            ]}
        ]}"#;
        let (s, _, j) = api(
            &site,
            "PATCH",
            "/api/v2/dags/~/dagRuns",
            Some(&admin),
            Some(("application/json", body)),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["update"]["success"], serde_json::json!(["etl.b1"]), "{j}");
        assert_eq!(codes(&j["update"]["errors"]), vec![400], "{j}");
        let (_, _, b1) = run("b1").await;
        assert!(b1["note"].is_null(), "{b1}");
        let (s, _, j) = api(
            &site,
            "PATCH",
            "/api/v2/dags/etl/dagRuns",
            Some(&admin),
            Some((
                "application/json",
                r#"{"actions": [{"action": "update", "entities": [{"dag_run_id": "b1", "state": "running"}]}]}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(codes(&j["update"]["errors"]), vec![422], "{j}");
        db.drop_db().await.unwrap();
    }
}

/// `GET /metrics` as Prometheus reads it: no login, the text format (parsed by an independent
/// parser), the database's gauges; with the database gone it still answers, saying so.
#[tokio::test]
async fn metrics_answer_with_and_without_the_database() {
    for db in databases().await {
        let site = site(&db).await;
        let scrape = || {
            let router = site.router.clone();
            async move {
                let mut req = Request::builder()
                    .uri("/metrics")
                    .body(Body::empty())
                    .unwrap();
                req.extensions_mut()
                    .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 2], 40000))));
                let resp = router.oneshot(req).await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                let ct = resp.headers()[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .to_owned();
                assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                let text = String::from_utf8(bytes.to_vec()).unwrap();
                prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
            }
        };
        let value = |s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>| {
            s.samples
                .iter()
                .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
                .map(|x| match x.value {
                    prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
        };
        let up = scrape().await;
        assert_eq!(value(&up, "flow_metadata_db_up", None), Some(1.0));
        assert_eq!(
            value(&up, "flow_pool_open_slots", Some(("pool", "default_pool"))),
            Some(128.0)
        );
        assert!(value(&up, "flow_dagbag_size", None).is_some_and(|n| n >= 1.0));
        let store = site.store.clone();
        db.drop_db().await.unwrap();
        store.close().await;
        let down = scrape().await;
        assert_eq!(value(&down, "flow_metadata_db_up", None), Some(0.0));
    }
}

/// `GET /api/v2/config`: 403 with Airflow's message while not exposed; once exposed, the
/// snapshot the CLI built (secrets already hidden) to Admin, 403 to the others (Op
/// included); a section filter, one option, 404s, and Airflow's text form.
#[tokio::test]
async fn api_config_only_when_exposed_and_only_for_admins() {
    use flow_http::{ConfigOption, ConfigSection, ExposedConfig};
    // The route reads no table: SQLite suffices.
    {
        let closed_db = TestDb::sqlite().await.unwrap();
        let closed = site(&closed_db).await;
        let admin = token_for(&closed, "ada").await;
        let viewer = token_for(&closed, "vic").await;
        for uri in [
            "/api/v2/config",
            "/api/v2/config/section/core/option/parallelism",
        ] {
            let (s, _, j) = api(&closed, "GET", uri, Some(&admin), None).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{uri}: {j}");
            assert!(
                j["detail"]
                    .as_str()
                    .unwrap()
                    .contains("chose not to expose the configuration"),
                "{j}"
            );
            let (s, _, j) = api(&closed, "GET", uri, Some(&viewer), None).await;
            assert_eq!(
                (s, j["detail"].as_str()),
                (StatusCode::FORBIDDEN, Some("Forbidden"))
            );
        }
        drop(closed);

        let option = |key: &str, value: &str| ConfigOption {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        let exposed = ExposedConfig {
            sections: vec![
                ConfigSection {
                    name: "core".into(),
                    options: vec![
                        option("parallelism", "7"),
                        option("fernet_key", "< hidden >"),
                    ],
                },
                ConfigSection {
                    name: "database".into(),
                    options: vec![option("url", "< hidden >")],
                },
            ],
        };
        let open_db = TestDb::sqlite().await.unwrap();
        let open = site_exposing(&open_db, Some(exposed)).await;
        let admin = token_for(&open, "ada").await;
        let op = token_for(&open, "oli").await;
        let (s, _, j) = api(&open, "GET", "/api/v2/config", Some(&op), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "an Op may not read it: {j}");
        let (s, _, j) = api(&open, "GET", "/api/v2/config", Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(
            j,
            serde_json::json!({"sections": [
                {"name": "core", "options": [
                    {"key": "parallelism", "value": "7"},
                    {"key": "fernet_key", "value": "< hidden >"},
                ]},
                {"name": "database", "options": [{"key": "url", "value": "< hidden >"}]},
            ]})
        );
        let (s, _, j) = api(
            &open,
            "GET",
            "/api/v2/config?section=database",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(j["sections"].as_array().unwrap().len(), 1);
        assert_eq!(j["sections"][0]["name"], "database");
        let (s, _, j) = api(
            &open,
            "GET",
            "/api/v2/config?section=nope",
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(
            (s, j["detail"].as_str()),
            (StatusCode::NOT_FOUND, Some("Section nope not found."))
        );
        let uri = "/api/v2/config/section/core/option/parallelism";
        let (s, _, j) = api(&open, "GET", uri, Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            j,
            serde_json::json!({"sections": [{"name": "core", "options": [{"key": "parallelism", "value": "7"}]}]})
        );
        let uri = "/api/v2/config/section/core/option/nope";
        let (s, _, j) = api(&open, "GET", uri, Some(&admin), None).await;
        assert_eq!(
            (s, j["detail"].as_str()),
            (StatusCode::NOT_FOUND, Some("Option [core/nope] not found."))
        );
        for user in ["uma", "vic"] {
            let token = token_for(&open, user).await;
            let (s, _, _) = api(&open, "GET", "/api/v2/config", Some(&token), None).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{user}");
        }
        // Airflow's text form.
        let mut req = Request::builder()
            .uri("/api/v2/config")
            .header(header::AUTHORIZATION, &admin)
            .header(header::ACCEPT, "text/plain")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 2], 40000))));
        let resp = open.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            "[core]\nparallelism = 7\nfernet_key = < hidden >\n\n[database]\nurl = < hidden >\n"
        );
    }
}

/// The monitoring read routes in Airflow 3.3's shapes: run counts per DAG and state, DAG
/// warnings (flow's own type only when asked for), one event log entry, plugins and
/// providers, favourites, and the task-instance routes whose answer is "none".
#[tokio::test]
async fn api_monitoring_read_routes() {
    for db in databases().await {
        let site = site(&db).await;
        let admin = token_for(&site, "ada").await;
        let viewer = token_for(&site, "vic").await;
        let get = |uri: &'static str| {
            let site = &site;
            let viewer = viewer.clone();
            async move { api(site, "GET", uri, Some(&viewer), None).await }
        };
        for id in ["s1", "s2"] {
            let body = format!(r#"{{"dag_run_id": "{id}", "logical_date": null}}"#);
            let (s, _, j) = api(
                &site,
                "POST",
                "/api/v2/dags/etl/dagRuns",
                Some(&admin),
                Some(("application/json", &body)),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{j}");
        }
        let (s, _, j) = get("/api/v2/dagStats?dag_ids=etl").await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(
            j,
            serde_json::json!({"dags": [{"dag_id": "etl", "dag_display_name": "etl", "stats": [
                {"state": "queued", "count": 2}, {"state": "running", "count": 0},
                {"state": "success", "count": 0}, {"state": "failed", "count": 0}]}],
                "total_entries": 1})
        );

        site.store
            .dag_warning_set(
                "etl",
                "non-existent pool",
                "Dag 'etl' references non-existent pools: ['gpu']",
                Utc::now(),
            )
            .await
            .unwrap();
        site.store
            .dag_warning_set(
                "etl",
                flow_store::WARNING_CONNECTION,
                "connection `kafka_default` not found",
                Utc::now(),
            )
            .await
            .unwrap();
        let (s, _, j) = get("/api/v2/dagWarnings").await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(
            j["total_entries"], 1,
            "only Airflow's types by default: {j}"
        );
        assert_eq!(j["dag_warnings"][0]["warning_type"], "non-existent pool");
        let (_, _, j) = get("/api/v2/dagWarnings?warning_type=missing%20connection").await;
        assert_eq!(j["total_entries"], 1, "{j}");
        assert!(
            j["dag_warnings"][0]["message"]
                .as_str()
                .unwrap()
                .contains("kafka_default")
        );
        let (s, _, _) = get("/api/v2/dagWarnings?warning_type=bogus").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

        let (_, _, logs) = get("/api/v2/eventLogs?limit=1").await;
        let id = logs["event_logs"][0]["event_log_id"]
            .as_i64()
            .expect("an audit entry");
        let (s, _, j) = api(
            &site,
            "GET",
            &format!("/api/v2/eventLogs/{id}"),
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["event_log_id"], id);
        let (s, _, j) = get("/api/v2/eventLogs/999999").await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{j}");

        let (_, _, j) = get("/api/v2/plugins").await;
        assert_eq!(j, serde_json::json!({"plugins": [], "total_entries": 0}));
        let (_, _, j) = get("/api/v2/providers").await;
        let names: Vec<&str> = j["providers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["package_name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"apache-airflow-providers-standard"), "{j}");
        assert!(
            names.contains(&"apache-airflow-providers-apache-kafka"),
            "{j}"
        );

        // Favourites are per user: 204, then 409 twice over, 404 for an unknown DAG.
        let post = |uri: &'static str| {
            let site = &site;
            let viewer = viewer.clone();
            async move { api(site, "POST", uri, Some(&viewer), None).await.0 }
        };
        assert_eq!(
            post("/api/v2/dags/etl/favorite").await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            post("/api/v2/dags/etl/favorite").await,
            StatusCode::CONFLICT
        );
        assert_eq!(
            site.store.dag_favorites("vic").await.unwrap(),
            vec!["etl".to_owned()]
        );
        assert!(site.store.dag_favorites("ada").await.unwrap().is_empty());
        assert_eq!(
            post("/api/v2/dags/etl/unfavorite").await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            post("/api/v2/dags/etl/unfavorite").await,
            StatusCode::CONFLICT
        );
        assert_eq!(
            post("/api/v2/dags/nope/favorite").await,
            StatusCode::NOT_FOUND
        );

        let (s, _, j) = get("/api/v2/dags/etl/dagRuns/s1/taskInstances/load/links").await;
        assert_eq!(
            (s, j),
            (
                StatusCode::OK,
                serde_json::json!({"extra_links": {}, "total_entries": 0})
            )
        );
        let (s, _, _) = get("/api/v2/dags/etl/dagRuns/s1/taskInstances/nope/links").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, j) =
            get("/api/v2/dags/etl/dagRuns/s1/taskInstances/load/externalLogUrl/1").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
        let (s, _, j) = get("/api/v2/dags/etl/dagRuns/s1/hitlDetails").await;
        assert_eq!((s, j["total_entries"].as_i64()), (StatusCode::OK, Some(0)));
        db.drop_db().await.unwrap();
    }
}

/// The cluster page and the home overview, as a Viewer sees them: the components with their
/// health, pools, task instances now, and the last day's tries and runs charted; the DAG list
/// says when a DAG's last run failed; favourites come first and are per user.
#[tokio::test]
async fn cluster_page_and_home_overview() {
    for db in databases().await {
        let site = site(&db).await;
        let now = Utc::now();
        site.store
            .job_start(
                &flow_store::JobStart {
                    job_type: "SchedulerJob".into(),
                    hostname: "sched-host-1".into(),
                    unixname: None,
                    pid: 1,
                    version: "test".into(),
                    instance: None,
                    queues: Vec::new(),
                },
                now,
            )
            .await
            .unwrap();
        let us = now.timestamp_micros();
        site.store
            .execute_raw(&format!(
                "INSERT INTO dag_run (dag_id, run_id, run_type, state, run_after, queued_at, \
                 start_date, end_date, conf, updated_at) VALUES \
                 ('etl', 'old_ok', 'manual', 'success', {a}, {a}, {a}, {b}, '{{}}', {b}), \
                 ('etl', 'new_bad', 'manual', 'failed', {b}, {b}, {b}, {c}, '{{}}', {c})",
                a = us - 7_200_000_000,
                b = us - 3_600_000_000,
                c = us - 60_000_000
            ))
            .await
            .unwrap();
        site.store
            .execute_raw(&format!(
                "INSERT INTO task_instance_history (dag_id, run_id, task_id, map_index, try_number, \
                 state, start_date, end_date) VALUES \
                 ('etl', 'new_bad', 'load', -1, 1, 'failed', {b}, {c}), \
                 ('etl', 'old_ok', 'load', -1, 1, 'success', {a}, {b})",
                a = us - 7_200_000_000,
                b = us - 3_600_000_000,
                c = us - 60_000_000
            ))
            .await
            .unwrap();
        let mut viewer = Browser::new(&site);
        viewer.login("vic", "correct horse", "/").await;
        let p = viewer.get("/cluster").await;
        assert_eq!(p.status, StatusCode::OK);
        assert!(
            p.body.contains("sched-host-1") && p.body.contains(r#"data-health="healthy""#),
            "{}",
            p.body
        );
        assert!(p.body.contains("default_pool"));
        assert!(p.body.contains(r#"<svg class="chart" id="tries-chart""#));
        assert!(
            p.body.contains("failed: 1 tries"),
            "the failed try is charted"
        );
        assert!(
            p.body.contains("1 tries failed") && p.body.contains("1 runs failed"),
            "{}",
            p.body
        );
        let home = viewer.get("/").await;
        assert!(
            home.body.contains(r#"id="failed-dags"><b>1</b>"#),
            "etl's last run failed: {}",
            home.body
        );
        assert!(home.body.contains("scheduler 1/1"), "{}", home.body);
        assert!(home.body.contains(r#"id="dag-search""#));
        // A favourite of this viewer's comes first, for this viewer only.
        let csrf = home.csrf();
        let last = site
            .store
            .dag_list()
            .await
            .unwrap()
            .last()
            .unwrap()
            .dag_id
            .clone();
        let p = viewer
            .post(
                &format!("/dags/{last}/favorite"),
                &[("csrf_token", &csrf), ("favorite", "true"), ("next", "/")],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        let home = viewer.get("/").await;
        let first = home.body.split("data-dag-id=\"").nth(1).unwrap_or("");
        assert!(first.starts_with(&format!("{last}\"")), "{last} first");
        let only = viewer.get("/?favorites=1").await;
        assert_eq!(only.body.matches("data-dag-id=").count(), 1);

        // The DAG's Overview tab: failures in the window, the calendar, the failed try's log.
        site.store
            .log_append(
                &flow_store::TiKey::new("etl", "new_bad", "load", -1),
                1,
                &[flow_store::LogLine {
                    at: now,
                    stream: "stderr".into(),
                    line: "psycopg2.OperationalError: <boom>".into(),
                }],
            )
            .await
            .unwrap();
        let o = viewer.get("/dags/etl?tab=overview").await;
        assert_eq!(o.status, StatusCode::OK);
        assert!(
            o.body.contains("1 failed runs") && o.body.contains("1 failed tasks"),
            "{}",
            o.body
        );
        assert!(
            o.body.contains(&format!(
                r#"class="day cal-failed" title="{}: 1 failed"#,
                now.date_naive()
            )),
            "{}",
            o.body
        );
        assert!(
            o.body.contains("psycopg2.OperationalError: &#60;boom&#62;"),
            "the log tail, escaped: {}",
            &o.body[o.body.find("Recent failures").unwrap_or(0)..]
        );
        assert!(o.body.contains(r#"id="run-durations-chart""#));
        let week = viewer.get("/dags/etl?tab=overview&window=7d").await;
        assert!(
            week.body
                .contains(r#"class="window active" href="/dags/etl?tab=overview&amp;window=7d""#)
        );
        db.drop_unchecked().await.unwrap();
    }
}

/// The Connections page: Op and Admin only (as the API), validation errors naming the field,
/// no secret ever in a page (list, edit form, refused form, test result), an empty password
/// or a `***` extra value keeping the stored secret, Test through the server's tester, every
/// change audited.
#[tokio::test]
async fn connections_page_never_shows_secrets_and_only_op_manages() {
    const PASSWORD: &str = "pw-Sekr3t-4471";
    const EXTRA_SECRET: &str = "xtra-Sekr3t-9921";
    let textarea = regex::Regex::new(r"(?s)<textarea name=.extra.[^>]*>(.*?)</textarea>").unwrap();
    for db in databases().await {
        let site = site(&db).await;
        let mut viewer = Browser::new(&site);
        viewer.login("vic", "correct horse", "/").await;
        let mut user = Browser::new(&site);
        user.ip = [10, 2, 2, 2];
        user.login("uma", "correct horse", "/").await;
        let mut op = Browser::new(&site);
        op.ip = [10, 3, 3, 3];
        op.login("oli", "correct horse", "/").await;
        let mut admin = Browser::new(&site);
        admin.ip = [10, 1, 1, 1];
        admin.login("ada", "correct horse", "/").await;

        // Navigation by role; the pages check again.
        let home = viewer.get("/").await.body;
        assert!(!home.contains(r#"href="/connections""#) && !home.contains(r#"href="/users""#));
        let home = op.get("/").await.body;
        assert!(home.contains(r#"href="/connections""#) && !home.contains(r#"href="/users""#));
        let home = admin.get("/").await.body;
        assert!(home.contains(r#"href="/connections""#) && home.contains(r#"href="/users""#));
        assert_eq!(
            viewer.get("/connections").await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(user.get("/connections").await.status, StatusCode::FORBIDDEN);
        let csrf_u = user.get("/").await.csrf();
        let p = user
            .post(
                "/connections",
                &[
                    ("csrf_token", &csrf_u),
                    ("conn_id", "x"),
                    ("conn_type", "http"),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "User is below Op");

        let page = op.get("/connections").await;
        assert_eq!(page.status, StatusCode::OK);
        let csrf = page.csrf();
        let extra = format!(r#"{{"sasl.password": "{EXTRA_SECRET}", "region": "eu"}}"#);
        let add = |conn_id: &'static str, port: &'static str, extra: String| {
            vec![
                ("conn_id", conn_id.to_owned()),
                ("conn_type", "postgres".to_owned()),
                ("host", "db.example".to_owned()),
                ("port", port.to_owned()),
                ("schema", "sales".to_owned()),
                ("login", "loader".to_owned()),
                ("password", PASSWORD.to_owned()),
                ("extra", extra),
                ("description", "the warehouse".to_owned()),
            ]
        };
        // Without the session's token: refused.
        let p = post_fields(
            &mut op,
            "/connections",
            &add("warehouse", "5432", extra.clone()),
            "forged",
        )
        .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        // Validation errors name the field, keep what was typed, never the password.
        for (fields, field, says) in [
            (
                add("bad id!", "5432", extra.clone()),
                "connection_id",
                "invalid conn_id",
            ),
            (
                add("warehouse", "99999", extra.clone()),
                "port",
                "is not a port",
            ),
            (
                add("warehouse", "5432", "[1, 2]".into()),
                "extra",
                "must be a JSON object",
            ),
        ] {
            let p = post_fields(&mut op, "/connections", &fields, &csrf).await;
            assert_eq!(p.status, StatusCode::BAD_REQUEST, "{field}");
            assert!(
                p.body.contains(&format!("{field}: ")),
                "{field}: {}",
                p.body
            );
            assert!(p.body.contains(says), "{field}: {}", p.body);
            assert!(p.body.contains(r#"aria-invalid="true""#), "{field}");
            assert!(
                p.body.contains("db.example"),
                "the form keeps what was typed"
            );
            assert!(
                !p.body.contains(PASSWORD),
                "a refused form echoed the password"
            );
        }
        let p = post_fields(
            &mut op,
            "/connections",
            &add("warehouse", "5432", extra.clone()),
            &csrf,
        )
        .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        let p = post_fields(
            &mut op,
            "/connections",
            &add("warehouse", "5432", extra.clone()),
            &csrf,
        )
        .await;
        assert_eq!(p.status, StatusCode::CONFLICT);
        assert!(p.body.contains("already exists"));

        // The list and the edit form show no secret.
        let list = op.get("/connections").await;
        assert!(
            list.body.contains(r#"data-conn-id="warehouse""#),
            "{}",
            list.body
        );
        assert!(list.body.contains("region") && list.body.contains("***"));
        assert!(list.body.contains(">set<"), "the password shows as set");
        let edit = op.get("/connections/warehouse/edit").await;
        assert_eq!(edit.status, StatusCode::OK);
        for body in [&list.body, &edit.body] {
            assert!(!body.contains(PASSWORD), "the password leaked");
            assert!(!body.contains(EXTRA_SECRET), "the extra secret leaked");
        }
        assert!(edit.body.contains("clear_password"));
        assert_eq!(
            viewer.get("/connections/warehouse/edit").await.status,
            StatusCode::FORBIDDEN
        );

        // Edit: an empty password and `***` in the extra keep the stored secrets.
        let shown_extra = textarea.captures(&edit.body).unwrap()[1]
            .replace("&quot;", "\"")
            .replace("&#34;", "\"")
            .replace("eu", "us");
        let fields = vec![
            ("conn_id", "warehouse".to_owned()),
            ("conn_type", "postgres".to_owned()),
            ("host", "ok.example".to_owned()),
            ("port", "6432".to_owned()),
            ("login", "loader".to_owned()),
            ("password", String::new()),
            ("extra", shown_extra.clone()),
        ];
        let p = post_fields(&mut op, "/connections/warehouse/edit", &fields, &csrf).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        let cipher = site.cipher.as_ref().unwrap();
        let stored = site
            .store
            .connection_get("warehouse", cipher)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.password.as_deref(), Some(PASSWORD));
        assert_eq!(
            (stored.host.as_deref(), stored.port),
            (Some("ok.example"), Some(6432))
        );
        let stored_extra: serde_json::Value =
            serde_json::from_str(stored.extra.as_deref().unwrap()).unwrap();
        assert_eq!(stored_extra["sasl.password"], EXTRA_SECRET, "{shown_extra}");
        assert_eq!(stored_extra["region"], "us");
        let mut bad = fields.clone();
        bad[3] = ("port", "http".to_owned());
        let p = post_fields(&mut op, "/connections/warehouse/edit", &bad, &csrf).await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert!(p.body.contains("port: `http` is not a port"), "{}", p.body);

        // Test: the stored secrets reach the tester, the page shows only its message.
        let p = op
            .post("/connections/warehouse/test", &[("csrf_token", &csrf)])
            .await;
        assert_eq!(p.status, StatusCode::OK);
        assert!(
            p.body.contains(r#"id="test-result" data-ok="true""#),
            "{}",
            p.body
        );
        assert!(
            p.body
                .contains("reached ok.example with a password of 14 characters")
        );
        assert!(!p.body.contains(PASSWORD) && !p.body.contains(EXTRA_SECRET));
        let p = op
            .post("/connections/warehouse/test", &[("csrf_token", "forged")])
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);

        // The API's test: the stored password for the stored host only (Airflow 3.3's rule).
        let token = token_for(&site, "oli").await;
        let test = |body: &'static str| {
            api(
                &site,
                "POST",
                "/api/v2/connections/test",
                Some(&token),
                Some(("application/json", body)),
            )
        };
        let (s, _, j) = test(r#"{"connection_id": "warehouse", "conn_type": "postgres", "host": "ok.example", "port": 6432, "password": "***"}"#).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["status"], true, "{j}");
        assert_eq!(
            j["message"],
            "reached ok.example with a password of 14 characters"
        );
        let (s, _, j) = test(r#"{"connection_id": "warehouse", "conn_type": "postgres", "host": "evil.example", "port": 6432, "password": "***"}"#).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
        assert!(
            j["detail"]
                .as_str()
                .unwrap()
                .contains("differs from the stored connection")
        );
        let (s, _, j) = test(r#"{"connection_id": "warehouse", "conn_type": "postgres", "host": "ok.example", "port": 6432, "password": "***", "extra": "{\"sasl.password\": \"***\", \"region\": \"evil\"}"}"#).await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "another extra is another destination: {j}"
        );
        let (s, _, j) = test(
            r#"{"connection_id": "elsewhere", "conn_type": "http", "host": "nowhere.example"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["status"], false);
        assert_eq!(j["message"], "cannot connect to `nowhere.example`");

        // Clearing the password.
        let mut clear = fields.clone();
        clear[6] = ("extra", String::new());
        clear.push(("clear_password", "on".to_owned()));
        let p = post_fields(&mut op, "/connections/warehouse/edit", &clear, &csrf).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        let stored = site
            .store
            .connection_get("warehouse", cipher)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((stored.password, stored.extra), (None, None));
        assert!(op.get("/connections").await.body.contains("not set"));

        // Delete, with the token only.
        let p = op
            .post("/connections/warehouse/delete", &[("csrf_token", "forged")])
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        let p = op
            .post("/connections/warehouse/delete", &[("csrf_token", &csrf)])
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert!(
            site.store
                .connection_get("warehouse", cipher)
                .await
                .unwrap()
                .is_none()
        );
        let p = op
            .post("/connections/warehouse/delete", &[("csrf_token", &csrf)])
            .await;
        assert_eq!(p.status, StatusCode::NOT_FOUND);

        let events: Vec<(String, String)> = site
            .store
            .audit_list(None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.event, a.extra.unwrap_or_default()))
            .collect();
        for (event, extra) in [
            ("add connection", "warehouse"),
            ("edit connection", "warehouse"),
            ("test connection", "warehouse: passed"),
            ("delete connection", "warehouse"),
        ] {
            assert!(
                events.iter().any(|(e, x)| e == event && x == extra),
                "{event}: {events:?}"
            );
        }
        db.drop_db().await.unwrap();
    }
}

/// With `[core] test_connection` left at Airflow's default (Disabled), neither the page nor
/// the API tests, and both say so in Airflow's words; Hidden hides the button.
#[tokio::test]
async fn connection_tests_are_off_unless_enabled() {
    let mut c = flow_model::Connection::new("web", "http").unwrap();
    c.host = Some("ok.example".into());
    for db in databases().await {
        let site = site_with(&db, None, flow_http::ConnectionTesting::disabled()).await;
        let cipher = site.cipher.as_ref().unwrap();
        assert!(
            site.store
                .connection_add(&c, cipher, Utc::now())
                .await
                .unwrap()
        );
        let mut op = Browser::new(&site);
        op.login("oli", "correct horse", "/").await;
        let page = op.get("/connections").await;
        assert!(
            page.body.contains(r#"data-action="test" disabled"#),
            "{}",
            page.body
        );
        let p = op
            .post("/connections/web/test", &[("csrf_token", &page.csrf())])
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        assert!(
            p.body.contains("Testing connections is disabled"),
            "{}",
            p.body
        );
        let token = token_for(&site, "oli").await;
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/connections/test",
            Some(&token),
            Some((
                "application/json",
                r#"{"connection_id": "web", "conn_type": "http"}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(j["detail"], flow_http::DISABLED_MESSAGE);
        db.drop_db().await.unwrap();
    }
    let db = TestDb::sqlite().await.unwrap();
    let hidden =
        flow_http::ConnectionTesting::new(flow_http::TestConnectionMode::Hidden, |_| async {
            Ok(String::new())
        });
    let site = site_with(&db, None, hidden).await;
    let cipher = site.cipher.as_ref().unwrap();
    assert!(
        site.store
            .connection_add(&c, cipher, Utc::now())
            .await
            .unwrap()
    );
    let mut op = Browser::new(&site);
    op.login("oli", "correct horse", "/").await;
    let page = op.get("/connections").await;
    assert!(page.body.contains(r#"data-conn-id="web""#));
    assert!(
        !page.body.contains(r#"data-action="test""#),
        "Hidden: no Test button"
    );
    let p = op
        .post("/connections/web/test", &[("csrf_token", &page.csrf())])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    db.drop_db().await.unwrap();
}

/// The Users page: Admin only; `flow users create`'s rules; role changes and resets take
/// effect on live sessions at once (a reset ends the user's other sessions, a delete all of
/// them); an Admin may not delete or demote themself, and the last Admin is never removed.
#[tokio::test]
async fn users_page_is_for_admins_and_keeps_an_admin() {
    for db in databases().await {
        let site = site(&db).await;
        let mut op = Browser::new(&site);
        op.login("oli", "correct horse", "/").await;
        let mut admin = Browser::new(&site);
        admin.ip = [10, 1, 1, 1];
        admin.login("ada", "correct horse", "/").await;
        assert_eq!(op.get("/users").await.status, StatusCode::FORBIDDEN);
        let csrf_o = op.get("/").await.csrf();
        let p = op
            .post(
                "/users",
                &[
                    ("csrf_token", &csrf_o),
                    ("username", "eve"),
                    ("role", "Admin"),
                    ("password", "eve-password"),
                ],
            )
            .await;
        assert_eq!(
            p.status,
            StatusCode::FORBIDDEN,
            "an Op may not create users"
        );

        let page = admin.get("/users").await;
        assert_eq!(page.status, StatusCode::OK);
        for name in ["ada", "oli", "uma", "vic"] {
            assert!(
                page.body.contains(&format!(r#"data-username="{name}""#)),
                "{name}"
            );
        }
        assert!(
            !page.body.contains("$argon2"),
            "no password hash in the page"
        );
        let csrf = page.csrf();
        let create = |name: &'static str, password: &'static str| {
            [
                ("username", name),
                ("role", "Viewer"),
                ("email", "bob@example.com"),
                ("password", password),
            ]
        };
        let p = form(
            &mut admin,
            "/users",
            &create("bob", "bob-password-1"),
            "forged",
        )
        .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "CSRF");
        for (name, password, says) in [
            ("bob", "short", "at least 8 characters"),
            ("bad name", "bob-password-1", "use 1-64 letters"),
        ] {
            let p = form(&mut admin, "/users", &create(name, password), &csrf).await;
            assert_eq!(p.status, StatusCode::BAD_REQUEST, "{name}");
            assert!(p.body.contains(says), "{}", p.body);
            assert!(
                p.body.contains("bob@example.com"),
                "the form keeps what was typed"
            );
        }
        let p = form(
            &mut admin,
            "/users",
            &create("bob", "bob-password-1"),
            &csrf,
        )
        .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        let p = form(
            &mut admin,
            "/users",
            &create("bob", "bob-password-1"),
            &csrf,
        )
        .await;
        assert_eq!(p.status, StatusCode::CONFLICT);
        assert!(p.body.contains("already exists"));

        let mut bob = Browser::new(&site);
        bob.ip = [10, 4, 4, 4];
        bob.login("bob", "bob-password-1", "/").await;
        assert_eq!(bob.get("/").await.status, StatusCode::OK);
        assert_eq!(bob.get("/connections").await.status, StatusCode::FORBIDDEN);
        // A role change applies to the live session at once.
        let p = form(
            &mut admin,
            "/users/role",
            &[("username", "bob"), ("role", "Op")],
            &csrf,
        )
        .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(bob.get("/connections").await.status, StatusCode::OK);
        let p = form(
            &mut admin,
            "/users/role",
            &[("username", "bob"), ("role", "root")],
            &csrf,
        )
        .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert!(p.body.contains("role: "), "{}", p.body);

        // A reset ends bob's sessions; the old password no longer works, the new one does.
        let p = form(
            &mut admin,
            "/users/password",
            &[("username", "bob"), ("password", "short")],
            &csrf,
        )
        .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        let p = form(
            &mut admin,
            "/users/password",
            &[("username", "bob"), ("password", "bob-password-2")],
            &csrf,
        )
        .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(p.location.as_deref(), Some("/users?reset=bob"));
        assert!(
            admin
                .get("/users?reset=bob")
                .await
                .body
                .contains("The password of bob was reset")
        );
        assert!(
            !admin
                .get("/users?reset=%3Cb%3E")
                .await
                .body
                .contains("was reset")
        );
        let p = bob.get("/").await;
        assert!(
            p.location.as_deref().unwrap_or("").starts_with("/login"),
            "{:?}",
            p.status
        );
        let mut bob = Browser::new(&site);
        bob.ip = [10, 5, 5, 5];
        assert_eq!(
            bob.login("bob", "bob-password-1", "/").await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            bob.login("bob", "bob-password-2", "/").await.status,
            StatusCode::SEE_OTHER
        );
        assert_eq!(bob.get("/").await.status, StatusCode::OK);

        // An Admin resetting their own password keeps this session and ends the others.
        let mut ada2 = Browser::new(&site);
        ada2.ip = [10, 6, 6, 6];
        ada2.login("ada", "correct horse", "/").await;
        let p = form(
            &mut admin,
            "/users/password",
            &[("username", "ada"), ("password", "new horse battery")],
            &csrf,
        )
        .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(admin.get("/users").await.status, StatusCode::OK);
        assert!(
            ada2.get("/")
                .await
                .location
                .unwrap_or_default()
                .starts_with("/login")
        );

        // No deleting or demoting oneself; the last Admin stays.
        let p = form(&mut admin, "/users/delete", &[("username", "ada")], &csrf).await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert!(p.body.contains("You cannot delete yourself"), "{}", p.body);
        let p = form(
            &mut admin,
            "/users/role",
            &[("username", "ada"), ("role", "Op")],
            &csrf,
        )
        .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert!(
            p.body.contains("cannot take the Admin role from yourself"),
            "{}",
            p.body
        );
        let store = &site.store;
        assert_eq!(
            store.user_delete("ada").await.unwrap(),
            flow_store::UserChange::LastAdmin
        );
        assert_eq!(
            store.user_set_role("ada", Role::Op).await.unwrap(),
            flow_store::UserChange::LastAdmin
        );
        assert_eq!(
            store.user_set_role("ada", Role::Admin).await.unwrap(),
            flow_store::UserChange::Done
        );
        assert_eq!(
            store.user_delete("nobody").await.unwrap(),
            flow_store::UserChange::Missing
        );
        // With a second Admin, the first may go.
        let p = form(
            &mut admin,
            "/users/role",
            &[("username", "bob"), ("role", "Admin")],
            &csrf,
        )
        .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(
            store.user_set_role("bob", Role::Viewer).await.unwrap(),
            flow_store::UserChange::Done
        );
        assert_eq!(
            store.user_set_role("bob", Role::Admin).await.unwrap(),
            flow_store::UserChange::Done
        );

        // Deleting bob ends his session at once.
        let p = form(&mut admin, "/users/delete", &[("username", "bob")], &csrf).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert!(
            bob.get("/")
                .await
                .location
                .unwrap_or_default()
                .starts_with("/login")
        );
        let p = form(&mut admin, "/users/delete", &[("username", "bob")], &csrf).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND);
        assert!(
            !admin
                .get("/users")
                .await
                .body
                .contains(r#"data-username="bob""#)
        );

        let events: Vec<(String, String)> = store
            .audit_list(None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.event, a.extra.unwrap_or_default()))
            .collect();
        for (event, extra) in [
            ("create user", "bob (Viewer)"),
            ("set user role", "bob: Op"),
            ("reset user password", "bob"),
            ("reset user password", "ada"),
            ("delete user", "bob"),
        ] {
            assert!(
                events.iter().any(|(e, x)| e == event && x == extra),
                "{event}: {events:?}"
            );
        }
        db.drop_db().await.unwrap();
    }
}

/// Posts `fields` as `(name, value)` pairs with the CSRF token `token`.
async fn post_fields(
    b: &mut Browser<'_>,
    uri: &str,
    fields: &[(&str, String)],
    token: &str,
) -> Page {
    let mut pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.push(("csrf_token", token));
    b.post(uri, &pairs).await
}

/// Posts `fields` with the CSRF token `token`.
async fn form(b: &mut Browser<'_>, uri: &str, fields: &[(&str, &str)], token: &str) -> Page {
    let mut pairs = fields.to_vec();
    pairs.push(("csrf_token", token));
    b.post(uri, &pairs).await
}

/// The grid as a user meets it: run columns headed by their logical date and duration (in the
/// user's time zone), task groups as rows with the state standing for their tasks, a mapped
/// task as one row with its count, paging both ways, and the details panel of a run, a task
/// instance, a mapped task and a group, embedded in the page and served alone.
#[tokio::test]
async fn grid_columns_groups_paging_and_details_panel() {
    for db in databases().await {
        let site = site(&db).await;
        let admin = token_for(&site, "ada").await;
        let wide: String = (0..230)
            .map(|i| format!("    t{i:03}: {{operator: empty}}\n"))
            .collect();
        std::fs::write(
            site._dir.join("grid.yaml"),
            format!(
                r#"grouped:
  task_groups:
    - {{group_name: load}}
    - {{group_name: inner, parent_group_name: load}}
  tasks:
    start: {{operator: empty}}
    a: {{operator: empty, task_group_name: load, dependencies: [start]}}
    b: {{operator: empty, task_group_name: inner, dependencies: [start]}}
    m: {{operator: bash, expand: {{bash_command: ["echo 1", "echo 2", "echo 3"]}}, dependencies: [start]}}
    end: {{operator: empty, dependencies: [load]}}
wide:
  tasks:
{wide}"#
            ),
        )
        .unwrap();
        site.processor
            .lock()
            .await
            .run_once(Utc::now() + chrono::Duration::seconds(5))
            .await
            .unwrap();
        for i in 0..30 {
            let body = format!(
                r#"{{"dag_run_id": "g{i:02}", "logical_date": "2026-01-{:02}T03:04:05Z", "note": "n{i}"}}"#,
                i % 28 + 1
            );
            let (s, _, j) = api(
                &site,
                "POST",
                "/api/v2/dags/grouped/dagRuns",
                Some(&admin),
                Some(("application/json", &body)),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{j}");
        }
        // One run with instances in several states: b failed, a success, m's three mapped.
        site.store
            .execute_raw(
                "UPDATE task_instance SET state = 'failed' WHERE run_id = 'g29' AND task_id = 'load.inner.b'",
            )
            .await
            .unwrap();
        site.store
            .execute_raw(
                "UPDATE task_instance SET state = 'success' WHERE run_id = 'g29' AND task_id = 'load.a'",
            )
            .await
            .unwrap();
        site.store
            .execute_raw(
                "INSERT INTO task_instance (dag_id, run_id, task_id, map_index, state, try_number, \
                 max_tries, operator, queue, pool, pool_slots, priority_weight, hostname, updated_at) \
                 SELECT dag_id, run_id, task_id, n.i, 'success', 1, 0, operator, queue, pool, \
                 pool_slots, priority_weight, '', updated_at FROM task_instance, \
                 (SELECT 0 AS i UNION SELECT 1 UNION SELECT 2) n \
                 WHERE run_id = 'g29' AND task_id = 'm' AND map_index = -1",
            )
            .await
            .unwrap();
        site.store
            .execute_raw(
                "DELETE FROM task_instance WHERE run_id = 'g29' AND task_id = 'm' AND map_index = -1",
            )
            .await
            .unwrap();
        let mut viewer = Browser::new(&site);
        viewer.login("vic", "correct horse", "/").await;
        let grid = viewer.get("/dags/grouped").await;
        assert_eq!(grid.status, StatusCode::OK);
        // 25 of 30 runs, the newest on the right; a link to the older ones.
        assert_eq!(grid.body.matches(r#"<th class="run"#).count(), 25);
        assert!(grid.body.contains("Runs 1–25 of 30"), "{}", grid.body);
        assert!(grid.body.contains("offset=25"), "older page");
        assert!(!grid.body.contains(r#"id="grid-newer""#));
        // The head of g29 (logical date 2026-01-02 03:04:05) shows its date.
        assert!(
            grid.body.contains("<span>01-02 03:04</span>"),
            "{}",
            grid.body
        );
        // Rows: the group, its nested group, the mapped task as one row with its count.
        assert!(
            grid.body
                .contains(r#"<tr data-task="load" class="group-row" data-group="load">"#),
            "{}",
            grid.body
        );
        assert!(grid.body.contains(
            r#"<tr data-task="load.inner" data-groups="load" class="group-row" data-group="load.inner">"#
        ));
        assert!(
            grid.body
                .contains(r#"<tr data-task="load.inner.b" data-groups="load load.inner">"#)
        );
        // The group's cell in g29 stands for a failed b and a successful a: failed.
        let load_row = grid
            .body
            .split(r#"<tr data-task="load" class="group-row""#)
            .nth(1)
            .unwrap();
        let load_row = &load_row[..load_row.find("</tr>").unwrap()];
        assert!(
            load_row.ends_with(r#"<td class="st-failed g" title="1 failed · 1 success"></td>"#),
            "{load_row}"
        );
        assert!(
            grid.body
                .contains(r#"data-mapped="3" title="3 mapped: 3 success""#)
        );
        // The older page, and a page size clamped to 100 runs.
        let older = viewer.get("/dags/grouped?tab=grid&runs=25&offset=25").await;
        assert_eq!(older.body.matches(r#"<th class="run"#).count(), 5);
        assert!(older.body.contains(r#"id="grid-newer""#));
        let all = viewer.get("/dags/grouped?tab=grid&runs=100000").await;
        assert_eq!(all.body.matches(r#"<th class="run"#).count(), 30);

        // The panel: a run (its conf, note and times), a task instance (why it waits), a
        // mapped task (its instances), a group (its tasks).
        let run = viewer.get("/dags/grouped?tab=grid&run_id=g29").await;
        assert!(run.body.contains(r#"class="grid-layout with-panel""#));
        assert!(run.body.contains(r#"id="details-run""#), "{}", run.body);
        assert!(run.body.contains("2026-01-02 03:04:05"));
        assert!(run.body.contains("n29"), "the note");
        assert!(
            !run.body.contains("Mark success"),
            "a Viewer sees no actions"
        );
        let ti = viewer
            .get("/dags/grouped/grid/details?run_id=g29&task_id=end")
            .await;
        assert_eq!(ti.status, StatusCode::OK);
        assert!(!ti.body.contains("<html"), "a fragment, not a page");
        assert!(ti.body.contains(r#"id="details-waiting""#), "{}", ti.body);
        assert!(ti.body.contains("Trigger Rule"), "{}", ti.body);
        assert!(ti.body.contains("/dags/grouped/runs/g29/tasks/end"));
        let mapped = viewer
            .get("/dags/grouped/grid/details?run_id=g29&task_id=m")
            .await;
        assert!(
            mapped.body.contains("3 mapped: 3 success"),
            "{}",
            mapped.body
        );
        assert!(mapped.body.contains("tasks/m?map_index=2"));
        let group = viewer
            .get("/dags/grouped/grid/details?run_id=g29&task_id=load")
            .await;
        assert!(group.body.contains(r#"id="details-group""#));
        assert!(group.body.contains("load.inner.b"));
        for bad in [
            "/dags/grouped/grid/details?run_id=g29&task_id=nope",
            "/dags/grouped/grid/details?run_id=nope",
            "/dags/nope/grid/details?run_id=g29",
        ] {
            assert_eq!(viewer.get(bad).await.status, StatusCode::NOT_FOUND, "{bad}");
        }
        assert_eq!(
            viewer.get("/dags/grouped/grid/details").await.status,
            StatusCode::BAD_REQUEST
        );
        // A bookmarked selection that is gone: the grid without a panel, not a 404.
        let gone = viewer
            .get("/dags/grouped?tab=grid&run_id=deleted_run")
            .await;
        assert_eq!(gone.status, StatusCode::OK);
        assert!(!gone.body.contains("with-panel"));

        // An Op acts from the panel and comes back to it: a note, a mark.
        let mut op = Browser::new(&site);
        op.login("oli", "correct horse", "/").await;
        let panel = op
            .get("/dags/grouped?tab=grid&run_id=g29&task_id=end")
            .await;
        assert!(panel.body.contains("Mark success"));
        let csrf = panel.csrf();
        let back = "/dags/grouped?tab=grid&runs=25&run_id=g29&task_id=end";
        let p = op
            .post(
                "/dags/grouped/runs/g29/tasks/end/mark",
                &[("csrf_token", &csrf), ("state", "success"), ("next", back)],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(p.location.as_deref(), Some(back));
        let p = op
            .post(
                "/dags/grouped/runs/g29/note",
                &[
                    ("csrf_token", &csrf),
                    ("note", "checked <b>"),
                    ("next", back),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        // The run's note shows on the run's panel (a task's panel shows the task's note).
        let run = op.get("/dags/grouped?tab=grid&run_id=g29").await;
        assert!(run.body.contains("checked &#60;b&#62;"), "{}", run.body);
        let long = "x".repeat(1001);
        let p = op
            .post(
                "/dags/grouped/runs/g29/note",
                &[("csrf_token", &csrf), ("note", &long)],
            )
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert!(p.body.contains("note: at most 1000 characters"));
        let viewer_csrf = viewer.get("/").await.csrf();
        let p = viewer
            .post(
                "/dags/grouped/runs/g29/note",
                &[("csrf_token", &viewer_csrf), ("note", "x")],
            )
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);

        // Task instance notes: a note alone through the API (Airflow's update_mask=note) keeps
        // the state; the panel shows it escaped; an Op removes it from the panel.
        let ti_url = "/api/v2/dags/grouped/dagRuns/g29/taskInstances";
        let (s, _, j) = api(
            &site,
            "PATCH",
            &format!("{ti_url}/start"),
            Some(&admin),
            Some(("application/json", r#"{"note": "looked at <i>"}"#)),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["task_instances"][0]["note"], "looked at <i>");
        assert!(j["task_instances"][0]["state"].is_null(), "{j}");
        let (_, _, j) = api(&site, "GET", &format!("{ti_url}/start"), Some(&admin), None).await;
        assert_eq!(j["note"], "looked at <i>");
        let panel = viewer
            .get("/dags/grouped/grid/details?run_id=g29&task_id=start")
            .await;
        assert!(
            panel
                .body
                .contains(r#"<p id="ti-note">looked at &#60;i&#62;</p>"#),
            "{}",
            panel.body
        );
        let p = op
            .post(
                "/dags/grouped/runs/g29/tasks/start/note",
                &[("csrf_token", &csrf), ("note", " "), ("next", back)],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        let (_, _, j) = api(&site, "GET", &format!("{ti_url}/start"), Some(&admin), None).await;
        assert!(j["note"].is_null(), "{j}");
        let p = op
            .post(
                "/dags/grouped/runs/g29/tasks/nope/note",
                &[("csrf_token", &csrf), ("note", "x")],
            )
            .await;
        assert_eq!(p.status, StatusCode::NOT_FOUND);
        // A mapped task's note goes on every instance; with a state, no 409 for an
        // instance already in it; too long is Airflow's 422; a group has no note.
        let (s, _, j) = api(
            &site,
            "PATCH",
            &format!("{ti_url}/m"),
            Some(&admin),
            Some(("application/json", r#"{"note": "fan"}"#)),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["total_entries"], 3, "{j}");
        let (s, _, j) = api(
            &site,
            "PATCH",
            &format!("{ti_url}/end"),
            Some(&admin),
            Some((
                "application/json",
                r#"{"new_state": "success", "note": "done"}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(
            (
                j["task_instances"][0]["state"].as_str(),
                j["task_instances"][0]["note"].as_str()
            ),
            (Some("success"), Some("done"))
        );
        let long = format!(r#"{{"note": "{}"}}"#, "x".repeat(1001));
        let (s, _, j) = api(
            &site,
            "PATCH",
            &format!("{ti_url}/end"),
            Some(&admin),
            Some(("application/json", &long)),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{j}");
        assert_eq!(j["detail"][0]["loc"], serde_json::json!(["body", "note"]));
        let (s, _, _) = api(
            &site,
            "PATCH",
            "/api/v2/dags/grouped/dagRuns/g29/taskGroupInstances/load",
            Some(&admin),
            Some((
                "application/json",
                r#"{"new_state": "success", "note": "x"}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        // Rows page too: 230 tasks are 200 rows, then 30.
        let (s, _, j) = api(
            &site,
            "POST",
            "/api/v2/dags/wide/dagRuns",
            Some(&admin),
            Some((
                "application/json",
                r#"{"dag_run_id": "w1", "logical_date": null}"#,
            )),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let wide = viewer.get("/dags/wide").await;
        assert_eq!(wide.body.matches("<tr data-task=").count(), 200);
        assert!(wide.body.contains("Rows 1–200 of 230"));
        let rest = viewer.get("/dags/wide?tab=grid&rows_offset=200").await;
        assert_eq!(rest.body.matches("<tr data-task=").count(), 30);
        assert!(rest.body.contains(r#"data-task="t229""#));

        // Times in the user's zone: Tokyo is 9 hours ahead; bad zones are refused; empty
        // goes back to the server's default.
        let settings = viewer.get("/settings").await;
        assert!(
            settings
                .body
                .contains(r#"<option value="Asia/Tokyo" >Asia/Tokyo</option>"#)
        );
        let csrf = settings.csrf();
        let p = viewer
            .post(
                "/settings/timezone",
                &[
                    ("csrf_token", &csrf),
                    ("timezone", "Asia/Tokyo"),
                    ("next", "/dags/grouped"),
                ],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(p.location.as_deref(), Some("/dags/grouped"));
        let tokyo = viewer.get("/dags/grouped?tab=grid&run_id=g29").await;
        assert!(
            tokyo.body.contains("<span>01-02 12:04</span>"),
            "{}",
            tokyo.body
        );
        assert!(tokyo.body.contains("2026-01-02 12:04:05"));
        assert!(
            tokyo.body.contains("Asia/Tokyo"),
            "the header names the zone"
        );
        let p = viewer
            .post(
                "/settings/timezone",
                &[("csrf_token", &csrf), ("timezone", "Mars/Olympus")],
            )
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert!(p.body.contains("Mars/Olympus"));
        let p = viewer
            .post(
                "/settings/timezone",
                &[("csrf_token", &csrf), ("timezone", "")],
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        let utc = viewer.get("/dags/grouped?tab=grid&run_id=g29").await;
        assert!(utc.body.contains("2026-01-02 03:04:05"));
        db.drop_db().await.unwrap();
    }
}

/// The Versions tab: each version of a DAG, and the diff of its file against the one before.
#[tokio::test]
async fn versions_tab_diffs_sources() {
    for db in databases().await {
        let site = site(&db).await;
        let changed = dags_yaml().replace("echo load", "echo load again");
        std::fs::write(site._dir.join("dags.yaml"), changed).unwrap();
        site.processor
            .lock()
            .await
            .run_once(Utc::now() + chrono::Duration::seconds(5))
            .await
            .unwrap();
        let mut viewer = Browser::new(&site);
        viewer.login("vic", "correct horse", "/").await;
        let p = viewer.get("/dags/etl?tab=versions").await;
        assert_eq!(p.status, StatusCode::OK);
        assert!(p.body.contains("v2 against v1"), "{}", p.body);
        assert!(
            p.body.contains(r#"<span class="sign">-</span><code>    load: {operator: bash, bash_command: &#34;echo load&#34;"#),
            "{}",
            p.body
        );
        assert!(p.body.contains(
            r#"<span class="sign">+</span><code>    load: {operator: bash, bash_command: &#34;echo load again&#34;"#
        ));
        // The DAG's description is escaped in the diff's context lines too.
        assert!(!p.body.contains(XSS));
        let first = viewer.get("/dags/etl?tab=versions&version=1").await;
        assert!(
            first.body.contains("v1 (the first version)"),
            "{}",
            first.body
        );
        assert_eq!(
            viewer.get("/dags/etl?tab=versions&version=9").await.status,
            StatusCode::NOT_FOUND
        );
        // A DAG's only version is its whole file, added.
        let other = viewer.get("/dags/other?tab=versions").await;
        assert!(other.body.contains("v1 (the first version)"));
        assert!(
            other
                .body
                .contains(r#"<span class="sign">+</span><code>    only: {operator: empty}</code>"#),
            "{}",
            other.body
        );
        db.drop_db().await.unwrap();
    }
}
