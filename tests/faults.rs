//! The disk holding the views fills up mid-fold: the projector stops with
//! a message that says what to do (and a status systemd restarts), and once
//! there is space again and it is started again, its views end equal, entry
//! for entry, to those of a run that never ran out of space.
//!
//! The full disk is a small tmpfs mounted for the test, which needs root
//! (CI runs as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kpi_bus::Bus;
use kpi_domain::UnitRegistry;
use kpi_e2e::{
    binaries, free_port, publish_all, run_to_end, simulated_messages, views_of, Projector,
};
use kpi_simulator::synthetic_registry;
use local_nats::LocalNats;

const EVENTS: usize = 30_000;
const FOLD_TIMEOUT: Duration = Duration::from_secs(180);

/// A tmpfs of a given size, unmounted on drop (even when the test fails).
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("running mount");
        assert!(
            output.status.success(),
            "this test fills a small tmpfs and must mount one: run the tests as root \
             (`sudo deploy/scripts/test.sh`; CI runs as root). mount said: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        SmallDisk {
            path: path.to_path_buf(),
        }
    }

    /// Frees space: the same files, a larger filesystem.
    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "remounting {} larger",
            self.path.display()
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_the_projector_and_after_space_is_freed_it_ends_equal() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units_path = dir.path().join("units.json");
    std::fs::write(&units_path, synthetic_registry(1, 4, 5)).unwrap();
    let units = UnitRegistry::from_json(&std::fs::read(&units_path).unwrap()).unwrap();
    let bus = Bus::connect(&nats.url(), "faults-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    publish_all(&bus, simulated_messages(&units, 5, (365, 20.0), EVENTS)).await;
    let last = bus.last_sequence().await.unwrap();

    // 2 MiB holds the views of a few thousand events, not of 30,000.
    let disk = SmallDisk::mount(&dir.path().join("small-disk"), "2m");
    let data_dir = disk.path.join("projector");
    let (status, stderr) = run_to_end(
        &binaries().projector,
        &[
            "--nats-url",
            &nats.url(),
            "--units",
            units_path.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
    );
    assert_eq!(
        status,
        Some(1),
        "a full disk is an error a restart fixes once there is space: status 1\n{stderr}"
    );
    assert!(
        stderr.contains("the disk holding --data-dir is full") && stderr.contains("Free space"),
        "the message says what happened and what to do:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    disk.grow("256m");
    let mut projector = Projector::start(&nats.url(), &units_path, &data_dir, &[]);
    projector.wait_for("P00", last, FOLD_TIMEOUT).await;
    projector.terminate();

    let uninterrupted_dir = dir.path().join("uninterrupted");
    let mut uninterrupted = Projector::start(&nats.url(), &units_path, &uninterrupted_dir, &[]);
    uninterrupted.wait_for("P00", last, FOLD_TIMEOUT).await;
    uninterrupted.terminate();

    let (after_full, full_totals, full_checkpoint) = views_of(&data_dir);
    let (expected, expected_totals, expected_checkpoint) = views_of(&uninterrupted_dir);
    assert_eq!(full_checkpoint, expected_checkpoint);
    assert_eq!(full_totals, expected_totals);
    assert_eq!(full_totals.folded, EVENTS as u64, "{full_totals:?}");
    assert!(
        after_full == expected,
        "the views differ from an uninterrupted run's: {} entries against {}",
        after_full.len(),
        expected.len()
    );
}
