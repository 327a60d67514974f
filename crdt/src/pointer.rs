//! JSON Pointers (RFC 6901), the paths of the ops API.

use crate::error::{Error, Result};

/// Parses a pointer into its reference tokens. `""` is the whole document.
pub fn parse(pointer: &str) -> Result<Vec<String>> {
    if pointer.is_empty() {
        return Ok(vec![]);
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(Error::bad(format!(
            "malformed JSON pointer {pointer:?}: it must be empty or start with '/'"
        )));
    };
    rest.split('/').map(|t| unescape(pointer, t)).collect()
}

fn unescape(pointer: &str, token: &str) -> Result<String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => {
                    return Err(Error::bad(format!(
                        "malformed JSON pointer {pointer:?}: '~' must be followed by 0 or 1"
                    )))
                }
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Escapes a token for display in a pointer.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The pointer of a list of tokens (`""` for none).
pub fn to_pointer(tokens: &[String]) -> String {
    tokens.iter().map(|t| format!("/{}", escape(t))).collect()
}

/// An array index token: `0` or digits without a leading zero. `None` for anything else.
pub fn index(token: &str) -> Option<usize> {
    let ok = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    if ok {
        token.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6901_examples() {
        assert_eq!(parse("").unwrap(), Vec::<String>::new());
        assert_eq!(parse("/foo").unwrap(), vec!["foo"]);
        assert_eq!(parse("/foo/0").unwrap(), vec!["foo", "0"]);
        assert_eq!(parse("/").unwrap(), vec![""]);
        assert_eq!(parse("/a~1b").unwrap(), vec!["a/b"]);
        assert_eq!(parse("/m~0n").unwrap(), vec!["m~n"]);
        assert_eq!(parse("/ ").unwrap(), vec![" "]);
    }

    #[test]
    fn malformed() {
        assert!(parse("foo").is_err());
        assert!(parse("/a~2").is_err());
        assert!(parse("/a~").is_err());
    }

    #[test]
    fn indexes() {
        assert_eq!(index("0"), Some(0));
        assert_eq!(index("12"), Some(12));
        assert_eq!(index("01"), None);
        assert_eq!(index("-"), None);
        assert_eq!(index("1a"), None);
        assert_eq!(index(""), None);
    }
}
