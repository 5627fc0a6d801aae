"""The official Airflow python client (apache-airflow-client, from PyPI, unpatched) against a
running flow. Run by crates/cli/tests/airflow_client.rs with FLOW_URL, FLOW_USER, FLOW_PASSWORD.
Exits non-zero on the first thing that does not work as it does against Airflow."""

import json
import os
import time
import urllib.request

import airflow_client.client as client
from airflow_client.client.api import dag_api, dag_run_api, task_instance_api, x_com_api

base = os.environ["FLOW_URL"]
body = json.dumps({"username": os.environ["FLOW_USER"], "password": os.environ["FLOW_PASSWORD"]})
request = urllib.request.Request(
    base + "/auth/token",
    data=body.encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(request) as response:
    assert response.status == 201, response.status
    token = json.loads(response.read())["access_token"]

config = client.Configuration(host=base, access_token=token)
with client.ApiClient(config) as api:
    dags = dag_api.DAGApi(api)
    listed = dags.get_dags(limit=50)
    ids = [d.dag_id for d in listed.dags]
    assert "etl_daily" in ids, ids
    assert listed.total_entries == len(ids), listed.total_entries

    dag = dags.patch_dag("etl_daily", client.DAGPatchBody(is_paused=False))
    assert dag.is_paused is False

    runs = dag_run_api.DagRunApi(api)
    run = runs.trigger_dag_run(
        "etl_daily",
        client.TriggerDAGRunPostBody(conf={"region": "us"}, logical_date=None),
    )
    assert run is not None and run.dag_run_id, run
    assert run.conf == {"region": "us"}, run.conf
    deadline = time.time() + 120
    while True:
        current = runs.get_dag_run("etl_daily", run.dag_run_id)
        if current.state.value in ("success", "failed"):
            break
        assert time.time() < deadline, "the run did not finish in 120 s"
        time.sleep(0.5)
    assert current.state.value == "success", current.state

    tis = task_instance_api.TaskInstanceApi(api).get_task_instances("etl_daily", run.dag_run_id)
    states = {t.task_id: t.state.value for t in tis.task_instances}
    assert states == {"extract": "success", "transform": "success", "load": "success"}, states

    listed_runs = runs.get_dag_runs("etl_daily", limit=10)
    assert any(r.dag_run_id == run.dag_run_id for r in listed_runs.dag_runs)

    ti_api = task_instance_api.TaskInstanceApi(api)
    log = ti_api.get_log("etl_daily", run.dag_run_id, "extract", 1, full_content=True)
    # `content` is a oneOf: structured messages, or plain strings.
    messages = log.content.actual_instance
    text = "\n".join(getattr(m, "event", str(m)) for m in messages)
    assert "extracted 100 rows" in text, text

    xcom = x_com_api.XComApi(api).get_xcom_entry("etl_daily", "extract", run.dag_run_id, "return_value")
    assert "extracted 100 rows" in str(xcom.actual_instance.value), xcom

    cleared = ti_api.post_clear_task_instances(
        "etl_daily",
        client.ClearTaskInstancesBody(
            dry_run=False,
            dag_run_id=run.dag_run_id,
            task_ids=[client.ClearTaskInstancesBodyTaskIdsInner(actual_instance="load")],
            only_failed=False,
        ),
    )
    assert [t.task_id for t in cleared.task_instances] == ["load"], cleared
    deadline = time.time() + 120
    while True:
        load = ti_api.get_task_instance("etl_daily", run.dag_run_id, "load")
        if load.try_number == 2 and load.state is not None and load.state.value == "success":
            break
        assert time.time() < deadline, f"the cleared task did not rerun: {load.state} try {load.try_number}"
        time.sleep(0.5)

    # Both tries, as the client's strict models read them.
    tries = ti_api.get_task_instance_tries("etl_daily", run.dag_run_id, "load")
    assert [t.try_number for t in tries.task_instances] == [1, 2], tries
    first = ti_api.get_task_instance_try_details("etl_daily", run.dag_run_id, "load", 1)
    assert first.try_number == 1 and first.state.value == "success", first

    # DAG details and tasks, and a note on the run.
    details = dags.get_dag_details("etl_daily")
    assert details.dag_id == "etl_daily" and details.catchup is not None, details
    from airflow_client.client.api import task_api
    tasks = task_api.TaskApi(api).get_tasks("etl_daily")
    assert [t.task_id for t in tasks.tasks] == ["extract", "load", "transform"], tasks
    noted = runs.patch_dag_run("etl_daily", run.dag_run_id, client.DAGRunPatchBody(note="checked"))
    assert noted.note == "checked", noted
    listed_runs = runs.get_list_dag_runs_batch("~", client.DAGRunsBatchBody(dag_ids=["etl_daily"]))
    assert listed_runs.total_entries >= 1, listed_runs

    # Task instances across DAGs and runs, filtered by a body.
    batch = ti_api.get_task_instances_batch(
        "~", "~", client.TaskInstancesBatchBody(dag_ids=["etl_daily"], task_ids=["load"], state=["success"]))
    assert batch.total_entries >= 1 and all(t.task_id == "load" for t in batch.task_instances), batch

    # Pools: create, read (with slot counts), change, bulk, delete; default_pool stays.
    from airflow_client.client.api import pool_api
    pools = pool_api.PoolApi(api)
    made = pools.post_pool(client.PoolBody(name="client_pool", slots=3, description="from the client"))
    assert made.name == "client_pool" and made.open_slots == 3 and made.occupied_slots == 0, made
    got = pools.get_pool("client_pool")
    assert got.slots == 3 and got.description == "from the client", got
    patched = pools.patch_pool("client_pool", client.PoolPatchBody(slots=5), update_mask=["slots"])
    assert patched.slots == 5, patched
    listed = pools.get_pools(pool_name_pattern="client")
    assert [p.name for p in listed.pools] == ["client_pool"], listed
    bulk = pools.bulk_pools(client.BulkBodyPoolBody(actions=[
        client.ActionsInner3(client.BulkCreateActionPoolBody(
            action="create", entities=[client.PoolBody(name="client_pool_2", slots=1)])),
    ]))
    assert bulk.create.success == ["client_pool_2"], bulk
    pools.delete_pool("client_pool")
    pools.delete_pool("client_pool_2")
    try:
        pools.delete_pool("default_pool")
        raise AssertionError("default_pool was deleted")
    except client.exceptions.BadRequestException:
        pass
    names = [p.name for p in pools.get_pools().pools]
    assert "client_pool" not in names and "default_pool" in names, names

    # Variables: create, read, change, list by pattern, bulk, delete; a secret one is masked.
    from airflow_client.client.api import variable_api
    variables = variable_api.VariableApi(api)
    made = variables.post_variable(client.VariableBody(key="client_var", value="v1", description="from the client"))
    assert made.key == "client_var" and made.value == "v1", made
    secret = variables.post_variable(client.VariableBody(key="client_password", value="pw-xyz-123"))
    assert secret.value == "***" and secret.is_encrypted, secret
    got = variables.get_variable("client_var")
    assert got.value == "v1" and got.description == "from the client", got
    patched = variables.patch_variable("client_var", client.VariableBody(key="client_var", value="v2"), update_mask=["value"])
    assert patched.value == "v2" and patched.description == "from the client", patched
    listed = variables.get_variables(variable_key_pattern="client_")
    assert sorted(v.key for v in listed.variables) == ["client_password", "client_var"], listed
    variables.delete_variable("client_var")
    variables.delete_variable("client_password")
    try:
        variables.get_variable("client_var")
        raise AssertionError("client_var was not deleted")
    except client.exceptions.NotFoundException:
        pass

print("airflow client check passed")
