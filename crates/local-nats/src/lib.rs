//! A real `nats-server` for tests and benchmarks: JetStream on, a
//! temporary store, a free port on 127.0.0.1. Dropping it stops the server.
//!
//! There is no mock bus in this project. When `nats-server` is missing,
//! [`LocalNats::start`] fails with the command that installs it.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to run to install the server (Debian package `nats-server`).
pub const INSTALL_HINT: &str =
    "install it with `sudo apt-get install -y nats-server` (or run deploy/scripts/install-nats.sh), \
     or set NATS_SERVER_BIN to a nats-server binary";

#[derive(Debug, thiserror::Error)]
pub enum LocalNatsError {
    #[error("nats-server was not found on PATH, in /usr/sbin or in /usr/bin: {INSTALL_HINT}")]
    NotInstalled,
    #[error("could not start {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("nats-server did not accept connections on 127.0.0.1:{port} within {seconds} s; its log: {log}")]
    NotReady {
        port: u16,
        seconds: u64,
        log: String,
    },
    #[error("temporary directory: {0}")]
    TempDir(std::io::Error),
}

/// Finds the `nats-server` binary: `$NATS_SERVER_BIN`, then `PATH`, then
/// where Debian installs it.
pub fn find_nats_server() -> Result<PathBuf, LocalNatsError> {
    if let Some(explicit) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(explicit));
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or(LocalNatsError::NotInstalled)
}

/// A running `nats-server` with JetStream, stopped on drop.
pub struct LocalNats {
    child: Child,
    port: u16,
    /// The JetStream store, deleted when the server is dropped.
    _store: tempfile::TempDir,
}

impl LocalNats {
    /// Starts a server on a free loopback port with a fresh JetStream store.
    pub fn start() -> Result<LocalNats, LocalNatsError> {
        let binary = find_nats_server()?;
        let dir = tempfile::Builder::new()
            .prefix("local-nats-")
            .tempdir()
            .map_err(LocalNatsError::TempDir)?;
        // The free port may be taken between probing and binding: retry.
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port().map_err(LocalNatsError::TempDir)?;
            match spawn(&binary, dir.path(), port) {
                Ok(child) => {
                    return Ok(LocalNats {
                        child,
                        port,
                        _store: dir,
                    });
                }
                Err(err @ LocalNatsError::NotReady { .. }) => last_error = Some(err),
                Err(other) => return Err(other),
            }
        }
        Err(last_error.unwrap_or(LocalNatsError::NotInstalled))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn spawn(binary: &Path, dir: &Path, port: u16) -> Result<Child, LocalNatsError> {
    let log = dir.join(format!("nats-server-{port}.log"));
    let mut child = Command::new(binary)
        .args([
            "--addr",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--jetstream",
            "--store_dir",
        ])
        .arg(dir.join("jetstream"))
        .arg("--log")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| LocalNatsError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
    let deadline = Duration::from_secs(15);
    let started = Instant::now();
    while started.elapsed() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(LocalNatsError::NotReady {
        port,
        seconds: deadline.as_secs(),
        log: std::fs::read_to_string(&log).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_loopback_and_stops_on_drop() {
        let server = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
        let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, server.port());
        assert!(TcpStream::connect(address).is_ok());
        assert!(server.url().starts_with("nats://127.0.0.1:"));
        drop(server);
        std::thread::sleep(Duration::from_millis(100));
        assert!(TcpStream::connect(address).is_err(), "the server is gone");
    }
}
