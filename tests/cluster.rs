//! A three-node JetStream cluster on loopback (as deploy/nats/cluster/
//! configures one on three machines): while events are posted to the
//! intake service, the node leading `CASES` is killed with SIGKILL. Every
//! event acknowledged to the client is counted exactly once, the
//! projector keeps folding within seconds, and the killed node rejoins.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kpi_api::pb::GetRatesRequest;
use kpi_bus::NatsArgs;
use kpi_domain::{Day, UnitRegistry};
use kpi_e2e::{simulated_messages, IngestService, Projector};
use kpi_simulator::synthetic_registry;
use local_nats::LocalNats;

const EVENTS: usize = 100_000;
const LINES_PER_POST: usize = 500;

/// The name of the node leading `CASES`, once the stream has one.
async fn stream_leader(args: &NatsArgs) -> String {
    let started = Instant::now();
    loop {
        let last = match args.connect("cluster-test").await {
            Err(err) => err.to_string(),
            Ok(bus) => match bus.ensure_stream().await {
                Err(err) => err.to_string(),
                Ok(mut stream) => match stream.info().await {
                    Err(err) => err.to_string(),
                    Ok(info) => match info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                        Some(leader) => return leader,
                        None => format!("no leader yet: {:?}", info.cluster),
                    },
                },
            },
        };
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the cluster elected no leader for CASES within 60 s: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_stream_leader_loses_no_acked_event_and_counts_none_twice() {
    let mut nodes = LocalNats::start_cluster(3).unwrap_or_else(|err| panic!("{err}"));
    let urls = nodes
        .iter()
        .map(LocalNats::url)
        .collect::<Vec<_>>()
        .join(",");
    let args = NatsArgs {
        replicas: 3,
        ..NatsArgs::plain(urls.clone())
    };
    stream_leader(&args).await;

    let dir = tempfile::tempdir().unwrap();
    let units_path = dir.path().join("units.json");
    std::fs::write(&units_path, synthetic_registry(1, 3, 4)).unwrap();
    let units = UnitRegistry::from_json(&std::fs::read(&units_path).unwrap()).unwrap();
    let province = units
        .unit(units.children(None, Day::from_date("2025-06-01".parse().unwrap()))[0])
        .id
        .clone();
    let received: Vec<Vec<u8>> = simulated_messages(&units, 7, (365, 40.0), EVENTS * 5)
        .into_iter()
        .filter(|(subject, _)| subject.ends_with(".case.received"))
        .map(|(_, payload)| payload)
        .take(EVENTS)
        .collect();
    assert_eq!(received.len(), EVENTS);

    let intake = IngestService::start(
        "intake",
        &urls,
        &units_path,
        dir.path(),
        &["--replicas", "3"],
    )
    .await;
    let mut projector = Projector::start(
        &urls,
        &units_path,
        &dir.path().join("views"),
        &["--replicas", "3"],
    );
    let mut client = projector.client().await;

    // Post every event, retrying a post the bus did not store until it is
    // (an event stored twice is a duplicate, not a second event).
    let mut acked: HashSet<String> = HashSet::new();
    let mut killed = None;
    // Watches the projector from the kill on: how long until it folds again.
    let (kill_sender, kill_news) = tokio::sync::oneshot::channel::<(Instant, u64)>();
    let resumption = tokio::spawn({
        let mut client = client.clone();
        let province = province.clone();
        async move {
            let (killed_at, sequence_then) = kill_news.await.expect("a node is killed");
            loop {
                if Projector::sequence(&mut client, &province).await > sequence_then {
                    return killed_at.elapsed();
                }
                assert!(
                    killed_at.elapsed() < Duration::from_secs(60),
                    "the projector did not fold within 60 s of the leader's loss"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let mut kill_sender = Some(kill_sender);
    for (index, chunk) in received.chunks(LINES_PER_POST).enumerate() {
        if index == received.len() / LINES_PER_POST / 3 {
            let leader = stream_leader(&args).await;
            let node: usize = leader
                .strip_prefix('n')
                .and_then(|index| index.parse().ok())
                .unwrap_or_else(|| panic!("leader `{leader}` is not one of n0, n1, n2"));
            nodes[node].stop();
            let sequence = Projector::sequence(&mut client, &province).await;
            killed = Some(node);
            let _ = kill_sender
                .take()
                .expect("one kill")
                .send((Instant::now(), sequence));
        }
        let body = chunk.join(&b'\n');
        let started = Instant::now();
        loop {
            let (status, answer) = intake.post_events(body.clone()).await;
            if status == 200 {
                for line in answer["accepted"].as_array().unwrap() {
                    acked.insert(line["event_id"].as_str().unwrap().to_owned());
                }
                break;
            }
            assert!(
                status == 503 && started.elapsed() < Duration::from_secs(60),
                "post {index}: {status} {answer}; intake log:\n{}",
                intake.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert_eq!(acked.len(), EVENTS, "every event acknowledged in the end");

    // The projector went on folding after the leader's loss.
    let node = killed.expect("a node was killed");
    let resumed = resumption.await.expect("the watch");

    // Every acknowledged case.received counted once.
    let bus = args.connect("cluster-test").await.unwrap();
    let last = bus.last_sequence().await.unwrap();
    projector
        .wait_for(&province, last, Duration::from_secs(120))
        .await;
    let reply = client
        .get_rates(GetRatesRequest {
            unit_id: province.clone(),
            period: "2025".into(),
            min_stream_sequence: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.counts["received"], EVENTS as u64,
        "each acked event once"
    );
    assert!(
        resumed < Duration::from_secs(10),
        "the projector resumed {resumed:?} after the leader's loss (goal < 10 s)"
    );

    // The killed node comes back and catches up.
    nodes[node].restart().unwrap_or_else(|err| panic!("{err}"));
    let started = Instant::now();
    loop {
        let mut stream = bus.ensure_stream().await.unwrap();
        let info = stream.info().await.unwrap();
        let cluster = info.cluster.clone().expect("a clustered stream");
        let back = cluster
            .replicas
            .iter()
            .any(|replica| replica.name == format!("n{node}") && replica.current);
        if back {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "node n{node} did not rejoin CASES within 60 s: {cluster:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    projector.terminate();
}
