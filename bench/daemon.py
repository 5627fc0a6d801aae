#!/usr/bin/env python3
"""The engine benchmark through the real daemon, as a user meets it.

Starts `flow standalone` on a scratch FLOW_HOME with the three benchmark DAGs of
`flow bench engine` (a chain of 100 `true` tasks, a fan-out of 1,000, a single task), then
triggers them from this other process through the REST API, and the single one also through
`flow dags trigger` in a process of its own, and reports:

- chain and fan-out: wall time from the trigger request to the run seen finished, and the
  server's own time from the run's queued_at to its end_date;
- trigger latency: from the run's queued_at to its task's start_date.

Usage: bench/daemon.py [--flow target/release/flow] [--database-url postgres://...]
The PostgreSQL database must exist and is used as it is (give it an empty one).
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


def dag_files(folder):
    chain = "bench_chain:\n  tasks:\n" + "".join(
        f"    t{i:03}:\n      operator: bash\n      bash_command: \"true\"\n"
        + (f"      dependencies: [t{i - 1:03}]\n" if i else "")
        for i in range(100)
    )
    fan = "bench_fanout:\n  max_active_tasks: 1000000\n  tasks:\n" + "".join(
        f"    t{i:04}:\n      operator: bash\n      bash_command: \"true\"\n" for i in range(1000)
    )
    single = (
        "bench_single:\n  max_active_runs: 1000\n  tasks:\n    only:\n"
        "      operator: bash\n      bash_command: \"true\"\n"
    )
    for name, text in [("chain", chain), ("fanout", fan), ("single", single)]:
        with open(os.path.join(folder, f"{name}.yaml"), "w") as f:
            f.write(text)


def when(text):
    return datetime.datetime.fromisoformat(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flow", default="target/release/flow")
    ap.add_argument("--database-url")
    args = ap.parse_args()
    flow = os.path.abspath(args.flow)
    scratch = tempfile.mkdtemp(prefix="flow-bench-daemon-")
    home, dags = os.path.join(scratch, "home"), os.path.join(scratch, "dags")
    os.makedirs(dags)
    dag_files(dags)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        FLOW_HOME=home,
        FLOW__CORE__DAGS_FOLDER=dags,
        FLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="false",
        FLOW__LOGGING__LEVEL="warn",
        FLOW__WORKER__CONCURRENCY="32",
        FLOW__CORE__PARALLELISM="1000",
    )
    if args.database_url:
        env["FLOW__DATABASE__URL"] = args.database_url
    daemon = subprocess.Popen(
        [flow, "standalone", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(scratch, "standalone.log"), "w"),
    )
    base = f"http://127.0.0.1:{port}"

    def call(method, path, body=None, token=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, method=method, data=data)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", "Bearer " + token)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    try:
        token = None
        for _ in range(600):
            try:
                with open(os.path.join(home, "standalone_admin_password.txt")) as f:
                    password = f.read().strip()
                token = call("POST", "/auth/token", {"username": "admin", "password": password})[
                    "access_token"
                ]
                for dag in ["bench_chain", "bench_fanout", "bench_single"]:
                    call("GET", f"/api/v2/dags/{dag}", token=token)
                break
            except Exception:
                time.sleep(0.1)

        def run(dag):
            started = time.perf_counter()
            run_id = call("POST", f"/api/v2/dags/{dag}/dagRuns", {"logical_date": None}, token)[
                "dag_run_id"
            ]
            while True:
                r = call("GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}", token=token)
                if r["state"] in ("success", "failed"):
                    wall = time.perf_counter() - started
                    server = (when(r["end_date"]) - when(r["queued_at"])).total_seconds()
                    return r["state"], wall, server
                time.sleep(0.02)

        state, wall, server = run("bench_chain")
        print(
            f"chain of 100 `true` tasks: {state}; {wall * 10:.2f} ms per task from the request, "
            f"{server * 10:.2f} ms per task queued_at to end_date"
        )
        state, wall, server = run("bench_fanout")
        print(
            f"fan-out of 1000 `true` tasks, 32 slots: {state}; {1000 / wall:.0f} tasks/s from "
            f"the request, {1000 / server:.0f} tasks/s queued_at to end_date"
        )

        def first_task_latency(run_id):
            while True:
                ti = call(
                    "GET",
                    f"/api/v2/dags/bench_single/dagRuns/{run_id}/taskInstances/only",
                    token=token,
                )
                if ti["start_date"]:
                    r = call("GET", f"/api/v2/dags/bench_single/dagRuns/{run_id}", token=token)
                    latency = (when(ti["start_date"]) - when(r["queued_at"])).total_seconds()
                    while r["state"] not in ("success", "failed"):
                        time.sleep(0.005)
                        r = call("GET", f"/api/v2/dags/bench_single/dagRuns/{run_id}", token=token)
                    return latency * 1000
                time.sleep(0.002)

        def report(what, lat):
            lat.sort()
            print(f"{what} over {len(lat)} runs: p50 {lat[len(lat) // 2]:.2f} ms, max {lat[-1]:.2f} ms")

        lat = []
        for _ in range(50):
            r = call("POST", "/api/v2/dags/bench_single/dagRuns", {"logical_date": None}, token)
            lat.append(first_task_latency(r["dag_run_id"]))
        report("trigger (REST API) to first task running", lat)
        lat = []
        for i in range(20):
            run_id = f"cli_{i}"
            out = subprocess.run(
                [flow, "dags", "trigger", "bench_single", "--run-id", run_id],
                env=env,
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            lat.append(first_task_latency(run_id))
        report("trigger (`flow dags trigger`, another process) to first task running", lat)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
