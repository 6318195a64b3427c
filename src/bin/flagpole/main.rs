//! `flagpole`: shows the flags a client gets, where they came from, and how they change.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::Parser;
use flagpole::{FileStore, Flags, FlagsBuilder, RedisStore, Source, Status};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

mod args;
mod output;
mod relay;

use args::{Cli, Command, Common};
use output::{Event, Get, Shared};

/// A failure and the exit code it maps to.
enum Failure {
    /// Bad arguments: exit 2.
    Usage(String),
    /// Anything else that prevents serving: exit 1.
    Other(String),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(2);
            }
            // One line: clap's first line carries the option and the reason.
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("flagpole: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    init_logs(cli.common.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flagpole: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    // Lets a cache save in progress finish, without waiting on anything that hangs.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("flagpole: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Other(message)) => {
            eprintln!("flagpole: {message}");
            ExitCode::from(1)
        }
    }
}

fn init_logs(verbose: u8) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<tracing::Level>().ok())
        .unwrap_or(match verbose {
            0 => tracing::Level::WARN,
            1 => tracing::Level::INFO,
            2 => tracing::Level::DEBUG,
            _ => tracing::Level::TRACE,
        });
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .init();
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Relay(args) = &cli.command {
        return relay::run(&cli.common, args).await;
    }
    // `get` is one attempt: the poller fetches at start only when the cache is not fresh, and
    // neither retries nor schedules anything after that.
    let one_shot = matches!(cli.command, Command::Get { .. });
    let (builder, store) = builder(&cli.common)?;
    let store = store.as_ref();
    // `get` makes one attempt: a change stream would only hold the connection open.
    let streaming = cli.common.stream && !one_shot;
    let flags = builder
        .polling(!one_shot)
        .stream(streaming)
        .build()
        .map_err(failure)?;
    let written = match cli.command {
        Command::Relay(_) => Ok(()),
        Command::Get { refresh } => {
            let written = get(&flags, store, refresh).await;
            // Saves run beside the poller: let the last one reach the cache before exiting,
            // bounded like a request (its failure is already a warning on stderr).
            let _ = tokio::time::timeout(cli.common.timeout, flags.flush()).await;
            written
        }
        Command::Watch => watch(&flags, store, streaming).await,
    };
    flags.shutdown().await;
    written.map_err(|e| Failure::Other(format!("cannot write to stdout: {e}")))
}

/// A configuration error is a usage error naming the option; anything else is a failure.
fn failure(e: flagpole::Error) -> Failure {
    match &e {
        flagpole::Error::Config { reason } => Failure::Usage(match option_for(reason) {
            Some(option) => format!("{option}: {e}"),
            None => e.to_string(),
        }),
        _ => Failure::Other(e.to_string()),
    }
}

/// The option behind a configuration error, so that the message names what to fix: the
/// builder's reasons name the setting ("fetch interval must be above zero"), not the option.
fn option_for(reason: &str) -> Option<&'static str> {
    [
        ("base URL", "--base-url"),
        ("fetch interval", "--fetch-interval"),
        ("timeout", "--timeout"),
        ("initial backoff", "--backoff-initial"),
        ("maximum backoff", "--backoff-max"),
    ]
    .into_iter()
    .find(|(setting, _)| reason.starts_with(setting))
    .map(|(_, option)| option)
}

/// What the request and the polling need: the options `get`, `watch` and `relay` share (the
/// relay adds its own cache files, per parameter set).
fn upstream(common: &Common) -> Result<FlagsBuilder, Failure> {
    Ok(upstream_with_store(common)?.0)
}

/// [`upstream`] and the shared store it uses, if any (kept to report its state).
fn upstream_with_store(common: &Common) -> Result<(FlagsBuilder, Option<RedisStore>), Failure> {
    let mut builder = Flags::builder()
        .base_url(&common.base_url)
        .client(common.client)
        .distribution(common.distribution)
        .environment(common.environment)
        .fetch_interval(common.fetch_interval)
        .timeout(common.timeout)
        .backoff_initial(common.backoff_initial)
        .backoff_max(common.backoff_max)
        .stream(common.stream);
    // Empty (an unset variable passed through, say) is no shared store.
    if let Some(url) = common.redis_url.as_deref().filter(|url| !url.is_empty()) {
        // The library's message never includes the URL's user or password.
        let store = RedisStore::new(url)
            .map_err(|e| Failure::Usage(format!("--redis-url: {e}")))?
            .prefix(&common.redis_prefix);
        builder = builder.shared_store(store.clone());
        return Ok((builder, Some(store)));
    }
    Ok((builder, None))
}

/// `upstream` plus the personal and local options and the cache file of `get` and `watch`.
fn builder(common: &Common) -> Result<(FlagsBuilder, Option<RedisStore>), Failure> {
    let (builder, store) = upstream_with_store(common)?;
    let mut builder = builder.enabled(!common.disabled);
    if let Some(id) = &common.profile_id {
        builder = builder.profile_id(id);
    }
    if let Some(id) = &common.metrics_id {
        builder = builder.metrics_id(id);
    }
    builder = builder.metrics_flags(common.metrics_flags.iter().filter(|n| !n.is_empty()));
    if let Some(version) = &common.client_version {
        builder = builder.client_version(version);
    }
    if let Some(path) = &common.defaults_file {
        builder = builder.defaults(read_defaults(path)?);
    }
    builder = builder.defaults(common.defaults.iter().cloned());
    for (name, value) in &common.overrides {
        builder = builder.override_flag(name, value.clone());
    }
    if !common.no_cache {
        match cache_path(common) {
            Some(path) => builder = builder.store(FileStore::new(path)),
            None => tracing::warn!("no platform cache directory; running without a cache file"),
        }
    }
    Ok((builder, store))
}

fn read_defaults(path: &PathBuf) -> Result<serde_json::Map<String, Value>, Failure> {
    let shown = path.display();
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Usage(format!("--defaults-file {shown}: cannot read it: {e}")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Failure::Usage(format!(
            "--defaults-file {shown}: expected a JSON object of flag values"
        ))),
        Err(e) => Err(Failure::Usage(format!(
            "--defaults-file {shown}: not valid JSON: {e}"
        ))),
    }
}

/// `<cache dir>/flagpole/<client>-<distribution>-<environment>.json`.
fn cache_path(common: &Common) -> Option<PathBuf> {
    if let Some(path) = &common.cache_file {
        return Some(path.clone());
    }
    let name = format!(
        "{}-{}-{}.json",
        common.client, common.distribution, common.environment
    );
    Some(dirs::cache_dir()?.join("flagpole").join(name))
}

/// The shared store's state, as printed; `None` without --redis-url.
fn shared(store: Option<&RedisStore>) -> Shared {
    store.map(|store| store.state().as_str())
}

async fn get(flags: &Flags, store: Option<&RedisStore>, refresh: bool) -> std::io::Result<()> {
    // The poller's first outcome: a fresh cache (no request), in shared mode a fresh record
    // another process fetched (no request either), or the one fetch it makes at start.
    let mut status = flags.status_receiver();
    let first = status
        .wait_for(|s| !matches!(s, Status::Initializing { .. }))
        .await
        .map(|s| s.clone())
        .unwrap_or(Status::Stopped);
    let not_fetched = matches!(flags.snapshot().source(), Source::Cache | Source::Shared);
    let error = if refresh && matches!(first, Status::Fresh { .. }) && not_fetched {
        flags.refresh().await.err().map(|e| e.to_string())
    } else {
        first.last_error().map(ToString::to_string)
    };
    output::emit(&Get::new(&flags.snapshot(), error, shared(store)))
}

async fn watch(flags: &Flags, store: Option<&RedisStore>, streaming: bool) -> std::io::Result<()> {
    let mut snapshots = flags.subscribe();
    let mut status = flags.status_receiver();
    output::emit(&Event::snapshot(&snapshots.borrow_and_update()))?;
    // The shared state printed last: a change of it alone prints the status again.
    let mut shared_states = store.map(RedisStore::state_receiver);
    let mut shared_shown = shared(store);
    output::emit(&Event::status(
        &status.borrow_and_update(),
        shared_shown,
        streaming,
    ))?;
    let mut commands = stdin_lines();
    let mut refreshes: JoinSet<Result<_, flagpole::Error>> = JoinSet::new();
    let mut stop = stop_signal()?;
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            changed = snapshots.changed() => {
                if changed.is_err() { break }
                let snapshot = snapshots.borrow_and_update().clone();
                output::emit(&Event::snapshot(&snapshot))?;
            }
            changed = status.changed() => {
                if changed.is_err() { break }
                let now = status.borrow_and_update().clone();
                if now.is_stopped() { break }
                shared_shown = shared(store);
                output::emit(&Event::status(&now, shared_shown, streaming))?;
            }
            Ok(()) = changed(&mut shared_states) => {
                if shared(store) != shared_shown {
                    // The status as it is now, marked seen: one line for both changes.
                    let now = status.borrow_and_update().clone();
                    if now.is_stopped() { break }
                    shared_shown = shared(store);
                    output::emit(&Event::status(&now, shared_shown, streaming))?;
                }
            }
            Some(done) = refreshes.join_next(), if !refreshes.is_empty() => {
                let result = match done {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                output::emit(&Event::refresh(result))?;
            }
            line = commands.recv() => match line.as_deref().map(str::trim) {
                None => {} // stdin closed: keep watching, stop reading
                Some("refresh") => { refreshes.spawn(flags.refresh()); }
                Some("enable") => flags.set_enabled(true).await,
                Some("disable") => flags.set_enabled(false).await,
                Some("quit") => break,
                Some("") => {}
                Some(other) => tracing::warn!(command = other, "unknown command ignored (expected refresh, enable, disable or quit)"),
            },
        }
    }
    flags.shutdown().await;
    output::emit(&Event::status(&Status::Stopped, shared(store), streaming))
}

/// The next change of the shared store's state; never without a shared store.
async fn changed<T>(
    receiver: &mut Option<tokio::sync::watch::Receiver<T>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match receiver {
        Some(receiver) => receiver.changed().await,
        None => std::future::pending().await,
    }
}

/// Lines of stdin from a plain thread: tokio's stdin would hold the runtime open on exit while a
/// read blocks. The receiver ends (forever pending) at EOF.
fn stdin_lines() -> StdinLines {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    StdinLines { rx, open: true }
}

struct StdinLines {
    rx: mpsc::UnboundedReceiver<String>,
    open: bool,
}

impl StdinLines {
    /// The next line, or `None` once at EOF; after that it never completes.
    async fn recv(&mut self) -> Option<String> {
        if !self.open {
            return std::future::pending().await;
        }
        let line = self.rx.recv().await;
        self.open = line.is_some();
        line
    }
}

/// Completes on SIGINT or SIGTERM (Ctrl-C elsewhere).
fn stop_signal() -> std::io::Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>
{
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(Box::pin(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }))
    }
    #[cfg(not(unix))]
    {
        Ok(Box::pin(async {
            let _ = tokio::signal::ctrl_c().await;
        }))
    }
}
