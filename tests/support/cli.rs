//! The `flagpole` binary for the command-line suites (only they are built with it: the binary
//! needs the `cli` feature).

use std::process::Command;

/// The binary, with no `FLAGPOLE_*` variable or `RUST_LOG` from the host environment.
pub fn flagpole() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flagpole"));
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if name.starts_with("FLAGPOLE_") || name == "RUST_LOG" {
            cmd.env_remove(&var);
        }
    }
    cmd
}
