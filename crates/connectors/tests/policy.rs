//! The network policy against the real test servers: with the production default, a server
//! at a loopback address is refused before any connection is made, whether the profile names
//! the address or a name that resolves to it; plain text only where allowed, never in FIPS
//! mode.

mod common;

use common::*;
use serversync_connectors::{
    ConnectOptions, ErrorKind, FailureStep, NetworkPolicy, ServerAddr, TlsMode, imap, pop3,
};
use std::time::Duration;

fn with_policy(policy: NetworkPolicy) -> ConnectOptions {
    ConnectOptions::new(trust())
        .with_policy(policy)
        .with_timeout(Duration::from_secs(15))
}

#[tokio::test]
async fn a_loopback_address_is_refused_by_default_at_tcp_connect() {
    let target = ServerAddr::new("127.0.0.1", env().imaps_port(), TlsMode::Implicit);
    let report = imap::probe(
        &target,
        &login(ALICE),
        &with_policy(NetworkPolicy::default()),
    )
    .await;
    assert_failed(&report, FailureStep::TcpConnect, ErrorKind::Config);
    let failure = report.failure.as_ref().unwrap();
    assert!(
        failure.message.starts_with(
            "127.0.0.1 is a loopback address, and this installation does not connect to \
             loopback, private, link-local or reserved addresses"
        ) && failure.message.contains("network.allow_ranges"),
        "{failure}"
    );
    // Refused before connecting: no TLS step, no greeting.
    assert_eq!(report.steps.len(), 2, "{:?}", report.steps);

    // The same server, allowed by the installation.
    let report = imap::probe(
        &target,
        &login(ALICE),
        &with_policy(NetworkPolicy::loopback_allowed()),
    )
    .await;
    assert!(report.is_ok(), "{:?}", report.failure);
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_too() {
    let target = ServerAddr::new("localhost", env().pop3s_port(), TlsMode::Implicit);
    let report = pop3::probe(
        &target,
        &login(ALICE),
        &with_policy(NetworkPolicy::default()),
    )
    .await;
    assert_failed(&report, FailureStep::TcpConnect, ErrorKind::Config);
    let message = &report.failure.as_ref().unwrap().message;
    assert!(
        message.starts_with("localhost resolves to 127.0.0.1, a loopback address")
            || message.starts_with("localhost resolves to ::1, a loopback address"),
        "{message}"
    );
    // The DNS step itself succeeded: the check is on what the name resolved to.
    assert!(report.steps[0].ok && report.steps[0].step == FailureStep::Dns);
}

#[tokio::test]
async fn plain_text_only_to_allowed_ranges_and_never_in_fips_mode() {
    let target = ServerAddr::new("127.0.0.1", env().imap_port(), TlsMode::None);
    let no_plaintext = NetworkPolicy::loopback_allowed().with_plaintext_ranges(Vec::new());
    let report = imap::probe(&target, &login(ALICE), &with_policy(no_plaintext)).await;
    assert_failed(&report, FailureStep::TcpConnect, ErrorKind::Config);
    assert!(
        report
            .failure
            .as_ref()
            .unwrap()
            .message
            .contains("allows connections without TLS to (tls.plaintext_ranges"),
        "{:?}",
        report.failure
    );

    let fips = NetworkPolicy::loopback_allowed().with_fips(true);
    let report = imap::probe(&target, &login(ALICE), &with_policy(fips)).await;
    assert_failed(&report, FailureStep::TcpConnect, ErrorKind::Config);
    assert!(
        report
            .failure
            .as_ref()
            .unwrap()
            .message
            .starts_with("FIPS mode is on, so connections without TLS are not allowed"),
        "{:?}",
        report.failure
    );

    // Loopback is in the default plain-text ranges.
    let report = imap::probe(
        &target,
        &login(ALICE),
        &with_policy(NetworkPolicy::loopback_allowed()),
    )
    .await;
    assert!(report.is_ok(), "{:?}", report.failure);
}
