//! Raw response body to a flag map. Pure: bytes in, flags or an error out.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
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
    // One pass straight into the flat map: no `Value` for the whole body and no map per array
    // item, which is most of the allocation (and so most of the time) of a large body.
    let mut flags = Map::new();
    let mut shape = None;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed = Body {
        flags: &mut flags,
        shape: &mut shape,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    // Invalid JSON anywhere wins over a wrong shape, as when the body was parsed whole first.
    if let Err(e) = parsed {
        return Err(Error::parse(format!("not valid JSON: {e}")));
    }
    match shape {
        Some(reason) => Err(Error::parse(reason)),
        None => Ok(flags),
    }
}

/// The scalar `visit_*` methods of a visitor, each handing the JSON kind to `$body`.
macro_rules! forward_other_kinds {
    (|$this:ident, $kind:ident| $body:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            let ($this, $kind) = (self, "null");
            Ok($body)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            let ($this, $kind) = (self, "a boolean");
            Ok($body)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            let ($this, $kind) = (self, "a number");
            Ok($body)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            let ($this, $kind) = (self, "a number");
            Ok($body)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            let ($this, $kind) = (self, "a number");
            Ok($body)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            let ($this, $kind) = (self, "a string");
            Ok($body)
        }
    };
}

/// The whole body: an object of flags, or an array of objects to flatten.
struct Body<'a> {
    flags: &'a mut RawFlags,
    /// The first shape error, reported once the body is known to be valid JSON.
    shape: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for Body<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Body<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of objects or an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        flatten(self.flags, map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        while let Some(kind) = seq.next_element_seed(Item { flags: self.flags })? {
            if let (Some(kind), None) = (kind, &self.shape) {
                *self.shape = Some(format!(
                    "item {index} of the array is {kind}, expected an object"
                ));
            }
            index += 1;
        }
        Ok(())
    }

    forward_other_kinds!(|this, kind| {
        *this.shape = Some(format!(
            "the body is {kind}, expected an array of objects or an object"
        ));
    });
}

/// One item of the array: an object is spread into the flags; anything else is consumed and its
/// kind returned.
struct Item<'a> {
    flags: &'a mut RawFlags,
}

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Item<'_> {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        flatten(self.flags, map).map(|()| None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Some("an array"))
    }

    forward_other_kinds!(|_this, kind| Some(kind));
}

/// Every entry of `map` into `flags`, a later key replacing an earlier one.
fn flatten<'de, A: MapAccess<'de>>(flags: &mut RawFlags, mut map: A) -> Result<(), A::Error> {
    while let Some((name, value)) = map.next_entry::<String, Value>()? {
        flags.insert(name, value);
    }
    Ok(())
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
    fn invalid_json_wins_over_a_wrong_shape_and_the_first_bad_item_is_named() {
        assert!(err(br#"[2, {"a": tru"#).contains("not valid JSON"));
        assert!(err(b"42 x").contains("not valid JSON"));
        assert!(err(b"[1, 2]").contains("item 0 of the array is a number"));
        assert!(err(br#"[{"a": [1, {"b": 2}]}, [3], null]"#)
            .contains("item 1 of the array is an array"));
        assert!(err(br#"[{}, null]"#).contains("item 1 of the array is null"));
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
