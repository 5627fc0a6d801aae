//! flow-dag: YAML DAG files to validated DAGs.
//!
//! Reads a dags folder (dag-factory format, see DESIGN.md section 3), applies defaults, validates
//! everything it can at load time and returns the DAGs plus diagnostics with file, line and
//! column. Also owns schedules and timetables (when runs are due) and the JSON Schema of the
//! format. It does no database or network I/O; the only I/O is reading the dags folder.

pub mod assets;
mod build;
pub mod callbacks;
pub mod dag;
pub mod de;
pub mod diagnostic;
pub mod duration;
pub mod loader;
pub mod operators;
pub mod params;
pub mod schedule;
pub mod schema;
pub mod spec;
pub mod template;
pub mod yaml;

pub use dag::{
    Arg, BashOperator, BashSensor, BranchDateTimeOperator, BranchDayOfWeekOperator, Condition,
    DEFAULT_KAFKA_CONN_ID, Dag, DateTimeBound, DateTimeSensor, EmailOperator, ExternalTarget,
    ExternalTaskMarker, ExternalTaskSensor, FileSensor, HttpOperator, HttpOptions, HttpRequest,
    HttpSensor, KafkaAwaitMessageSensor, KafkaConsumeOperator, KafkaMessages, KafkaProduceOperator,
    KafkaTrigger, Mapping, Operator, Param, PythonCallable, PythonOperator, PythonSensor, Sensor,
    SensorMode, ShortCircuitOperator, SqlOperator, SqlSensor, SqlStatements, Task, TaskGroup,
    TimeDeltaSensor, TriggerDagRunOperator, WeightRule, is_sql_file, mapped_length, python_type,
};
pub use diagnostic::{Diagnostic, Severity};
pub use loader::{DagBag, LoadOptions, LoadedFile, find_dag_files, load_dags, load_file};
