//! Command-line arguments: every option also reads `FLAGPOLE_<OPTION>` from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use flagpole::{Client, Distribution, Environment};
use serde_json::Value;

/// Keeps remote feature flags in memory; this command shows them to operators and scripts.
///
/// Output is JSON on stdout; logs go to stderr.
#[derive(Debug, Parser)]
#[command(name = "flagpole", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,

    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print the flags once as one JSON object: {"source", "cache_timestamp", "flags", "error"}.
    ///
    /// A fresh matching cache (or, with --redis-url, a fresh shared record) is served without a
    /// request unless --refresh; otherwise one attempt (no retries), then fallback to the
    /// cache, the defaults, or {}. Exits 0 whenever flags are served.
    Get {
        /// Fetch even when the cache or the shared record is fresh.
        #[arg(long, env = "FLAGPOLE_REFRESH", value_parser = BoolishValueParser::new())]
        refresh: bool,
    },
    /// Run the poller and print JSON lines: snapshot, status and refresh events.
    ///
    /// Reads commands from stdin, one per line: refresh, enable, disable, quit. SIGINT, SIGTERM
    /// or quit stop it; the last line is the "stopped" status.
    Watch,
    /// Serve the flags over HTTP to many clients from one upstream poller per parameter set.
    ///
    /// Routes: GET /v1/flags?client=&distribution=&environment= (the Client Config API: point
    /// clients' --base-url at http://HOST:PORT/v1), /health, /metrics. user= is accepted and
    /// ignored: the relay serves the unpersonalised flags. --client, --distribution and
    /// --environment are the defaults for requests that name none; the other common options
    /// apply upstream, except the personal and local ones (--profile-id, --metrics-id,
    /// --metrics-flags, --client-version, --default, --defaults-file, --override, --disabled,
    /// --cache-file), which are refused. Prints "flagpole relay listening on ADDR" on stderr
    /// once it accepts connections; SIGINT or SIGTERM stop accepting, let requests in flight
    /// finish for up to 5 s, and exit 0.
    Relay(RelayArgs),
}

/// Options of `flagpole relay`.
#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Address to listen on, as IP:PORT (port 0 picks a free one; [::]:8080 for every interface).
    #[arg(long, env = "FLAGPOLE_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub(crate) listen: SocketAddr,

    /// Directory of the cache files, one per parameter set (<client>-<distribution>-<environment>.json):
    /// a restarted relay serves them at once, with no upstream request while they are fresh.
    /// [default: <platform cache dir>/flagpole/relay; none with --no-cache]
    #[arg(long, env = "FLAGPOLE_CACHE_DIR", value_name = "DIR")]
    pub(crate) cache_dir: Option<PathBuf>,

    /// Open connections at most; past it new ones are closed at once.
    #[arg(long, env = "FLAGPOLE_MAX_CONNECTIONS", default_value = "10000", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: u32,
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("`{s}` is not an address like 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080")
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 30s, 15m or 1d: {e}"))
}

/// The library checks the version again at build; this check names the option in the error.
fn parse_version(s: &str) -> Result<String, String> {
    let bare = s.trim();
    let bare = bare.strip_prefix('v').unwrap_or(bare);
    match semver::Version::parse(bare) {
        Ok(_) => Ok(s.to_owned()),
        Err(e) => Err(format!(
            "`{s}` is not a semantic version like 13.1.0 or 13.1.0-beta.2 ({e})"
        )),
    }
}

/// `NAME=JSON`.
fn parse_default(s: &str) -> Result<(String, Value), String> {
    let (name, json) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=JSON"))?;
    if name.is_empty() {
        return Err(format!("`{s}` has an empty flag name"));
    }
    let value = serde_json::from_str(json).map_err(|e| {
        format!("the value of `{name}` is not JSON ({e}); quote strings: {name}='\"text\"'")
    })?;
    Ok((name.to_owned(), value))
}

/// Options shared by every subcommand; accepted before or after it.
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// API root; /flags is appended.
    #[arg(long, global = true, env = "FLAGPOLE_BASE_URL", default_value = flagpole::DEFAULT_BASE_URL)]
    pub(crate) base_url: String,

    /// Which app asks: extension or mobile.
    #[arg(
        long,
        global = true,
        env = "FLAGPOLE_CLIENT",
        default_value = "extension"
    )]
    pub(crate) client: Client,

    /// Which build: main or flask.
    #[arg(
        long,
        global = true,
        env = "FLAGPOLE_DISTRIBUTION",
        default_value = "main"
    )]
    pub(crate) distribution: Distribution,

    /// Which environment: prod, rc or dev.
    #[arg(
        long,
        global = true,
        env = "FLAGPOLE_ENVIRONMENT",
        default_value = "prod"
    )]
    pub(crate) environment: Environment,

    /// Profile id, sent as user= (never printed or logged). [default: none]
    #[arg(
        long,
        global = true,
        env = "FLAGPOLE_PROFILE_ID",
        hide_env_values = true
    )]
    pub(crate) profile_id: Option<String>,

    /// Metrics id for explicit targeting and --metrics-flags rollouts (never printed or logged).
    /// [default: none]
    #[arg(
        long,
        global = true,
        env = "FLAGPOLE_METRICS_ID",
        hide_env_values = true
    )]
    pub(crate) metrics_id: Option<String>,

    /// Flags whose rollouts segment by the metrics id instead of the profile id, as a,b,c.
    #[arg(
        long,
        global = true,
        env = "FLAGPOLE_METRICS_FLAGS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub(crate) metrics_flags: Vec<String>,

    /// The app's semantic version: picks version-gated values; a cache saved by another version
    /// is not used. [default: none: version-gated values are shown as sent]
    #[arg(long, global = true, env = "FLAGPOLE_CLIENT_VERSION", value_parser = parse_version)]
    pub(crate) client_version: Option<String>,

    /// How long fetched flags stay fresh.
    #[arg(long, global = true, env = "FLAGPOLE_FETCH_INTERVAL", default_value = "1d", value_parser = parse_duration)]
    pub(crate) fetch_interval: Duration,

    /// Limit on one whole request.
    #[arg(long, global = true, env = "FLAGPOLE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,

    /// First retry delay after a failure (watch).
    #[arg(long, global = true, env = "FLAGPOLE_BACKOFF_INITIAL", default_value = "1s", value_parser = parse_duration)]
    pub(crate) backoff_initial: Duration,

    /// Retry delay cap (watch); the fetch interval caps it too.
    #[arg(long, global = true, env = "FLAGPOLE_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub(crate) backoff_max: Duration,

    /// Cache file. [default: <platform cache dir>/flagpole/<client>-<distribution>-<environment>.json]
    #[arg(long, global = true, env = "FLAGPOLE_CACHE_FILE")]
    pub(crate) cache_file: Option<PathBuf>,

    /// Neither read nor write a cache file (wins over --cache-file and relay's --cache-dir).
    #[arg(long, global = true, env = "FLAGPOLE_NO_CACHE", value_parser = BoolishValueParser::new())]
    pub(crate) no_cache: bool,

    /// Shared mode: redis://[user][:password@]host[:port][/db] (rediss:// for TLS). Processes
    /// sharing it make about one request per interval between them and adopt each other's
    /// flags (source "shared"); Redis down, they fetch alone. The URL is never printed or
    /// logged. [default: none (also when empty): this process fetches alone]
    #[arg(
        long,
        global = true,
        env = "FLAGPOLE_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) redis_url: Option<String>,

    /// Prefix of the Redis keys (with --redis-url): processes that share flags use the same.
    #[arg(
        long,
        global = true,
        env = "FLAGPOLE_REDIS_PREFIX",
        default_value = "flagpole"
    )]
    pub(crate) redis_prefix: String,

    /// Follow the server's change stream ({base-url}/flags/stream, as `flagpole relay` serves
    /// it) besides polling: a change is fetched as soon as it is announced (watch, and relay
    /// for its upstream; get ignores it). Status lines gain "stream": off, connecting,
    /// connected or unsupported.
    #[arg(long, global = true, env = "FLAGPOLE_STREAM", value_parser = BoolishValueParser::new())]
    pub(crate) stream: bool,

    /// Remote flags off: no request, defaults only.
    #[arg(long, global = true, env = "FLAGPOLE_DISABLED", value_parser = BoolishValueParser::new())]
    pub(crate) disabled: bool,

    /// A default flag value as NAME=JSON (repeatable), e.g. --default beta=true.
    #[arg(long = "default", global = true, value_name = "NAME=JSON", env = "FLAGPOLE_DEFAULT", value_parser = parse_default)]
    pub(crate) defaults: Vec<(String, Value)>,

    /// A local override as NAME=JSON (repeatable): served over remote flags and defaults, for
    /// this run only.
    #[arg(long = "override", global = true, value_name = "NAME=JSON", env = "FLAGPOLE_OVERRIDE", value_parser = parse_default)]
    pub(crate) overrides: Vec<(String, Value)>,

    /// A JSON object of default flag values; --default entries win over it.
    #[arg(long, global = true, env = "FLAGPOLE_DEFAULTS_FILE")]
    pub(crate) defaults_file: Option<PathBuf>,

    /// More logs on stderr (-v info, -vv debug, -vvv trace); RUST_LOG=<level> overrides.
    /// (The one option without a FLAGPOLE_ variable: RUST_LOG plays that role.)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        assert_eq!(
            parse_default("a=true").unwrap(),
            ("a".into(), Value::Bool(true))
        );
        assert_eq!(parse_default("a=\"b=c\"").unwrap().1, Value::from("b=c"));
        assert!(parse_default("a").unwrap_err().contains("NAME=JSON"));
        assert!(parse_default("=1").unwrap_err().contains("empty"));
        assert!(parse_default("a=text")
            .unwrap_err()
            .contains("`a` is not JSON"));
    }

    #[test]
    fn versions_parse() {
        for good in ["13.1.0", "v13.1.0", " 1.2.3-beta.2+b7 "] {
            assert_eq!(parse_version(good).unwrap(), good);
        }
        for bad in ["13.1", "latest", "01.2.3", ""] {
            assert!(parse_version(bad).unwrap_err().contains("semantic version"));
        }
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
        assert!(parse_listen("[::]:8080").unwrap().is_ipv6());
        for bad in ["nonsense", "8080", "localhost:8080", "127.0.0.1"] {
            assert!(parse_listen(bad).unwrap_err().contains("is not an address"));
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("soon").is_err());
    }
}
