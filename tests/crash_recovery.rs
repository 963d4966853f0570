//! `kill -9` of the projector while it folds 100,000 events, twice, a
//! SIGTERM (a clean exit), and NATS gone for 20 s mid-fold: the final views
//! must equal those of an uninterrupted run, entry for entry.

use std::time::Duration;

use kpi_bus::Bus;
use kpi_domain::UnitRegistry;
use kpi_e2e::{publish_all, simulated_messages, views_of, Projector};
use kpi_simulator::synthetic_registry;
use local_nats::LocalNats;

const EVENTS: usize = 100_000;
const FOLD_TIMEOUT: Duration = Duration::from_secs(300);

/// How the projector's fold is interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruption {
    Kill9,
    SigTerm,
    NatsAway,
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_folding_then_restart_equals_an_uninterrupted_run() {
    let mut nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units_path = dir.path().join("units.json");
    std::fs::write(&units_path, synthetic_registry(1, 4, 5)).unwrap();
    let units = UnitRegistry::from_json(&std::fs::read(&units_path).unwrap()).unwrap();

    // 100,000 events of a simulated year, published before folding starts.
    let events = simulated_messages(&units, 20_251_121, (365, 20.0), EVENTS);
    assert_eq!(events.len(), EVENTS, "the simulated year has enough events");
    let cases = events
        .iter()
        .map(|(_, payload)| {
            let event: serde_json::Value = serde_json::from_slice(payload).unwrap();
            let kind = event["kind"].as_str().unwrap().to_owned();
            (
                kind.starts_with("feedback"),
                event["case_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect::<std::collections::HashSet<_>>()
        .len();
    let bus = Bus::connect(&nats.url(), "crash-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    publish_all(&bus, events).await;
    let last = bus.last_sequence().await.unwrap();
    assert_eq!(last as usize, EVENTS);

    // Interrupted run: killed twice in the middle of folding, then stopped
    // by SIGTERM, then NATS goes away for 20 s while it folds.
    let interrupted = dir.path().join("interrupted");
    // Small batches: many commits to be caught between, and a fold slow
    // enough that the interruptions land before its end however fast the
    // machine (a SIGTERM still commits the batch in flight).
    let small_batches = ["--batch-size", "500"];
    let mut projector = Projector::start(&nats.url(), &units_path, &interrupted, &small_batches);
    for (stop_after, how) in [
        (EVENTS / 5, Interruption::Kill9),
        (EVENTS / 2, Interruption::Kill9),
        (EVENTS * 13 / 20, Interruption::SigTerm),
        (EVENTS * 4 / 5, Interruption::NatsAway),
    ] {
        let reached = projector
            .wait_for("P00", stop_after as u64, FOLD_TIMEOUT)
            .await;
        assert!(
            reached < last,
            "{how:?} while folding (at {reached} of {last})"
        );
        match how {
            Interruption::Kill9 | Interruption::SigTerm => {
                if how == Interruption::Kill9 {
                    projector.kill_9();
                } else {
                    // A clean exit (status 0) after committing the batch in flight.
                    projector.terminate();
                }
                let (_, _, recovered) = views_of(&interrupted);
                assert!(
                    recovered < last,
                    "the views reopen mid-way, at {recovered} of {last}: the restart has work left"
                );
                projector =
                    Projector::start(&nats.url(), &units_path, &interrupted, &small_batches);
            }
            Interruption::NatsAway => {
                nats.stop();
                tokio::time::sleep(Duration::from_secs(20)).await;
                assert!(
                    projector
                        .pid()
                        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()),
                    "the projector waits for NATS rather than exit; log:\n{}",
                    projector.log()
                );
                nats.restart().unwrap_or_else(|err| panic!("{err}"));
            }
        }
    }
    projector.wait_for("P00", last, FOLD_TIMEOUT).await;
    projector.terminate();

    // Uninterrupted run over the same stream.
    let uninterrupted = dir.path().join("uninterrupted");
    let mut projector = Projector::start(&nats.url(), &units_path, &uninterrupted, &[]);
    projector.wait_for("P00", last, FOLD_TIMEOUT).await;
    projector.terminate();

    let (after_crashes, totals_after_crashes, checkpoint_a) = views_of(&interrupted);
    let (reference, reference_totals, checkpoint_b) = views_of(&uninterrupted);
    assert_eq!((checkpoint_a, checkpoint_b), (last, last));
    let records = reference
        .iter()
        .filter(|(key, _)| matches!(key[0], b'c' | b'f'))
        .count();
    assert_eq!(records, cases, "a record for every case and every feedback");
    assert_eq!(
        totals_after_crashes, reference_totals,
        "nothing counted twice, nothing lost"
    );
    assert_eq!(reference_totals.folded as usize, EVENTS);
    if after_crashes != reference {
        let differing = after_crashes
            .iter()
            .zip(&reference)
            .filter(|(a, b)| a != b)
            .count();
        panic!(
            "views differ: {} vs {} entries, {differing} differing pairs",
            after_crashes.len(),
            reference.len()
        );
    }
}
