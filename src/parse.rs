//! Raw response body to a flag map. Pure: bytes in, flags or an error out.

use serde_json::{Map, Value};

use crate::error::Error;

/// Flags as the server sent them, by name (sorted, so saved files and listings are stable).
pub(crate) type RawFlags = Map<String, Value>;

/// Parses the two accepted forms:
/// - an array of objects, flattened left to right so that a later key wins (MetaMask spreads
///   every key of every item, so objects with several keys are accepted too);
/// - a plain object of flags.
///
/// An empty array or object is a valid, empty flag set. Anything else (a scalar, an array with a
/// non-object item, invalid UTF-8 or JSON) is [`Error::Parse`].
pub(crate) fn parse(body: &[u8]) -> Result<RawFlags, Error> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(Error::parse(format!(
            "not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Error::parse(format!("not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Array(items) => {
            let mut flags = Map::new();
            for (index, item) in items.into_iter().enumerate() {
                match item {
                    Value::Object(entry) => flags.extend(entry),
                    other => {
                        return Err(Error::parse(format!(
                            "item {index} of the array is {}, expected an object",
                            kind(&other)
                        )))
                    }
                }
            }
            Ok(flags)
        }
        other => Err(Error::parse(format!(
            "the body is {}, expected an array of objects or an object",
            kind(&other)
        ))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(body: &str) -> Value {
        Value::Object(parse(body.as_bytes()).unwrap())
    }

    fn err(body: &[u8]) -> String {
        match parse(body).unwrap_err() {
            Error::Parse { reason } => reason,
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn array_of_single_key_objects_later_key_wins() {
        assert_eq!(
            ok(r#"[{"a": true}, {"b": {"value": 1}}, {"a": false}, {"c": [1, "x"]}]"#),
            json!({"a": false, "b": {"value": 1}, "c": [1, "x"]})
        );
    }

    #[test]
    fn multi_key_items_spread_in_order() {
        assert_eq!(
            ok(r#"[{"a": 1, "b": 2}, {"b": 3}, {}]"#),
            json!({"a": 1, "b": 3})
        );
    }

    #[test]
    fn plain_object_and_empty_forms() {
        assert_eq!(ok(r#"{"x": "y", "n": 1.5}"#), json!({"x": "y", "n": 1.5}));
        assert_eq!(ok("[]"), json!({}));
        assert_eq!(ok(" {} "), json!({}));
    }

    #[test]
    fn every_value_type_survives() {
        let v = ok(
            r#"[{"b": true}, {"i": -3}, {"f": 0.1}, {"s": "str"}, {"n": null}, {"o": {"k": [1]}}]"#,
        );
        assert_eq!(
            v,
            json!({"b": true, "i": -3, "f": 0.1, "s": "str", "n": null, "o": {"k": [1]}})
        );
    }

    #[test]
    fn malformed_shapes_are_typed_errors() {
        assert!(err(b"42").contains("a number"));
        assert!(err(b"\"flags\"").contains("a string"));
        assert!(err(b"null").contains("null"));
        assert!(err(b"true").contains("a boolean"));
        assert!(err(br#"[{"a": 1}, 2]"#).contains("item 1"));
        assert!(err(br#"["a"]"#).contains("item 0 of the array is a string"));
        assert!(err(br#"[[{"a": 1}]]"#).contains("an array"));
    }

    #[test]
    fn broken_bytes_are_typed_errors() {
        assert!(err(b"").contains("not valid JSON"));
        assert!(err(br#"[{"a": tru"#).contains("not valid JSON"));
        assert!(err(br#"[{"a": 1}] trailing"#).contains("not valid JSON"));
        assert!(err(b"[{\"a\": \"\xff\xfe\"}]").contains("UTF-8"));
    }

    #[test]
    fn full_precision_numbers_round_trip() {
        let v = ok(r#"{"x": 0.30000000000000004, "y": 1.7976931348623157e308}"#);
        assert_eq!(v["x"].as_f64(), Some(0.30000000000000004));
        assert_eq!(v["y"].as_f64(), Some(f64::MAX));
    }
}
