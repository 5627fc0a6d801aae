//! `bash`: the command, `env` and `cwd` rendered (a `.sh` file named by `bash_command` is read
//! as a template); run by `runner::run_bash`.

use flow_dag::{BashOperator, Task};

use indexmap::IndexMap;
use serde_json::Value as Json;

use crate::render::{
    Field, RenderError, RenderedTask, Renderer, RunContext, apply_mapping, render_bash,
};

pub(crate) fn render(
    task: &Task,
    op: &BashOperator,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let mut fields: IndexMap<String, Field> = IndexMap::new();
    fields.insert(
        "bash_command".into(),
        Field::literal(Json::from(op.bash_command.as_str())),
    );
    fields.insert(
        "env".into(),
        Field::literal(op.env.as_ref().map_or(Json::Null, |e| {
            Json::Object(
                e.iter()
                    .map(|(k, v)| (k.clone(), Json::from(v.as_str())))
                    .collect(),
            )
        })),
    );
    fields.insert(
        "append_env".into(),
        Field::literal(Json::Bool(op.append_env)),
    );
    fields.insert(
        "cwd".into(),
        Field::literal(op.cwd.as_deref().map_or(Json::Null, Json::from)),
    );
    fields.insert(
        "skip_on_exit_code".into(),
        Field::literal(Json::from(op.skip_on_exit_code.clone())),
    );
    apply_mapping(task, ctx, |key, field| {
        if fields.contains_key(key) {
            fields.insert(key.to_owned(), field);
            Ok(())
        } else {
            Err(format!("`{key}` is not an argument of the bash operator"))
        }
    })?;
    let renderer = Renderer::new(task, ctx);
    render_bash(&renderer, ctx, fields)
}
