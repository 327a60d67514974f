//! The OpenAPI description the node serves, checked against the node by schemathesis (PyPI):
//! no server errors, only documented statuses, content types, headers and bodies as described,
//! and every request the description allows is accepted (`tests/schemathesis.toml`), for each
//! request alone and, in the stateful phase, along the description's links (a write's answer
//! names the document that the next read, patch, ops or delete acts on).
//!
//! Needs `schemathesis` on the PATH, or `$SCHEMATHESIS` naming it (`.ci/run` installs it in a
//! virtual environment). Runs a fixed seed (`MERIDIAN_SCHEMATHESIS_SEED` picks another) so that
//! CI is repeatable; about 75 s.
//!
//! `/v1/_drain` is left out: it stops the node under test (`tests/tests/drain.rs` tests it).
//! `/v1/_regions` is left out: an added region is followed for real (the node would call the
//! made-up URLs it is given) and a removal is for good; `tests/tests/membership.rs` tests it.
//! Changes to `/v1/_placement/{collection}` are left out: a placement changes which later
//! requests to that collection are served; `tests/tests/placement.rs` tests them.
//! `/v1/_schemas/{collection}` is left out: its body is a JSON Schema, and no schema says which
//! JSON objects are valid JSON Schemas (any other is 400 `invalid_schema`); and a stored schema
//! changes which later writes to that collection are accepted. Its contract is tested in
//! `server/http/tests/schemas.rs`.
//!
//! The node has an auth file (an admin key, and scoped tokens accepted) and schemathesis presents
//! the admin key through the description's bearer scheme, so the schemes it declares are the ones
//! in force.
//!
//! `Accept: application/json` is held fixed rather than generated: `text/event-stream` answers a
//! stream that does not end (the change feed has its own tests, `changes.rs`).
//!
//! `Meridian-Session` is generated from its declared grammar, then mapped by a hook
//! (`tests/schemathesis_hooks.py`) onto tokens the node can cover: the same shape, each entry
//! naming the node under test at a time it has reached. A token naming a node this cluster does not
//! have (400 `unknown_session_node`) or a time it has not reached (503 `session_unavailable` after
//! the wait) is refused by design, not the "acceptance" of valid input this run checks; those
//! answers are tested in `server/http/tests/api.rs`, and the parser is property-tested
//! (`sync/src/token.rs`).

use std::path::PathBuf;
use std::process::Command;

use meridian_tests::Process;

#[test]
fn the_served_openapi_description_matches_what_the_node_does() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, entry) = meridian_tests::create_key("schemathesis", "admin", "*");
    let auth = dir.path().join("auth.toml");
    // schemathesis also sends requests without credentials, to see them refused: more than the
    // default 20 failures per address would turn its valid requests into 429s
    let file = entry
        + &meridian_tests::tokens::section("users")
        + "\n[failed_auth]\nburst = 1000000\nper_second = 1000.0\n";
    std::fs::write(&auth, file).unwrap();
    let node = Process::start(
        &dir.path().join("data"),
        &["--auth-file", auth.to_str().unwrap()],
    );
    // the node's own entry of a session token (after one write): its id, and a time it has reached
    let session = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let r = meridian_tests::http_client()
            .put(node.url("/v1/seed/s"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.headers()["meridian-session"].to_str().unwrap().to_owned()
    });
    let (session_node, session_max) = session.split_once('=').expect("node=time");
    let tool = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let seed = std::env::var("MERIDIAN_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let tests_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&tool)
        .current_dir(&tests_dir)
        .args(["--config-file", "schemathesis.toml", "run"])
        .arg(node.url("/openapi.json"))
        .args([
            "--seed",
            &seed,
            "--max-examples",
            "100",
            "--request-timeout",
            "10",
        ])
        .args([
            "--exclude-path-regex",
            "^/internal/|^/v1/_schemas/|^/v1/_drain$|^/v1/_regions|^/v1/_placement/",
        ])
        .args(["-H", "Accept: application/json"])
        .args([
            "-c",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,positive_data_acceptance",
        ])
        .env("NO_COLOR", "1")
        .env("MERIDIAN_ADMIN_KEY", &admin)
        .env("MERIDIAN_SESSION_NODE", session_node)
        .env("MERIDIAN_SESSION_MAX", session_max)
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", &tests_dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {tool}: {e}; pip install schemathesis, or set SCHEMATHESIS")
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let refusals: Vec<String> = node
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("refused: 401"))
        .take(5)
        .collect();
    assert!(
        out.status.success(),
        "schemathesis (seed {seed}) found problems:\n{report}\nthe node's first 401s:\n{}",
        refusals.join("\n")
    );
    assert!(report.contains(" passed"), "{report}");
    // the links make the stateful phase run: without them it is "not applicable"
    assert!(
        report.contains("Stateful") && !report.contains("Stateful (not applicable)"),
        "the stateful phase did not run:\n{report}"
    );
}
