//! The command line of `kpictl bench`, on its own so that every stage can
//! read the flags without depending on the file that runs the stages.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Cases in the simulated year (each has about 4.6 events).
    #[arg(long, default_value_t = 1_000_000)]
    pub cases: u64,
    /// Districts in the synthetic province.
    #[arg(long, default_value_t = 12)]
    pub districts: usize,
    /// Communes in each district.
    #[arg(long, default_value_t = 12)]
    pub communes: usize,
    /// Simulate a province whose tree never changes (by default it goes
    /// through the 2025 reform: districts end on 2025-06-30, communes move
    /// to the province, two communes of each district merge).
    #[arg(long)]
    pub no_reform: bool,
    /// Sequential GetRates calls for the latency percentiles.
    #[arg(long, default_value_t = 3000)]
    pub calls: u32,
    /// Concurrent clients for the throughput comparison.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds the calls/s of health Check and of GetRates are each counted
    /// (in two windows, Check, GetRates, GetRates, Check).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// The projector's sled cache, MiB.
    #[arg(long, default_value_t = 64)]
    pub cache_mb: u64,
    /// Messages the projectors and replays fold into one atomic write.
    #[arg(long, default_value_t = kpi_projection::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// The projector binary (default: the one next to kpictl).
    #[arg(long)]
    pub projector_bin: Option<PathBuf>,
    /// Random seed of the simulated traffic.
    #[arg(long, default_value_t = 2025)]
    pub seed: u64,
    /// Events posted to the intake service (and, as many others, published
    /// raw) for the ingest comparison; 0 skips it.
    #[arg(long, default_value_t = 200_000)]
    pub ingest_events: usize,
    /// Concurrent HTTP clients posting to the intake service.
    #[arg(long, default_value_t = 4)]
    pub ingest_clients: usize,
    /// WatchRates watchers connected while GetRates is measured, and while
    /// a second fold runs (its slowdown against the first); 0: none.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Events a second of background traffic while WatchRates freshness is
    /// measured.
    #[arg(long, default_value_t = 5000)]
    pub freshness_rate: usize,
    /// Events (of the same simulated year) also published to a three-node
    /// JetStream cluster on loopback with three copies, whose fold rate is
    /// compared with the single server's; 0 skips it.
    #[arg(long, default_value_t = 500_000)]
    pub cluster_events: u64,
    /// Run the whole benchmark this many times, printing each run and
    /// then the worst and median of each goal's figure.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Print the figures of each run as JSON.
    #[arg(long)]
    pub json: bool,
}
