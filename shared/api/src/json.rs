//! The rest-json model's requests (`infra/cli/amistore`, for the stock AWS
//! CLI on the deployed API, where each action has its own route): a JSON body
//! of the action's members under their model names, flattened to the EC2
//! Query parameters the actions read, the way EC2's query serializer names
//! them (lists numbered from 1, each name capitalised):
//!
//! ```text
//! {"ImageId": ["ami-1"], "Filter": [{"Name": "bucket", "Value": ["b"]}]}
//!   → ImageId.1=ami-1, Filter.1.Name=bucket, Filter.1.Value.1=b
//! ```
//!
//! Answers are the same members as JSON ([`crate::xml::Body::json`]).

use serde_json::Value;

use crate::ApiError;
use crate::query::{MAX_INDEX, MAX_PARAMS, MAX_REQUEST_BYTES, Params};

/// Deepest nesting accepted (EC2's shapes nest three deep).
const MAX_DEPTH: usize = 6;

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new("SerializationException", msg)
}

/// EC2's query names capitalise the model's `locationName` (`key` → `Key`).
fn capitalised(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn flatten(
    prefix: &str,
    value: &Value,
    depth: usize,
    out: &mut Vec<(String, String)>,
) -> Result<(), ApiError> {
    if depth > MAX_DEPTH {
        return Err(invalid(format!("{prefix} is nested too deeply")));
    }
    if out.len() > MAX_PARAMS {
        return Err(invalid(format!("more than {MAX_PARAMS} parameters")));
    }
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push((prefix.to_owned(), b.to_string())),
        Value::Number(n) => out.push((prefix.to_owned(), n.to_string())),
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        Value::Array(items) => {
            if items.len() > MAX_INDEX as usize {
                return Err(invalid(format!(
                    "{prefix} has more than {MAX_INDEX} entries"
                )));
            }
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}.{}", i + 1), item, depth + 1, out)?;
            }
        }
        Value::Object(members) => {
            for (name, member) in members {
                let name = capitalised(name);
                let full = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}.{name}")
                };
                flatten(&full, member, depth + 1, out)?;
            }
        }
    }
    Ok(())
}

/// The parameters of a rest-json request for `action`.
pub fn params(action: &str, body: &[u8]) -> Result<Params, ApiError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(ApiError {
            code: "RequestEntityTooLarge".into(),
            message: format!("requests are limited to {MAX_REQUEST_BYTES} bytes"),
            status: 413,
        });
    }
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?
    };
    if !value.is_object() {
        return Err(invalid("the body must be a JSON object"));
    }
    let mut pairs = vec![
        ("Action".to_owned(), action.to_owned()),
        ("Version".to_owned(), crate::query::VERSION.to_owned()),
    ];
    flatten("", &value, 0, &mut pairs)?;
    Params::from_pairs(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_flatten_to_ec2_query_names() {
        let body = br#"{"ImageId": ["ami-1", "ami-2"], "Filter": [{"Name": "bucket", "Value": ["b"]}],
                        "MaxResults": 5, "DryRun": false,
                        "TagSpecification": [{"resourceType": "image", "Tag": [{"key": "k", "value": "v"}]}]}"#;
        let mut p = params("DescribeStoreImageTasks", body).unwrap();
        for (name, value) in [
            ("Action", "DescribeStoreImageTasks"),
            ("Version", "2016-11-15"),
            ("ImageId.1", "ami-1"),
            ("ImageId.2", "ami-2"),
            ("Filter.1.Name", "bucket"),
            ("Filter.1.Value.1", "b"),
            ("MaxResults", "5"),
            ("DryRun", "false"),
            ("TagSpecification.1.ResourceType", "image"),
            ("TagSpecification.1.Tag.1.Key", "k"),
            ("TagSpecification.1.Tag.1.Value", "v"),
        ] {
            assert_eq!(p.opt(name).as_deref(), Some(value), "{name}");
        }
        p.finish().unwrap();
    }

    #[test]
    fn hostile_bodies_are_refused_with_a_reason() {
        assert!(params("X", b"[1]").is_err());
        assert!(params("X", b"{\"a\":").is_err());
        let deep = format!("{}1{}", "{\"a\":[".repeat(10), "]}".repeat(10));
        assert!(
            params("X", deep.as_bytes())
                .unwrap_err()
                .message
                .contains("deeply")
        );
        let wide = format!("{{\"a\": [{}]}}", vec!["1"; 3000].join(","));
        assert!(params("X", wide.as_bytes()).is_err());
        assert!(
            params("X", b"{\"Action\": \"Other\"}").is_err(),
            "Action is given twice"
        );
        assert!(params("X", b"  ").is_ok(), "no members");
    }
}
