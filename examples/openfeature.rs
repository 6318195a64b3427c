//! flagpole behind the OpenFeature API, against an embedded fake Client Config API (no network
//! needed): typed resolution with reasons and error codes, and provider events.
//!
//! Run it with `cargo run --example openfeature --features openfeature`.

use std::time::Duration;

use flagpole::{Flag, FlagpoleProvider, Flags};
use open_feature::{OpenFeature, StructValue};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

// The same flag as a typed definition: what code that does not go through OpenFeature reads.
static NEW_CHECKOUT: Flag<bool> = Flag::new("new-checkout", false);

/// Makes the fake API answer every request for the flags with `response` from now on.
async fn serve(server: &MockServer, response: ResponseTemplate) {
    server.reset().await;
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .respond_with(response)
        .mount(server)
        .await;
}

fn flags_body(checkout: bool) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!([
        {"new-checkout": checkout},
        {"max-items": 50},
        {"theme": {"accent": "teal", "dark": true}}
    ]))
}

/// `EvaluationError` (open-feature 0.3) is not a `std::error::Error`: make it one for `?`.
fn ok<T>(result: open_feature::EvaluationResult<T>) -> Result<T, String> {
    result.map_err(|e| format!("{}: {}", e.code, e.message.unwrap_or_default()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = MockServer::start().await;
    serve(&server, flags_body(false)).await;

    let flags = Flags::builder()
        .base_url(format!("{}/v1", server.uri()))
        .default_flag("offline-mode", true)
        .backoff_initial(Duration::from_millis(200))
        .backoff_max(Duration::from_millis(400))
        .build()?;
    let provider = FlagpoleProvider::new(flags.clone());
    let mut events = provider.events();
    let watcher = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            println!("   event: {event:?}");
        }
        println!("   event stream ended");
    });

    // set_provider runs the provider's initialize: it waits (at most 5 s) for the first fetch.
    OpenFeature::singleton_mut()
        .await
        .set_provider(provider)
        .await;
    let client = OpenFeature::singleton().await.create_client();
    println!("1. provider registered");

    let checkout = ok(client.get_bool_details("new-checkout", None, None).await)?;
    println!(
        "2. new-checkout = {} ({:?})",
        checkout.value, checkout.reason
    );
    let items = ok(client.get_int_details("max-items", None, None).await)?;
    println!("   max-items = {} ({:?})", items.value, items.reason);
    let theme = ok(client
        .get_struct_value::<StructValue>("theme", None, None)
        .await)?;
    println!("   theme.accent = {:?}", theme.fields.get("accent"));
    let offline = ok(client.get_bool_details("offline-mode", None, None).await)?;
    println!(
        "   offline-mode = {} ({:?}, a caller default)",
        offline.value, offline.reason
    );

    let mismatch = client.get_string_value("max-items", None, None).await;
    println!("3. max-items as a string: {:?}", mismatch.unwrap_err().code);
    let missing = client.get_bool_value("no-such-flag", None, None).await;
    println!("   no-such-flag: {:?}", missing.unwrap_err().code);

    println!("4. the server flips new-checkout; refresh");
    serve(&server, flags_body(true)).await;
    flags.refresh().await?;
    let checkout = ok(client.get_bool_value("new-checkout", None, None).await)?;
    println!(
        "   new-checkout = {checkout} (the handle's own typed read agrees: {})",
        flags.value(&NEW_CHECKOUT)
    );

    println!("5. outage: the last good flags are still served, the provider is stale");
    serve(&server, ResponseTemplate::new(503)).await;
    let _ = flags.refresh().await;
    let checkout = ok(client.get_bool_value("new-checkout", None, None).await)?;
    println!("   new-checkout = {checkout}");

    println!("6. shutdown");
    flags.shutdown().await;
    OpenFeature::singleton_mut().await.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), watcher).await??;
    Ok(())
}
