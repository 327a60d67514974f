//! The `meridian` command line as a user meets it: bad flags, values and config files are
//! refused with exit code 2 and a message naming what is wrong, before anything is written.
//!
//! This package's integration tests are also what makes `cargo test --workspace` build the
//! `meridian` binary that `tests/` runs (cargo builds a package's binaries for its own
//! integration tests only).

use std::path::Path;
use std::process::{Command, Output};

fn meridian(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .current_dir(dir)
        // The environment may set any flag; these tests speak only through arguments.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run meridian")
}

fn refused(out: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    assert!(
        stderr.contains(says),
        "stderr should say {says:?}: {stderr}"
    );
}

#[test]
fn help_names_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = meridian(&["--help"], dir.path());
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["serve", "demo", "cert", "key"] {
        assert!(help.contains(command), "help lacks {command}: {help}");
    }
}

#[test]
fn an_unknown_flag_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    refused(
        &meridian(&["serve", "--no-such-flag"], dir.path()),
        "--no-such-flag",
    );
}

#[test]
fn bad_values_are_refused_before_the_data_dir_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for (args, says) in [
        (vec!["--cache-mb", "lots"], "--cache-mb"),
        (vec!["--feed-mode", "carrier-pigeon"], "stream or long-poll"),
        (vec!["--listen", "not an address"], "listen"),
    ] {
        let mut all = vec!["serve", "--data-dir", data, "--insecure-no-auth"];
        all.extend(args);
        refused(&meridian(&all, dir.path()), says);
        assert!(!Path::new(data).exists(), "{all:?} made the data dir");
    }
}

#[test]
fn a_config_file_with_an_unknown_key_is_refused_and_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meridian.toml");
    std::fs::write(&config, "region = \"eu\"\ncahce_mb = 64\n").unwrap();
    let out = meridian(&["serve", "--config", config.to_str().unwrap()], dir.path());
    refused(&out, "cahce_mb");
}

#[test]
fn a_config_file_that_does_not_exist_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = meridian(&["serve", "--config", "absent.toml"], dir.path());
    refused(&out, "absent.toml");
}

#[test]
fn a_key_with_a_bad_access_level_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = meridian(
        &[
            "key",
            "create",
            "--name",
            "app",
            "--access",
            "owner",
            "--collections",
            "users",
        ],
        dir.path(),
    );
    refused(&out, "read, write or admin");
    assert!(out.stdout.is_empty(), "no key is printed");
}
