//! `flagpole relay`: the library's relay, built from the common upstream options, until a signal.

use std::path::PathBuf;

use flagpole::relay::Relay;

use crate::args::{Common, RelayArgs};
use crate::{failure, stop_signal, upstream, Failure};

pub(crate) async fn run(common: &Common, args: &RelayArgs) -> Result<(), Failure> {
    refuse_client_options(common)?;
    // Before binding: a signal that comes right after the "listening" line must stop the relay
    // cleanly, not kill it with the default action.
    let stop = stop_signal()
        .map_err(|e| Failure::Other(format!("cannot listen for SIGINT/SIGTERM: {e}")))?;
    let mut builder = Relay::builder(upstream(common)?)
        .max_connections(usize::try_from(args.max_connections).unwrap_or(usize::MAX));
    if let Some(dir) = cache_dir(common, args) {
        builder = builder.cache_dir(dir);
    }
    let relay = builder.bind(args.listen).await.map_err(|e| match e {
        flagpole::Error::Listen { .. } => Failure::Other(format!("--listen: {e}")),
        e => failure(e),
    })?;
    // Printed whatever the log level: scripts and tests read the port when they ask for port 0.
    eprintln!("flagpole relay listening on {}", relay.local_addr());
    stop.await;
    eprintln!("flagpole relay stopping: requests in flight get up to 5 s");
    relay.shutdown().await;
    Ok(())
}

/// Options of `get` and `watch` that describe one client: the relay serves the same
/// unpersonalised flags to many, and each client applies its own ids, version, defaults and
/// overrides. Refused rather than ignored, so that nobody believes a relay applies them.
fn refuse_client_options(common: &Common) -> Result<(), Failure> {
    const PERSONAL: &str =
        "the relay serves the unpersonalised flags; clients resolve rollouts with their own ids";
    const LOCAL: &str =
        "the relay serves upstream's flags as sent; defaults and overrides belong to each client";
    let set = [
        (
            common.profile_id.is_some(),
            "--profile-id",
            "PROFILE_ID",
            PERSONAL,
        ),
        (
            common.metrics_id.is_some(),
            "--metrics-id",
            "METRICS_ID",
            PERSONAL,
        ),
        (
            !common.metrics_flags.is_empty(),
            "--metrics-flags",
            "METRICS_FLAGS",
            PERSONAL,
        ),
        (
            common.client_version.is_some(),
            "--client-version",
            "CLIENT_VERSION",
            "clients pick version-gated values with their own version",
        ),
        (!common.defaults.is_empty(), "--default", "DEFAULT", LOCAL),
        (
            common.defaults_file.is_some(),
            "--defaults-file",
            "DEFAULTS_FILE",
            LOCAL,
        ),
        (
            !common.overrides.is_empty(),
            "--override",
            "OVERRIDE",
            LOCAL,
        ),
        (
            common.disabled,
            "--disabled",
            "DISABLED",
            "a relay with remote flags off would have nothing to serve",
        ),
        (
            common.cache_file.is_some(),
            "--cache-file",
            "CACHE_FILE",
            "the relay keeps one file per parameter set: use --cache-dir",
        ),
    ];
    match set.into_iter().find(|(given, ..)| *given) {
        Some((_, option, var, why)) => Err(Failure::Usage(format!(
            "relay: {option} (or FLAGPOLE_{var}) does not apply: {why}"
        ))),
        None => Ok(()),
    }
}

/// `--cache-dir`, or `<platform cache dir>/flagpole/relay`; none with `--no-cache`.
fn cache_dir(common: &Common, args: &RelayArgs) -> Option<PathBuf> {
    if common.no_cache {
        return None;
    }
    if let Some(dir) = &args.cache_dir {
        return Some(dir.clone());
    }
    let dir = dirs::cache_dir().map(|dir| dir.join("flagpole").join("relay"));
    if dir.is_none() {
        tracing::warn!("no platform cache directory; the relay runs without cache files");
    }
    dir
}
