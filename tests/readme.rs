//! Every command of README.md, run as a newcomer types it, in a second
//! terminal beside a running `deploy/scripts/demo.sh`.
//!
//! The test reads the README's ```sh blocks itself, so a command added to
//! it is run here too. A block is skipped only when the line before it
//! says why: `<!-- not run by tests/readme.rs: REASON -->` (the demo and
//! the test command themselves, a TLS deployment's placeholders, tools that
//! are not Debian packages); the test lists the skipped blocks with their
//! reasons. Within a block, lines that start with `#` are output or
//! comments, a trailing ` # …` is a comment, and a line ending in `\`
//! goes on on the next.
//!
//! The commands run one at a time in a working directory that looks like
//! a checkout after the demo (`deploy/`, `proto/`, `target/release/` with
//! the binaries the tests built), each in a fresh `bash` that first runs
//! the `export` lines the README has shown so far, as a terminal keeps
//! them. The demo runs on free ports, so the environment names them (the
//! variables `kpictl` reads: `NATS_URL`, `KPI_ADDR`, `KPI_INTAKE_URL`, …)
//! and the README's `127.0.0.1:8081`-style addresses are replaced by the
//! demo's; nothing else of a command is changed. Each must exit 0 (the
//! README's "exit 1 if …" cases do not arise on the demo's valid files),
//! print no panic, and leave the file it names after `--out`; a command
//! that runs until stopped (`watch`, `--follow`) must still be running
//! after a few seconds.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kpi_e2e::binaries;
use kpi_e2e::demo::{free_ports, port, RunningDemo};

const README: &str = include_str!("../README.md");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const SKIP_MARK: &str = "<!-- not run by tests/readme.rs:";

/// One command of the README.
#[derive(Debug, Clone, PartialEq)]
struct ReadmeCommand {
    /// Its first line in README.md, 1-based.
    line: usize,
    text: String,
}

/// A ```sh block the README says is not run, and why.
#[derive(Debug)]
struct SkippedBlock {
    line: usize,
    reason: String,
}

/// The command with its trailing comment cut: a `#` after whitespace,
/// outside quotes.
fn without_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut previous = ' ';
    for (at, character) in line.char_indices() {
        match character {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return line[..at].trim_end(),
            _ => {}
        }
        previous = character;
    }
    line.trim_end()
}

/// The commands of the README's runnable ```sh blocks, and the blocks it
/// marks as not run.
fn readme_commands(readme: &str) -> (Vec<ReadmeCommand>, Vec<SkippedBlock>) {
    let lines: Vec<&str> = readme.lines().collect();
    let (mut commands, mut skipped) = (Vec::new(), Vec::new());
    let mut index = 0;
    while index < lines.len() {
        if lines[index].trim() != "```sh" {
            index += 1;
            continue;
        }
        let before = lines[..index]
            .iter()
            .rev()
            .find(|line| !line.trim().is_empty())
            .map_or("", |line| line.trim());
        let skip = before
            .strip_prefix(SKIP_MARK)
            .and_then(|rest| rest.strip_suffix("-->"))
            .map(str::trim);
        let opening = index + 1;
        index += 1;
        let mut pending: Option<ReadmeCommand> = None;
        while index < lines.len() && lines[index].trim() != "```" {
            let line = lines[index];
            index += 1;
            if skip.is_some() {
                continue;
            }
            let trimmed = line.trim();
            if pending.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
                continue;
            }
            let text = without_comment(trimmed);
            let (text, goes_on) = match text.strip_suffix('\\') {
                Some(text) => (text.trim_end(), true),
                None => (text, false),
            };
            let command = pending.get_or_insert_with(|| ReadmeCommand {
                line: index,
                text: String::new(),
            });
            if !command.text.is_empty() {
                command.text.push(' ');
            }
            command.text.push_str(text);
            if !goes_on {
                commands.extend(pending.take());
            }
        }
        commands.extend(pending.take());
        index += 1;
        if let Some(reason) = skip {
            skipped.push(SkippedBlock {
                line: opening,
                reason: reason.to_owned(),
            });
        }
    }
    (commands, skipped)
}

/// What some commands must print, beyond ending well: a command of the
/// README containing the first text must print the second.
const PRINTS: &[(&str, &str)] = &[
    ("kpictl units --root 51", "Tỉnh Quảng Ngãi"),
    ("kpictl rates --unit 5101234", "Phường Đức Phổ (5101234)"),
    (
        "kpictl import deploy/examples/event.json",
        "tài liệu JSON nhiều dòng",
    ),
    ("dvcqg-progress.json", "không sinh sự kiện nào"),
    (
        "kpictl case 000.00.31.H31-250314-0021",
        "Hồ sơ 000.00.31.H31-250314-0021",
    ),
    ("kpictl verify", "khớp với nhật ký"),
    ("healthz", "\"status\":\"ok\""),
];

/// Whether a command runs until it is stopped.
fn runs_until_stopped(command: &str) -> bool {
    command.starts_with("kpictl watch ")
        || command.split_whitespace().any(|word| word == "--follow")
}

/// The file a command writes with `--out`, if any.
fn out_file(command: &str) -> Option<&str> {
    let mut words = command.split_whitespace();
    words.by_ref().find(|word| *word == "--out")?;
    words.next()
}

/// A directory that looks like a checkout after the demo: the repo's
/// `deploy/` and `proto/`, and the tests' binaries as `target/release/`.
fn checkout_after_demo(dir: &Path) {
    for name in ["deploy", "proto"] {
        std::os::unix::fs::symlink(Path::new(ROOT).join(name), dir.join(name)).unwrap();
    }
    std::fs::create_dir_all(dir.join("target")).unwrap();
    std::os::unix::fs::symlink(binaries().dir(), dir.join("target/release")).unwrap();
}

#[test]
fn the_readme_is_read_as_a_terminal_would() {
    let readme = "Text.\n\n```sh\nkpictl rates --unit 51   # a table\n# output\n\
                  curl -sS -d '{\"a\":\"#1\"}' \\\n  http://127.0.0.1:8081/v1/events\n```\n\n\
                  <!-- not run by tests/readme.rs: needs a TLS deployment -->\n```sh\n\
                  curl https://kpi.example.gov.vn\n```\n";
    let (commands, skipped) = readme_commands(readme);
    assert_eq!(
        commands,
        [
            ReadmeCommand {
                line: 4,
                text: "kpictl rates --unit 51".into()
            },
            ReadmeCommand {
                line: 6,
                text: "curl -sS -d '{\"a\":\"#1\"}' http://127.0.0.1:8081/v1/events".into()
            },
        ]
    );
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].reason, "needs a TLS deployment");
    assert!(runs_until_stopped("kpictl simulate --days 30 --follow"));
    assert_eq!(
        out_file("kpictl report --out a.html --format csv"),
        Some("a.html")
    );
}

#[test]
fn every_readme_command_runs_as_written_beside_the_demo() {
    let (commands, skipped) = readme_commands(README);
    assert!(
        commands.len() >= 30,
        "only {} commands found in README.md",
        commands.len()
    );
    for block in &skipped {
        assert!(
            !block.reason.is_empty(),
            "README.md line {}: a skipped block says why",
            block.line
        );
        eprintln!(
            "not run: the block of README.md line {}: {}",
            block.line, block.reason
        );
    }

    let demo_dir = tempfile::tempdir().unwrap();
    let ports = free_ports();
    let _demo = RunningDemo::start(demo_dir.path(), &ports);
    let work = tempfile::tempdir().unwrap();
    checkout_after_demo(work.path());
    let (nats, api) = (port(&ports, "NATS_PORT"), port(&ports, "API_PORT"));
    let (intake, resolution, feedback) = (
        port(&ports, "INTAKE_PORT"),
        port(&ports, "RESOLUTION_PORT"),
        port(&ports, "FEEDBACK_PORT"),
    );
    let addresses = [
        ("127.0.0.1:8081", format!("127.0.0.1:{intake}")),
        ("127.0.0.1:8082", format!("127.0.0.1:{resolution}")),
        ("127.0.0.1:8083", format!("127.0.0.1:{feedback}")),
        ("127.0.0.1:50051", format!("127.0.0.1:{api}")),
        ("127.0.0.1:4222", format!("127.0.0.1:{nats}")),
    ];
    let environment = [
        ("NATS_URL", format!("nats://127.0.0.1:{nats}")),
        ("KPI_ADDR", format!("http://127.0.0.1:{api}")),
        ("KPI_INTAKE_URL", format!("http://127.0.0.1:{intake}")),
        (
            "KPI_RESOLUTION_URL",
            format!("http://127.0.0.1:{resolution}"),
        ),
        ("KPI_FEEDBACK_URL", format!("http://127.0.0.1:{feedback}")),
    ];

    let mut exports: Vec<String> = Vec::new();
    let mut failures = Vec::new();
    for command in &commands {
        let mut text = command.text.clone();
        for (written, demo) in &addresses {
            text = text.replace(written, demo);
        }
        if text.starts_with("export ") {
            exports.push(text);
            continue;
        }
        let script = format!("{}\n{text}", exports.join("\n"));
        let mut shell = Command::new("bash");
        shell
            .args(["-c", &script])
            .current_dir(work.path())
            .env_remove("KPI_UNITS")
            .envs(
                environment
                    .iter()
                    .map(|(name, value)| (*name, value.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut shell, 0);
        let mut child = shell.spawn().expect("bash");
        let started = Instant::now();
        let limit = if runs_until_stopped(&text) {
            Duration::from_secs(8)
        } else {
            Duration::from_secs(240)
        };
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() >= limit {
                let group = format!("-{}", child.id());
                let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let problem = match status {
            _ if said.contains("panicked") => Some("it panicked".to_owned()),
            None if runs_until_stopped(&text) => None,
            None => Some(format!("it did not end within {limit:?}")),
            Some(status) if runs_until_stopped(&text) => {
                Some(format!("it should run until stopped, but ended: {status}"))
            }
            Some(status) if !status.success() => Some(format!("it ended with {status}")),
            Some(_) => out_file(&text)
                .filter(|file| !work.path().join(file).is_file())
                .map(|file| format!("it wrote no {file}"))
                .or_else(|| {
                    PRINTS
                        .iter()
                        .find(|(command, printed)| {
                            text.contains(command) && !said.contains(printed)
                        })
                        .map(|(_, printed)| format!("it did not print `{printed}`"))
                }),
        };
        eprintln!(
            "README.md line {}: `{}` — {} ({:.1} s)",
            command.line,
            command.text,
            problem.as_deref().unwrap_or("ok"),
            started.elapsed().as_secs_f64()
        );
        if let Some(problem) = problem {
            failures.push(format!(
                "README.md line {}: `{}`: {problem}; it said:\n{}",
                command.line,
                command.text,
                said.lines().take(40).collect::<Vec<_>>().join("\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} README commands did not work as written:\n\n{}",
        failures.len(),
        commands.len(),
        failures.join("\n\n")
    );
}
