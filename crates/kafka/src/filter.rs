//! Message filters: a minijinja expression over `key`, `value` (parsed when it is JSON),
//! `headers`, `topic`, `partition`, `offset` and `timestamp`, true when the message matches.
//!
//! Missing fields are not errors (`value.customer.tier == "gold"` on a message without a
//! customer is simply false: chainable undefined); an expression that cannot be evaluated
//! (comparing a string with a number, say) is an error the caller counts and logs.

use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::Value as Json;

use crate::KafkaError;

#[derive(Debug)]
pub struct Filter {
    env: Environment<'static>,
    source: String,
}

impl Filter {
    /// Checks the expression's syntax once, so a bad filter is reported when it is loaded.
    pub fn compile(source: &str) -> Result<Filter, KafkaError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.compile_expression(source)
            .map_err(|e| KafkaError::Filter(format!("filter `{source}`: {e}")))?;
        Ok(Filter {
            env,
            source: source.to_owned(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `message` (as [`crate::Message::to_json`] gives it) matches.
    pub fn matches(&self, message: &Json) -> Result<bool, KafkaError> {
        let expr = self
            .env
            .compile_expression(&self.source)
            .map_err(|e| KafkaError::Filter(e.to_string()))?;
        let ctx = Value::from(minijinja::value::Serde(message));
        let out = expr
            .eval(ctx)
            .map_err(|e| KafkaError::Filter(format!("filter `{}`: {e}", self.source)))?;
        Ok(out.is_true())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn msg(value: Json) -> Json {
        json!({"topic": "t", "partition": 0, "offset": 7, "key": "k1",
               "value": value, "headers": {"source": "web"}, "timestamp": 1})
    }

    #[test]
    fn matches_on_fields_and_missing_ones_are_false() {
        let f = Filter::compile("value.amount > 100 and headers.source == 'web'").unwrap();
        assert!(f.matches(&msg(json!({"amount": 150}))).unwrap());
        assert!(!f.matches(&msg(json!({"amount": 50}))).unwrap());
        let g = Filter::compile("value.customer.tier == 'gold'").unwrap();
        assert!(!g.matches(&msg(json!({"amount": 1}))).unwrap());
        let k = Filter::compile("key == 'k1' and offset >= 7 and partition == 0").unwrap();
        assert!(k.matches(&msg(json!("plain text"))).unwrap());
    }

    #[test]
    fn bad_syntax_and_bad_evaluation_are_errors() {
        assert!(Filter::compile("value.amount >").is_err());
        let f = Filter::compile("value.amount - 1 > 3").unwrap();
        assert!(f.matches(&msg(json!({"amount": "lots"}))).is_err());
    }
}
