//! Tests of `token.rs`.
use super::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "a secret of the app, at least 32 bytes long";

fn tokens(rules: &str) -> Tokens {
    let text =
        format!("audience = \"app\"\n[[keys]]\nalg = \"HS256\"\nsecret = \"{SECRET}\"\n{rules}");
    Tokens::parse(toml::from_str(&text).unwrap()).unwrap()
}

fn mint(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

const NOW: u64 = 1_900_000_000;

#[test]
fn grants_and_rules_give_access_per_document() {
    let t = tokens(
        "[[rules]]\ncollection = \"users\"\nid = \"{sub}\"\naccess = \"write\"\n\
         [[rules]]\ncollection = \"devices\"\nprefix = \"{sub}:\"\naccess = \"write\"\n\
         [[rules]]\ncollection = \"orgs\"\nid = \"{org}\"\naccess = \"read\"\n",
    );
    let tok = t
        .verify(
            &mint(json!({"sub": "alice", "aud": "app", "exp": NOW + 60, "org": "acme",
                "meridian": {"grants": [{"collection": "notes", "ids": ["n1"], "access": "read"}]}})),
            NOW,
        )
        .unwrap();
    assert_eq!(tok.level("users", "alice"), Some(Access::Write));
    assert_eq!(tok.level("users", "bob"), None);
    assert_eq!(tok.level("devices", "alice:phone"), Some(Access::Write));
    assert_eq!(tok.level("devices", "alice2:phone"), None);
    assert_eq!(tok.level("orgs", "acme"), Some(Access::Read));
    assert_eq!(tok.level("notes", "n1"), Some(Access::Read));
    assert_eq!(tok.level("notes", "n2"), None);
    assert_eq!(tok.level_in("notes"), Some(Access::Read));
    assert_eq!(tok.level_in("settings"), None);
    // without the org claim that rule grants nothing
    let bare = t
        .verify(
            &mint(json!({"sub": "bob", "aud": "app", "exp": NOW + 60})),
            NOW,
        )
        .unwrap();
    assert_eq!(bare.level_in("orgs"), None);
    assert_eq!(bare.level("users", "bob"), Some(Access::Write));
}

#[test]
fn bad_tokens_are_refused_with_the_reason() {
    let t = tokens("");
    let ok = json!({"sub": "a", "aud": "app", "exp": NOW + 60});
    assert!(t.verify(&mint(ok.clone()), NOW).is_ok());
    let expired = t.verify(&mint(ok.clone()), NOW + 60).unwrap_err();
    assert!(
        matches!(&expired, TokenRefusal::Expired(m) if m.contains("expired")),
        "{expired:?}"
    );
    let early = t
        .verify(
            &mint(json!({"sub": "a", "aud": "app", "exp": NOW + 60, "nbf": NOW + 10})),
            NOW,
        )
        .unwrap_err();
    assert!(
        matches!(&early, TokenRefusal::Expired(m) if m.contains("not valid before")),
        "{early:?}"
    );
    for (claims, wanted) in [
        (json!({"sub": "a", "aud": "other", "exp": NOW + 60}), "aud"),
        (json!({"sub": "a", "exp": NOW + 60}), "aud"),
        (json!({"aud": "app", "exp": NOW + 60}), "no sub"),
        (json!({"sub": "a", "aud": "app"}), "no exp"),
        (json!({"sub": "a", "aud": "app", "exp": "soon"}), "exp must"),
        (
            json!({"sub": "a", "aud": "app", "exp": NOW + 60,
            "meridian": {"grants": [{"collection": "u", "ids": ["x"], "access": "admin"}]}}),
            "never admin",
        ),
        (
            json!({"sub": "a", "aud": "app", "exp": NOW + 60,
            "meridian": {"grants": [{"collection": "u", "access": "read"}]}}),
            "no ids",
        ),
        (
            json!({"sub": "a", "aud": "app", "exp": NOW + 60,
            "meridian": {"grants": [{"collection": "u", "ids": ["a/b"], "access": "read"}]}}),
            "grant",
        ),
    ] {
        let e = t.verify(&mint(claims.clone()), NOW).unwrap_err();
        assert!(
            matches!(&e, TokenRefusal::Invalid(m) if m.contains(wanted)),
            "{claims}: {e:?} should say {wanted:?}"
        );
    }
    // another secret, tampered claims, alg none, garbage
    let other = encode(
        &Header::new(Algorithm::HS256),
        &ok,
        &EncodingKey::from_secret(b"another secret of at least 32 bytes!!"),
    )
    .unwrap();
    assert!(t
        .verify(&other, NOW)
        .unwrap_err()
        .to_string()
        .contains("signature"));
    let good = mint(ok);
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let tampered_claims = b64.encode(br#"{"sub":"root","aud":"app","exp":1999999999}"#);
    let tampered = format!("{}.{}.{}", parts[0], tampered_claims, parts[2]);
    assert!(t
        .verify(&tampered, NOW)
        .unwrap_err()
        .to_string()
        .contains("signature"));
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert!(t
        .verify(&none, NOW)
        .unwrap_err()
        .to_string()
        .contains("not a token"));
    assert!(t.verify("mdk_00", NOW).is_err());
}

/// A PEM public key (SPKI) from its DER prefix and raw bytes.
fn pem(prefix_hex: &str, raw: &[u8]) -> String {
    use base64::Engine;
    let der = [hex::decode(prefix_hex).unwrap(), raw.to_vec()].concat();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

#[test]
fn eddsa_and_es256_tokens_verify_with_the_public_key_only() {
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed_pub = Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let ec = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let ec_pub = EcdsaKeyPair::from_pkcs8(alg, ec.as_ref(), &rng).unwrap();
    let text = format!(
        "audience = \"app\"\n[[keys]]\nalg = \"EdDSA\"\npublic_key = \"\"\"\n{}\"\"\"\n\
         [[keys]]\nalg = \"ES256\"\nkid = \"ec1\"\npublic_key = \"\"\"\n{}\"\"\"\n",
        pem("302a300506032b6570032100", ed_pub.public_key().as_ref()),
        pem(
            "3059301306072a8648ce3d020106082a8648ce3d030107034200",
            ec_pub.public_key().as_ref()
        ),
    );
    let t = Tokens::parse(toml::from_str(&text).unwrap()).unwrap();
    let claims = json!({"sub": "a", "aud": "app", "exp": NOW + 60});
    let ed_token = encode(
        &Header::new(Algorithm::EdDSA),
        &claims,
        &EncodingKey::from_ed_der(ed.as_ref()),
    )
    .unwrap();
    assert_eq!(t.verify(&ed_token, NOW).unwrap().sub, "a");
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec1".into());
    let ec_token = encode(&h, &claims, &EncodingKey::from_ec_der(ec.as_ref())).unwrap();
    assert_eq!(t.verify(&ec_token, NOW).unwrap().sub, "a");
    // HS256 with the public key as its secret (the classic confusion): no HS256 key here
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(ed_pub.public_key().as_ref()),
    )
    .unwrap();
    assert!(t
        .verify(&confused, NOW)
        .unwrap_err()
        .to_string()
        .contains("HS256"));
    // another Ed25519 key's token does not verify
    let other = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let forged = encode(
        &Header::new(Algorithm::EdDSA),
        &claims,
        &EncodingKey::from_ed_der(other.as_ref()),
    )
    .unwrap();
    assert!(t
        .verify(&forged, NOW)
        .unwrap_err()
        .to_string()
        .contains("signature"));
}

#[test]
fn a_broken_section_is_refused_with_the_entry_named() {
    for (text, wanted) in [
        ("audience = \"a\"\nkeys = []\n", "no keys"),
        ("audience = \"a\"\n[[keys]]\nalg = \"HS256\"\nsecret = \"short\"\n", "32 bytes"),
        ("audience = \"a\"\n[[keys]]\nalg = \"RS256\"\nsecret = \"x\"\n", "must be HS256"),
        ("audience = \"a\"\n[[keys]]\nalg = \"EdDSA\"\nsecret = \"x\"\n", "public_key"),
        ("audience = \"a\"\n[[keys]]\nalg = \"EdDSA\"\npublic_key = \"nope\"\n", "Ed25519"),
        (&format!("audience = \"a\"\n[[keys]]\nalg = \"HS256\"\nsecret = \"{SECRET}\"\n[[rules]]\ncollection = \"u\"\nid = \"{{sub\"\naccess = \"read\"\n") as &str, "unclosed"),
        (&format!("audience = \"a\"\n[[keys]]\nalg = \"HS256\"\nsecret = \"{SECRET}\"\n[[rules]]\ncollection = \"u\"\nid = \"x\"\nprefix = \"y\"\naccess = \"read\"\n"), "not both"),
        (&format!("audience = \"a\"\n[[keys]]\nalg = \"HS256\"\nsecret = \"{SECRET}\"\n[[rules]]\ncollection = \"u\"\nid = \"x\"\naccess = \"admin\"\n"), "never admin"),
    ] {
        let err = Tokens::parse(toml::from_str(text).unwrap()).unwrap_err();
        assert!(err.contains(wanted), "{err:?} should mention {wanted:?}");
    }
}

#[test]
fn templates_expand_only_present_non_empty_claims() {
    let claims: BTreeMap<&str, &str> = [("sub", "alice"), ("empty", "")].into();
    assert_eq!(expand("{sub}:", &claims).as_deref(), Some("alice:"));
    assert_eq!(
        expand("x-{sub}-{sub}", &claims).as_deref(),
        Some("x-alice-alice")
    );
    assert_eq!(expand("{org}", &claims), None);
    assert_eq!(expand("{empty}:", &claims), None);
    assert_eq!(expand("plain", &claims).as_deref(), Some("plain"));
}
