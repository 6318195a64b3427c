//! Publishing without the poller, for benchmarks and tests (feature `test-util`). Not part of the
//! public API: hidden from the docs and free to change.
//!
//! Why it exists: the benchmarks measure the publish path (parse, build, publish) in isolation
//! and need a writer that publishes 10,000 snapshots a second beside the readers. Going through
//! the poller (a `ScriptedTransport` and `refresh()`) adds a task hop, a channel round trip and
//! status updates per publish, which is neither what is measured nor fast enough.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Map;

use crate::clock::WallClock;
use crate::error::Error;
use crate::layers::RemoteLayer;
use crate::parse::parse;
use crate::rollout;
use crate::snapshot::{Snapshot, Source};
use crate::Flags;

/// A snapshot of the flags in `body` (the wire format), as a 200 answer would give, processed
/// for no particular identity, with no defaults or overrides.
pub fn build_snapshot(body: &[u8]) -> Result<Snapshot, Error> {
    let flags = Arc::new(parse(body)?);
    let layer = RemoteLayer {
        processed: Arc::new(rollout::process(&flags, &Default::default())),
        source: Source::Network,
        cache_timestamp: WallClock::default().now_ms(),
        etag: None,
    };
    let none = Map::new();
    Ok(Snapshot::build(
        &HashMap::new(),
        Some(&layer),
        [&none, &none],
    ))
}

/// Parses `body`, builds its snapshot and publishes it to `flags`' readers and subscribers: the
/// poller's path for a 200 answer, minus the network and the cache file.
pub fn publish_body(flags: &Flags, body: &[u8]) -> Result<Arc<Snapshot>, Error> {
    Ok(flags.shared().publish(build_snapshot(body)?))
}

/// Publishes a snapshot as the poller does (sharing the current layout when the names match).
pub fn publish(flags: &Flags, snapshot: Snapshot) -> Arc<Snapshot> {
    flags.shared().publish(snapshot)
}

/// Publishes an already shared snapshot as it is: for writers that alternate prepared snapshots.
pub fn publish_arc(flags: &Flags, snapshot: Arc<Snapshot>) {
    flags.shared().store(snapshot);
}

/// Parses `body` into its flat flag map and drops it; the number of flags.
pub fn parse_only(body: &[u8]) -> Result<usize, Error> {
    Ok(parse(body)?.len())
}
