//! The pilot TLS path end to end: `wardnet-controller ca init` makes a CA
//! and a server certificate; a controller served with it is accepted by the
//! agent's client given that CA, and a controller whose certificate does not
//! chain to the configured CA is refused with an error that says so.

use std::sync::Arc;
use std::time::Duration;

use wardnet_agent::client::{ClientError, ControllerClient};
use wardnet_controller::store::{SqliteStore, Store};
use wardnet_controller::{Controller, ServiceSettings, SystemClock};

fn settings() -> ServiceSettings {
    ServiceSettings {
        network: wardnet_controller::model::NetworkSettings {
            overlay_v4: "100.64.0.0/10".parse().expect("prefix"),
            overlay_v6: None,
            region_prefix_len_v4: 20,
            region_prefix_len_v6: 64,
            routed_prefixes: Default::default(),
            listen_port: 51820,
            mtu: 1420,
            persistent_keepalive: 25,
        },
        token_lifetime_secs: 3600,
        long_poll_timeout: Duration::from_secs(5),
        report_persist_interval: std::time::Duration::from_secs(30),
    }
}

/// Serve a controller on 127.0.0.1:0 with `cert`/`key`; returns its URL and
/// a sender that stops it.
async fn serve(
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    wardnet_controller::init_crypto();
    let store = SqliteStore::open(&dir.join("w.db")).expect("store");
    let controller = Controller::start(
        Arc::new(store) as Arc<dyn Store>,
        settings(),
        Arc::new(SystemClock),
    )
    .await
    .expect("controller");
    let tls = wardnet_controller::api::tls_config(cert, key)
        .expect("the files from `ca init` load as the server's TLS config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(wardnet_controller::api::serve(
        listener,
        controller,
        wardnet_controller::api::Tls::Rustls(tls),
        wardnet_controller::api::Limits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    (url, stop)
}

#[tokio::test]
async fn agent_accepts_the_ca_init_certificate_and_refuses_another_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = wardnet_controller::ca::init(
        &dir.path().join("tls"),
        &["127.0.0.1".into(), "localhost".into()],
        30,
        false,
    )
    .expect("ca init");
    let other =
        wardnet_controller::ca::init(&dir.path().join("other"), &["127.0.0.1".into()], 30, false)
            .expect("another ca init");
    let (url, stop) = serve(dir.path(), &pki.server_cert, &pki.server_key).await;

    // The right CA: TLS succeeds and the controller answers (it refuses the
    // made-up credential, which is an HTTP answer, so the handshake passed).
    let client = ControllerClient::new(&url, Some(&pki.ca_cert), false).expect("client");
    match client
        .config("wna_not_a_credential", 0, Duration::ZERO)
        .await
    {
        Err(ClientError::Refused { status, .. }) => assert_eq!(status.as_u16(), 401),
        other => panic!("expected the controller's 401 over TLS, got {other:?}"),
    }

    // Another CA: refused, and the error says why.
    let client = ControllerClient::new(&url, Some(&other.ca_cert), false).expect("client");
    let err = client
        .config("wna_not_a_credential", 0, Duration::ZERO)
        .await
        .expect_err("a controller certificate from another CA is refused");
    assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("is not signed by the CA certificate")
            && msg.contains(&other.ca_cert.display().to_string()),
        "{msg}"
    );

    // Plain HTTP is refused unless explicitly allowed.
    let plain = url.replacen("https://", "http://", 1);
    let err = ControllerClient::new(&plain, Some(&pki.ca_cert), false)
        .err()
        .expect("plain http refused");
    assert!(err.to_string().contains("allow_plain_http"), "{err}");

    let _ = stop.send(());
}
