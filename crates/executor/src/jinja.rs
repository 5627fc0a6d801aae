//! The minijinja environment and the objects of Airflow's template context: pendulum-like
//! datetimes, `ti` with `xcom_pull`, `var`, `macros`, and Python-style printing of values.
//!
//! Airflow renders with Jinja2 in Python, so a value prints as Python's `str()` would:
//! `True`, `None`, `['a', 1]`, `{'k': 'v'}`, `2025-01-01T00:00:00+00:00`. Users' shell scripts
//! compare against those strings, so flow prints the same. Undefined values are an error,
//! as with Airflow's default `template_undefined=jinja2.StrictUndefined`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

use chrono::format::{DelayedFormat, Item, StrftimeItems};
use chrono::{
    DateTime, Datelike, Days, FixedOffset, Months, NaiveDate, NaiveDateTime, Offset, TimeDelta,
    Timelike,
};
use chrono_tz::Tz;
use minijinja::value::{Kwargs, Object, ObjectRepr, ValueKind, from_args};
use minijinja::{Environment, Error, ErrorKind, Output, State, UndefinedBehavior, Value};
use serde_json::Value as Json;

use crate::xcom::{MapIndexes, RETURN_VALUE, TaskIds, XcomMap};

/// The environment every template is rendered with.
pub(crate) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_formatter(format_value);
    // Python's str/dict/list methods (`dag_run.conf.get('x', 1)`, `name.upper()`), which
    // Airflow templates use all the time.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("ds", |v: Value| {
        date_filter(v, |d| d.format("%Y-%m-%d").to_string())
    });
    env.add_filter("ds_nodash", |v: Value| {
        date_filter(v, |d| d.format("%Y%m%d").to_string())
    });
    env.add_filter("ts", |v: Value| date_filter(v, |d| d.isoformat()));
    env.add_filter("ts_nodash", |v: Value| date_filter(v, |d| d.ts_nodash()));
    env.add_filter("ts_nodash_with_tz", |v: Value| {
        date_filter(v, |d| d.ts_nodash_with_tz())
    });
    // flow's addition: a value quoted for a POSIX shell, so that a conf value or param can be
    // put in a bash command safely (`echo {{ params.name | shell_quote }}`).
    env.add_filter("shell_quote", |v: Value| shell_quote(&py_str(&v)));
    env
}

/// `text` as one word of a POSIX shell command: single-quoted, with each `'` closed, escaped
/// and reopened.
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn date_filter(value: Value, f: impl Fn(&PyDateTime) -> String) -> Result<Value, Error> {
    if value.is_none() {
        return Ok(Value::from(()));
    }
    match value.downcast_object_ref::<PyDateTime>() {
        Some(d) => Ok(Value::from(f(d))),
        None => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("expected a datetime, got {}", value.kind()),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Printing values as Python's str() does.

fn format_value(out: &mut Output, _state: &mut State, value: &Value) -> Result<(), Error> {
    if let Some(missing) = value.downcast_object_ref::<Missing>() {
        return Err(missing.error());
    }
    let text = py_str(value);
    out.write_str(&text)
        .map_err(|_| Error::new(ErrorKind::WriteFailure, "failed to write template output"))
}

/// `str(value)` in Python: strings as they are, containers as their repr.
pub(crate) fn py_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        ValueKind::Undefined => String::new(),
        _ => py_repr(value),
    }
}

/// `repr(value)` in Python, for JSON-like values.
pub(crate) fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::String => write_py_string(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, &item);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, &key);
                    out.push_str(": ");
                    write_repr(out, &value.get_item(&key).unwrap_or_default());
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Python's string repr: single quotes unless the text holds a single quote and no double.
fn write_py_string(out: &mut String, s: &str) {
    out.push_str(&flow_dag::params::py_str_repr(s));
}

/// JSON to a template value.
pub(crate) fn json_value(json: &Json) -> Value {
    Value::from(minijinja::value::Serde(json))
}

/// A template value back to JSON (native rendering). Datetimes become ISO strings.
pub(crate) fn to_json(value: &Value) -> Json {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => Json::Null,
        ValueKind::Bool => Json::Bool(value.is_true()),
        ValueKind::Number => {
            if let Some(i) = value.as_i64() {
                Json::from(i)
            } else {
                f64::try_from(value.clone())
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Json::Null, Json::Number)
            }
        }
        ValueKind::String => Json::String(value.as_str().unwrap_or_default().to_owned()),
        ValueKind::Seq | ValueKind::Iterable => Json::Array(
            value
                .try_iter()
                .map(|it| it.map(|v| to_json(&v)).collect())
                .unwrap_or_default(),
        ),
        ValueKind::Map => {
            let mut map = serde_json::Map::new();
            if let Ok(keys) = value.try_iter() {
                for key in keys {
                    let item = value.get_item(&key).unwrap_or_default();
                    map.insert(py_str(&key), to_json(&item));
                }
            }
            Json::Object(map)
        }
        _ => Json::String(value.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Datetimes.

/// A datetime as Airflow's context holds it (a pendulum `DateTime`): prints as ISO 8601 with a
/// `+00:00` offset and offers the methods templates commonly call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PyDateTime(pub DateTime<Tz>);

impl PyDateTime {
    pub(crate) fn utc(dt: DateTime<chrono::Utc>) -> Self {
        PyDateTime(dt.with_timezone(&Tz::UTC))
    }

    fn format(&self, fmt: &str) -> String {
        self.0.format(fmt).to_string()
    }

    /// Python's `isoformat()`: microseconds only when non-zero.
    pub(crate) fn isoformat(&self) -> String {
        if self.0.nanosecond() / 1000 == 0 {
            self.format("%Y-%m-%dT%H:%M:%S%:z")
        } else {
            self.format("%Y-%m-%dT%H:%M:%S%.6f%:z")
        }
    }

    /// Python's `str(datetime)`: `isoformat` with a space between date and time, which is
    /// how Airflow prints `{{ logical_date }}` and friends.
    pub(crate) fn py_str(&self) -> String {
        if self.0.nanosecond() / 1000 == 0 {
            self.format("%Y-%m-%d %H:%M:%S%:z")
        } else {
            self.format("%Y-%m-%d %H:%M:%S%.6f%:z")
        }
    }

    pub(crate) fn ts_nodash(&self) -> String {
        self.format("%Y%m%dT%H%M%S")
    }

    pub(crate) fn ts_nodash_with_tz(&self) -> String {
        self.format("%Y%m%dT%H%M%S%z")
    }

    /// Python's `strftime`: `%f` is microseconds there; unknown directives are an error rather
    /// than chrono's panic.
    fn strftime(&self, fmt: &str) -> Result<String, Error> {
        strftime(&self.0.naive_local(), Some(self.0.offset().fix()), fmt)
    }

    /// pendulum's `add(days=1)` / `subtract(hours=2)`: months and years move the calendar
    /// date, the rest is an exact duration.
    fn shifted(&self, kwargs: &Kwargs, sign: i64) -> Result<PyDateTime, Error> {
        let get = |name: &str| -> Result<i64, Error> {
            Ok(kwargs
                .get::<Option<i64>>(name)?
                .unwrap_or(0)
                .saturating_mul(sign))
        };
        let (years, months) = (get("years")?, get("months")?);
        let units = [
            (get("weeks")?, 604_800),
            (get("days")?, 86_400),
            (get("hours")?, 3_600),
            (get("minutes")?, 60),
            (get("seconds")?, 1),
        ];
        let micros = get("microseconds")?;
        kwargs.assert_all_used()?;
        let overflow = || Error::new(ErrorKind::InvalidOperation, "datetime out of range");
        let seconds = units
            .iter()
            .try_fold(0i64, |acc, (n, unit)| {
                n.checked_mul(*unit).and_then(|s| acc.checked_add(s))
            })
            .ok_or_else(overflow)?;
        let delta = TimeDelta::try_seconds(seconds)
            .and_then(|d| d.checked_add(&TimeDelta::microseconds(micros)))
            .ok_or_else(overflow)?;
        let total_months = years
            .checked_mul(12)
            .and_then(|y| y.checked_add(months))
            .ok_or_else(overflow)?;
        let step = Months::new(u32::try_from(total_months.unsigned_abs()).map_err(|_| overflow())?);
        let local = self.0.naive_local();
        let local = if total_months >= 0 {
            local.checked_add_months(step)
        } else {
            local.checked_sub_months(step)
        }
        .ok_or_else(overflow)?;
        let dt = local
            .and_local_timezone(self.0.timezone())
            .earliest()
            .and_then(|dt| dt.checked_add_signed(delta))
            .ok_or_else(overflow)?;
        Ok(PyDateTime(dt))
    }
}

pub(crate) fn strftime(
    naive: &NaiveDateTime,
    offset: Option<FixedOffset>,
    fmt: &str,
) -> Result<String, Error> {
    let fmt = fmt.replace("%f", "%6f");
    let items: Vec<Item<'_>> = StrftimeItems::new(&fmt).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("invalid strftime format `{fmt}`"),
        ));
    }
    let (date, time) = (Some(naive.date()), Some(naive.time()));
    let mut out = String::new();
    let written = match offset {
        Some(o) => write!(
            out,
            "{}",
            DelayedFormat::new_with_offset(date, time, &o, items.iter())
        ),
        None => write!(out, "{}", DelayedFormat::new(date, time, items.iter())),
    };
    written.map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime format `{fmt}` needs a time zone this value lacks"),
        )
    })?;
    Ok(out)
}

impl fmt::Display for PyDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.py_str())
    }
}

impl Object for PyDateTime {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let dt = &self.0;
        Some(match key.as_str()? {
            "year" => Value::from(dt.year()),
            "month" => Value::from(dt.month()),
            "day" => Value::from(dt.day()),
            "hour" => Value::from(dt.hour()),
            "minute" => Value::from(dt.minute()),
            "second" => Value::from(dt.second()),
            "microsecond" => Value::from(dt.nanosecond() / 1000),
            "day_of_year" => Value::from(dt.ordinal()),
            "int_timestamp" => Value::from(dt.timestamp()),
            "timezone_name" | "tzname" => Value::from(dt.timezone().name()),
            _ => return None,
        })
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        let no_args = |args: &[Value]| -> Result<(), Error> { from_args::<()>(args) };
        match method {
            "strftime" => {
                let (fmt,): (&str,) = from_args(args)?;
                Ok(Value::from(self.strftime(fmt)?))
            }
            "isoformat" | "to_iso8601_string" => {
                no_args(args)?;
                Ok(Value::from(self.isoformat()))
            }
            "to_date_string" => {
                no_args(args)?;
                Ok(Value::from(self.format("%Y-%m-%d")))
            }
            "to_datetime_string" => {
                no_args(args)?;
                Ok(Value::from(self.format("%Y-%m-%d %H:%M:%S")))
            }
            "timestamp" => {
                no_args(args)?;
                let micros = self.0.timestamp_micros();
                Ok(Value::from(micros as f64 / 1e6))
            }
            "in_timezone" | "in_tz" | "astimezone" => {
                let (name,): (&str,) = from_args(args)?;
                let tz: Tz = name.parse().map_err(|_| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        format!("unknown time zone `{name}`"),
                    )
                })?;
                Ok(Value::from_object(PyDateTime(self.0.with_timezone(&tz))))
            }
            "add" | "subtract" => {
                let (kwargs,): (Kwargs,) = from_args(args)?;
                let sign = if method == "add" { 1 } else { -1 };
                Ok(Value::from_object(self.shifted(&kwargs, sign)?))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }

    fn custom_cmp(
        self: &Arc<Self>,
        other: &minijinja::value::DynObject,
    ) -> Option<std::cmp::Ordering> {
        let other = other.downcast_ref::<Self>()?;
        Some(self.0.cmp(&other.0))
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.py_str())
    }
}

// ---------------------------------------------------------------------------------------------
// macros

/// Airflow's `macros` module: the date helpers templates use.
#[derive(Debug)]
pub(crate) struct Macros;

impl Object for Macros {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "json" => Some(Value::from_object(JsonModule)),
            _ => None,
        }
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        match method {
            "ds_add" => {
                let (ds, days): (Value, i64) = from_args(args)?;
                Ok(Value::from(ds_add(&py_str(&ds), days)?))
            }
            "ds_format" => {
                let (ds, input, output): (Value, &str, &str) = from_args(args)?;
                Ok(Value::from(ds_format(&py_str(&ds), input, output)?))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<module 'airflow.macros'>")
    }
}

/// `macros.ds_add('2015-01-01', 5)` is `'2015-01-06'`.
pub(crate) fn ds_add(ds: &str, days: i64) -> Result<String, Error> {
    let date = NaiveDate::parse_from_str(ds, "%Y-%m-%d").map_err(|e| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("ds_add: `{ds}` is not a YYYY-MM-DD date: {e}"),
        )
    })?;
    let shifted = if days >= 0 {
        date.checked_add_days(Days::new(days.unsigned_abs()))
    } else {
        date.checked_sub_days(Days::new(days.unsigned_abs()))
    };
    shifted
        .map(|d| d.format("%Y-%m-%d").to_string())
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "ds_add: date out of range"))
}

/// `macros.ds_format('2015-01-01', '%Y-%m-%d', '%m-%d-%y')` is `'01-01-15'`.
pub(crate) fn ds_format(ds: &str, input: &str, output: &str) -> Result<String, Error> {
    let input = input.replace("%f", "%6f");
    let naive = NaiveDateTime::parse_from_str(ds, &input)
        .or_else(|_| {
            NaiveDate::parse_from_str(ds, &input).map(|d| d.and_time(chrono::NaiveTime::MIN))
        })
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("ds_format: `{ds}` does not match `{input}`: {e}"),
            )
        })?;
    strftime(&naive, None, output)
}

/// `macros.json.dumps` / `macros.json.loads`.
#[derive(Debug)]
struct JsonModule;

impl Object for JsonModule {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        match method {
            "dumps" => {
                let (value,): (Value,) = from_args(args)?;
                serde_json::to_string(&to_json(&value))
                    .map(Value::from)
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
            }
            "loads" => {
                let (text,): (&str,) = from_args(args)?;
                serde_json::from_str::<Json>(text)
                    .map(|j| json_value(&j))
                    .map_err(|e| {
                        Error::new(ErrorKind::InvalidOperation, format!("json.loads: {e}"))
                    })
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// var

/// Problems found while rendering that minijinja cannot carry in its own error: a missing
/// variable is an undefined value to the engine, but the user needs its name.
#[derive(Debug, Default)]
pub(crate) struct Notes {
    /// `(expression, message)`: `("var.value.x", "variable `x` does not exist")`.
    messages: Mutex<Vec<(String, String)>>,
}

impl Notes {
    fn push(&self, expression: String, message: String) {
        if let Ok(mut m) = self.messages.lock() {
            m.push((expression, message));
        }
    }

    pub(crate) fn clear(&self) {
        if let Ok(mut m) = self.messages.lock() {
            m.clear();
        }
    }

    /// The note about the undefined expression an error names (minijinja reports it as
    /// `` `var.value.x` is undefined ``).
    pub(crate) fn explain(&self, detail: &str) -> Option<String> {
        let m = self.messages.lock().ok()?;
        m.iter()
            .rev()
            .find(|(expr, _)| detail.contains(&format!("`{expr}`")))
            .map(|(_, message)| message.clone())
    }
}

/// `var.value` (strings) or `var.json` (parsed JSON).
#[derive(Debug)]
pub(crate) struct VarAccessor {
    pub(crate) variables: Arc<HashMap<String, String>>,
    pub(crate) json: bool,
    pub(crate) notes: Arc<Notes>,
    /// Raised by any lookup while the variables are not fetched yet.
    pub(crate) wanted: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl VarAccessor {
    fn lookup(&self, key: &str) -> Result<Option<Value>, String> {
        if let Some(flag) = &self.wanted {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // An environment override (`AIRFLOW_VAR_FOO`) answers for `foo` in any case.
        let Some(text) = self
            .variables
            .get(key)
            .or_else(|| self.variables.get(&key.to_uppercase()))
        else {
            return Ok(None);
        };
        if !self.json {
            return Ok(Some(Value::from(text.as_str())));
        }
        serde_json::from_str::<Json>(text)
            .map(|j| Some(json_value(&j)))
            .map_err(|e| format!("variable `{key}` is not valid JSON: {e}"))
    }
}

impl Object for VarAccessor {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        let expression = format!("var.{}.{key}", if self.json { "json" } else { "value" });
        match self.lookup(key) {
            Ok(Some(v)) => Some(v),
            // Not undefined, which `default` would paper over: a value that fails the
            // template wherever it is printed, as Airflow's lookup fails at once.
            Ok(None) => Some(Missing::variable(key)),
            Err(message) => {
                self.notes.push(expression, message);
                None
            }
        }
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        if method != "get" {
            return Err(Error::from(ErrorKind::UnknownMethod));
        }
        let (key, default): (&str, Option<Value>) = from_args(args)?;
        match self.lookup(key) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Ok(default.unwrap_or(Value::from(()))),
            Err(message) => Err(Error::new(ErrorKind::InvalidOperation, message)),
        }
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.json {
            "<var.json>"
        } else {
            "<var.value>"
        })
    }
}

/// A variable or connection that does not exist. Printing it (directly, or through `default`
/// or any other filter that passes it on) or calling it fails the template with Airflow's
/// message; `var.json.missing.field` is as missing as `var.json.missing`.
#[derive(Debug)]
pub(crate) struct Missing {
    /// What it is, for the template's repr (`variable x`).
    what: String,
    /// Airflow's error.
    message: String,
}

impl Missing {
    fn variable(key: &str) -> Value {
        Value::from_object(Missing {
            what: format!("variable {key}"),
            message: format!("VARIABLE_NOT_FOUND: Variable {key} not found"),
        })
    }

    fn connection(conn_id: &str) -> Value {
        Value::from_object(Missing {
            what: format!("connection {conn_id}"),
            message: format!("CONNECTION_NOT_FOUND: The conn_id `{conn_id}` isn't defined"),
        })
    }

    fn error(&self) -> Error {
        Error::new(ErrorKind::InvalidOperation, self.message.clone())
    }
}

impl Object for Missing {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, _key: &Value) -> Option<Value> {
        Some(Value::from_dyn_object(self.clone()))
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        _method: &str,
        _args: &[Value],
    ) -> Result<Value, Error> {
        Err(self.error())
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<missing {}>", self.what)
    }
}

// ---------------------------------------------------------------------------------------------
// conn

/// `conn`: `{{ conn.my_db.host }}`, `{{ conn.get('my_db').login }}`, with `port`, `schema`,
/// `password`, `conn_type`, `description`, `extra` and `extra_dejson`, as Airflow's
/// `ConnectionAccessor`.
#[derive(Debug)]
pub(crate) struct ConnAccessor {
    pub(crate) connections: Arc<HashMap<String, flow_model::Connection>>,
    /// While the connections are not resolved yet: the ids templates asked for.
    pub(crate) wanted: Option<Arc<Mutex<std::collections::BTreeSet<String>>>>,
}

impl ConnAccessor {
    fn lookup(&self, conn_id: &str) -> Value {
        if let Some(wanted) = &self.wanted
            && let Ok(mut w) = wanted.lock()
        {
            w.insert(conn_id.to_owned());
        }
        match self.connections.get(conn_id) {
            Some(c) => connection_value(c),
            None => Missing::connection(conn_id),
        }
    }
}

fn connection_value(c: &flow_model::Connection) -> Value {
    let text = |v: &Option<String>| v.as_deref().map_or(Value::from(()), Value::from);
    map(vec![
        ("conn_id", Value::from(c.conn_id.as_str())),
        ("conn_type", Value::from(c.conn_type.as_str())),
        ("description", text(&c.description)),
        ("host", text(&c.host)),
        ("login", text(&c.login)),
        ("password", text(&c.password)),
        ("schema", text(&c.schema)),
        ("port", c.port.map_or(Value::from(()), Value::from)),
        ("extra", text(&c.extra)),
        ("extra_dejson", json_value(&Json::Object(c.extra_json()))),
    ])
}

impl Object for ConnAccessor {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(self.lookup(key.as_str()?))
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        if method != "get" {
            return Err(Error::from(ErrorKind::UnknownMethod));
        }
        let (conn_id,): (&str,) = from_args(args)?;
        Ok(self.lookup(conn_id))
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<conn>")
    }
}

// ---------------------------------------------------------------------------------------------
// ti

/// `ti` / `task_instance`.
#[derive(Debug)]
pub(crate) struct TaskInstanceObject {
    pub(crate) dag_id: String,
    pub(crate) task_id: String,
    pub(crate) run_id: String,
    pub(crate) map_index: i64,
    pub(crate) try_number: u32,
    pub(crate) max_tries: u32,
    pub(crate) xcoms: Arc<XcomMap>,
}

impl Object for TaskInstanceObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "dag_id" => Value::from(self.dag_id.as_str()),
            "task_id" => Value::from(self.task_id.as_str()),
            "run_id" => Value::from(self.run_id.as_str()),
            "map_index" => Value::from(self.map_index),
            "try_number" => Value::from(self.try_number),
            "max_tries" => Value::from(self.max_tries),
            "state" => Value::from("running"),
            _ => return None,
        })
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        if method != "xcom_pull" {
            return Err(Error::from(ErrorKind::UnknownMethod));
        }
        let (positional, kwargs): (&[Value], Kwargs) = from_args(args)?;
        let arg = |i: usize, name: &str| -> Result<Option<Value>, Error> {
            let named: Option<Value> = kwargs.get(name)?;
            match (positional.get(i), named) {
                (Some(_), Some(_)) => Err(Error::new(
                    ErrorKind::TooManyArguments,
                    format!("xcom_pull: `{name}` given twice"),
                )),
                (Some(v), None) => Ok(Some(v.clone())),
                (None, v) => Ok(v),
            }
            .map(|v| v.filter(|v| !v.is_none()))
        };
        let task_ids = match arg(0, "task_ids")? {
            None => TaskIds::All,
            Some(v) if v.kind() == ValueKind::String => TaskIds::One(py_str(&v)),
            Some(v) => TaskIds::Many(v.try_iter()?.map(|t| py_str(&t)).collect()),
        };
        if let Some(dag_id) = arg(1, "dag_id")?
            && py_str(&dag_id) != self.dag_id
        {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "xcom_pull: pulling from another DAG is not supported",
            ));
        }
        let key = arg(2, "key")?.map_or_else(|| RETURN_VALUE.to_owned(), |k| py_str(&k));
        if let Some(prior) = arg(3, "include_prior_dates")?
            && prior.is_true()
        {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "xcom_pull: include_prior_dates is not supported",
            ));
        }
        let map_indexes = match kwargs.get::<Option<Value>>("map_indexes")? {
            None => MapIndexes::Any,
            Some(v) if v.is_none() => MapIndexes::Any,
            Some(v) if v.kind() == ValueKind::Number => {
                MapIndexes::One(v.as_i64().ok_or_else(|| {
                    Error::new(ErrorKind::InvalidOperation, "map_indexes must be integers")
                })?)
            }
            Some(v) => MapIndexes::Many(
                v.try_iter()?
                    .map(|i| {
                        i.as_i64().ok_or_else(|| {
                            Error::new(ErrorKind::InvalidOperation, "map_indexes must be integers")
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        let default: Option<Value> = kwargs.get("default")?;
        if let Some(run_id) = kwargs.get::<Option<Value>>("run_id")?
            && !run_id.is_none()
            && py_str(&run_id) != self.run_id
        {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "xcom_pull: pulling from another run is not supported",
            ));
        }
        kwargs.assert_all_used()?;
        Ok(match self.xcoms.pull(&task_ids, &key, &map_indexes) {
            Some(v) => json_value(&v),
            None => default.unwrap_or(Value::from(())),
        })
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<TaskInstance: {}.{} {} [running]>",
            self.dag_id, self.task_id, self.run_id
        )
    }
}

/// A map of names to values, for small context objects (`dag`, `task`, `dag_run`).
pub(crate) fn map(entries: Vec<(&'static str, Value)>) -> Value {
    Value::from(entries.into_iter().collect::<BTreeMap<&str, Value>>())
}

/// Evaluates a Jinja expression (a check such as `response_check` or a SQL sensor's `success`)
/// with `vars` as its names.
pub(crate) fn eval_expression(expression: &str, vars: &Json) -> Result<Value, String> {
    let env = Environment::new();
    let expr = env
        .compile_expression(expression)
        .map_err(|e| format!("not a valid expression: {e}"))?;
    expr.eval(json_value(vars)).map_err(|e| e.to_string())
}

/// Python's `bool()` of a JSON value: what a returned condition means.
pub(crate) fn py_truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_repr_matches_python() {
        let v = json_value(&serde_json::json!({"a": [1, 2.5, true, null, "it's"], "b": "x\ny"}));
        assert_eq!(
            py_repr(&v),
            r#"{'a': [1, 2.5, True, None, "it's"], 'b': 'x\ny'}"#
        );
        assert_eq!(py_str(&Value::from("plain")), "plain");
    }

    #[test]
    fn macros() {
        assert_eq!(ds_add("2015-01-01", 5).unwrap(), "2015-01-06");
        assert_eq!(ds_add("2015-01-06", -5).unwrap(), "2015-01-01");
        assert_eq!(
            ds_format("2015-01-01", "%Y-%m-%d", "%m-%d-%y").unwrap(),
            "01-01-15"
        );
        assert_eq!(
            ds_format("1/5/2015 10:30", "%m/%d/%Y %H:%M", "%Y%m%dT%H%M").unwrap(),
            "20150105T1030"
        );
        assert!(ds_add("2015-13-01", 1).is_err());
        assert!(ds_format("2015-01-01", "%Y-%m-%d", "%Q").is_err());
    }
}
