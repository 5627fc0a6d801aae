//! The operators flow knows, by short name and by every Airflow class path that means the same.

/// `(short name, accepted aliases)`. Airflow 2 paths, Airflow 3 provider paths, and bare class
/// names all resolve to the same operator so that existing dag-factory files load unchanged.
pub const OPERATORS: &[(&str, &[&str])] = &[
    (
        "bash",
        &[
            "BashOperator",
            "airflow.operators.bash.BashOperator",
            "airflow.operators.bash_operator.BashOperator",
            "airflow.providers.standard.operators.bash.BashOperator",
        ],
    ),
    (
        "python",
        &[
            "PythonOperator",
            "airflow.operators.python.PythonOperator",
            "airflow.operators.python_operator.PythonOperator",
            "airflow.providers.standard.operators.python.PythonOperator",
        ],
    ),
    (
        "empty",
        &[
            "EmptyOperator",
            "DummyOperator",
            "airflow.operators.empty.EmptyOperator",
            "airflow.operators.dummy.DummyOperator",
            "airflow.operators.dummy_operator.DummyOperator",
            "airflow.providers.standard.operators.empty.EmptyOperator",
        ],
    ),
    (
        "kafka_produce",
        &[
            "ProduceToTopicOperator",
            "airflow.providers.apache.kafka.operators.produce.ProduceToTopicOperator",
        ],
    ),
    (
        "kafka_consume",
        &[
            "ConsumeFromTopicOperator",
            "airflow.providers.apache.kafka.operators.consume.ConsumeFromTopicOperator",
        ],
    ),
    (
        "kafka_await_message",
        &[
            "AwaitMessageSensor",
            "airflow.providers.apache.kafka.sensors.kafka.AwaitMessageSensor",
        ],
    ),
    (
        "time_delta",
        &[
            "TimeDeltaSensor",
            "TimeDeltaSensorAsync",
            "airflow.sensors.time_delta.TimeDeltaSensor",
            "airflow.sensors.time_delta.TimeDeltaSensorAsync",
            "airflow.providers.standard.sensors.time_delta.TimeDeltaSensor",
            "airflow.providers.standard.sensors.time_delta.TimeDeltaSensorAsync",
        ],
    ),
    (
        "date_time",
        &[
            "DateTimeSensor",
            "DateTimeSensorAsync",
            "airflow.sensors.date_time.DateTimeSensor",
            "airflow.sensors.date_time.DateTimeSensorAsync",
            "airflow.providers.standard.sensors.date_time.DateTimeSensor",
            "airflow.providers.standard.sensors.date_time.DateTimeSensorAsync",
        ],
    ),
];

/// TaskFlow decorators that make a Python task out of `python_callable`.
pub const DECORATORS: &[&str] = &[
    "task",
    "airflow.decorators.task",
    "airflow.decorators.python_task",
    "airflow.sdk.task",
    "airflow.sdk.definitions.decorators.task",
    "airflow.providers.standard.decorators.python.python_task",
];

/// Resolves an operator name or class path to its short name.
pub fn resolve(name: &str) -> Option<&'static str> {
    let name = name.trim();
    OPERATORS
        .iter()
        .find(|(short, aliases)| *short == name || aliases.contains(&name))
        .map(|(short, _)| *short)
}

/// `bash, python, empty`, for error messages.
pub fn known_list() -> String {
    OPERATORS
        .iter()
        .map(|(short, _)| *short)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn is_decorator(name: &str) -> bool {
    DECORATORS.contains(&name.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_aliases() {
        assert_eq!(resolve("bash"), Some("bash"));
        assert_eq!(
            resolve("airflow.providers.standard.operators.bash.BashOperator"),
            Some("bash")
        );
        assert_eq!(
            resolve("airflow.operators.dummy_operator.DummyOperator"),
            Some("empty")
        );
        assert_eq!(
            resolve("airflow.operators.python.PythonOperator"),
            Some("python")
        );
        assert_eq!(resolve("airflow.operators.bash.BashOperatorr"), None);
        assert!(is_decorator("airflow.sdk.task"));
    }
}
