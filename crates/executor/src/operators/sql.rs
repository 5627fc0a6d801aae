//! `sql` and `sql_sensor`: statements rendered, then run on a `postgres`, `mysql` or `sqlite`
//! connection through sqlx, one connection per try.
//!
//! Parameters follow the Airflow driver's rules, so queries move over unchanged: psycopg2 and
//! mysqlclient interpolate `%s` / `%(name)s` on the client (with `%%` for a literal percent
//! sign), sqlite3 binds `?` / `:name` on the server. Result rows become JSON lists, the XCom
//! Airflow's operator pushes.

use std::future::Future;
use std::time::Duration;

use flow_dag::{SqlOperator, SqlSensor, SqlStatements, Task, is_sql_file};
use flow_model::Connection;
use serde_json::{Map, Value as Json};
use sqlx::{Column, Connection as _, Executor, Row, Statement, TypeInfo, ValueRef};

use crate::process::LogSink;
use crate::render::{
    RenderError, RenderedTask, Renderer, RunContext, SensorWait, read_template_file,
};
use crate::runner::{Outcome, RunSpec};

/// What a sql task runs, rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlRun {
    pub conn_id: String,
    pub database: Option<String>,
    /// The sources: one string, or one per list item (split at run time).
    pub statements: Vec<String>,
    /// `split_statements`: each statement of a string is run and answers on its own.
    pub split: bool,
    /// `null`, a list or a mapping.
    pub parameters: Json,
    /// The XCom is one statement's rows (the last), not a list per statement.
    pub single: bool,
    pub autocommit: bool,
    pub show_return_value_in_logs: bool,
}

/// What a SQL sensor checks each poke, rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlPoke {
    pub conn_id: String,
    pub statement: String,
    pub parameters: Json,
    pub success: Option<String>,
    pub failure: Option<String>,
    pub fail_on_empty: bool,
}

pub(crate) fn render(
    task: &Task,
    op: &SqlOperator,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let r = Renderer::new(task, ctx);
    let statements = render_statements(&r, ctx, &op.sql)?;
    let single =
        matches!(op.sql, SqlStatements::Text(_)) && (op.return_last || !op.split_statements);
    Ok(RenderedTask::Sql(SqlRun {
        conn_id: op.conn_id.clone(),
        database: op
            .database
            .as_deref()
            .map(|d| r.string("database", d))
            .transpose()?,
        statements,
        split: op.split_statements,
        parameters: r.json("parameters", &op.parameters)?,
        single,
        autocommit: op.autocommit,
        show_return_value_in_logs: op.show_return_value_in_logs,
    }))
}

pub(crate) fn render_sensor(
    task: &Task,
    op: &SqlSensor,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let r = Renderer::new(task, ctx);
    let mut statements = render_statements(&r, ctx, &op.sql)?;
    let statement = statements
        .pop()
        .ok_or_else(|| RenderError::new("sql", "no statement to run"))?;
    if !statements.is_empty() || split_statements(&statement, Dialect::Postgres).len() > 1 {
        return Err(RenderError::new(
            "sql",
            "a SQL sensor runs one query; this renders to several statements",
        ));
    }
    Ok(RenderedTask::Sensor {
        wait: SensorWait::Sql(SqlPoke {
            conn_id: op.conn_id.clone(),
            statement,
            parameters: r.json("parameters", &op.parameters)?,
            success: op.success.clone(),
            failure: op.failure.clone(),
            fail_on_empty: op.fail_on_empty,
        }),
        sensor: op.sensor.clone(),
    })
}

/// Each source rendered (a `.sql` file read first); split into statements at run time, when
/// the connection's dialect is known.
fn render_statements(
    r: &Renderer,
    ctx: &RunContext,
    sql: &SqlStatements,
) -> Result<Vec<String>, RenderError> {
    let sources: Vec<String> = match sql {
        SqlStatements::Text(text) if is_sql_file(text) => vec![template_file(text.trim(), ctx)?],
        SqlStatements::Text(text) => vec![text.clone()],
        SqlStatements::List(items) => items.clone(),
    };
    let mut out = Vec::with_capacity(sources.len());
    for (i, source) in sources.iter().enumerate() {
        let field = match sql {
            SqlStatements::List(_) => format!("sql[{i}]"),
            SqlStatements::Text(_) => "sql".to_owned(),
        };
        let rendered = r.string(&field, source)?;
        if split_statements(&rendered, Dialect::Postgres).is_empty() {
            return Err(RenderError::new(&field, "renders to no statement"));
        }
        out.push(rendered);
    }
    Ok(out)
}

/// A template file named by `sql`, looked up where Airflow looks: the DAG's folder, then the
/// dags folder.
fn template_file(name: &str, ctx: &RunContext) -> Result<String, RenderError> {
    read_template_file("sql", name, ctx)?.ok_or_else(|| {
        RenderError::new(
            "sql",
            format!("template file `{name}` not found beside the DAG or in the dags folder"),
        )
    })
}

/// Splits SQL on `;` outside quotes, dollar quotes and comments; drops empty statements.
pub(crate) fn split_statements(sql: &str, dialect: Dialect) -> Vec<String> {
    let backslash = dialect == Dialect::MySql;
    let mut out = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' | '`' => {
                let end = find_closing(&chars, i + 1, c, backslash);
                current.extend(&chars[i..end]);
                i = end;
                continue;
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '\n')
                    .map_or(chars.len(), |p| i + p);
                current.extend(&chars[i..end]);
                i = end;
                continue;
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let end = (i + 2..chars.len().saturating_sub(1))
                    .find(|&j| chars[j] == '*' && chars[j + 1] == '/')
                    .map_or(chars.len(), |j| j + 2);
                current.extend(&chars[i..end]);
                i = end;
                continue;
            }
            '$' => {
                if let Some(end) = dollar_quote_end(&chars, i) {
                    current.extend(&chars[i..end]);
                    i = end;
                    continue;
                }
            }
            ';' => {
                push_statement(&mut out, &current);
                current.clear();
                i += 1;
                continue;
            }
            _ => {}
        }
        current.push(c);
        i += 1;
    }
    push_statement(&mut out, &current);
    out
}

fn push_statement(out: &mut Vec<String>, text: &str) {
    let trimmed = text.trim();
    let only_comments = trimmed
        .lines()
        .all(|l| l.trim().is_empty() || l.trim().starts_with("--"));
    if !trimmed.is_empty() && !only_comments {
        out.push(trimmed.to_owned());
    }
}

/// The index after the quote closing one opened before `from`: a doubled quote escapes it,
/// and with `backslash` (MySQL's strings) so does a backslash.
fn find_closing(chars: &[char], from: usize, quote: char, backslash: bool) -> usize {
    let mut j = from;
    while j < chars.len() {
        if backslash && chars[j] == '\\' {
            j += 2;
            continue;
        }
        if chars[j] == quote {
            if chars.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    chars.len()
}

/// `$tag$ ... $tag$` (PostgreSQL): the index after the closing tag.
fn dollar_quote_end(chars: &[char], start: usize) -> Option<usize> {
    let tag_end = (start + 1..chars.len()).find(|&j| chars[j] == '$')?;
    let tag: String = chars[start..=tag_end].iter().collect();
    if !tag[1..tag.len() - 1]
        .chars()
        .all(|c| c.is_alphanumeric() || c == '_')
    {
        return None;
    }
    let body: String = chars[tag_end + 1..].iter().collect();
    let close = body.find(&tag)?;
    Some(tag_end + 1 + body[..close].chars().count() + tag.chars().count())
}

/// The SQL dialect of a connection, from its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

fn dialect(conn: &Connection) -> Result<Dialect, String> {
    match conn.conn_type.as_str() {
        "postgres" | "postgresql" => Ok(Dialect::Postgres),
        "mysql" | "mariadb" => Ok(Dialect::MySql),
        "sqlite" => Ok(Dialect::Sqlite),
        other => Err(format!(
            "connection `{}` is of type `{other}`; SQL runs on postgres, mysql or sqlite connections",
            conn.conn_id
        )),
    }
}

/// Connects and runs `SELECT 1`: a connection test. A test creates nothing, so a sqlite
/// file must exist already (a task's connection would create it).
pub(crate) async fn ping(conn: &Connection) -> Result<(), String> {
    let dialect = dialect(conn)?;
    if dialect == Dialect::Sqlite {
        let path = conn
            .host
            .as_deref()
            .or(conn.schema.as_deref())
            .filter(|p| !p.is_empty())
            .unwrap_or_default();
        if !path.is_empty() && tokio::fs::metadata(path).await.is_err() {
            return Err(format!("the sqlite database file `{path}` does not exist"));
        }
    }
    let mut db = Db::open(conn, None, dialect).await?;
    let result = db
        .raw("SELECT 1")
        .await
        .map_err(|e| e.for_conn(&conn.conn_id));
    db.close().await;
    result
}

/// Runs a sql task: every statement in one transaction (each committed on its own with
/// `autocommit`), the rows of the last (or of each) as the XCom.
pub(crate) async fn run(spec: &RunSpec, run: &SqlRun, logs: &LogSink) -> Outcome {
    let Some(conn) = &spec.connection else {
        return failed(format!("connection `{}` was not resolved", run.conn_id));
    };
    // Without an XCom to push (or rows to show) nothing is fetched, as Airflow passes no
    // handler then; with one, rows stop at the XCom size limit instead of filling memory.
    let rows = if spec.do_xcom_push || run.show_return_value_in_logs {
        Rows::All {
            cap: spec.max_xcom_size,
        }
    } else {
        Rows::Ignore
    };
    let job = Job {
        database: run.database.as_deref(),
        sources: &run.statements,
        split: run.split,
        parameters: &run.parameters,
        autocommit: run.autocommit,
        rows,
    };
    let mut results = match execute(conn, &job, logs).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let xcom = if run.single {
        results.pop().unwrap_or(Json::Null)
    } else {
        Json::Array(results)
    };
    if run.show_return_value_in_logs {
        logs.system(&format!("Done. Returned value was: {xcom}"))
            .await;
    }
    if !spec.do_xcom_push {
        return Outcome::Success { xcom: None };
    }
    let size = xcom.to_string().len();
    if size > spec.max_xcom_size {
        return failed(too_large(size, spec.max_xcom_size));
    }
    Outcome::Success { xcom: Some(xcom) }
}

fn too_large(size: usize, cap: usize) -> String {
    format!(
        "the result is over {size} bytes of JSON, more than FLOW__CORE__MAX_XCOM_SIZE ({cap} \
         bytes): select fewer rows or columns, or set do_xcom_push: false"
    )
}

fn failed(reason: String) -> Outcome {
    Outcome::Failed { reason }
}

/// One poke of a SQL sensor: `Ok(true)` when done, `Err` to fail the try.
pub(crate) async fn poke(spec: &RunSpec, check: &SqlPoke, logs: &LogSink) -> Result<bool, String> {
    let Some(conn) = &spec.connection else {
        return Err(format!("connection `{}` was not resolved", check.conn_id));
    };
    let sources = [check.statement.clone()];
    let job = Job {
        database: None,
        sources: &sources,
        split: false,
        parameters: &check.parameters,
        autocommit: true,
        rows: Rows::First,
    };
    let rows = match execute(conn, &job, logs).await?.pop() {
        Some(Json::Array(rows)) => rows,
        _ => Vec::new(),
    };
    let Some(Json::Array(row)) = rows.into_iter().next() else {
        if check.fail_on_empty {
            return Err("No rows returned, raising as per fail_on_empty flag".to_owned());
        }
        logs.system("No rows returned").await;
        return Ok(false);
    };
    let first_cell = row.first().cloned().unwrap_or(Json::Null);
    let vars = serde_json::json!({"first_cell": first_cell, "row": row});
    if let Some(failure) = &check.failure
        && crate::jinja::eval_expression(failure, &vars)
            .map_err(|e| format!("failure: {e}"))?
            .is_true()
    {
        return Err(format!(
            "Failure criteria met: `{failure}` is true for first_cell = {first_cell}"
        ));
    }
    let done = match &check.success {
        Some(success) => crate::jinja::eval_expression(success, &vars)
            .map_err(|e| format!("success: {e}"))?
            .is_true(),
        None => crate::jinja::py_truthy(&first_cell),
    };
    logs.system(&format!(
        "first_cell = {first_cell}: {}",
        if done { "done" } else { "not yet" }
    ))
    .await;
    Ok(done)
}

/// How long connecting may take before the try fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which rows of a statement are wanted.
#[derive(Debug, Clone, Copy)]
enum Rows {
    /// Every row, failing past `cap` bytes of JSON.
    All { cap: usize },
    /// The first row (a sensor's).
    First,
    /// None: the statement is executed only.
    Ignore,
}

/// What to run.
struct Job<'a> {
    database: Option<&'a str>,
    sources: &'a [String],
    split: bool,
    parameters: &'a Json,
    autocommit: bool,
    rows: Rows,
}

/// One unit of work: a statement run on its own (prepared), or a string of several run as
/// one script, as psycopg2 and mysqlclient run a string without `split_statements`.
enum Unit {
    Statement(String),
    Script(String),
}

/// The sources as units: split when asked (always on SQLite, whose driver runs one statement
/// at a time), a script when a string holds several statements and splitting was not asked.
fn units(job: &Job<'_>, dialect: Dialect) -> Vec<Unit> {
    let mut out = Vec::new();
    for source in job.sources {
        let parts = split_statements(source, dialect);
        if job.split || dialect == Dialect::Sqlite || parts.len() <= 1 {
            out.extend(parts.into_iter().map(Unit::Statement));
        } else {
            out.push(Unit::Script(source.trim().to_owned()));
        }
    }
    out
}

/// Runs the job; one result per unit (rows as lists, or `null` for a statement that returns
/// none). Statements are logged as written, before parameters go in, and the parameters
/// apart, so that the masker finds a secret among them as it was given.
async fn execute(conn: &Connection, job: &Job<'_>, logs: &LogSink) -> Result<Vec<Json>, String> {
    let dialect = dialect(conn)?;
    let named = |e: StatementError| e.for_conn(&conn.conn_id);
    let mut db = Db::open(conn, job.database, dialect).await?;
    if !job.autocommit {
        db.raw("BEGIN").await.map_err(named)?;
    }
    let mut results = Vec::new();
    for unit in units(job, dialect) {
        let (Unit::Statement(text) | Unit::Script(text)) = &unit;
        logs.system(&format!("Running statement: {text}")).await;
        if !job.parameters.is_null() {
            logs.system(&format!("parameters: {}", job.parameters))
                .await;
        }
        let result = match (&unit, dialect) {
            (Unit::Statement(sql), Dialect::Sqlite) => {
                let (sql, args) = sqlite_arguments(sql, job.parameters)?;
                db.statement(&sql, &args, job.rows, logs).await
            }
            (Unit::Statement(sql), _) => {
                let sql = interpolate(sql, job.parameters, dialect)?;
                db.statement(&sql, &[], job.rows, logs).await
            }
            (Unit::Script(sql), _) => {
                let sql = interpolate(sql, job.parameters, dialect)?;
                db.script(&sql, job.rows, logs).await
            }
        };
        results.push(result.map_err(named)?);
    }
    if !job.autocommit {
        db.raw("COMMIT").await.map_err(named)?;
    }
    db.close().await;
    Ok(results)
}

/// A connection to one of the three databases.
enum Db {
    Pg(sqlx::PgConnection),
    My(sqlx::MySqlConnection),
    Lite(sqlx::SqliteConnection),
}

impl Db {
    async fn open(
        conn: &Connection,
        database: Option<&str>,
        dialect: Dialect,
    ) -> Result<Db, String> {
        let db_name = database
            .or(conn.schema.as_deref())
            .filter(|d| !d.is_empty());
        match dialect {
            Dialect::Postgres => {
                let mut o = sqlx::postgres::PgConnectOptions::new_without_pgpass()
                    .host(conn.host.as_deref().unwrap_or("localhost"))
                    .port(conn.port.unwrap_or(5432))
                    .username(conn.login.as_deref().unwrap_or("postgres"))
                    .application_name("flow");
                if let Some(p) = &conn.password {
                    o = o.password(p);
                }
                if let Some(db) = db_name {
                    o = o.database(db);
                }
                if let Some(mode) = extra_str(conn, "sslmode") {
                    o = o.ssl_mode(mode.parse().map_err(|_| {
                        format!(
                            "connection `{}`: extra.sslmode `{mode}` is not an SSL mode",
                            conn.conn_id
                        )
                    })?);
                }
                connect(sqlx::PgConnection::connect_with(&o), conn)
                    .await
                    .map(Db::Pg)
            }
            Dialect::MySql => {
                let mut o = sqlx::mysql::MySqlConnectOptions::new()
                    .host(conn.host.as_deref().unwrap_or("localhost"))
                    .port(conn.port.unwrap_or(3306))
                    .username(conn.login.as_deref().unwrap_or("root"));
                if let Some(p) = &conn.password {
                    o = o.password(p);
                }
                if let Some(db) = db_name {
                    o = o.database(db);
                }
                connect(sqlx::MySqlConnection::connect_with(&o), conn)
                    .await
                    .map(Db::My)
            }
            Dialect::Sqlite => {
                let Some(path) = conn
                    .host
                    .as_deref()
                    .or(conn.schema.as_deref())
                    .filter(|p| !p.is_empty())
                else {
                    return Err(format!(
                        "connection `{}`: a sqlite connection needs the database file as its host",
                        conn.conn_id
                    ));
                };
                let o = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .busy_timeout(Duration::from_secs(30));
                connect(sqlx::SqliteConnection::connect_with(&o), conn)
                    .await
                    .map(Db::Lite)
            }
        }
    }

    /// A statement run as text (`BEGIN`, `COMMIT`).
    async fn raw(&mut self, sql: &str) -> Result<(), StatementError> {
        let q = sqlx::raw_sql(sql);
        match self {
            Db::Pg(c) => {
                c.execute(q).await?;
            }
            Db::My(c) => {
                c.execute(q).await?;
            }
            Db::Lite(c) => {
                c.execute(q).await?;
            }
        }
        Ok(())
    }

    async fn close(self) {
        let _ = match self {
            Db::Pg(c) => c.close().await,
            Db::My(c) => c.close().await,
            Db::Lite(c) => c.close().await,
        };
    }

    /// One statement, prepared (its parameters bound on SQLite).
    async fn statement(
        &mut self,
        sql: &str,
        args: &[Json],
        rows: Rows,
        logs: &LogSink,
    ) -> Result<Json, StatementError> {
        match self {
            Db::Pg(c) => {
                let st = c.prepare(sql).await?;
                if st.columns().is_empty() || matches!(rows, Rows::Ignore) {
                    let done = st.query().execute(&mut *c).await?;
                    log_affected(logs, done.rows_affected()).await;
                    return Ok(Json::Null);
                }
                collect(st.query().fetch(&mut *c), pg_row, rows, logs).await
            }
            Db::My(c) => {
                // Not every MySQL statement can be prepared (`LOCK TABLES`, some DDL):
                // those run as text.
                let st = match c.prepare(sql).await {
                    Ok(st) => st,
                    Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("HY000") => {
                        let done = c.execute(sqlx::raw_sql(sql)).await?;
                        log_affected(logs, done.rows_affected()).await;
                        return Ok(Json::Null);
                    }
                    Err(e) => return Err(e.into()),
                };
                if st.columns().is_empty() || matches!(rows, Rows::Ignore) {
                    let done = st.query().execute(&mut *c).await?;
                    log_affected(logs, done.rows_affected()).await;
                    return Ok(Json::Null);
                }
                collect(st.query().fetch(&mut *c), mysql_row, rows, logs).await
            }
            Db::Lite(c) => {
                let st = c.prepare(sql).await?;
                let has_columns = !st.columns().is_empty();
                let mut query = st.query();
                for arg in args {
                    query = match arg {
                        Json::Null => query.bind(None::<String>),
                        Json::Bool(b) => query.bind(*b),
                        Json::Number(n) => match n.as_i64() {
                            Some(i) => query.bind(i),
                            None => query.bind(n.as_f64().unwrap_or(f64::NAN)),
                        },
                        Json::String(s) => query.bind(s.clone()),
                        other => query.bind(other.to_string()),
                    };
                }
                if !has_columns || matches!(rows, Rows::Ignore) {
                    let done = query.execute(&mut *c).await?;
                    log_affected(logs, done.rows_affected()).await;
                    return Ok(Json::Null);
                }
                collect(query.fetch(&mut *c), sqlite_row, rows, logs).await
            }
        }
    }

    /// Several statements as one text (PostgreSQL's simple protocol, MySQL's text protocol):
    /// the last result set's rows, as the drivers Airflow uses return them.
    async fn script(
        &mut self,
        sql: &str,
        rows: Rows,
        logs: &LogSink,
    ) -> Result<Json, StatementError> {
        let mut sets = ResultSets::new(rows);
        match self {
            Db::Pg(c) => sets.drain(c.fetch_many(sqlx::raw_sql(sql)), pg_row).await?,
            Db::My(c) => {
                sets.drain(c.fetch_many(sqlx::raw_sql(sql)), mysql_row)
                    .await?
            }
            Db::Lite(c) => {
                sets.drain(c.fetch_many(sqlx::raw_sql(sql)), sqlite_row)
                    .await?
            }
        }
        log_affected(logs, sets.affected).await;
        Ok(sets.last())
    }
}

/// The result sets of a script, keeping the last.
struct ResultSets {
    rows: Rows,
    last: Vec<Json>,
    current: Vec<Json>,
    size: usize,
    affected: u64,
}

impl ResultSets {
    fn new(rows: Rows) -> Self {
        ResultSets {
            rows,
            last: Vec::new(),
            current: Vec::new(),
            size: 0,
            affected: 0,
        }
    }

    async fn drain<R, Q>(
        &mut self,
        mut stream: futures_util::stream::BoxStream<'_, Result<sqlx::Either<Q, R>, sqlx::Error>>,
        decode: fn(&R) -> Result<Json, StatementError>,
    ) -> Result<(), StatementError>
    where
        Q: Affected,
    {
        use futures_util::TryStreamExt as _;
        while let Some(item) = stream.try_next().await? {
            match item {
                sqlx::Either::Left(done) => {
                    self.affected += done.affected();
                    self.last = std::mem::take(&mut self.current);
                    self.size = 0;
                }
                sqlx::Either::Right(row) => {
                    if matches!(self.rows, Rows::Ignore) {
                        continue;
                    }
                    let json = decode(&row)?;
                    self.size += json.to_string().len() + 1;
                    if let Rows::All { cap } = self.rows
                        && self.size > cap
                    {
                        return Err(StatementError(too_large(self.size, cap)));
                    }
                    self.current.push(json);
                }
            }
        }
        Ok(())
    }

    fn last(mut self) -> Json {
        if !self.current.is_empty() {
            self.last = std::mem::take(&mut self.current);
        }
        if self.last.is_empty() {
            Json::Null
        } else {
            Json::Array(self.last)
        }
    }
}

/// The rows a statement of a script changed, whatever the driver.
trait Affected {
    fn affected(&self) -> u64;
}

impl Affected for sqlx::postgres::PgQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl Affected for sqlx::mysql::MySqlQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl Affected for sqlx::sqlite::SqliteQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// Rows from a stream, decoded, within `rows`' limits.
async fn collect<R>(
    mut stream: futures_util::stream::BoxStream<'_, Result<R, sqlx::Error>>,
    decode: fn(&R) -> Result<Json, StatementError>,
    rows: Rows,
    logs: &LogSink,
) -> Result<Json, StatementError> {
    use futures_util::TryStreamExt as _;
    let mut out = Vec::new();
    let mut size = 0usize;
    while let Some(row) = stream.try_next().await? {
        let json = decode(&row)?;
        size += json.to_string().len() + 1;
        if let Rows::All { cap } = rows
            && size > cap
        {
            return Err(StatementError(too_large(size, cap)));
        }
        out.push(json);
        if matches!(rows, Rows::First) {
            break;
        }
    }
    log_affected(logs, out.len() as u64).await;
    Ok(Json::Array(out))
}

async fn connect<C>(
    fut: impl Future<Output = Result<C, sqlx::Error>>,
    conn: &Connection,
) -> Result<C, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!(
            "connection `{}` ({}): cannot connect: {}",
            conn.conn_id,
            conn.conn_type,
            describe(&e)
        )),
        Err(_) => Err(format!(
            "connection `{}` ({}): no answer within {} s",
            conn.conn_id,
            conn.conn_type,
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// An error message without the connection string (which may carry a password).
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(t) => format!("TLS: {t}"),
        sqlx::Error::ColumnDecode { index, source } => format!("column {index}: {source}"),
        other => other.to_string(),
    }
}

/// A statement's failure, before the connection is named.
struct StatementError(String);

impl StatementError {
    fn for_conn(self, conn_id: &str) -> String {
        format!("connection `{conn_id}`: {}", self.0)
    }
}

impl From<sqlx::Error> for StatementError {
    fn from(e: sqlx::Error) -> Self {
        StatementError(describe(&e))
    }
}

/// Rows affected, logged as Airflow's hook does.
async fn log_affected(logs: &LogSink, n: u64) {
    logs.system(&format!("Rows affected: {n}")).await;
}

/// Python's `%` formatting as psycopg2 and mysqlclient apply it: `%s` takes the next item of
/// a list, `%(name)s` an entry of a mapping, `%%` is a percent sign. Without parameters the
/// statement is left as it is.
fn interpolate(sql: &str, parameters: &Json, dialect: Dialect) -> Result<String, String> {
    if parameters.is_null() {
        return Ok(sql.to_owned());
    }
    let mut out = String::with_capacity(sql.len());
    let mut positional = 0;
    let mut rest = sql;
    while let Some(p) = rest.find('%') {
        out.push_str(&rest[..p]);
        let after = &rest[p + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            out.push('%');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('s') {
            let Json::Array(items) = parameters else {
                return Err("`parameters` is a mapping but the statement uses `%s`".to_owned());
            };
            let value = items.get(positional).ok_or_else(|| {
                format!(
                    "not enough `parameters` for the statement: {} given",
                    items.len()
                )
            })?;
            positional += 1;
            out.push_str(&literal(value, dialect)?);
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            let close = tail
                .find(")s")
                .ok_or_else(|| "`%(` without a closing `)s` in the statement".to_owned())?;
            let name = &tail[..close];
            let Json::Object(map) = parameters else {
                return Err(format!(
                    "the statement uses `%({name})s` but `parameters` is not a mapping"
                ));
            };
            let value = map
                .get(name)
                .ok_or_else(|| format!("`parameters` has no `{name}`"))?;
            out.push_str(&literal(value, dialect)?);
            rest = &tail[close + 2..];
        } else {
            return Err(format!(
                "unsupported format `%{}` in the statement (write `%%` for a percent sign)",
                after.chars().next().unwrap_or(' ')
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A value as a SQL literal. Strings are quoted so that no content can end the literal:
/// PostgreSQL `E'...'` escapes both backslashes and quotes whatever
/// `standard_conforming_strings` says; MySQL gets a hex literal, which `NO_BACKSLASH_ESCAPES`
/// cannot change either.
fn literal(value: &Json, dialect: Dialect) -> Result<String, String> {
    Ok(match value {
        Json::Null => "NULL".to_owned(),
        Json::Bool(b) => match dialect {
            Dialect::Postgres => b.to_string(),
            _ => u8::from(*b).to_string(),
        },
        // A leading space, as psycopg2 adds: `0-%s` with -5 must not become the comment `0--5`.
        Json::Number(n) => {
            let text = n.to_string();
            if text.starts_with('-') {
                format!(" {text}")
            } else {
                text
            }
        }
        Json::String(s) => quote(s, dialect)?,
        Json::Array(items) => {
            let parts = items
                .iter()
                .map(|i| literal(i, dialect))
                .collect::<Result<Vec<_>, _>>()?;
            match dialect {
                Dialect::Postgres => format!("ARRAY[{}]", parts.join(", ")),
                _ => format!("({})", parts.join(", ")),
            }
        }
        Json::Object(_) => quote(&value.to_string(), dialect)?,
    })
}

fn quote(s: &str, dialect: Dialect) -> Result<String, String> {
    if s.contains('\0') {
        return Err("a parameter contains a NUL character".to_owned());
    }
    Ok(match dialect {
        Dialect::Postgres => format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''")),
        _ => {
            let hex: String = s.bytes().map(|b| format!("{b:02X}")).collect();
            if hex.is_empty() {
                "''".to_owned()
            } else {
                format!("_utf8mb4 X'{hex}'")
            }
        }
    })
}

/// sqlite3's parameters: a list for `?`, a mapping for `:name` / `@name` / `$name`. sqlx binds
/// by position only, so named parameters become `?N`, numbered in order of first appearance.
fn sqlite_arguments(sql: &str, parameters: &Json) -> Result<(String, Vec<Json>), String> {
    match parameters {
        Json::Null => Ok((sql.to_owned(), Vec::new())),
        Json::Array(items) => Ok((sql.to_owned(), items.clone())),
        Json::Object(map) => {
            let (rewritten, names) = number_named_parameters(sql);
            let args = names
                .into_iter()
                .map(|name| {
                    map.get(&name)
                        .cloned()
                        .ok_or_else(|| format!("`parameters` has no `{name}`"))
                })
                .collect::<Result<_, _>>()?;
            Ok((rewritten, args))
        }
        other => Err(format!(
            "`parameters` must be a list or a mapping, not {other}"
        )),
    }
}

/// `:name`, `@name` and `$name` outside quotes and comments become `?N`; the names, in order.
fn number_named_parameters(sql: &str) -> (String, Vec<String>) {
    let chars: Vec<char> = sql.chars().collect();
    let mut names: Vec<String> = Vec::new();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let skip_to = match c {
            '\'' | '"' | '`' => Some(find_closing(&chars, i + 1, c, false)),
            '-' if chars.get(i + 1) == Some(&'-') => Some(
                chars[i..]
                    .iter()
                    .position(|&c| c == '\n')
                    .map_or(chars.len(), |p| i + p),
            ),
            _ => None,
        };
        if let Some(end) = skip_to {
            out.extend(&chars[i..end]);
            i = end;
            continue;
        }
        if matches!(c, ':' | '@' | '$') {
            let end = (i + 1..chars.len())
                .find(|&j| !(chars[j].is_alphanumeric() || chars[j] == '_'))
                .unwrap_or(chars.len());
            if end > i + 1 {
                let name: String = chars[i + 1..end].iter().collect();
                let n = match names.iter().position(|x| *x == name) {
                    Some(p) => p + 1,
                    None => {
                        names.push(name);
                        names.len()
                    }
                };
                out.push_str(&format!("?{n}"));
                i = end;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    (out, names)
}

fn unsupported(column: &str, type_name: &str, cast: &str) -> StatementError {
    StatementError(format!(
        "column `{column}` has type {type_name}, which flow cannot put in an XCom; cast it in \
         the query ({cast})"
    ))
}

fn pg_row(row: &sqlx::postgres::PgRow) -> Result<Json, StatementError> {
    let mut cells = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            cells.push(Json::Null);
            continue;
        }
        let type_name = raw.type_info().name().to_owned();
        // A script's rows come as text (the simple query protocol): numbers and JSON are
        // parsed back, the rest stays text, as psycopg2 would give most of it.
        if raw.format() == sqlx::postgres::PgValueFormat::Text {
            let text = raw.as_str().map_err(sqlx::Error::Decode)?;
            cells.push(pg_text_cell(&type_name, text));
            continue;
        }
        let v = match type_name.as_str() {
            "BOOL" => Json::from(row.try_get::<bool, _>(i)?),
            "INT2" => Json::from(row.try_get::<i16, _>(i)?),
            "INT4" => Json::from(row.try_get::<i32, _>(i)?),
            "INT8" => Json::from(row.try_get::<i64, _>(i)?),
            "FLOAT4" => Json::from(row.try_get::<f32, _>(i)?),
            "FLOAT8" => Json::from(row.try_get::<f64, _>(i)?),
            "NUMERIC" => pg_numeric(raw.as_bytes().map_err(sqlx::Error::Decode)?)
                .ok_or_else(|| unsupported(column.name(), "NUMERIC", "::text"))?,
            "JSON" | "JSONB" => row.try_get::<Json, _>(i)?,
            "TIMESTAMPTZ" => Json::from(
                row.try_get::<chrono::DateTime<chrono::Utc>, _>(i)?
                    .to_rfc3339(),
            ),
            "TIMESTAMP" => Json::from(
                row.try_get::<chrono::NaiveDateTime, _>(i)?
                    .format("%Y-%m-%dT%H:%M:%S%.f")
                    .to_string(),
            ),
            "DATE" => Json::from(row.try_get::<chrono::NaiveDate, _>(i)?.to_string()),
            "TIME" => Json::from(row.try_get::<chrono::NaiveTime, _>(i)?.to_string()),
            "UUID" => {
                let b = raw.as_bytes().map_err(sqlx::Error::Decode)?;
                Json::from(uuid_text(b))
            }
            "BYTEA" => Json::from(format!(
                "\\x{}",
                row.try_get::<Vec<u8>, _>(i)?
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )),
            "INT2[]" => Json::from(row.try_get::<Vec<i16>, _>(i)?),
            "INT4[]" => Json::from(row.try_get::<Vec<i32>, _>(i)?),
            "INT8[]" => Json::from(row.try_get::<Vec<i64>, _>(i)?),
            "FLOAT8[]" => Json::from(row.try_get::<Vec<f64>, _>(i)?),
            "BOOL[]" => Json::from(row.try_get::<Vec<bool>, _>(i)?),
            "TEXT[]" | "VARCHAR[]" => Json::from(row.try_get::<Vec<String>, _>(i)?),
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" | "UNKNOWN" | "XML" => {
                Json::from(row.try_get_unchecked::<String, _>(i)?)
            }
            other => {
                // Enums and domains over text arrive as their text; anything else is binary.
                match pg_enum_text(raw.as_bytes().map_err(sqlx::Error::Decode)?, other) {
                    Some(text) => Json::from(text),
                    None => return Err(unsupported(column.name(), other, "::text")),
                }
            }
        };
        cells.push(v);
    }
    Ok(Json::Array(cells))
}

/// A value in PostgreSQL's text format, typed by its column's type.
fn pg_text_cell(type_name: &str, text: &str) -> Json {
    let number = || {
        serde_json::from_str::<serde_json::Number>(text)
            .map(Json::Number)
            .unwrap_or_else(|_| Json::from(text))
    };
    match type_name {
        "BOOL" => Json::Bool(text == "t"),
        "INT2" | "INT4" | "INT8" | "FLOAT4" | "FLOAT8" | "NUMERIC" | "OID" => number(),
        "JSON" | "JSONB" => serde_json::from_str(text).unwrap_or_else(|_| Json::from(text)),
        _ => Json::from(text),
    }
}

/// A user-defined enum's value (binary format: its label's bytes). Built-in types whose binary
/// form is not text are refused by name.
fn pg_enum_text(bytes: &[u8], type_name: &str) -> Option<String> {
    const BINARY: &[&str] = &[
        "INTERVAL",
        "MONEY",
        "OID",
        "POINT",
        "LINE",
        "LSEG",
        "BOX",
        "PATH",
        "POLYGON",
        "CIRCLE",
        "INET",
        "CIDR",
        "MACADDR",
        "MACADDR8",
        "BIT",
        "VARBIT",
        "TIMETZ",
        "TSVECTOR",
        "TSQUERY",
        "INT4RANGE",
        "INT8RANGE",
        "NUMRANGE",
        "TSRANGE",
        "TSTZRANGE",
        "DATERANGE",
        "RECORD",
    ];
    if BINARY.contains(&type_name) || type_name.ends_with("[]") {
        return None;
    }
    String::from_utf8(bytes.to_vec())
        .ok()
        .filter(|s| !s.chars().any(char::is_control))
}

/// PostgreSQL's binary NUMERIC (base-10000 digits), exactly, as [`decimal_json`] gives it.
fn pg_numeric(b: &[u8]) -> Option<Json> {
    let word = |i: usize| -> Option<i16> {
        Some(i16::from_be_bytes([*b.get(2 * i)?, *b.get(2 * i + 1)?]))
    };
    let ndigits = usize::try_from(word(0)?).ok()?;
    let weight = i64::from(word(1)?);
    let sign = u16::from_be_bytes([*b.get(4)?, *b.get(5)?]);
    if sign == 0xC000 {
        return Some(Json::Null); // NaN
    }
    let dscale = usize::from(u16::from_be_bytes([*b.get(6)?, *b.get(7)?]));
    let digits: Vec<i16> = (0..ndigits).map(|d| word(4 + d)).collect::<Option<_>>()?;
    let digit = |k: i64| -> i16 {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    }
    for k in 0..=weight {
        if k == 0 {
            text.push_str(&digit(k).to_string());
        } else {
            text.push_str(&format!("{:04}", digit(k)));
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut k = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(k)));
            k += 1;
        }
        frac.truncate(dscale);
        text.push('.');
        text.push_str(&frac);
    }
    Some(decimal_json(&text))
}

/// A decimal as a JSON number when a double holds it exactly (15 significant digits), else
/// as its text, so that a large total is never silently rounded.
fn decimal_json(text: &str) -> Json {
    let significant = text
        .trim_start_matches('-')
        .trim_start_matches(['0', '.'])
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    if significant <= 15
        && let Ok(n) = serde_json::from_str::<serde_json::Number>(text)
    {
        return Json::Number(n);
    }
    Json::from(text)
}

fn uuid_text(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    if hex.len() != 32 {
        return hex;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn mysql_row(row: &sqlx::mysql::MySqlRow) -> Result<Json, StatementError> {
    let mut cells = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            cells.push(Json::Null);
            continue;
        }
        let type_name = raw.type_info().name().to_owned();
        let v = match type_name.as_str() {
            "BOOLEAN" | "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => {
                Json::from(row.try_get_unchecked::<i64, _>(i)?)
            }
            "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED"
            | "BIGINT UNSIGNED" | "BIT" => Json::from(row.try_get_unchecked::<u64, _>(i)?),
            "FLOAT" => Json::from(row.try_get::<f32, _>(i)?),
            "DOUBLE" => Json::from(row.try_get::<f64, _>(i)?),
            "DECIMAL" => decimal_json(&row.try_get_unchecked::<String, _>(i)?),
            "DATE" => Json::from(row.try_get::<chrono::NaiveDate, _>(i)?.to_string()),
            "DATETIME" => Json::from(
                row.try_get::<chrono::NaiveDateTime, _>(i)?
                    .format("%Y-%m-%dT%H:%M:%S%.f")
                    .to_string(),
            ),
            "TIMESTAMP" => Json::from(
                row.try_get::<chrono::DateTime<chrono::Utc>, _>(i)?
                    .to_rfc3339(),
            ),
            "TIME" => match row.try_get::<chrono::NaiveTime, _>(i) {
                Ok(t) => Json::from(t.to_string()),
                Err(_) => return Err(unsupported(column.name(), "TIME", "CAST(... AS CHAR)")),
            },
            _ => {
                let bytes = row.try_get_unchecked::<Vec<u8>, _>(i)?;
                match String::from_utf8(bytes) {
                    Ok(s) => Json::from(s),
                    Err(e) => Json::from(hex_bytes(e.as_bytes())),
                }
            }
        };
        cells.push(v);
    }
    Ok(Json::Array(cells))
}

fn sqlite_row(row: &sqlx::sqlite::SqliteRow) -> Result<Json, StatementError> {
    let mut cells = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            cells.push(Json::Null);
            continue;
        }
        let v = match raw.type_info().name() {
            "INTEGER" => Json::from(row.try_get_unchecked::<i64, _>(i)?),
            "REAL" => Json::from(row.try_get_unchecked::<f64, _>(i)?),
            "BLOB" => {
                let bytes = row.try_get_unchecked::<Vec<u8>, _>(i)?;
                match String::from_utf8(bytes) {
                    Ok(s) => Json::from(s),
                    Err(e) => Json::from(hex_bytes(e.as_bytes())),
                }
            }
            _ => Json::from(row.try_get_unchecked::<String, _>(i)?),
        };
        cells.push(v);
    }
    Ok(Json::Array(cells))
}

fn hex_bytes(b: &[u8]) -> String {
    format!(
        "\\x{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn extra_str(conn: &Connection, key: &str) -> Option<String> {
    let extra: Map<String, Json> = serde_json::from_str(conn.extra.as_deref()?).ok()?;
    extra.get(key)?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_outside_quotes_and_comments() {
        let sql = "create table t (a text default ';'); -- a; comment\ninsert into t values ('x;y');\n\
                   do $$ begin perform 1; end $$; /* ; */ select 1;";
        let parts = split_statements(sql, Dialect::Postgres);
        assert_eq!(parts.len(), 4, "{parts:?}");
        assert!(parts[0].ends_with("default ';')"));
        assert!(parts[1].contains("'x;y'"));
        assert!(parts[2].starts_with("do $$"));
        assert!(parts[3].ends_with("select 1"));
        assert!(split_statements("  ;; -- nothing\n", Dialect::Postgres).is_empty());
        // A backslash ends nothing in a PostgreSQL string; in MySQL it escapes the quote.
        assert_eq!(
            split_statements(r"select 'a\'; select 2", Dialect::Postgres).len(),
            2
        );
        assert_eq!(
            split_statements(r"select 'a\'; select 2'", Dialect::MySql).len(),
            1
        );
    }

    #[test]
    fn interpolates_as_psycopg2() {
        let p = serde_json::json!({"name": "O'Brien\\", "n": 3, "ok": true, "none": null});
        assert_eq!(
            interpolate(
                "select %(name)s, %(n)s, %(ok)s, %(none)s, '100%%'",
                &p,
                Dialect::Postgres
            )
            .unwrap(),
            "select E'O''Brien\\\\', 3, true, NULL, '100%'"
        );
        let list = serde_json::json!(["a", [1, 2]]);
        assert_eq!(
            interpolate("select %s where x in %s", &list, Dialect::MySql).unwrap(),
            "select _utf8mb4 X'61' where x in (1, 2)"
        );
        assert!(interpolate("select %s, %s", &serde_json::json!([1]), Dialect::Postgres).is_err());
        assert!(interpolate("select %d", &list, Dialect::Postgres).is_err());
        // Without parameters nothing is interpreted.
        assert_eq!(
            interpolate("select '100%'", &Json::Null, Dialect::Postgres).unwrap(),
            "select '100%'"
        );
    }

    #[test]
    fn sqlite_named_parameters_in_order() {
        assert_eq!(
            number_named_parameters("select :b, ':x', :a, :b -- :c\n"),
            (
                "select ?1, ':x', ?2, ?1 -- :c\n".to_owned(),
                vec!["b".to_owned(), "a".to_owned()]
            )
        );
    }

    #[test]
    fn numeric_binary() {
        // 12345.678: ndigits 3, weight 1, sign +, dscale 3, digits [1, 2345, 6780].
        let mut b = Vec::new();
        for w in [3i16, 1, 0, 3, 1, 2345, 6780] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(pg_numeric(&b), Some(serde_json::json!(12345.678)));
        // 0.10 (weight -1, dscale 2) and a sum beyond a double's precision, kept as text.
        let mut b = Vec::new();
        for w in [1i16, -1, 0, 2, 1000] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(pg_numeric(&b), Some(serde_json::json!(0.1)));
        assert_eq!(
            decimal_json("123456789012345678"),
            serde_json::json!("123456789012345678")
        );
        assert_eq!(decimal_json("-12.50"), serde_json::json!(-12.5));
    }
}
