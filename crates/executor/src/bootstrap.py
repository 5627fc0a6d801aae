# flow's Python task bootstrap, run as `python3 -c <this> INPUT RESULT`.
#
# INPUT is a JSON file: the callable, its rendered arguments, the task context and the run's
# XComs. The callable's return value is written as JSON to RESULT (never to stdout, so the
# task's own prints cannot corrupt it): {"value": ...}, {"error": "..."} or {"skip": "..."}.
import datetime
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import traceback
import types

# The context of the running task, for get_current_context().
_CURRENT_CONTEXT = []


class _AirflowSkipException(Exception):
    """Raised to skip the task (Airflow's AirflowSkipException)."""


class _AirflowFailException(Exception):
    """Raised to fail the task without retries (Airflow's AirflowFailException)."""


class _AirflowException(Exception):
    """Airflow's base exception."""


class PokeReturnValue:
    """What a sensor's poke may return (Airflow's PokeReturnValue): done or not, and the
    XCom to push when done."""

    def __init__(self, is_done, xcom_value=None):
        self.is_done = is_done
        self.xcom_value = xcom_value

    def __bool__(self):
        return bool(self.is_done)


class Asset:
    """Airflow's Asset (Dataset in Airflow 2): a URI and a name, either giving the other."""

    def __init__(self, name=None, uri=None, group="asset", extra=None, **_kwargs):
        if name is None and uri is None:
            raise TypeError("Asset() needs a name or a uri")
        self.uri = uri if uri is not None else name
        self.name = name if name is not None else uri
        self.group = group
        self.extra = extra or {}

    def __repr__(self):
        return f"Asset(name={self.name!r}, uri={self.uri!r})"

    def __eq__(self, other):
        return isinstance(other, Asset) and other.uri == self.uri

    def __hash__(self):
        return hash(self.uri)


class AssetAlias:
    """Airflow's AssetAlias: the task names the assets it updated at run time."""

    def __init__(self, name, group=""):
        self.name = name
        self.group = group

    def __repr__(self):
        return f"AssetAlias(name={self.name!r})"


class BaseNotifier:
    """Airflow's BaseNotifier: a notifier is called with the context and notifies."""

    template_fields = ()

    def notify(self, context):
        raise NotImplementedError

    def __call__(self, *args):
        context = args[-1] if args else {}
        self.notify(context)


def _asset_key(key):
    if isinstance(key, str):
        return key
    if type(key).__name__ in ("AssetAlias", "DatasetAlias"):
        return "alias:" + key.name
    uri = getattr(key, "uri", None)
    if uri is not None:
        return uri
    raise KeyError(f"not an asset: {key!r}")


class _OutletEvent:
    def __init__(self, key):
        self.key = key
        self.extra = {}
        self.added = []

    def add(self, asset, extra=None):
        """For an alias outlet: record an event of `asset` (Airflow's
        `outlet_events[AssetAlias(...)].add(Asset(...), extra=...)`)."""
        if not self.key.startswith("alias:"):
            raise TypeError("add() is for asset alias outlets; set .extra for an asset")
        uri = getattr(asset, "uri", asset)
        name = getattr(asset, "name", uri)
        self.added.append({"alias": self.key[len("alias:"):], "uri": str(uri),
                           "name": str(name), "extra": dict(extra or {})})


class _OutletEvents:
    """`outlet_events` in a task's context: the extra of each outlet's event."""

    def __init__(self):
        self._events = {}

    def __getitem__(self, key):
        k = _asset_key(key)
        if k not in self._events:
            self._events[k] = _OutletEvent(k)
        return self._events[k]

    def export(self):
        extras = {k: e.extra for k, e in self._events.items()
                  if e.extra and not k.startswith("alias:")}
        added = [a for e in self._events.values() for a in e.added]
        if not extras and not added:
            return None
        return {"extras": extras, "added": added}


class _TriggeringAssetEvents(dict):
    """`triggering_asset_events`: events by asset, looked up by URI or by Asset."""

    def __getitem__(self, key):
        return dict.__getitem__(self, _asset_key(key))

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default


def _is_a(exc, name):
    """Whether `exc` is Airflow's exception `name` (or a subclass), from the stand-in here or
    from an installed Airflow."""
    return any(c.__name__.lstrip("_") == name for c in type(exc).__mro__)


def get_current_context():
    if not _CURRENT_CONTEXT:
        raise RuntimeError(
            "Current context was requested but no context was found! "
            "Are you running within an Airflow task?"
        )
    return _CURRENT_CONTEXT[-1]


_VARIABLES = {}
_NOTSET = object()


class _Variable:
    """Airflow's `Variable.get`, over the variables the worker read for this task (its
    FLOW_VAR_/AIRFLOW_VAR_ environment overrides included)."""

    @staticmethod
    def get(key, default_var=_NOTSET, deserialize_json=False, default=_NOTSET):
        if default is _NOTSET:
            default = default_var
        value = _VARIABLES.get(key, _VARIABLES.get(str(key).upper(), _NOTSET))
        if value is _NOTSET:
            if default is _NOTSET:
                raise KeyError(f"Variable {key} does not exist")
            return default
        return json.loads(value) if deserialize_json else value

    @staticmethod
    def set(*_args, **_kwargs):
        raise _AirflowException(
            "flow: a task cannot set variables; use `flow variables set` or the REST API"
        )


def _install_airflow_shim():
    """Callables written for Airflow import a few of its names (get_current_context, Context,
    the exceptions). Where Airflow itself is not installed, flow provides just those, so the
    same files run unchanged; an installed Airflow always wins."""
    try:
        if importlib.util.find_spec("airflow") is not None:
            return
    except (ImportError, ValueError):
        return
    exceptions = {
        "AirflowException": _AirflowException,
        "AirflowSkipException": _AirflowSkipException,
        "AirflowFailException": _AirflowFailException,
    }
    current = {"get_current_context": get_current_context}
    modules = {
        "airflow": {},
        "airflow.exceptions": exceptions,
        "airflow.utils": {},
        "airflow.utils.context": {"Context": dict, **current},
        "airflow.operators": {},
        "airflow.operators.python": current,
        "airflow.providers": {},
        "airflow.providers.standard": {},
        "airflow.providers.standard.operators": {},
        "airflow.providers.standard.operators.python": current,
        "airflow.models": {"Variable": _Variable},
        "airflow.models.variable": {"Variable": _Variable},
        "airflow.sdk": {"Context": dict, "Variable": _Variable, "PokeReturnValue": PokeReturnValue,
                        "Asset": Asset, "AssetAlias": AssetAlias, "Dataset": Asset,
                        "BaseNotifier": BaseNotifier,
                        **current, **exceptions},
        "airflow.datasets": {"Dataset": Asset, "DatasetAlias": AssetAlias},
        "airflow.notifications": {},
        "airflow.notifications.basenotifier": {"BaseNotifier": BaseNotifier},
        "airflow.assets": {"Asset": Asset, "AssetAlias": AssetAlias},
        "airflow.sensors": {},
        "airflow.sensors.base": {"PokeReturnValue": PokeReturnValue},
        "airflow.providers.standard.sensors": {},
        "airflow.providers.standard.sensors.python": {"PokeReturnValue": PokeReturnValue},
        "airflow.sdk.bases": {},
        "airflow.sdk.bases.sensor": {"PokeReturnValue": PokeReturnValue},
        "airflow.sdk.exceptions": exceptions,
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name, "flow's stand-in for this Airflow module")
        module.__path__ = []
        module.__dict__.update(attrs)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def _flow_main():
    input_path, result_path = sys.argv[1], sys.argv[2]
    del sys.argv[1:]
    with open(input_path, encoding="utf-8") as f:
        spec = json.load(f)

    added = {}
    pushed = {}
    outlet_events = _OutletEvents()

    def finish(text):
        # Names the callable added to its context (for a mapped task's map_index_template)
        # and the XComs it pushed by key, merged into the result object.
        if added and text.endswith("}"):
            text = text[:-1] + ', "context": ' + json.dumps(added) + "}"
        if pushed and text.endswith("}"):
            text = text[:-1] + ', "xcoms": ' + json.dumps(pushed, default=str) + "}"
        events = outlet_events.export()
        if events and text.endswith("}"):
            text = text[:-1] + ', "outlet_events": ' + json.dumps(events, default=str) + "}"
        tmp = result_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, result_path)

    def collect_added(context, before):
        for k, v in context.items():
            if k in before:
                continue
            try:
                json.dumps(v)
            except (TypeError, ValueError):
                continue
            added[k] = v

    def fail(exc):
        traceback.print_exc()
        lines = traceback.format_exception_only(type(exc), exc)
        last = "".join(lines).strip().splitlines()
        finish(json.dumps({"error": last[-1] if last else type(exc).__name__}))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    sys.path.insert(0, spec["dags_folder"])
    _install_airflow_shim()
    target = spec["callable"]
    try:
        if target["kind"] == "module":
            module = importlib.import_module(target["module"])
        else:
            path = target["path"]
            sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
            name = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
            file_spec = importlib.util.spec_from_file_location(name, path)
            if file_spec is None or file_spec.loader is None:
                raise ImportError(f"cannot load a Python module from {path}")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[name] = module
            file_spec.loader.exec_module(module)
        fn = getattr(module, target["function"])
    except BaseException as exc:  # noqa: BLE001 - any import failure fails the task
        fail(exc)

    ctx = spec["context"]
    _VARIABLES.update(ctx.get("variables") or {})

    def dt(s):
        return None if s is None else datetime.datetime.fromisoformat(s)

    xcoms = {(t, k, m): v for t, k, m, v in ctx["xcoms"]}

    class TaskInstance:
        dag_id = ctx["dag_id"]
        task_id = ctx["task_id"]
        run_id = ctx["run_id"]
        map_index = ctx["map_index"]
        try_number = ctx["try_number"]
        max_tries = ctx["max_tries"]
        state = "running"

        def xcom_push(self, key, value, **_kwargs):
            """Airflow's `ti.xcom_push`: stored with the try's outcome, under `key`."""
            if key == "return_value":
                raise ValueError("flow: return the value instead of pushing `return_value`")
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"XCom `{key}` cannot be stored: {exc}") from None
            pushed[str(key)] = value
            xcoms[(self.task_id, str(key), self.map_index)] = value

        def xcom_pull(self, task_ids=None, dag_id=None, key="return_value",
                      include_prior_dates=False, session=None, map_indexes=None,
                      default=None, run_id=None):
            if dag_id not in (None, self.dag_id) or run_id not in (None, self.run_id):
                raise NotImplementedError("flow: xcom_pull from another DAG or run")

            def one(task_id):
                if map_indexes is None:
                    if (task_id, key, -1) in xcoms:
                        return True, xcoms[(task_id, key, -1)]
                    mapped = sorted(
                        ((m, v) for (t, k, m), v in xcoms.items()
                         if t == task_id and k == key and m >= 0),
                        key=lambda p: p[0],
                    )
                    if mapped:
                        return True, [v for _, v in mapped]
                    return False, None
                if isinstance(map_indexes, int):
                    found = (task_id, key, map_indexes) in xcoms
                    return found, xcoms.get((task_id, key, map_indexes))
                return True, [xcoms[(task_id, key, m)] for m in map_indexes
                              if (task_id, key, m) in xcoms]

            if task_ids is None:
                owners = sorted(t for (t, k, _m) in xcoms if k == key)
                if not owners:
                    return default
                task_ids = owners[0]
            if isinstance(task_ids, str):
                found, value = one(task_ids)
                return value if found else default
            out = []
            for task_id in task_ids:
                found, value = one(task_id)
                if isinstance(map_indexes, (list, tuple)):
                    if found:
                        out.extend(value)
                else:
                    # Airflow 3 keeps the positions: None where a task pushed nothing.
                    out.append(value if found else None)
            return out


        def __repr__(self):
            return f"<TaskInstance: {self.dag_id}.{self.task_id} {self.run_id} [running]>"

    ti = TaskInstance()
    logical = dt(ctx["logical_date"])
    context = {
        "dag": types.SimpleNamespace(dag_id=ctx["dag_id"], owner=ctx["owner"]),
        "task": types.SimpleNamespace(task_id=ctx["task_id"], owner=ctx["owner"]),
        "dag_run": types.SimpleNamespace(
            dag_id=ctx["dag_id"], run_id=ctx["run_id"], run_type=ctx["run_type"],
            conf=ctx["conf"], logical_date=logical, execution_date=logical,
            data_interval_start=dt(ctx["data_interval_start"]),
            data_interval_end=dt(ctx["data_interval_end"]),
            run_after=dt(ctx["run_after"]), start_date=dt(ctx["dag_run_start_date"]),
        ),
        "ti": ti,
        "task_instance": ti,
        "params": ctx["params"],
        "run_id": ctx["run_id"],
        "try_number": ctx["try_number"],
        "logical_date": logical,
        "execution_date": logical,
        "data_interval_start": dt(ctx["data_interval_start"]),
        "data_interval_end": dt(ctx["data_interval_end"]),
        "templates_dict": spec["templates_dict"] or None,
        "outlet_events": outlet_events,
        "triggering_asset_events": _TriggeringAssetEvents(
            {uri: [types.SimpleNamespace(**{**e, "asset": types.SimpleNamespace(**e["asset"]),
                                            "timestamp": dt(e["timestamp"])})
                   for e in events]
             for uri, events in (ctx.get("triggering_asset_events") or {}).items()}),
    }
    context["triggering_dataset_events"] = context["triggering_asset_events"]
    for name in ("ds", "ds_nodash", "ts", "ts_nodash", "ts_nodash_with_tz",
                 "task_instance_key_str"):
        if name in ctx:
            context[name] = ctx[name]

    callback = ctx.get("callback")
    if callback is not None:
        # A callback (on_failure_callback, ...): called with the context, as Airflow calls
        # it; a class (a notifier) is made with the keyword arguments, then called.
        ti.state = callback.get("state")
        context["exception"] = callback.get("reason")
        context["reason"] = callback.get("reason")
        context["log_url"] = callback.get("log_url")
        _CURRENT_CONTEXT.append(context)
        try:
            kwargs = dict(spec["op_kwargs"])
            if inspect.isclass(fn):
                fn(**kwargs)(context)
            else:
                fn(context, **kwargs)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                fail(exc)
        except BaseException as exc:  # noqa: BLE001 - reported as the callback's failure
            fail(exc)
        finish('{"value": null}')
        return

    args = spec["op_args"]
    kwargs = dict(spec["op_kwargs"])
    # As Airflow: the context goes in whole if the callable takes **kwargs, otherwise only the
    # context names it declares. Explicit arguments win over context names.
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    positional = [n for n, p in params.items()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:len(args)]
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        extra = dict(context)
    else:
        extra = {n: context[n] for n, p in params.items()
                 if n in context and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for name in positional:
        extra.pop(name, None)
    extra.update(kwargs)

    before = set(context)
    _CURRENT_CONTEXT.append(context)
    try:
        result = fn(*args, **extra)
    except SystemExit as exc:
        collect_added(context, before)
        if exc.code not in (None, 0):
            fail(exc)
        result = None
    except BaseException as exc:  # noqa: BLE001 - the task's exception fails the task
        collect_added(context, before)
        if _is_a(exc, "AirflowSkipException"):
            print(f"Skipping: {exc}", file=sys.stderr)
            finish(json.dumps({"skip": str(exc) or "AirflowSkipException"}))
            return
        if _is_a(exc, "AirflowFailException"):
            traceback.print_exc()
            finish(json.dumps({"fail": str(exc) or "AirflowFailException"}))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        fail(exc)
    collect_added(context, before)

    if not spec["do_xcom_push"]:
        result = None

    def encode(value):
        # A sensor's answer; also Airflow's own class where Airflow is installed.
        if type(value).__name__ == "PokeReturnValue" and hasattr(value, "is_done"):
            return {"__flow_poke__": bool(value.is_done), "xcom_value": value.xcom_value}
        if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
            return value.isoformat()
        if isinstance(value, (set, frozenset)):
            return sorted(value, key=repr)
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    try:
        encoded = json.dumps(result, default=encode, allow_nan=False)
    except (TypeError, ValueError) as exc:
        message = (
            f"the return value ({type(result).__name__}) cannot be stored as an XCom: {exc}; "
            "return JSON data (str, int, float, bool, None, list, dict) or set do_xcom_push: false"
        )
        print(message, file=sys.stderr)
        finish(json.dumps({"error": message}))
        os._exit(1)
    finish('{"value": ' + encoded + "}")


_flow_main()
