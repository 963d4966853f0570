//! The bus locked down (CONTRACT §8, "On the bus"), with the configs in
//! `deploy/nats/` as shipped: each user gets its replies on its own inbox
//! and reads no other's, no ingest user reads `CASES`, and the province's
//! three-node cluster speaks TLS to its clients and between its nodes,
//! where a node without the province's certificate is refused.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::ServerError;
use futures::StreamExt;
use kpi_bus::NatsArgs;
use kpi_e2e::{deploy_file, nats_user_args, IngestService, TestCa, NATS_PASSWORDS};
use local_nats::LocalNats;
use tokio::sync::mpsc;

const UNITS: &str = r#"{"units": [
  {"id": "51", "name": "Tỉnh Quảng Ngãi", "level": "province"},
  {"id": "5153105", "name": "Phường Nguyễn Nghiêm", "level": "commune", "parent": "51"}
]}"#;

fn received(event_id: &str) -> String {
    serde_json::json!({
        "event_id": event_id, "kind": "case.received", "case_id": "H31-250303-0001",
        "unit_id": "5153105", "occurred_at": "2025-03-03T08:00:00+07:00",
        "data": {"procedure_code": "1.001193", "field": "ho_tich", "channel": "online",
                 "due_at": "2025-03-05T17:00:00+07:00"},
    })
    .to_string()
}

/// A raw client logged in as `user` of the shipped users.conf, with the
/// inbox prefix the services use, and what the server refused it.
async fn raw_client(
    url: &str,
    user: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (refused, refusals) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(
        user.to_owned(),
        format!("{user}-secret"),
    )
    .custom_inbox_prefix(kpi_bus::inbox_prefix(user))
    .event_callback(move |event| {
        let refused = refused.clone();
        async move {
            if let async_nats::Event::ServerError(ServerError::Other(detail)) = event {
                let _ = refused.send(detail);
            }
        }
    })
    .connect(url)
    .await
    .unwrap_or_else(|err| panic!("{user}: {err}"));
    (client, refusals)
}

/// Waits up to 2 s for the server to refuse something naming `subject`.
async fn refusal_naming(refusals: &mut mpsc::UnboundedReceiver<String>, subject: &str) -> String {
    let started = Instant::now();
    loop {
        let left = Duration::from_secs(2).saturating_sub(started.elapsed());
        match tokio::time::timeout(left, refusals.recv()).await {
            Ok(Some(detail)) if detail.contains(subject) => return detail,
            Ok(Some(_)) => {}
            _ => panic!("the server refused nothing naming {subject}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_intake_user_reads_neither_another_users_replies_nor_the_stream() {
    let nats = kpi_e2e::nats_with_shipped_users();
    let operator = nats_user_args(&nats.url(), "operator")
        .connect("operator-test")
        .await
        .unwrap();
    operator.ensure_stream().await.unwrap();
    operator
        .publish_event(
            "cases.5153105.case.received".to_owned(),
            received("6f1d2c1e-0000-4000-8000-000000000001").into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let (operator_raw, _) = raw_client(&nats.url(), "operator").await;
    let (intake, mut refusals) = raw_client(&nats.url(), "intake").await;

    // Another user's inbox, or the old shared prefix: refused, and what is
    // sent there does not reach intake.
    let mut spies = Vec::new();
    for inbox in ["_INBOX_projector.>", "_INBOX.>"] {
        spies.push(intake.subscribe(inbox).await.unwrap());
        refusal_naming(&mut refusals, inbox).await;
    }
    operator_raw
        .publish(
            "_INBOX_projector.reply-1",
            "an answer for the projector".into(),
        )
        .await
        .unwrap();
    operator_raw
        .publish("_INBOX.reply-2", "an answer for anyone".into())
        .await
        .unwrap();
    operator_raw.flush().await.unwrap();
    for spy in &mut spies {
        let got = tokio::time::timeout(Duration::from_millis(500), spy.next()).await;
        assert!(
            !matches!(got, Ok(Some(_))),
            "intake read a reply of another user"
        );
    }

    // The stream: no message read, no consumer made.
    let jetstream = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(intake.clone());
    let stream = jetstream.get_stream("CASES").await.expect("looked up");
    assert!(stream.get_raw_message(1).await.is_err(), "read a message");
    refusal_naming(&mut refusals, "$JS.API.STREAM.MSG.GET.CASES").await;
    assert!(
        stream.direct_get(1).await.is_err(),
        "read a message directly"
    );
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await;
    assert!(consumer.is_err(), "made a consumer");
    refusal_naming(&mut refusals, "$JS.API.CONSUMER.CREATE.CASES").await;

    // What it is for still works: its own kinds, acknowledged on its own
    // inbox.
    let ack = jetstream
        .publish(
            "cases.5153105.case.received",
            received("6f1d2c1e-0000-4000-8000-000000000002").into(),
        )
        .await
        .unwrap()
        .await
        .expect("acknowledged");
    assert_eq!(ack.sequence, 2);
}

/// Replaces `from` by `to` in a shipped config, which must hold it.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the shipped config lost `{from}`");
    text.replace(from, to)
}

/// Node `index` (0-based) of `deploy/nats/cluster/`, on loopback: its
/// client port `port`, the route ports of all nodes, certificates in
/// `<dir>/certs`, the shipped users.conf beside its config.
fn node_config(index: usize, port: u16, dir: &Path, routes: &[u16], ca: &TestCa) -> String {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (cert, key) = ca.sign(&["localhost", "127.0.0.1"]);
    std::fs::write(certs.join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(certs.join("node.pem"), cert).unwrap();
    std::fs::write(certs.join("node-key.pem"), key).unwrap();
    std::fs::write(dir.join("users.conf"), deploy_file("nats/users.conf")).unwrap();
    let mut text = deploy_file(&format!("nats/cluster/nats-{}.conf", index + 1));
    text = replaced(
        &text,
        "listen: 0.0.0.0:4222",
        &format!("listen: 127.0.0.1:{port}"),
    );
    text = replaced(
        &text,
        "listen: 0.0.0.0:6222",
        &format!("listen: 127.0.0.1:{}", routes[index]),
    );
    text = replaced(&text, "/etc/nats/certs", certs.to_str().unwrap());
    text = replaced(
        &text,
        "\"/var/lib/nats\"",
        &format!("{:?}", dir.join("jetstream").display().to_string()),
    );
    text = replaced(&text, "max_file_store: 200G", "max_file_store: 1G");
    for (node, route) in routes.iter().enumerate() {
        text = replaced(
            &text,
            &format!("nats-route://10.0.0.{}:6222", node + 1),
            &format!("nats-route://127.0.0.1:{route}"),
        );
    }
    text
}

/// Whether a message published on `from` reaches a subscriber on `to`
/// (anonymous on a server without users, else as the operator).
async fn reaches(from: &async_nats::Client, to: &async_nats::Client, subject: &str) -> bool {
    let mut subscriber = to.subscribe(subject.to_owned()).await.unwrap();
    to.flush().await.unwrap();
    let started = Instant::now();
    // Interest takes a moment to cross a route.
    while started.elapsed() < Duration::from_secs(3) {
        from.publish(subject.to_owned(), "probe".into())
            .await
            .unwrap();
        from.flush().await.unwrap();
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(200), subscriber.next()).await
        {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_cluster_configs_form_a_tls_cluster_that_refuses_a_node_without_credentials() {
    let ca = TestCa::new("Sở TTTT Quảng Ngãi — NATS CA (test)");
    let routes: Vec<u16> = (0..3).map(|_| kpi_e2e::free_port()).collect();
    let nodes: Vec<LocalNats> = (0..3)
        .map(|index| {
            LocalNats::start_with_whole_config(
                |port, dir| node_config(index, port, dir, &routes, &ca),
                &NATS_PASSWORDS,
            )
            .unwrap_or_else(|err| panic!("node {}: {err}", index + 1))
        })
        .collect();
    let ca_path = nodes[0].dir().join("certs/ca.pem");
    let urls = nodes
        .iter()
        .map(|node| format!("tls://127.0.0.1:{}", node.port()))
        .collect::<Vec<_>>()
        .join(",");

    // A client without TLS is refused at the client port.
    let plain = NatsArgs {
        nats_user: Some("operator".into()),
        nats_password: Some("operator-secret".into()),
        ..NatsArgs::plain(format!("nats://127.0.0.1:{}", nodes[0].port()))
    };
    let err = plain.connect("plain-test").await.err();
    assert!(err.is_some(), "a plain connection was accepted");

    // The operator over TLS: JetStream with three copies forms.
    let operator = NatsArgs {
        nats_ca: Some(ca_path.clone()),
        replicas: 3,
        ..nats_user_args(&urls, "operator")
    };
    let started = Instant::now();
    let leader = loop {
        let last = match operator.connect("cluster-test").await {
            Err(err) => err.to_string(),
            Ok(bus) => match bus.ensure_stream().await {
                Err(err) => err.to_string(),
                Ok(mut stream) => match stream.info().await {
                    Ok(info) => match info
                        .cluster
                        .as_ref()
                        .and_then(|cluster| cluster.leader.clone())
                    {
                        Some(leader) => break leader,
                        None => "no leader yet".to_owned(),
                    },
                    Err(err) => err.to_string(),
                },
            },
        };
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no stream leader within 60 s: {last}\nnode 1 log:\n{}",
            nodes[0].log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(leader.starts_with("kpi-nats-"), "{leader}");

    // intake publishes over TLS as its user, on its own inbox.
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units.json");
    std::fs::write(&units, UNITS).unwrap();
    let mut flags = kpi_e2e::nats_user_flags("intake");
    flags.extend(["--nats-ca".to_owned(), ca_path.display().to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let intake = IngestService::start("intake", &urls, &units, dir.path(), &flags).await;
    let (status, answer) = intake
        .post_events(received("6f1d2c1e-0000-4000-8000-000000000003"))
        .await;
    assert_eq!(status, 200, "{answer}\n{}", intake.log());

    // Between the nodes, messages flow over the routes…
    let raw = |port: u16| {
        let ca_path = ca_path.clone();
        async move {
            async_nats::ConnectOptions::with_user_and_password(
                "operator".into(),
                "operator-secret".into(),
            )
            .add_root_certificates(ca_path)
            .require_tls(true)
            .connect(format!("tls://127.0.0.1:{port}"))
            .await
            .unwrap()
        }
    };
    let on_node_1 = raw(nodes[0].port()).await;
    let on_node_2 = raw(nodes[1].port()).await;
    assert!(reaches(&on_node_1, &on_node_2, "probe.routes").await);

    // …but a server that joins without the province's certificate, with
    // no TLS or with a certificate of another CA, gets nothing across.
    let other_ca = TestCa::new("Not the province's CA");
    for intruder_tls in [false, true] {
        let intruder_route = kpi_e2e::free_port();
        let intruder = LocalNats::start_with_whole_config(
            |port, dir| {
                let tls = if intruder_tls {
                    let (cert, key) = other_ca.sign(&["localhost", "127.0.0.1"]);
                    std::fs::write(dir.join("ca.pem"), &other_ca.pem).unwrap();
                    std::fs::write(dir.join("node.pem"), cert).unwrap();
                    std::fs::write(dir.join("node-key.pem"), key).unwrap();
                    format!(
                        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, insecure: true }}",
                        dir.join("node.pem").display().to_string(),
                        dir.join("node-key.pem").display().to_string(),
                        dir.join("ca.pem").display().to_string(),
                    )
                } else {
                    String::new()
                };
                format!(
                    "server_name: intruder\nlisten: 127.0.0.1:{port}\ncluster {{\n  name: kpi-province\n  listen: 127.0.0.1:{intruder_route}\n  {tls}\n  routes: [nats-route://127.0.0.1:{}]\n}}\n",
                    routes[0]
                )
            },
            &[],
        )
        .unwrap_or_else(|err| panic!("the intruder: {err}"));
        let spy = async_nats::connect(intruder.url()).await.unwrap();
        assert!(
            !reaches(&on_node_1, &spy, "probe.intruder").await,
            "a node without the credentials (TLS: {intruder_tls}) joined the cluster"
        );
    }
}

#[test]
fn every_shipped_service_unit_logs_in_as_its_own_nats_user() {
    for user in ["intake", "resolution", "feedback", "projector"] {
        let unit = deploy_file(&format!("systemd/kpi-{user}.service"));
        for line in [
            format!("Environment=NATS_USER={user}"),
            format!("EnvironmentFile=-/etc/kpi/{user}.env"),
            "RestartPreventExitStatus=78".to_owned(),
        ] {
            assert!(
                unit.lines().any(|held| held == line),
                "kpi-{user}.service lacks `{line}`"
            );
        }
    }
}
