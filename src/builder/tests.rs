use super::*;
use crate::defaults::USER_AGENT;

#[test]
fn build_rejects_bad_settings() {
    let cases: Vec<(&str, FlagsBuilder)> = vec![
        (
            "zero interval",
            Flags::builder().fetch_interval(Duration::ZERO),
        ),
        ("zero timeout", Flags::builder().timeout(Duration::ZERO)),
        ("bad url", Flags::builder().base_url("nope")),
        ("jitter", Flags::builder().schedule_jitter(1.5)),
        ("body", Flags::builder().max_body_bytes(0)),
        (
            "huge interval",
            Flags::builder().fetch_interval(Duration::MAX),
        ),
        ("huge timeout", Flags::builder().timeout(Duration::MAX)),
        (
            "huge backoff",
            Flags::builder().backoff_max(Duration::from_secs(400 * 24 * 3600)),
        ),
        ("version", Flags::builder().client_version("13.1")),
        ("version text", Flags::builder().client_version("latest")),
        (
            "backoff",
            Flags::builder()
                .backoff_initial(Duration::from_secs(10))
                .backoff_max(Duration::from_secs(1)),
        ),
        ("user agent", Flags::builder().user_agent("app\n")),
        ("header name", Flags::builder().header("bad name", "v")),
        (
            "header value",
            Flags::builder().header("x-key", "line\nbreak"),
        ),
    ];
    for (what, builder) in cases {
        let err = builder.validate().unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{what}: {err}");
    }
}

#[test]
fn header_errors_never_show_the_value() {
    let err = Flags::builder()
        .header("x-api-key", "secret\n")
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("x-api-key"), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn user_agent_and_headers_are_validated_into_the_config() {
    let c = Flags::builder().validate().unwrap();
    assert_eq!(c.user_agent, USER_AGENT);
    let c = Flags::builder()
        .user_agent("myapp/2.3")
        .header("X-Api-Key", "k1")
        .header("x-api-key", "k2")
        .validate()
        .unwrap();
    assert_eq!(c.user_agent, format!("myapp/2.3 {USER_AGENT}").as_str());
    assert_eq!(c.headers.len(), 1);
    assert_eq!(c.headers["x-api-key"], "k2");
    assert!(c.headers["x-api-key"].is_sensitive());
    assert!(!format!("{c:?}").contains("k2"));
}

#[test]
fn build_outside_a_runtime_runs_the_poller_on_its_own_thread() {
    let flags = Flags::builder().enabled(false).build().unwrap();
    let mut status = flags.status_receiver();
    drop(flags.shutdown());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !status.borrow_and_update().is_stopped() {
        assert!(
            std::time::Instant::now() < deadline,
            "the thread's poller never stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
