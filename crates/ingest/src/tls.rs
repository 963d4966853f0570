//! HTTPS for the ingest services (`--tls-cert`, `--tls-key`): bearer
//! tokens never cross a network in clear (CONTRACT §8).
//!
//! Connections are accepted and their TLS handshakes made by a task of
//! their own, each handshake in its own task with a deadline, so that a
//! client that opens a connection and says nothing delays no one; the
//! server takes the connections that finished their handshake.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server.
const READY: usize = 64;

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS {what} {path}: {detail}")]
pub struct TlsFilesError {
    pub what: &'static str,
    pub path: String,
    pub detail: String,
}

/// The TLS configuration of a certificate chain and its key (PEM).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsFilesError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let failed = |what: &'static str, path: &Path, detail: String| TlsFilesError {
        what,
        path: path.display().to_string(),
        detail,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|err| failed("certificate", cert, err.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|err| failed("certificate", cert, err.to_string()))?;
    if certs.is_empty() {
        return Err(failed(
            "certificate",
            cert,
            "no certificate in the file (PEM `BEGIN CERTIFICATE`)".to_owned(),
        ));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|err| failed("key", key, err.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| failed("certificate", cert, err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|err| failed("key", key, err.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener whose connections speak TLS, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener`, handshaking with `config`.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (handshaken, ready) = mpsc::channel(READY);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if handshaken.is_closed() {
                    return;
                }
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let handshaken = handshaken.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = handshaken.send((stream, peer)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
