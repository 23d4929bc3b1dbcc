//! Optional TLS for the cluster's TCP connections (`volley start --tls-cert/--tls-key`).
//!
//! The cluster's code reads a connection on one thread and writes it on another (each with its
//! own handle on the socket), which a TLS session cannot be split into. So a TLS connection is
//! carried by two pump threads between the TCP socket and one end of a local socketpair; the
//! cluster code works on the other end as on a plain socket. The token handshake
//! (`authenticate_client/server`) runs inside the encrypted channel as before; on the accepting
//! side, the TLS and token handshakes run on the accepting thread, and the pumps start only for
//! a peer that passed both ([`accept`]).
//!
//! Nodes share one certificate and key (a self-signed one is fine). A connecting side trusts
//! exactly that certificate (pinned byte for byte), not a CA chain nor a host name, so the
//! same files work on every machine of the cluster.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use volley_store::sync::Mutex;

use crate::RuntimeError;

/// A new self-signed certificate and its private key (ECDSA P-256), both PEM, for
/// `volley start --head --tls`: the connecting side pins the certificate byte for byte, so no
/// CA nor host name is involved and the same pair serves every machine of the cluster.
pub fn self_signed_cert() -> Result<(String, String), RuntimeError> {
    let made = rcgen::generate_simple_self_signed(vec!["volley-cluster".to_string()])
        .map_err(|e| tls_err("generating a certificate", e))?;
    Ok((made.cert.pem(), made.key_pair.serialize_pem()))
}

/// The TLS settings of a node or driver.
pub struct TlsConfig {
    /// To accept connections (a node that listens): needs the key.
    server: Option<Arc<ServerConfig>>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").field("server", &self.server.is_some()).finish()
    }
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Tls(format!("{what}: {e}"))
}

impl TlsConfig {
    /// Loads the cluster's certificate (PEM) and, to accept connections, its private key.
    pub fn load(cert: &Path, key: Option<&Path>) -> Result<TlsConfig, RuntimeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| tls_err(&format!("reading {}", cert.display()), e))?
            .collect::<Result<_, _>>()
            .map_err(|e| tls_err(&format!("reading {}", cert.display()), e))?;
        let Some(leaf) = certs.first().cloned() else {
            return Err(RuntimeError::Tls(format!("{} holds no certificate", cert.display())));
        };
        let server = match key {
            Some(k) => {
                let key = PrivateKeyDer::from_pem_file(k)
                    .map_err(|e| tls_err(&format!("reading {}", k.display()), e))?;
                let cfg = ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| tls_err("TLS versions", e))?
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .map_err(|e| tls_err("the certificate and key do not match", e))?;
                Some(Arc::new(cfg))
            }
            None => None,
        };
        let verifier = Arc::new(Pinned { cert: leaf, provider: provider.clone() });
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("TLS versions", e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(TlsConfig { server, client: Arc::new(client) })
    }

    pub fn accepts(&self) -> bool {
        self.server.is_some()
    }

    /// The server side (certificate and key), for the dashboard's HTTPS; `None` without a key.
    pub(crate) fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.server.clone()
    }
}

/// Trusts exactly the cluster's certificate.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the node's certificate is not the cluster's".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection to a peer: the TCP socket itself, or the local end of a TLS pump.
#[derive(Debug)]
pub(crate) enum Conn {
    Tcp(TcpStream),
    Local(UnixStream),
}

impl Conn {
    pub(crate) fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Local(s) => Conn::Local(s.try_clone()?),
        })
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Local(s) => s.shutdown(how),
        }
    }

    /// The socket, when bytes arrive on it as they were sent (no TLS in between).
    pub(crate) fn tcp_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match self {
            Conn::Tcp(s) => Some(s.as_fd()),
            Conn::Local(_) => None,
        }
    }

    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(t),
            Conn::Local(s) => s.set_read_timeout(t),
        }
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Conn::Tcp(s) => (&*s).read(buf),
            Conn::Local(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Conn::Tcp(s) => (&*s).write(buf),
            Conn::Local(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The connecting side's TLS over `tcp`.
pub(crate) fn client(tcp: TcpStream, cfg: &TlsConfig) -> io::Result<Conn> {
    let name = ServerName::try_from("volley-cluster").map_err(io::Error::other)?;
    let conn = rustls::ClientConnection::new(cfg.client.clone(), name).map_err(io::Error::other)?;
    pump(tcp, rustls::Connection::Client(conn))
}

/// A TLS session whose handshake the accepting side finished on its own thread ([`accept`]);
/// no pump thread exists for it until [`Accepted::into_conn`].
pub(crate) struct Accepted(rustls::ServerConnection);

/// The accepting side's TLS handshake, on the calling thread over `io` (the socket, which the
/// caller reads within the handshake's deadline). The pump threads start only once the peer has
/// also proved it holds the token (over [`Accepted::stream`]): an unauthenticated peer costs no
/// thread beyond the one accepting it. An error if this node has no key.
pub(crate) fn accept(io: &mut (impl Read + Write), cfg: &TlsConfig) -> io::Result<Accepted> {
    let Some(server) = &cfg.server else {
        return Err(io::Error::other("this node has no TLS key to accept connections with"));
    };
    let mut conn = rustls::ServerConnection::new(server.clone()).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(io)?;
    }
    Ok(Accepted(conn))
}

impl Accepted {
    /// The encrypted channel over `io`, read and written on the calling thread (for the token
    /// handshake).
    pub(crate) fn stream<'a, S: Read + Write>(
        &'a mut self,
        io: &'a mut S,
    ) -> rustls::Stream<'a, rustls::ServerConnection, S> {
        rustls::Stream::new(&mut self.0, io)
    }

    /// Starts the pump threads over `tcp` (the socket `accept` ran on); returns the local end.
    pub(crate) fn into_conn(self, tcp: TcpStream) -> io::Result<Conn> {
        pump(tcp, rustls::Connection::Server(self.0))
    }
}

/// What the session has to send now (taken while holding the session's lock, so records go to
/// the writer in order).
fn take_tls(conn: &mut rustls::Connection) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut v)?;
    }
    Ok(v)
}

/// Unsent TLS bytes beyond which the encrypting side waits for the network.
const MAX_QUEUED: usize = 8 << 20;

/// Starts the pump threads of a TLS connection; returns the local end to use.
///
/// Three threads: one decrypts what arrives (and answers the handshake), one encrypts what the
/// cluster code writes, and one writes the encrypted bytes to the network in order. No thread
/// writes to the network while holding the session's lock, so two nodes sending to each other
/// at once cannot wait on each other's locks.
fn pump(tcp: TcpStream, conn: rustls::Connection) -> io::Result<Conn> {
    let (mine, theirs) = UnixStream::pair()?;
    let session = Arc::new(Mutex::new(conn));
    let queued = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let hello = take_tls(&mut session.lock())?; // A client's hello.
                                                // What a session accepted on the caller's thread already decrypted goes first.
    let early = {
        let mut c = session.lock();
        let mut early = Vec::new();
        let mut plain = [0u8; 16 << 10];
        while let Ok(k) = c.reader().read(&mut plain) {
            if k == 0 {
                break;
            }
            early.extend_from_slice(&plain[..k]);
        }
        early
    };
    if !early.is_empty() {
        (&theirs).write_all(&early)?;
    }
    if !hello.is_empty() {
        queued.fetch_add(hello.len(), Ordering::AcqRel);
        let _ = tx.send(hello);
    }
    // The network writer: an empty chunk means close.
    let (tcp_out, q) = (tcp.try_clone()?, queued.clone());
    std::thread::Builder::new().name("volley-tls-net".into()).spawn(move || {
        for chunk in rx {
            if chunk.is_empty() || (&tcp_out).write_all(&chunk).is_err() {
                break;
            }
            q.fetch_sub(chunk.len(), Ordering::AcqRel);
        }
        let _ = tcp_out.shutdown(Shutdown::Both);
    })?;
    let (tcp_in, local_out) = (tcp, theirs.try_clone()?);
    let (s, tx_in, q) = (session.clone(), tx.clone(), queued.clone());
    // Network -> local: decrypt.
    std::thread::Builder::new().name("volley-tls-in".into()).spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut plain = vec![0u8; 64 << 10];
        loop {
            let n = match (&tcp_in).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut out = Vec::new();
            let answer = {
                let mut c = s.lock();
                let mut data = &buf[..n];
                let mut failed = false;
                while !data.is_empty() {
                    if c.read_tls(&mut data).is_err() || c.process_new_packets().is_err() {
                        failed = true;
                        break;
                    }
                    // Until WouldBlock: nothing more is decrypted yet.
                    while let Ok(k) = c.reader().read(&mut plain) {
                        if k == 0 {
                            break;
                        }
                        out.extend_from_slice(&plain[..k]);
                    }
                }
                let answer = take_tls(&mut c);
                if let Ok(a) = &answer {
                    if !a.is_empty() {
                        q.fetch_add(a.len(), Ordering::AcqRel);
                        let _ = tx_in.send(a.clone());
                    }
                }
                if failed {
                    Err(io::Error::other("TLS failed"))
                } else {
                    answer.map(|_| ())
                }
            };
            if answer.is_err() || (!out.is_empty() && (&local_out).write_all(&out).is_err()) {
                break;
            }
        }
        let _ = tx_in.send(Vec::new());
        let _ = local_out.shutdown(Shutdown::Both);
    })?;
    // Local -> network: encrypt.
    std::thread::Builder::new().name("volley-tls-out".into()).spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match (&theirs).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = {
                let mut c = session.lock();
                if c.writer().write_all(&buf[..n]).is_err() {
                    break;
                }
                match take_tls(&mut c) {
                    Ok(v) => {
                        queued.fetch_add(v.len(), Ordering::AcqRel);
                        v
                    }
                    Err(_) => break,
                }
            };
            if !chunk.is_empty() && tx.send(chunk).is_err() {
                break;
            }
            // Backpressure, without holding the session's lock.
            while queued.load(Ordering::Acquire) > MAX_QUEUED {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let bye = {
            let mut c = session.lock();
            c.send_close_notify();
            take_tls(&mut c).unwrap_or_default()
        };
        if !bye.is_empty() {
            let _ = tx.send(bye);
        }
        let _ = tx.send(Vec::new());
        let _ = theirs.shutdown(Shutdown::Both);
    })?;
    Ok(Conn::Local(mine))
}
