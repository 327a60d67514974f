//! Scoped tokens as an app's backend mints them (`docs/security.md`): an auth file section that
//! accepts them, and HS256 tokens for tests and benchmarks.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The HS256 secret the app's backend and the node share.
pub const SECRET: &str = "the app's own secret, at least 32 bytes long";

/// A `[tokens]` section for audience `app` with `SECRET`, and one rule: `collection/{sub}`
/// writable by any valid token.
pub fn section(collection: &str) -> String {
    format!(
        "\n[tokens]\naudience = \"app\"\n\
         [[tokens.keys]]\nalg = \"HS256\"\nsecret = \"{SECRET}\"\n\
         [[tokens.rules]]\ncollection = \"{collection}\"\nid = \"{{sub}}\"\naccess = \"write\"\n"
    )
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// `claims` signed with `SECRET`.
pub fn mint(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("a token")
}

/// A token for `sub` and audience `app`, valid for an hour, with `extra` claims.
pub fn token(sub: &str, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "aud": "app", "exp": now() + 3600, "iat": now()});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    mint(claims)
}
