//! Rendering templated fields with Airflow's context, from DAGs written as YAML.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::{TempDir, context, load};
use flow_executor::{RenderedTask, render_task};
use serde_json::{Value as Json, json};

fn bash_command(rendered: RenderedTask) -> String {
    match rendered {
        RenderedTask::Bash { command, .. } => command,
        other => panic!("not bash: {other:?}"),
    }
}

/// One bash task `t` with `command`; returns the rendered command or the error text.
fn render_bash(
    command: &str,
    setup: impl FnOnce(&mut flow_executor::RunContext),
) -> Result<String, String> {
    let dags = TempDir::new();
    let yaml = format!(
        "d:\n  start_date: 2025-01-01\n  schedule: '@daily'\n  params: {{region: eu, limit: 100, flag: true, nested: {{a: [1, x]}}}}\n  default_args: {{owner: data-eng}}\n  tasks:\n    t:\n      operator: bash\n      bash_command: {}\n",
        serde_json::to_string(command).unwrap()
    );
    let dag = load(&dags, &yaml);
    let mut ctx = context(&dag, "t", dags.path());
    setup(&mut ctx);
    render_task(dag.task("t").unwrap(), &ctx)
        .map(bash_command)
        .map_err(|e| e.to_string())
}

fn ok(command: &str) -> String {
    render_bash(command, |_| {}).unwrap()
}

#[test]
fn context_variables() {
    let cases = [
        ("{{ ds }}", "2025-01-01"),
        ("{{ ds_nodash }}", "20250101"),
        ("{{ ts }}", "2025-01-01T00:00:00+00:00"),
        ("{{ ts_nodash }}", "20250101T000000"),
        ("{{ ts_nodash_with_tz }}", "20250101T000000+0000"),
        ("{{ logical_date }}", "2025-01-01 00:00:00+00:00"),
        ("{{ execution_date }}", "2025-01-01 00:00:00+00:00"),
        ("{{ data_interval_start }}", "2025-01-01 00:00:00+00:00"),
        ("{{ data_interval_end }}", "2025-01-02 00:00:00+00:00"),
        (
            "{{ yesterday_ds }} {{ tomorrow_ds_nodash }}",
            "2024-12-31 20250102",
        ),
        ("{{ run_id }}", "scheduled__2025-01-01T00:00:00+00:00"),
        (
            "{{ dag_run.run_id }}",
            "scheduled__2025-01-01T00:00:00+00:00",
        ),
        (
            "{{ dag_run.run_type }} {{ dag_run.external_trigger }}",
            "scheduled False",
        ),
        ("{{ dag_run.logical_date }}", "2025-01-01 00:00:00+00:00"),
        (
            "{{ dag_run.start_date }}",
            "2025-01-02 00:00:05.250000+00:00",
        ),
        ("{{ dag_run.conf }}", "{}"),
        (
            "{{ dag.dag_id }} {{ dag.owner }} {{ dag.timezone }}",
            "d data-eng Europe/Berlin",
        ),
        (
            "{{ task.task_id }} {{ task.owner }} {{ task.task_type }}",
            "t data-eng BashOperator",
        ),
        (
            "{{ ti.task_id }} {{ ti.try_number }} {{ ti.map_index }} {{ ti.dag_id }}",
            "t 1 -1 d",
        ),
        (
            "{{ task_instance.run_id }}",
            "scheduled__2025-01-01T00:00:00+00:00",
        ),
        ("{{ task_instance_key_str }}", "d__t__20250101"),
        (
            "{{ params.region }} {{ params.limit }} {{ params['region'] }}",
            "eu 100 eu",
        ),
        (
            "{{ params.flag }} {{ params.nested }}",
            "True {'a': [1, 'x']}",
        ),
        (
            "{{ macros.ds_add(ds, 5) }} {{ macros.ds_add(ds, -params.limit) }}",
            "2025-01-06 2024-09-23",
        ),
        (
            "{{ macros.ds_format(ds, '%Y-%m-%d', '%d/%m/%y') }}",
            "01/01/25",
        ),
        ("{{ macros.json.dumps(params.nested) }}", r#"{"a":[1,"x"]}"#),
        (
            "{{ logical_date.strftime('%Y/%m/%d %H:%M:%S.%f') }}",
            "2025/01/01 00:00:00.000000",
        ),
        ("{{ logical_date.year }}-{{ logical_date.month }}", "2025-1"),
        (
            "{{ logical_date.add(days=1, hours=2) }}",
            "2025-01-02 02:00:00+00:00",
        ),
        ("{{ logical_date.subtract(months=1) | ds }}", "2024-12-01"),
        (
            "{{ logical_date.in_timezone('Europe/Berlin') }}",
            "2025-01-01 01:00:00+01:00",
        ),
        ("{{ data_interval_end | ts_nodash }}", "20250102T000000"),
        (
            "{{ logical_date.isoformat() }}",
            "2025-01-01T00:00:00+00:00",
        ),
        ("{{ data_interval_start < data_interval_end }}", "True"),
        (
            "{% if params.flag %}yes{% endif %} {{ none }} {{ 'x' if false }}",
            "yes None ",
        ),
        ("{{ var.value.get('missing', 'fallback') }}", "fallback"),
        ("{{ undefined_name is defined }}", "False"),
        ("{{ params.nope | default('d') }}", "d"),
        ("plain text, no template\n", "plain text, no template"),
    ];
    for (template, expected) in cases {
        assert_eq!(ok(template), expected, "template {template:?}");
    }
}

#[test]
fn variables() {
    let rendered = render_bash(
        "{{ var.value.region }} {{ var.json.cfg.rows }} {{ var.json.cfg }}",
        |ctx| {
            ctx.variables.insert("region".into(), "eu-west".into());
            ctx.variables
                .insert("cfg".into(), r#"{"rows": 5, "on": false}"#.into());
        },
    );
    assert_eq!(rendered.unwrap(), "eu-west 5 {'rows': 5, 'on': False}");

    // A missing variable fails the task, as in Airflow, whatever filter follows;
    // `.get(key, fallback)` is the way to a default.
    let err = render_bash("echo {{ var.value.nope }}", |_| {}).unwrap_err();
    assert_eq!(
        err,
        "bash_command: VARIABLE_NOT_FOUND: Variable nope not found"
    );
    let err = render_bash("{{ var.value.nope | default('x') }}", |_| {}).unwrap_err();
    assert_eq!(
        err,
        "bash_command: VARIABLE_NOT_FOUND: Variable nope not found"
    );
    let err = render_bash("{{ var.json.nope.field }}", |_| {}).unwrap_err();
    assert_eq!(
        err,
        "bash_command: VARIABLE_NOT_FOUND: Variable nope not found"
    );
    assert_eq!(
        render_bash("{{ var.value.get('nope', 'fb') }}", |_| {}).unwrap(),
        "fb"
    );
    let err = render_bash("echo {{ var.json.bad }}", |ctx| {
        ctx.variables.insert("bad".into(), "{not json".into());
    })
    .unwrap_err();
    assert!(
        err.starts_with("bash_command: variable `bad` is not valid JSON"),
        "{err}"
    );
}

#[test]
fn xcom_pull_forms() {
    let setup = |ctx: &mut flow_executor::RunContext| {
        std::sync::Arc::make_mut(&mut ctx.xcoms).insert("extract", "return_value", -1, json!("42"));
        std::sync::Arc::make_mut(&mut ctx.xcoms).insert("extract", "rows", -1, json!(7));
        std::sync::Arc::make_mut(&mut ctx.xcoms).insert(
            "train",
            "return_value",
            -1,
            json!({"model": "m1", "accuracy": 0.9}),
        );
        for (i, v) in ["a", "b", "c"].iter().enumerate() {
            std::sync::Arc::make_mut(&mut ctx.xcoms).insert(
                "fan",
                "return_value",
                i as i64,
                json!(v),
            );
        }
    };
    let cases = [
        ("{{ ti.xcom_pull(task_ids='extract') }}", "42"),
        ("{{ ti.xcom_pull('extract') }}", "42"),
        (
            "{{ task_instance.xcom_pull(task_ids='extract', key='rows') }}",
            "7",
        ),
        ("{{ ti.xcom_pull(key='rows') }}", "7"),
        (
            "{{ ti.xcom_pull(task_ids=['extract', 'train']) }}",
            "['42', {'model': 'm1', 'accuracy': 0.9}]",
        ),
        ("{{ ti.xcom_pull(task_ids='train')['accuracy'] }}", "0.9"),
        ("{{ ti.xcom_pull(task_ids='train').model }}", "m1"),
        ("{{ ti.xcom_pull(task_ids='fan') }}", "['a', 'b', 'c']"),
        ("{{ ti.xcom_pull(task_ids='fan', map_indexes=1) }}", "b"),
        (
            "{{ ti.xcom_pull(task_ids='fan', map_indexes=[2, 0]) }}",
            "['c', 'a']",
        ),
        ("{{ ti.xcom_pull(task_ids='missing') }}", "None"),
        (
            "{{ ti.xcom_pull(task_ids='missing', default='dflt') }}",
            "dflt",
        ),
        (
            "{{ ti.xcom_pull(task_ids=['missing', 'extract']) }}",
            "[None, '42']",
        ),
    ];
    for (template, expected) in cases {
        assert_eq!(
            render_bash(template, setup).unwrap(),
            expected,
            "template {template:?}"
        );
    }
    let err = render_bash("{{ ti.xcom_pull(task_ids='x', bogus=1) }}", setup).unwrap_err();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn undefined_names_are_errors_naming_the_field() {
    let err = render_bash("echo {{ foo }}", |_| {}).unwrap_err();
    assert_eq!(err, "bash_command: undefined value: `foo` is undefined");
    let err = render_bash("echo {{ params.nope }}", |_| {}).unwrap_err();
    assert_eq!(
        err,
        "bash_command: undefined value: `params.nope` is undefined"
    );
    let err = render_bash("echo {{ foo.bar }}", |_| {}).unwrap_err();
    assert!(err.starts_with("bash_command: undefined value"), "{err}");
    let err = render_bash("line one\necho {{ dss }}", |_| {}).unwrap_err();
    assert_eq!(
        err,
        "bash_command: undefined value: `dss` is undefined (template line 2)"
    );
    let err = render_bash("{% if missing %}x{% endif %}", |_| {}).unwrap_err();
    assert!(err.starts_with("bash_command: undefined value"), "{err}");
    // No logical date (an Airflow 3 style manual run): the date names are absent.
    let err = render_bash("{{ ds }}", |ctx| ctx.logical_date = None).unwrap_err();
    assert_eq!(err, "bash_command: undefined value: `ds` is undefined");
}

#[test]
fn bash_env_cwd_and_template_files() {
    let dags = TempDir::new();
    std::fs::create_dir(dags.path().join("scripts")).unwrap();
    dags.write("scripts/run.sh", "echo from file {{ ds }}\n");
    let dag = load(
        &dags,
        r#"
d:
  start_date: 2025-01-01
  tasks:
    envs:
      operator: bash
      bash_command: echo hi
      env: {DAY: "{{ ds }}", PLAIN: x}
      append_env: true
      cwd: "/tmp/{{ ds_nodash }}"
      skip_on_exit_code: [99, 100]
    file:
      operator: bash
      bash_command: scripts/run.sh
    missing_file:
      operator: bash
      bash_command: nothing/here.sh
    bad_env:
      operator: bash
      bash_command: echo
      env: {X: "{{ nope }}"}
"#,
    );
    let render = |id: &str| render_task(dag.task(id).unwrap(), &context(&dag, id, dags.path()));
    let rendered = render("envs").unwrap();
    match &rendered {
        RenderedTask::Bash {
            env,
            append_env,
            cwd,
            skip_on_exit_code,
            ..
        } => {
            let env = env.as_ref().unwrap();
            assert_eq!(env["DAY"], "2025-01-01");
            assert_eq!(env["PLAIN"], "x");
            assert!(append_env);
            assert_eq!(cwd.as_deref(), Some("/tmp/20250101"));
            assert_eq!(skip_on_exit_code, &[99, 100]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rendered.fields(),
        vec![
            ("bash_command".to_owned(), "echo hi".to_owned()),
            (
                "env".to_owned(),
                r#"{"DAY":"2025-01-01","PLAIN":"x"}"#.to_owned()
            ),
            ("cwd".to_owned(), "/tmp/20250101".to_owned()),
        ]
    );
    assert_eq!(
        bash_command(render("file").unwrap()),
        "echo from file 2025-01-01"
    );
    let err = render("missing_file").unwrap_err();
    assert_eq!(err.field, "bash_command");
    assert!(
        err.message
            .contains("template file `nothing/here.sh` not found"),
        "{err}"
    );
    assert_eq!(
        render("bad_env").unwrap_err().to_string(),
        "env.X: undefined value: `nope` is undefined"
    );
}

#[test]
fn python_arguments_render_recursively() {
    let dags = TempDir::new();
    let dag = load(
        &dags,
        r#"
d:
  start_date: 2025-01-01
  params: {n: 3}
  tasks:
    up:
      operator: bash
      bash_command: echo 1
    py:
      operator: python
      python_callable: mod.fn
      op_args: ["{{ ds }}", 5, ["{{ params.n }}", {deep: "{{ run_id }}"}]]
      op_kwargs: {day: "{{ ds_nodash }}", raw: "no template", n: "{{ params.n }}"}
      templates_dict: {query: "select '{{ ds }}'"}
      dependencies: [up]
    bad:
      operator: python
      python_callable: mod.fn
      op_kwargs: {x: ["{{ oops }}"]}
    taskflow:
      decorator: airflow.decorators.task
      python_callable: mod.fn
      number: +up
      label: "{{ ds }}"
      dependencies: [up]
"#,
    );
    let mut ctx = context(&dag, "py", dags.path());
    std::sync::Arc::make_mut(&mut ctx.xcoms).insert("up", "return_value", -1, json!("1"));
    match render_task(dag.task("py").unwrap(), &ctx).unwrap() {
        RenderedTask::Python {
            op_args,
            op_kwargs,
            templates_dict,
            ..
        } => {
            assert_eq!(
                json!(op_args),
                json!(["2025-01-01", 5, ["3", {"deep": "scheduled__2025-01-01T00:00:00+00:00"}]])
            );
            assert_eq!(
                json!(op_kwargs),
                json!({"day": "20250101", "raw": "no template", "n": "3"})
            );
            assert_eq!(
                json!(templates_dict),
                json!({"query": "select '2025-01-01'"})
            );
        }
        other => panic!("{other:?}"),
    }
    // Native rendering keeps types, as Airflow's render_template_as_native_obj.
    ctx.render_template_as_native_obj = true;
    match render_task(dag.task("py").unwrap(), &ctx).unwrap() {
        RenderedTask::Python {
            op_args, op_kwargs, ..
        } => {
            assert_eq!(
                op_args[2],
                json!([3, {"deep": "scheduled__2025-01-01T00:00:00+00:00"}])
            );
            assert_eq!(op_kwargs["n"], json!(3));
            assert_eq!(op_kwargs["day"], json!(20250101));
        }
        other => panic!("{other:?}"),
    }
    let err =
        render_task(dag.task("bad").unwrap(), &context(&dag, "bad", dags.path())).unwrap_err();
    assert_eq!(
        err.to_string(),
        "op_kwargs.x[0]: undefined value: `oops` is undefined"
    );

    // A `+task` argument is that task's return value, passed as data (not rendered).
    let mut ctx = context(&dag, "taskflow", dags.path());
    std::sync::Arc::make_mut(&mut ctx.xcoms).insert(
        "up",
        "return_value",
        -1,
        json!("{{ not rendered }}"),
    );
    match render_task(dag.task("taskflow").unwrap(), &ctx).unwrap() {
        RenderedTask::Python { op_kwargs, .. } => {
            assert_eq!(
                json!(op_kwargs),
                json!({"number": "{{ not rendered }}", "label": "2025-01-01"})
            );
        }
        other => panic!("{other:?}"),
    }
    let err = render_task(
        dag.task("taskflow").unwrap(),
        &context(&dag, "taskflow", dags.path()),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "op_kwargs.number: task `up` has no `return_value` XCom in this run"
    );
}

#[test]
fn mapped_tasks_get_their_element() {
    let dags = TempDir::new();
    let dag = load(
        &dags,
        r#"
d:
  start_date: 2025-01-01
  tasks:
    numbers:
      decorator: airflow.decorators.task
      python_callable: mod.numbers
    double:
      decorator: airflow.decorators.task
      python_callable: mod.double
      expand: {number: +numbers}
      partial: {label: "day {{ ds }}"}
      dependencies: [numbers]
    classic:
      operator: python
      python_callable: mod.fn
      partial: {op_kwargs: {fixed: 1}}
      expand: {op_args: [[1, "{{ ds }}"], [2, "b"]]}
"#,
    );
    let mut ctx = context(&dag, "double", dags.path());
    std::sync::Arc::make_mut(&mut ctx.xcoms).insert(
        "numbers",
        "return_value",
        -1,
        json!([10, 20, 30]),
    );
    ctx.map_index = 2;
    match render_task(dag.task("double").unwrap(), &ctx).unwrap() {
        RenderedTask::Python { op_kwargs, .. } => {
            assert_eq!(
                json!(op_kwargs),
                json!({"label": "day 2025-01-01", "number": 30})
            );
        }
        other => panic!("{other:?}"),
    }
    ctx.map_index = 3;
    let err = render_task(dag.task("double").unwrap(), &ctx).unwrap_err();
    assert_eq!(
        err.to_string(),
        "expand: map_index 3 is out of range (3 instances)"
    );

    let mut ctx = context(&dag, "classic", dags.path());
    ctx.map_index = 0;
    match render_task(dag.task("classic").unwrap(), &ctx).unwrap() {
        RenderedTask::Python {
            op_args, op_kwargs, ..
        } => {
            assert_eq!(json!(op_args), json!([1, "2025-01-01"]));
            assert_eq!(json!(op_kwargs), json!({"fixed": 1}));
        }
        other => panic!("{other:?}"),
    }
}

/// Several `expand` arguments make their cross product, the last one varying fastest (as
/// Airflow 3.3.2 does); a mapping expands to its (key, value) pairs; `expand_kwargs` gives
/// each instance a mapping of arguments.
#[test]
fn cross_products_mappings_and_expand_kwargs() {
    let dags = TempDir::new();
    let dag = load(
        &dags,
        r#"
d:
  start_date: 2025-01-01
  tasks:
    src:
      operator: bash
      bash_command: echo
    cross:
      decorator: airflow.decorators.task
      python_callable: mod.f
      expand: {a: [1, 2], b: [x, y, z]}
    pairs:
      decorator: airflow.decorators.task
      python_callable: mod.f
      expand: {kv: {k1: 1, k2: 2}}
    kwargs:
      operator: bash
      expand_kwargs:
        - {bash_command: "echo one {{ ti.map_index }}", env: {N: "1"}}
        - {bash_command: "echo two {{ ti.map_index }}"}
    from_xcom:
      operator: bash
      expand_kwargs: +src
"#,
    );
    let python_kwargs = |task: &str, map_index: i64| {
        let mut ctx = context(&dag, task, dags.path());
        ctx.map_index = map_index;
        match render_task(dag.task(task).unwrap(), &ctx).unwrap() {
            RenderedTask::Python { op_kwargs, .. } => json!(op_kwargs),
            other => panic!("{other:?}"),
        }
    };
    let combos: Vec<Json> = (0..6).map(|i| python_kwargs("cross", i)).collect();
    assert_eq!(
        combos,
        [
            json!({"a": 1, "b": "x"}),
            json!({"a": 1, "b": "y"}),
            json!({"a": 1, "b": "z"}),
            json!({"a": 2, "b": "x"}),
            json!({"a": 2, "b": "y"}),
            json!({"a": 2, "b": "z"}),
        ]
    );
    assert_eq!(python_kwargs("pairs", 1), json!({"kv": ["k2", 2]}));

    let bash_of = |task: &str, map_index: i64, xcom: Option<Json>| {
        let mut ctx = context(&dag, task, dags.path());
        ctx.map_index = map_index;
        if let Some(x) = xcom {
            std::sync::Arc::make_mut(&mut ctx.xcoms).insert("src", "return_value", -1, x);
        }
        render_task(dag.task(task).unwrap(), &ctx).map(|r| match r {
            RenderedTask::Bash { command, env, .. } => (command, env),
            other => panic!("{other:?}"),
        })
    };
    let (command, env) = bash_of("kwargs", 0, None).unwrap();
    assert_eq!(command, "echo one 0");
    assert_eq!(env.unwrap().get("N").map(String::as_str), Some("1"));
    assert_eq!(bash_of("kwargs", 1, None).unwrap().0, "echo two 1");
    // From an XCom: a list of mappings works; a mapping fails every instance with Airflow's
    // message.
    let listed = json!([{"bash_command": "echo a"}, {"bash_command": "echo b"}]);
    assert_eq!(bash_of("from_xcom", 1, Some(listed)).unwrap().0, "echo b");
    assert_eq!(
        bash_of("from_xcom", 0, Some(json!({"bash_command": "echo a"})))
            .unwrap_err()
            .to_string(),
        "expand_kwargs: expand_kwargs() expects a list[dict], not dict"
    );
}
