//! The OpenFeature provider, exercised through the `open-feature` client API (feature
//! `openfeature`), on tokio's paused clock with `ScriptedTransport` and `MemoryStore`.

use std::time::Duration;

use flagpole::{
    Error, FlagpoleProvider, Flags, FlagsBuilder, MemoryStore, ProviderEvent, ScriptedResponse,
    ScriptedTransport,
};
use open_feature::provider::{FeatureProvider, ProviderStatus};
use open_feature::{
    Client, EvaluationContext, EvaluationErrorCode, EvaluationReason, FlagMetadataValue,
    OpenFeature, StructValue, Value as OfValue,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn answering(response: ScriptedResponse) -> ScriptedTransport {
    let transport = ScriptedTransport::new();
    transport.set(response);
    transport
}

fn network_flags() -> serde_json::Value {
    json!([
        {"dark-mode": true},
        {"max-items": 50},
        {"ratio": 0.25},
        {"banner": "hello"},
        {"limits": {"max": 3, "tags": ["a", "b"], "off": null}},
        {"list": [1, 2]}
    ])
}

fn builder(transport: &ScriptedTransport) -> FlagsBuilder {
    Flags::builder().transport(transport.clone())
}

/// A client of a fresh `OpenFeature` (not the process-wide singleton: tests run in parallel)
/// whose provider reads `flags`; `set_provider` runs the provider's `initialize`.
async fn client_for(provider: FlagpoleProvider) -> Client {
    let mut api = OpenFeature::default();
    api.set_provider(provider).await;
    api.create_client()
}

fn code<T: std::fmt::Debug>(
    result: Result<T, open_feature::EvaluationError>,
) -> EvaluationErrorCode {
    result.expect_err("an evaluation error").code
}

#[tokio::test(start_paused = true)]
async fn every_type_resolves_from_the_network_snapshot_as_static() {
    let transport = answering(ScriptedResponse::json(&network_flags()));
    let flags = builder(&transport).build().unwrap();
    let provider = FlagpoleProvider::new(flags.clone());
    let client = client_for(provider).await; // initialize waits for the fetch
    assert!(flags.status().is_fresh());

    let details = client
        .get_bool_details("dark-mode", None, None)
        .await
        .unwrap();
    assert!(details.value);
    assert_eq!(details.reason, Some(EvaluationReason::Static));
    assert_eq!(details.flag_key, "dark-mode");
    assert_eq!(
        details.flag_metadata.values["source"],
        FlagMetadataValue::String("network".into())
    );
    assert!(matches!(
        details.flag_metadata.values["cache_timestamp"],
        FlagMetadataValue::Int(ms) if ms > 0
    ));

    let details = client
        .get_int_details("max-items", None, None)
        .await
        .unwrap();
    assert_eq!(
        (details.value, details.reason),
        (50, Some(EvaluationReason::Static))
    );
    assert_eq!(
        client.get_float_value("ratio", None, None).await.unwrap(),
        0.25
    );
    // Integers are numbers too.
    assert_eq!(
        client
            .get_float_value("max-items", None, None)
            .await
            .unwrap(),
        50.0
    );
    assert_eq!(
        client.get_string_value("banner", None, None).await.unwrap(),
        "hello"
    );

    let details = client
        .get_struct_details::<StructValue>("limits", None, None)
        .await
        .unwrap();
    assert_eq!(details.reason, Some(EvaluationReason::Static));
    let limits = details.value;
    assert_eq!(limits.fields["max"], OfValue::Int(3));
    assert_eq!(
        limits.fields["tags"],
        OfValue::Array(vec![
            OfValue::String("a".into()),
            OfValue::String("b".into())
        ])
    );
    assert!(
        !limits.fields.contains_key("off"),
        "null fields are left out"
    );

    // The context is accepted and does not change anything.
    let context = EvaluationContext::default().with_targeting_key("someone");
    assert!(client
        .get_bool_value("dark-mode", Some(&context), None)
        .await
        .unwrap());
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn wrong_types_are_type_mismatch() {
    let transport = answering(ScriptedResponse::json(&network_flags()));
    let flags = builder(&transport)
        .default_flag("nothing", serde_json::Value::Null)
        .build()
        .unwrap();
    let client = client_for(FlagpoleProvider::new(flags.clone())).await;

    assert_eq!(
        code(client.get_bool_value("banner", None, None).await),
        EvaluationErrorCode::TypeMismatch
    );
    assert_eq!(
        code(client.get_int_value("ratio", None, None).await),
        EvaluationErrorCode::TypeMismatch
    );
    assert_eq!(
        code(client.get_float_value("banner", None, None).await),
        EvaluationErrorCode::TypeMismatch
    );
    assert_eq!(
        code(client.get_string_value("dark-mode", None, None).await),
        EvaluationErrorCode::TypeMismatch
    );
    for name in ["list", "banner", "nothing"] {
        let result = client
            .get_struct_value::<StructValue>(name, None, None)
            .await;
        assert_eq!(code(result), EvaluationErrorCode::TypeMismatch, "{name}");
    }
    let error = client
        .get_bool_value("nothing", None, None)
        .await
        .unwrap_err();
    assert_eq!(
        error.message.as_deref(),
        Some("flag `nothing` is null, not a boolean")
    );
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn missing_flag_is_flag_not_found_once_ready() {
    let transport = answering(ScriptedResponse::json(&network_flags()));
    let flags = builder(&transport).build().unwrap();
    let client = client_for(FlagpoleProvider::new(flags.clone())).await;
    let error = client
        .get_bool_value("absent", None, None)
        .await
        .unwrap_err();
    assert_eq!(error.code, EvaluationErrorCode::FlagNotFound);
    assert_eq!(
        error.message.as_deref(),
        Some("flag `absent` is not served")
    );
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn defaults_are_default_and_fill_the_network_set() {
    let transport = answering(ScriptedResponse::json(&network_flags()));
    let flags = builder(&transport)
        .default_flag("dark-mode", false)
        .default_flag("only-default", "d")
        .build()
        .unwrap();
    let client = client_for(FlagpoleProvider::new(flags.clone())).await;
    let remote = client
        .get_bool_details("dark-mode", None, None)
        .await
        .unwrap();
    assert_eq!(
        (remote.value, remote.reason),
        (true, Some(EvaluationReason::Static))
    );
    let filled = client
        .get_string_details("only-default", None, None)
        .await
        .unwrap();
    assert_eq!(filled.value, "d");
    assert_eq!(filled.reason, Some(EvaluationReason::Default));
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn persisted_cache_is_cached() {
    // A first handle fetches and saves; the second starts from the fresh cache, no request.
    let store = MemoryStore::new();
    let seed = answering(ScriptedResponse::json(&network_flags()));
    let first = builder(&seed).store(store.clone()).build().unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, first.ready()).await,
        Ok(Ok(_))
    ));
    while store.get().is_none() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first.shutdown().await;

    let transport = answering(ScriptedResponse::hang());
    let flags = builder(&transport).store(store).build().unwrap();
    let provider = FlagpoleProvider::new(flags.clone());
    let client = client_for(provider).await;
    let details = client
        .get_int_details("max-items", None, None)
        .await
        .unwrap();
    assert_eq!(
        (details.value, details.reason),
        (50, Some(EvaluationReason::Cached))
    );
    assert_eq!(
        details.flag_metadata.values["source"],
        FlagMetadataValue::String("cache".into())
    );
    assert_eq!(transport.request_count(), 0);
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn before_any_remote_flags_absent_names_are_provider_not_ready() {
    let transport = answering(ScriptedResponse::hang());
    let flags = builder(&transport)
        .default_flag("beta", true)
        .build()
        .unwrap();
    let provider = FlagpoleProvider::new(flags.clone()).with_init_timeout(Duration::ZERO);
    assert_eq!(provider.status(), ProviderStatus::NotReady);
    let client = client_for(provider).await;

    let error = client
        .get_bool_value("dark-mode", None, None)
        .await
        .unwrap_err();
    assert_eq!(error.code, EvaluationErrorCode::ProviderNotReady);
    // The caller's defaults are served meanwhile.
    let details = client.get_bool_details("beta", None, None).await.unwrap();
    assert_eq!(
        (details.value, details.reason),
        (true, Some(EvaluationReason::Default))
    );
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn failing_fetches_without_remote_flags_are_provider_error() {
    let transport = answering(ScriptedResponse::status(503));
    let flags = builder(&transport).build().unwrap();
    let provider = FlagpoleProvider::new(flags.clone()).with_init_timeout(Duration::from_secs(1));
    let mut events = provider.events();
    let _ = flags.refresh().await;
    assert!(flags.status().is_stale());
    assert_eq!(provider.status(), ProviderStatus::Error);
    match events.recv().await {
        Some(ProviderEvent::Error { message: Some(m) }) => assert!(m.contains("503"), "{m}"),
        other => panic!("expected an error event, got {other:?}"),
    }
    let client = client_for(provider).await;
    let error = client
        .get_int_value("max-items", None, None)
        .await
        .unwrap_err();
    assert_eq!(error.code, EvaluationErrorCode::ProviderNotReady);
    assert!(error.message.unwrap().contains("503"));
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn disabled_is_ready_with_defaults() {
    let transport = ScriptedTransport::new();
    let flags = builder(&transport)
        .enabled(false)
        .default_flag("beta", 2)
        .build()
        .unwrap();
    let provider = FlagpoleProvider::new(flags.clone());
    assert_eq!(provider.status(), ProviderStatus::Ready);
    assert_eq!(provider.metadata().name, "flagpole");
    let client = client_for(provider).await;
    let details = client.get_int_details("beta", None, None).await.unwrap();
    assert_eq!(
        (details.value, details.reason),
        (2, Some(EvaluationReason::Default))
    );
    assert_eq!(
        code(client.get_int_value("absent", None, None).await),
        EvaluationErrorCode::FlagNotFound
    );
    assert_eq!(transport.request_count(), 0);
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn events_follow_status_and_flag_changes() {
    let transport = ScriptedTransport::new();
    transport
        .push(ScriptedResponse::json(&json!({"a": 1, "b": true})).delay(Duration::from_secs(1)));
    let flags = builder(&transport)
        .backoff_initial(Duration::from_secs(1000))
        .backoff_max(Duration::from_secs(1000))
        .build()
        .unwrap();
    let provider = FlagpoleProvider::new(flags.clone());
    let mut events = provider.events();
    // Not ready yet: no event until the first fetch lands.
    assert_eq!(
        events.recv().await,
        Some(ProviderEvent::ConfigurationChanged {
            flags_changed: vec!["a".into(), "b".into()]
        })
    );
    assert_eq!(events.recv().await, Some(ProviderEvent::Ready));
    assert_eq!(provider.status(), ProviderStatus::Ready);

    // A failure with remote flags held: stale.
    transport.set(ScriptedResponse::status(500));
    assert!(matches!(
        flags.refresh().await,
        Err(Error::Http { status: 500 })
    ));
    match events.recv().await {
        Some(ProviderEvent::Stale { message: Some(m) }) => assert!(m.contains("500"), "{m}"),
        other => panic!("expected a stale event, got {other:?}"),
    }
    assert_eq!(provider.status(), ProviderStatus::STALE);

    // Recovery with a changed flag, a removed one and a new one.
    transport.set(ScriptedResponse::json(&json!({"a": 2, "c": "x"})));
    flags.refresh().await.unwrap();
    assert_eq!(
        events.recv().await,
        Some(ProviderEvent::ConfigurationChanged {
            flags_changed: vec!["a".into(), "b".into(), "c".into()]
        })
    );
    assert_eq!(events.recv().await, Some(ProviderEvent::Ready));

    // The same flags again: no event. Then shutdown: stale, and the stream ends.
    flags.refresh().await.unwrap();
    flags.shutdown().await;
    assert!(matches!(
        events.recv().await,
        Some(ProviderEvent::Stale { .. })
    ));
    assert_eq!(events.recv().await, None);
    assert_eq!(events.recv().await, None);
}

#[tokio::test(start_paused = true)]
async fn late_event_stream_starts_with_the_current_state() {
    let transport = answering(ScriptedResponse::json(&json!({"a": 1})));
    let flags = builder(&transport).build().unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));
    let provider = FlagpoleProvider::new(flags.clone());
    let mut events = provider.events();
    assert_eq!(events.recv().await, Some(ProviderEvent::Ready));
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn initialize_waits_for_remote_flags_up_to_its_timeout() {
    let slow = answering(ScriptedResponse::json(&json!({"a": 1})).delay(Duration::from_secs(3)));
    let flags = builder(&slow).build().unwrap();
    let start = tokio::time::Instant::now();
    let client = client_for(FlagpoleProvider::new(flags.clone())).await;
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(client.get_int_value("a", None, None).await.unwrap(), 1);
    flags.shutdown().await;

    let hanging = answering(ScriptedResponse::hang());
    let flags = builder(&hanging).build().unwrap();
    let start = tokio::time::Instant::now();
    let provider = FlagpoleProvider::new(flags.clone()).with_init_timeout(Duration::from_secs(2));
    let _client = client_for(provider).await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn threshold_rollouts_are_split_with_the_group_as_variant_and_overrides_static() {
    let body = json!([
        {"newUI": [{"name": "everyone", "scope": {"type": "threshold", "value": 1.0}, "value": "c"}]},
        {"plain": 1}
    ]);
    let transport = answering(ScriptedResponse::json(&body));
    let flags = builder(&transport)
        .profile_id("user-42")
        .override_flag("plain", 7)
        .build()
        .unwrap();
    let client = client_for(FlagpoleProvider::new(flags.clone())).await;

    let details = client
        .get_string_details("newUI", None, None)
        .await
        .unwrap();
    assert_eq!(details.value, "c");
    assert_eq!(details.reason, Some(EvaluationReason::Split));
    assert_eq!(details.variant.as_deref(), Some("everyone"));

    let details = client.get_int_details("plain", None, None).await.unwrap();
    assert_eq!(
        (details.value, details.reason),
        (7, Some(EvaluationReason::Static))
    );
    assert_eq!(
        details.flag_metadata.values["override"],
        FlagMetadataValue::Bool(true)
    );
    flags.shutdown().await;
}
