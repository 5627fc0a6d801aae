"""Functions called by the partitioned_load example DAG (dynamic task mapping).

They import from Airflow as Airflow users write them; flow runs them unchanged, with or
without Airflow installed.
"""
from airflow.sdk import get_current_context


def list_partitions(ds=None):
    """What today's extract produced: known only when the run starts."""
    sizes = {"eu": 120, "us": 80, "apac": 45}
    return [{"name": f"orders_{region}", "rows": rows} for region, rows in sizes.items()]


def load_partition(partition, day):
    """Loads one partition; names its task instance after the partition."""
    get_current_context()["partition_name"] = partition["name"]
    print(f"loading {partition['rows']} rows of {partition['name']} for {day}")
    return partition["rows"]


def check_totals(rows):
    """Gets every partition's result, in map-index order."""
    total = sum(rows)
    print(f"{len(rows)} partitions, {total} rows: {rows}")
    return total
