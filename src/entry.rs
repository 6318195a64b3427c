//! What a snapshot holds for one flag: the JSON value, its string form and its scalar reading,
//! worked out once at publish time so that reads are a match, not a conversion.

use std::sync::Arc;

use serde_json::Value;

/// One flag's value plus its string form, shared so that string reads hand it out without
/// copying.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) value: Value,
    pub(crate) text: Option<Arc<str>>,
    /// Which layer the value comes from.
    pub(crate) origin: Origin,
    /// The boolean or number reading, worked out once at publish time.
    pub(crate) scalar: Scalar,
}

/// The layer a served value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Default,
    Remote,
    Override,
}

impl Entry {
    pub(crate) fn new(value: Value, origin: Origin) -> Self {
        let text = value.as_str().map(Arc::from);
        let scalar = Scalar::of(&value);
        Entry {
            value,
            text,
            origin,
            scalar,
        }
    }
}

/// A flag's scalar reading, worked out once when the snapshot is built so that typed reads are
/// one match: the same answers as `serde_json::Value::as_bool`, `as_i64` and `as_f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scalar {
    /// Not a boolean or a number (a string, null, an array or an object).
    None,
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// An integer above `i64::MAX`: readable as a float only.
    BigUint(u64),
    Float(f64),
}

impl Scalar {
    pub(crate) fn of(value: &serde_json::Value) -> Self {
        match value {
            serde_json::Value::Bool(b) => Scalar::Bool(*b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Scalar::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Scalar::BigUint(u)
                } else {
                    Scalar::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            _ => Scalar::None,
        }
    }

    #[inline]
    pub(crate) fn as_bool(self) -> Option<bool> {
        match self {
            Scalar::Bool(b) => Some(b),
            _ => None,
        }
    }

    #[inline]
    pub(crate) fn as_i64(self) -> Option<i64> {
        match self {
            Scalar::Int(i) => Some(i),
            _ => None,
        }
    }

    #[inline]
    pub(crate) fn as_f64(self) -> Option<f64> {
        match self {
            Scalar::Int(i) => Some(i as f64),
            Scalar::BigUint(u) => Some(u as f64),
            Scalar::Float(f) => Some(f),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_read_like_serde_json() {
        let values = [
            json!(true),
            json!(false),
            json!(0),
            json!(-7),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(2.5),
            json!(7.0),
            json!(-0.0),
            json!(1e300),
            json!("7"),
            json!(null),
            json!([1]),
            json!({"a": 1}),
        ];
        for value in values {
            let scalar = Scalar::of(&value);
            assert_eq!(scalar.as_bool(), value.as_bool(), "{value}");
            assert_eq!(scalar.as_i64(), value.as_i64(), "{value}");
            assert_eq!(
                scalar.as_f64().map(f64::to_bits),
                value.as_f64().map(f64::to_bits),
                "{value}"
            );
        }
    }
}
