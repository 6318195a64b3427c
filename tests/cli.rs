//! The `flagpole` binary against wiremock on 127.0.0.1.

use std::process::Command;

fn flagpole() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flagpole"))
}

#[test]
fn help_lists_every_option_with_defaults() {
    let out = flagpole().args(["get", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for option in [
        "--base-url",
        "--client",
        "--distribution",
        "--environment",
        "--profile-id",
        "--client-version",
        "--fetch-interval",
        "--timeout",
        "--backoff-initial",
        "--backoff-max",
        "--cache-file",
        "--no-cache",
        "--disabled",
        "--default",
        "--defaults-file",
        "--refresh",
    ] {
        assert!(help.contains(option), "{option} missing from help:\n{help}");
    }
    assert!(help.contains("[default: 1d]"), "{help}");
}
