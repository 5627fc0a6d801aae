//! `python` and `@task`: arguments resolved (`+task` outputs) and rendered; run by
//! `runner::run_python` through the bootstrap shim.

use flow_dag::{PythonOperator, Task};

use indexmap::IndexMap;
use serde_json::Value as Json;

use crate::render::{
    Field, RenderError, RenderedTask, Renderer, RunContext, apply_mapping, object,
};

pub(crate) fn render(
    task: &Task,
    op: &PythonOperator,
    ctx: &RunContext,
) -> Result<RenderedTask, RenderError> {
    let mut op_args = Vec::new();
    for (i, a) in op.op_args.iter().enumerate() {
        op_args.push(Field::from_arg(&format!("op_args[{i}]"), a, &ctx.xcoms)?);
    }
    let mut op_kwargs = IndexMap::new();
    for (k, a) in &op.op_kwargs {
        op_kwargs.insert(
            k.clone(),
            Field::from_arg(&format!("op_kwargs.{k}"), a, &ctx.xcoms)?,
        );
    }
    let mut templates_dict = Field::literal(object(&op.templates_dict));
    apply_mapping(task, ctx, |key, field| {
        match key {
            "op_args" => match field.value {
                Json::Array(items) => {
                    op_args = items
                        .into_iter()
                        .map(|value| Field {
                            value,
                            templated: field.templated,
                        })
                        .collect();
                }
                other => return Err(format!("`op_args` must be a list, got {other}")),
            },
            "op_kwargs" => match field.value {
                Json::Object(items) => {
                    for (k, value) in items {
                        op_kwargs.insert(
                            k,
                            Field {
                                value,
                                templated: field.templated,
                            },
                        );
                    }
                }
                other => return Err(format!("`op_kwargs` must be a mapping, got {other}")),
            },
            "templates_dict" => templates_dict = field,
            _ if op.decorated => {
                op_kwargs.insert(key.to_owned(), field);
            }
            _ => {
                return Err(format!(
                    "`{key}` is not an argument of the python operator (op_args, op_kwargs, templates_dict)"
                ));
            }
        }
        Ok(())
    })?;
    let renderer = Renderer::new(task, ctx);
    let op_args = op_args
        .iter()
        .enumerate()
        .map(|(i, f)| renderer.field(&format!("op_args[{i}]"), f))
        .collect::<Result<_, _>>()?;
    let op_kwargs = op_kwargs
        .iter()
        .map(|(k, f)| Ok((k.clone(), renderer.field(&format!("op_kwargs.{k}"), f)?)))
        .collect::<Result<_, RenderError>>()?;
    let templates_dict = match renderer.field("templates_dict", &templates_dict)? {
        Json::Object(m) => m.into_iter().collect(),
        Json::Null => IndexMap::new(),
        other => {
            return Err(RenderError::new(
                "templates_dict",
                format!("expected a mapping, got {other}"),
            ));
        }
    };
    Ok(RenderedTask::Python {
        callable: op.callable.clone(),
        op_args,
        op_kwargs,
        templates_dict,
        show_return_value_in_logs: op.show_return_value_in_logs,
    })
}
