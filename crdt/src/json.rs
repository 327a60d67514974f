//! Parsing and validating client JSON before it reaches a document.
//!
//! serde_json already refuses malformed JSON, invalid UTF-8 and nesting past 128 levels (without
//! recursing on the stack past that), so this module adds only what the contract needs on top:
//! a depth limit of [`MAX_DEPTH`], and integer literals that fit an i64. Without that check an
//! integer such as 2^64 would silently become an inexact f64.

use serde_json::Value;

use crate::error::{Error, Result};

/// Deepest nesting of objects and arrays accepted in a document (the root object is level 1).
pub const MAX_DEPTH: usize = 64;

/// Parses a request body as JSON and checks depth and integer range.
pub fn parse(bytes: &[u8]) -> Result<Value> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            Error::bad(format!("JSON nesting deeper than {MAX_DEPTH} levels"))
        } else {
            Error::bad(format!("malformed JSON: {e}"))
        }
    })?;
    check_integer_literals(bytes)?;
    check_depth(&value, MAX_DEPTH)?;
    Ok(value)
}

/// Refuses `value` if objects and arrays nest deeper than `max` levels.
pub fn check_depth(value: &Value, max: usize) -> Result<()> {
    if depth(value) > max {
        return Err(Error::bad(format!(
            "JSON nesting deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(())
}

/// Nesting depth: 0 for a scalar, 1 for a flat object or array. The parser bounds the input at
/// 128 levels, so this recursion is bounded too.
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Scans syntactically valid JSON for integer literals (no `.`, `e` or `E`) that do not fit an
/// i64. Such a number fits neither an automerge int nor, exactly, an f64.
fn check_integer_literals(bytes: &[u8]) -> Result<()> {
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 2,
                b'"' => {
                    in_string = false;
                    i += 1
                }
                _ => i += 1,
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = &bytes[start..i];
                let is_integer = !token.iter().any(|c| matches!(c, b'.' | b'e' | b'E'));
                if is_integer {
                    let text = std::str::from_utf8(token).unwrap_or("?");
                    if text.parse::<i64>().is_err() {
                        return Err(Error::bad(format!(
                            "integer {text} is outside the 64-bit signed range; send it as a string or a float"
                        )));
                    }
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Parses a body that must be a JSON object.
pub fn parse_object(bytes: &[u8]) -> Result<serde_json::Map<String, Value>> {
    match parse(bytes)? {
        Value::Object(m) => Ok(m),
        other => Err(Error::bad(format!(
            "the body must be a JSON object, not {}",
            kind(&other)
        ))),
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
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

    #[test]
    fn integers_must_fit_i64() {
        assert!(parse(br#"{"a":9223372036854775807,"b":-9223372036854775808}"#).is_ok());
        assert!(parse(br#"{"a":9223372036854775808}"#).is_err());
        assert!(parse(br#"{"a":18446744073709551616}"#).is_err());
        assert!(parse(br#"{"a":-9223372036854775809}"#).is_err());
        // floats are fine, numbers inside strings are not numbers
        assert!(parse(br#"{"a":1e300,"b":"123456789012345678901234567890","c":1.5}"#).is_ok());
        assert!(parse(br#"{"a":1e400}"#).is_err());
    }

    #[test]
    fn escaped_quotes_do_not_confuse_the_scan() {
        assert!(parse(br#"{"a\"":"x\\","b":[1,2,"\"99999999999999999999"]}"#).is_ok());
    }

    #[test]
    fn depth_limit() {
        let nested = |n: usize| format!("{}{{}}{}", "{\"a\":".repeat(n), "}".repeat(n));
        assert!(parse(nested(63).as_bytes()).is_ok());
        assert!(parse(nested(64).as_bytes()).is_err());
        let very_deep = "[".repeat(100_000);
        assert!(parse(very_deep.as_bytes()).is_err());
    }

    #[test]
    fn invalid_utf8_and_truncation() {
        assert!(parse(b"{\"a\":\"\xff\"}").is_err());
        assert!(parse(b"{\"a\":").is_err());
        assert!(parse(b"").is_err());
    }
}
