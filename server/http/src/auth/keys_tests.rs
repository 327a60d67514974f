//! Tests of `keys.rs`.
use super::*;
use std::time::Duration;

fn ring(entries: &str) -> KeyRing {
    KeyRing::parse(entries).unwrap()
}

#[test]
fn keys_are_found_by_hash_and_expire() {
    let (k1, h1) = generate();
    let (k2, h2) = generate();
    assert_ne!(k1, k2);
    let r = ring(&format!(
        "[[keys]]\nname = \"a\"\nhash = \"{h1}\"\naccess = {{ users = \"read\" }}\n\
         [[keys]]\nname = \"b\"\nhash = \"{h2}\"\naccess = {{ \"*\" = \"admin\" }}\n\
         expires = \"2020-01-01T00:00:00Z\"\n"
    ));
    let now = SystemTime::now();
    assert!(matches!(r.lookup(&k1, now), Lookup::Valid(k) if k.name == "a"));
    assert!(matches!(r.lookup(&k2, now), Lookup::Expired(k) if k.name == "b"));
    assert!(matches!(r.lookup("mdk_00", now), Lookup::Unknown));
    assert!(matches!(r.lookup("", now), Lookup::Unknown));
    // before the expiry, the key is valid
    let then = humantime::parse_rfc3339("2019-12-31T23:59:59Z").unwrap();
    assert!(matches!(r.lookup(&k2, then), Lookup::Valid(_)));
    assert!(matches!(
        r.lookup(&k2, then + Duration::from_secs(1)),
        Lookup::Expired(_)
    ));
}

#[test]
fn access_levels_nest_and_exact_names_win_over_the_wildcard() {
    let r = ring(&format!(
        "metrics_keys = [\"m\"]\n\
         [[keys]]\nname = \"w\"\nhash = \"{}\"\naccess = {{ users = \"write\", \"*\" = \"read\", secrets = \"read\" }}\n\
         [[keys]]\nname = \"n\"\nhash = \"{}\"\naccess = {{ \"*\" = \"write\", secrets = \"read\" }}\n\
         [[keys]]\nname = \"root\"\nhash = \"{}\"\naccess = {{ \"*\" = \"admin\" }}\n\
         [[keys]]\nname = \"m\"\nhash = \"{}\"\naccess = {{ users = \"admin\" }}\n",
        hash_of("1"), hash_of("2"), hash_of("3"), hash_of("4")
    ));
    let now = SystemTime::now();
    let key = |k: &str| match r.lookup(k, now) {
        Lookup::Valid(k) => Key::clone(k),
        other => panic!("{other:?}"),
    };
    let (w, n, root, m) = (key("1"), key("2"), key("3"), key("4"));
    let c = |a, name: &str| Need::Collection(a, name.into());
    for (k, need, ok) in [
        (&w, c(Access::Read, "users"), true),
        (&w, c(Access::Write, "users"), true),
        (&w, c(Access::Admin, "users"), false),
        (&w, c(Access::Read, "other"), true),
        (&w, c(Access::Write, "other"), false),
        (&w, Need::Node, false),
        (&w, Need::Metrics, false),
        (&n, c(Access::Write, "anything"), true),
        (&n, c(Access::Write, "secrets"), false),
        (&n, c(Access::Read, "secrets"), true),
        (&root, c(Access::Admin, "x"), true),
        (&root, Need::Node, true),
        (&root, Need::Metrics, true),
        (&m, Need::Metrics, true),
        (&m, Need::Node, false),
        (&m, c(Access::Read, "settings"), false),
        (&m, c(Access::Write, "users"), true),
        (&m, Need::AnyKey, true),
    ] {
        assert_eq!(k.allows(&need).is_ok(), ok, "{} {need:?}", k.name);
    }
    let why = w.allows(&c(Access::Write, "other")).unwrap_err();
    assert!(
        why.contains("write") && why.contains("\"other\"") && why.contains("read"),
        "{why}"
    );
}

#[test]
fn a_broken_file_is_refused_whole_with_the_entry_named() {
    let h = hash_of("x");
    for (text, wanted) in [
        ("[[keys]]\nname = \"a\"\n", "missing field"),
        (&format!("[[keys]]\nname = \"a b\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\n") as &str, "key name"),
        (&format!("[[keys]]\nname = \"a\"\nhash = \"{}\"\naccess = {{ u = \"read\" }}\n", "md5:00"), "sha256:"),
        (&format!("[[keys]]\nname = \"a\"\nhash = \"{}\"\naccess = {{ u = \"read\" }}\n", "sha256:zz"), "not hex"),
        (&format!("[[keys]]\nname = \"a\"\nhash = \"{}\"\naccess = {{ u = \"read\" }}\n", "sha256:00"), "64 hex"),
        (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"owner\" }}\n"), "unknown variant"),
        (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{}}\n"), "names no collection"),
        (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ \"u/x\" = \"read\" }}\n"), "key \"a\": access"),
        (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\nexpires = \"soon\"\n"), "RFC 3339"),
        (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\nwho = 1\n"), "unknown field"),
        (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\n[[keys]]\nname = \"a\"\nhash = \"{}\"\naccess = {{ u = \"read\" }}\n", hash_of("y")), "twice"),
        (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\n[[keys]]\nname = \"b\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\n"), "same hash"),
        (&format!("metrics_keys = [\"p\"]\n[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\n"), "metrics_keys"),
        ("[rate_limit]\nper_sub = { per_second = 0.0, burst = 5 }\n", "per_second > 0"),
        (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\nrate = {{ per_second = 5.0, burst = 0 }}\n"), "burst >= 1"),
        ("[failed_auth]\nburst = 0\nper_second = 1.0\n", "failed_auth"),
        ("[revoked]\nkid = [\"x\"]\n", "unknown field"),
        ("[tokens]\naudience = \"a\"\nkeys = []\n", "no keys"),
    ] {
        let err = KeyRing::parse(text).unwrap_err();
        assert!(err.contains(wanted), "{err:?} should mention {wanted:?}");
    }
    assert!(KeyRing::parse("").unwrap().is_empty());
    // the defaults: 100 requests/s per sub, keys unlimited, 20 failures per address
    let r = KeyRing::parse("").unwrap();
    assert_eq!(r.rates, RateLimits::default());
    assert_eq!(r.rates.per_key, None);
    assert_eq!(r.failed_auth.burst, 20);
    assert!(r.tokens.is_none());
}
