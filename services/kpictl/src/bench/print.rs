//! The figures of `kpictl bench` for people: each run's table, and with
//! `--repeat` the worst and median of each goal's figure over the runs.
//! Both read the run's JSON figures, so that the printed table and
//! `--json` cannot disagree.

use super::ingest::LINES_PER_POST;

/// The worst and the median of a figure over the runs (`higher_is_better`
/// picks which end is the worst).
fn spread(runs: &[serde_json::Value], path: &[&str], higher_is_better: bool) -> Option<(f64, f64)> {
    let mut values: Vec<f64> = runs
        .iter()
        .filter_map(|run| {
            path.iter()
                .try_fold(run, |value, key| value.get(*key))
                .and_then(serde_json::Value::as_f64)
        })
        .collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let worst = if higher_is_better {
        values[0]
    } else {
        values[values.len() - 1]
    };
    Some((worst, values[values.len() / 2]))
}

pub(super) fn print_summary(runs: &[serde_json::Value]) {
    println!(
        "kpictl bench: {} runs; each goal must hold on every run",
        runs.len()
    );
    let ratio = |path: &[&str], label: &str, goal: &str| {
        if let Some((worst, median)) = spread(runs, path, true) {
            println!(
                "  {label:<44} worst {:>5.1}%, median {:>5.1}% ({goal})",
                100.0 * worst,
                100.0 * median
            );
        }
    };
    ratio(
        &["fold_vs_raw_read"],
        "fold / raw ordered read",
        "goals: worst ≥ 50%, median ≥ 60%",
    );
    ratio(
        &["replay_vs_raw_read"],
        "kpictl replay / raw ordered read",
        "goal ≥ 50%",
    );
    ratio(
        &["get_rates_vs_health_check"],
        "GetRates / health Check, 64 clients",
        "goal ≥ 60% with watchers connected",
    );
    ratio(
        &["tls_vs_plain_get_rates"],
        "GetRates with TLS and a token / plain",
        "goal ≥ 75%",
    );
    ratio(
        &["r3_vs_r1_fold"],
        "fold from 3 copies / from 1",
        "goal ≥ 70%",
    );
    ratio(
        &["ingest", "service_vs_raw_publish"],
        "intake service / raw publish",
        "goal ≥ 40%",
    );
    ratio(
        &["ingest", "tls_vs_plain_service"],
        "intake with TLS and a sender token / plain",
        "goal ≥ 80%",
    );
    for (key, what, goal) in [
        (
            "get_case_flow_by_unit_p99_ms",
            "GetCaseFlow by unit p99, 1 client",
            20.0,
        ),
        (
            "get_case_flow_by_field_p99_ms",
            "GetCaseFlow by field p99, 1 client",
            30.0,
        ),
        (
            "get_case_flow_by_procedure_p99_ms",
            "GetCaseFlow by procedure p99, 1 client",
            100.0,
        ),
    ] {
        if let Some((worst, median)) = spread(runs, &[key], false) {
            println!(
                "  {what:<44} worst {worst:>6.2} ms, median {median:>6.2} ms (goal < {goal} ms)"
            );
        }
    }
    ratio(
        &["get_case_flow_vs_health_check"],
        "GetCaseFlow by unit / health Check, 64 clients",
        "goal ≥ 30%",
    );
    if let Some((worst, median)) = spread(runs, &["get_scores_p99_ms"], false) {
        println!(
            "  {:<44} worst {worst:>6.3} ms, median {median:>6.3} ms (goal < 5 ms)",
            "GetScores p99, 1 client"
        );
    }
    if let Some((worst, median)) = spread(runs, &["freshness_p99_ms"], false) {
        println!(
            "  {:<44} worst {worst:>6.1} ms, median {median:>6.1} ms (goal < 100 ms)",
            "WatchRates freshness p99"
        );
    }
    if let Some((worst, median)) = spread(runs, &["fold_with_watchers_slowdown"], false) {
        println!(
            "  {:<44} worst {:>5.1}%, median {:>5.1}% (goal ≤ 20%)",
            "fold slowdown with watchers",
            100.0 * worst,
            100.0 * median
        );
    }
    if let Some((worst, median)) = spread(runs, &["get_rates_p99_ms"], false) {
        println!(
            "  {:<44} worst {worst:>6.3} ms, median {median:>6.3} ms (goal < 2 ms)",
            "GetRates p99, 1 client"
        );
    }
    if let Some((worst, median)) = spread(runs, &["ingest", "service_events_per_second"], true) {
        println!(
            "  {:<44} worst {worst:>7.0}/s, median {median:>7.0}/s (goal ≥ 20000/s)",
            "intake service events/s"
        );
    }
}

/// One run's figures, for people.
pub(super) fn print_run(figures: &serde_json::Value, index: usize, repeat: usize) {
    let number = |path: &[&str]| {
        path.iter()
            .try_fold(figures, |value, key| value.get(*key))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    let run = if repeat > 1 {
        format!(" (run {index} of {repeat})")
    } else {
        String::new()
    };
    println!(
        "kpictl bench{run}: {} cases, {} events (~{:.0} bytes each), {} communes, {} CPUs",
        number(&["cases"]),
        number(&["events"]),
        number(&["average_event_bytes"]),
        number(&["communes"]),
        number(&["cpus"])
    );
    println!(
        "  publish, acked, 1024 in flight       {:>12.0} events/s",
        number(&["publish_events_per_second"])
    );
    println!(
        "  raw ordered consumer read (ceiling)  {:>12.0} events/s",
        number(&["raw_read_events_per_second"])
    );
    println!(
        "  projector fold into sled views       {:>12.0} events/s  = {:.0}% of the raw read (goal ≥ 50%)",
        number(&["fold_events_per_second"]),
        100.0 * number(&["fold_vs_raw_read"])
    );
    println!(
        "  kpictl replay into fresh views       {:>12.0} events/s  = {:.0}% of the raw read (goal ≥ 50%)",
        number(&["replay_events_per_second"]),
        100.0 * number(&["replay_vs_raw_read"])
    );
    println!(
        "  GetRates province, R2025, 1 client   p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (goal p99 < 2 ms)",
        number(&["get_rates_p50_ms"]),
        number(&["get_rates_p99_ms"]),
        number(&["get_rates_max_ms"])
    );
    println!(
        "  GetRates, {} clients                 {:>12.0} calls/s   = {:.0}% of health Check (goal ≥ 60%)",
        number(&["clients"]),
        number(&["get_rates_calls_per_second"]),
        100.0 * number(&["get_rates_vs_health_check"])
    );
    println!(
        "  health Check, {} clients             {:>12.0} calls/s",
        number(&["clients"]),
        number(&["health_check_calls_per_second"])
    );
    println!(
        "  GetRates, clients decoding replies   {:>12.0} calls/s   = {:.0}% of health Check (for comparison)",
        number(&["get_rates_decoded_calls_per_second"]),
        100.0 * number(&["get_rates_decoded_vs_health_check"])
    );
    println!(
        "  (GetRates measured with {} WatchRates watchers connected; goals: p99 < 2 ms, ≥ 60% of Check)",
        number(&["watchers"])
    );
    println!(
        "  GetCaseFlow province, R2025, 1 client  p99 by unit {:.2} ms, by field {:.2} ms, by procedure {:.2} ms (goals < 20, 30, 100 ms)",
        number(&["get_case_flow_by_unit_p99_ms"]),
        number(&["get_case_flow_by_field_p99_ms"]),
        number(&["get_case_flow_by_procedure_p99_ms"])
    );
    println!(
        "  GetCaseFlow computed afresh (no answer kept)  p99 by unit {:.2} ms, by field {:.2} ms, by procedure {:.2} ms",
        number(&["get_case_flow_uncached_by_unit_p99_ms"]),
        number(&["get_case_flow_uncached_by_field_p99_ms"]),
        number(&["get_case_flow_uncached_by_procedure_p99_ms"])
    );
    println!(
        "  GetCaseFlow by unit, many clients    {:>12.0} calls/s   = {:.0}% of health Check (goal ≥ 30%)",
        number(&["get_case_flow_calls_per_second"]),
        100.0 * number(&["get_case_flow_vs_health_check"])
    );
    println!(
        "  GetScores province, R2025, 1 client  p50 {:.3} ms, p99 {:.3} ms (goal p99 < 5 ms)",
        number(&["get_scores_p50_ms"]),
        number(&["get_scores_p99_ms"])
    );
    if figures["freshness_p99_ms"].is_number() {
        println!(
            "  WatchRates freshness at {} events/s  p50 {:.1} ms, p99 {:.1} ms from ack to update (goal p99 < 100 ms)",
            number(&["freshness_events_per_second"]),
            number(&["freshness_p50_ms"]),
            number(&["freshness_p99_ms"])
        );
    }
    if figures["fold_with_watchers_slowdown"].is_number() {
        println!(
            "  fold with {} watchers               {:>12.0} events/s  = {:.0}% slower than without ({:.0} events/s; mean of 2 folds each, same run; goal ≤ 20%)",
            number(&["watchers"]),
            number(&["fold_with_watchers_events_per_second"]),
            100.0 * number(&["fold_with_watchers_slowdown"]),
            number(&["fold_without_watchers_events_per_second"])
        );
    }
    for sample in figures["memory_mib_by_events"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "  projector memory after {:>9} events {:.0} MiB (peak {:.0} MiB)",
            sample["events"],
            sample["rss"].as_f64().unwrap_or(f64::NAN),
            sample["peak"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "  projector memory at the end          {:.0} MiB (peak {:.0} MiB) with a {} MiB sled cache, batches of {}",
        number(&["rss_mib_at_end"]),
        number(&["peak_rss_mib_at_end"]),
        number(&["sled_cache_mib"]),
        number(&["batch_size"])
    );
    println!(
        "  views on disk                        {:.0} MiB",
        number(&["views_on_disk_mib"])
    );
    println!(
        "  GetRates, {} clients, TLS and a token {:>9.0} calls/s = {:.0}% of the same served plain, {:.0}/s (goal: costs ≤ 25%, so ≥ 75%)",
        number(&["clients"]),
        number(&["tls_get_rates_calls_per_second"]),
        100.0 * number(&["tls_vs_plain_get_rates"]),
        number(&["plain_get_rates_calls_per_second"])
    );
    if figures["r3_vs_r1_fold"].is_number() {
        println!(
            "  fold of {} events, 3 copies (cluster) {:>9.0} events/s = {:.0}% of 1 copy, {:.0}/s (goal ≥ 70%)",
            number(&["cluster_events"]),
            number(&["r3_fold_events_per_second"]),
            100.0 * number(&["r3_vs_r1_fold"]),
            number(&["r1_fold_events_per_second"])
        );
    }
    if figures["ingest"].is_object() {
        println!(
            "  raw publish, {} intake events, 1024 in flight {:>9.0} events/s",
            number(&["ingest", "events"]),
            number(&["ingest", "raw_publish_events_per_second"])
        );
        println!(
            "  intake service, posts of {LINES_PER_POST} lines, {} clients {:>9.0} events/s = {:.0}% of the raw publish (goals ≥ 20000/s, ≥ 40%)",
            number(&["ingest", "clients"]),
            number(&["ingest", "service_events_per_second"]),
            100.0 * number(&["ingest", "service_vs_raw_publish"])
        );
        println!(
            "  intake service, HTTPS and a sender token  {:>9.0} events/s = {:.0}% of the same served plain (goal ≥ 80%)",
            number(&["ingest", "tls_service_events_per_second"]),
            100.0 * number(&["ingest", "tls_vs_plain_service"])
        );
        println!(
            "  intake post of {LINES_PER_POST} lines              p50 {:.1} ms, p99 {:.1} ms",
            number(&["ingest", "post_p50_ms"]),
            number(&["ingest", "post_p99_ms"])
        );
    }
}
