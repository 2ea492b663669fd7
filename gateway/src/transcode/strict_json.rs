//! JSON request bodies read strictly: an object that repeats a key is refused, naming the key's
//! path (serde_json's own `Value` would keep the last one silently, so `{"a": 1, "a": 2}` would be
//! read as whatever a server or a proxy in front happened to pick).

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a body could not be read.
#[derive(Debug)]
pub(super) enum StrictJsonError {
    /// An object repeats a key: its dotted path (`[i]` for array elements) below `prefix`.
    DuplicateKey(String),
    /// The body is not valid JSON.
    Syntax(serde_json::Error),
}

/// `body` as a JSON value; key paths in errors start with `prefix` (the body field's name, or
/// empty when the body is the whole message).
pub(super) fn from_slice(body: &[u8], prefix: &str) -> Result<Value, StrictJsonError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let seed = ValueSeed {
        path: prefix.to_owned(),
        duplicate: &duplicate,
    };
    let result = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match (result, duplicate.into_inner()) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(path)) => Err(StrictJsonError::DuplicateKey(path)),
        (Err(err), None) => Err(StrictJsonError::Syntax(err)),
    }
}

/// Reads one JSON value at `path`, recording the first duplicated key in `duplicate`.
struct ValueSeed<'d> {
    path: String,
    duplicate: &'d RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so every parsed float is a number.
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(ValueSeed {
            path: format!("{}[{}]", self.path, items.len()),
            duplicate: self.duplicate,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if object.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(path);
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(ValueSeed {
                path,
                duplicate: self.duplicate,
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn duplicate(body: &str, prefix: &str) -> Option<String> {
        match from_slice(body.as_bytes(), prefix) {
            Err(StrictJsonError::DuplicateKey(path)) => Some(path),
            _ => None,
        }
    }

    #[test]
    fn values_read_as_serde_json_reads_them() {
        for body in [
            r#"{"a": [1, -2, 3.5, "x", true, null, {"b": {}}], "c": 18446744073709551615}"#,
            "[]",
            "\"text\"",
            "0",
        ] {
            assert_eq!(
                from_slice(body.as_bytes(), "").expect(body),
                serde_json::from_str::<Value>(body).expect(body)
            );
        }
        assert_eq!(
            from_slice(br#"{"a": "\u00e9"}"#, "").expect("escapes"),
            json!({"a": "é"})
        );
    }

    #[test]
    fn a_repeated_key_is_refused_with_its_path() {
        assert_eq!(duplicate(r#"{"a": 1, "a": 2}"#, ""), Some("a".into()));
        assert_eq!(
            duplicate(r#"{"title": "x", "urgency": 1, "title": "y"}"#, "task"),
            Some("task.title".into())
        );
        assert_eq!(
            duplicate(r#"{"tasks": [{"id": "1"}, {"id": "2", "id": "3"}]}"#, ""),
            Some("tasks[1].id".into())
        );
        assert_eq!(duplicate(r#"{"a": {"b": 1}, "c": {"b": 2}}"#, ""), None);
    }

    #[test]
    fn syntax_errors_stay_syntax_errors() {
        for body in ["{", r#"{"a": 1} x"#, "nul", r#"{"a": 1,}"#] {
            assert!(
                matches!(
                    from_slice(body.as_bytes(), ""),
                    Err(StrictJsonError::Syntax(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(matches!(
            from_slice(deep.as_bytes(), ""),
            Err(StrictJsonError::Syntax(_))
        ));
    }
}
