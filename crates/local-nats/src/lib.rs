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
    "install it with `sudo apt-get install -y nats-server` (or run deploy/scripts/setup.sh), \
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

/// What a server's config file holds.
#[derive(Clone)]
enum Config {
    /// The loopback port and the store, set here, and these lines.
    Extra(String),
    /// Exactly this text (a shipped config adapted to the test).
    Whole(String),
}

/// A running `nats-server` with JetStream, stopped on drop.
pub struct LocalNats {
    child: Option<Child>,
    port: u16,
    binary: PathBuf,
    config: Config,
    env: Vec<(String, String)>,
    /// The JetStream store and the server's config and log, deleted when
    /// the server is dropped.
    dir: tempfile::TempDir,
}

impl LocalNats {
    /// Starts a server on a free loopback port with a fresh JetStream store.
    pub fn start() -> Result<LocalNats, LocalNatsError> {
        LocalNats::start_with_config("")
    }

    /// Starts a server whose config file also holds `extra_config` (users
    /// and permissions, say); the listen address and the JetStream store
    /// are set here.
    pub fn start_with_config(extra_config: &str) -> Result<LocalNats, LocalNatsError> {
        LocalNats::start_with_config_and_env(extra_config, &[])
    }

    /// Like [`LocalNats::start_with_config`], with environment variables
    /// for the server (a config file reads them as `$NAME`).
    pub fn start_with_config_and_env(
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Result<LocalNats, LocalNatsError> {
        LocalNats::launch(|_, _| Config::Extra(extra_config.to_owned()), env)
    }

    /// Starts a server with a whole config file of its own: `config` is
    /// given the client port picked for it and the server's directory
    /// (where `jetstream/` is its store, and where the test may put files
    /// the config names), and returns the text; the file is written as
    /// `<dir>/conf/nats-server.conf`, so that `include ../users.conf`
    /// names `<dir>/users.conf`.
    pub fn start_with_whole_config(
        config: impl Fn(u16, &Path) -> String,
        env: &[(&str, &str)],
    ) -> Result<LocalNats, LocalNatsError> {
        LocalNats::launch(|port, dir| Config::Whole(config(port, dir)), env)
    }

    fn launch(
        config: impl Fn(u16, &Path) -> Config,
        env: &[(&str, &str)],
    ) -> Result<LocalNats, LocalNatsError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let binary = find_nats_server()?;
        let dir = tempfile::Builder::new()
            .prefix("local-nats-")
            .tempdir()
            .map_err(LocalNatsError::TempDir)?;
        // The free port may be taken between probing and binding: retry.
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port().map_err(LocalNatsError::TempDir)?;
            let config = config(port, dir.path());
            match spawn(&binary, dir.path(), port, &config, &env) {
                Ok(child) => {
                    return Ok(LocalNats {
                        child: Some(child),
                        port,
                        binary,
                        config,
                        env,
                        dir,
                    });
                }
                Err(err @ LocalNatsError::NotReady { .. }) => last_error = Some(err),
                Err(other) => return Err(other),
            }
        }
        Err(last_error.unwrap_or(LocalNatsError::NotInstalled))
    }

    /// `size` servers on loopback forming one JetStream cluster (as
    /// `deploy/nats/cluster/` configures one on three machines), named
    /// `n0`, `n1`, …; their client URLs joined by commas are what
    /// `--nats-url` takes.
    pub fn start_cluster(size: usize) -> Result<Vec<LocalNats>, LocalNatsError> {
        let routes = (0..size)
            .map(|_| free_port().map_err(LocalNatsError::TempDir))
            .collect::<Result<Vec<u16>, _>>()?;
        let route_urls: Vec<String> = routes
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect();
        (0..size)
            .map(|index| {
                LocalNats::start_with_config(&format!(
                    "server_name: n{index}\ncluster {{\n  name: kpi-local\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    routes[index],
                    route_urls.join(", ")
                ))
            })
            .collect()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's directory (its store, config and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The JetStream store directory (for tests that inspect what the
    /// server wrote to disk).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The server's process id while it runs (for tests that pause it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(self.dir.path(), self.port)).unwrap_or_default()
    }

    /// Stops the server (SIGKILL: an outage, not a shutdown), keeping its
    /// store for [`LocalNats::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) -> Result<(), LocalNatsError> {
        self.stop();
        let mut last_error = None;
        // The port may take a moment to be free again.
        for _ in 0..20 {
            match spawn(
                &self.binary,
                self.dir.path(),
                self.port,
                &self.config,
                &self.env,
            ) {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(err @ LocalNatsError::NotReady { .. }) => {
                    last_error = Some(err);
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(other) => return Err(other),
            }
        }
        Err(last_error.unwrap_or(LocalNatsError::NotInstalled))
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        self.stop();
    }
}

fn log_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("nats-server-{port}.log"))
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn spawn(
    binary: &Path,
    dir: &Path,
    port: u16,
    config: &Config,
    env: &[(String, String)],
) -> Result<Child, LocalNatsError> {
    let log = log_path(dir, port);
    let text = match config {
        Config::Extra(extra_config) => format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {:?}\n}}\n{extra_config}\n",
            dir.join("jetstream").display().to_string()
        ),
        Config::Whole(text) => text.clone(),
    };
    let config_dir = dir.join("conf");
    std::fs::create_dir_all(&config_dir).map_err(LocalNatsError::TempDir)?;
    let config = config_dir.join("nats-server.conf");
    std::fs::write(&config, text).map_err(LocalNatsError::TempDir)?;
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .arg("--log")
        .arg(&log)
        .envs(env.iter().map(|(name, value)| (name, value)))
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
    fn restarts_on_the_same_port() {
        let mut server = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
        let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, server.port());
        server.stop();
        assert!(TcpStream::connect(address).is_err(), "stopped");
        server.restart().unwrap_or_else(|err| panic!("{err}"));
        assert!(TcpStream::connect(address).is_ok(), "back");
    }

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
