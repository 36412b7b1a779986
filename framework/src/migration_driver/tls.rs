//! The authenticated link between hosts: TLS 1.3 (rustls, with ring as the crypto provider)
//! with certificates on both sides.
//!
//! The source presents its certificate and checks the destination's against the CA it is given
//! (and against the destination's name: its DNS name or IP address must be in the
//! certificate's subjectAltName); the destination (`vfio-variant migrate-agent`, or a VMM) only
//! completes a handshake with a source whose certificate is signed by the CA it trusts. The
//! migration messages ([`super::link`]) then travel inside TLS records, so a peer that is not
//! authenticated never gets to send a HELLO, and anything changed on the wire is refused by
//! the record protection before it is parsed.

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
/// The configurations [`source_config`] and [`destination_config`] make (rustls's).
pub use rustls::{ClientConfig, ServerConfig};
use rustls::{ClientConnection, RootCertStore, ServerConnection};

/// A link from the source side, authenticated both ways.
pub type SourceLink = rustls::StreamOwned<ClientConnection, TcpStream>;
/// A link at the destination side, from an authenticated source.
pub type DestinationLink = rustls::StreamOwned<ServerConnection, TcpStream>;

/// The files one side authenticates with (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// This side's certificate, followed by any intermediate certificates.
    pub cert: PathBuf,
    /// This side's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates the other side's certificate must chain to.
    pub ca: PathBuf,
}

/// A TLS setup or handshake that failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificates or key.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The CA file gives no usable trust anchor.
    #[error("{path}: no usable CA certificate: {source}")]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// Why the client verifier could not be built.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The destination's name is neither a DNS name nor an IP address.
    #[error(
        "`{0}` is not a DNS name or an IP address to check the destination's certificate against"
    )]
    Name(String),
    /// The TCP connection failed.
    #[error("{address}: {source}")]
    Connect {
        /// Where to.
        address: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The handshake failed: the peer is not authenticated, or does not speak TLS.
    #[error("TLS handshake with {peer}: {source}")]
    Handshake {
        /// The peer's address.
        peer: String,
        /// Why (rustls's error inside, e.g. an unknown issuer or a missing certificate).
        #[source]
        source: io::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |source| TlsError::Pem {
        path: path.to_path_buf(),
        source,
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(pem_error(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(path))?;
    if certificates.is_empty() {
        return Err(pem_error(path)(rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(certificates)
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots.add(certificate)?;
    }
    Ok(Arc::new(roots))
}

fn identity(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(pem_error(&files.key))?;
    Ok((certificates(&files.cert)?, key))
}

/// The source side's configuration: TLS 1.3 only, `files.cert` presented, the destination's
/// certificate checked against `files.ca`.
pub fn source_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let (chain, key) = identity(files)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The destination side's configuration: TLS 1.3 only, `files.cert` presented, and a source
/// certificate signed by `files.ca` required.
pub fn destination_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = identity(files)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .build()
        .map_err(|source| TlsError::Ca {
            path: files.ca.clone(),
            source,
        })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The host part of `HOST:PORT` (`[::1]:4500` is `::1`).
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    address.rsplit_once(':').map_or(address, |(host, _)| host)
}

fn handshake<C, D>(
    connection: &mut C,
    stream: &mut TcpStream,
    peer: impl FnOnce() -> String,
) -> Result<(), TlsError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    while connection.is_handshaking() {
        if let Err(source) = connection.complete_io(stream) {
            return Err(TlsError::Handshake {
                peer: peer(),
                source,
            });
        }
    }
    Ok(())
}

/// Connects to the destination at `address` (`HOST:PORT`) and completes the handshake. The
/// destination's certificate must name `name`, or the host part of `address` when `None`.
/// `timeout` bounds every read and write on the link, the handshake's included (a destination
/// that goes silent then fails the migration instead of holding the source). A destination
/// that does not trust this side's certificate refuses it in its first answer, which the first
/// read on the link then reports.
pub fn connect(
    address: &str,
    name: Option<&str>,
    config: Arc<ClientConfig>,
    timeout: Option<Duration>,
) -> Result<SourceLink, TlsError> {
    let name = name.unwrap_or_else(|| host_of(address));
    let server_name =
        ServerName::try_from(name.to_string()).map_err(|_| TlsError::Name(name.to_string()))?;
    let connect_error = |source| TlsError::Connect {
        address: address.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(address).map_err(connect_error)?;
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(timeout))
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(connect_error)?;
    let mut connection = ClientConnection::new(config, server_name)?;
    handshake(&mut connection, &mut stream, || address.to_string())?;
    Ok(rustls::StreamOwned::new(connection, stream))
}

/// Completes the handshake with a source that connected on `stream` (whose timeouts bound the
/// handshake). A source without a certificate signed by the trusted CA, or one that does not
/// speak TLS, is refused here, before anything it sends is read as a message.
pub fn accept(
    mut stream: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<DestinationLink, TlsError> {
    let peer = || {
        stream
            .peer_addr()
            .map_or_else(|_| "the source".to_string(), |a| a.to_string())
    };
    let peer_name = peer();
    let mut connection = ServerConnection::new(config)?;
    handshake(&mut connection, &mut stream, || peer_name)?;
    Ok(rustls::StreamOwned::new(connection, stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use crate::migration_driver::link::{LINK_VERSION, Message};

    /// A CA and certificates it signs, written to a directory.
    struct Pki {
        dir: PathBuf,
        ca: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        fn new(dir: PathBuf) -> Self {
            std::fs::create_dir_all(&dir).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = params.self_signed(&key).unwrap();
            let issuer = rcgen::Issuer::new(params, key);
            std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
            Self { dir, ca, issuer }
        }

        /// Files for `who`, whose certificate names `names`, trusting `trust`'s CA.
        fn files(&self, who: &str, names: &[&str], trust: &Pki) -> TlsFiles {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let files = TlsFiles {
                cert: self.dir.join(format!("{who}.pem")),
                key: self.dir.join(format!("{who}.key")),
                ca: trust.dir.join("ca.pem"),
            };
            std::fs::write(&files.cert, cert.pem() + &self.ca.pem()).unwrap();
            std::fs::write(&files.key, key.serialize_pem()).unwrap();
            files
        }
    }

    fn tmp(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vfio-variant-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// One destination accepting one connection; returns its address and what it saw.
    fn destination(files: &TlsFiles) -> (String, std::thread::JoinHandle<Result<Message, String>>) {
        let config = destination_config(files).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut link = accept(stream, config).map_err(|e| e.to_string())?;
            let message = Message::read_from(&mut link).map_err(|e| e.to_string())?;
            Message::Ready
                .write_to(&mut link)
                .map_err(|e| e.to_string())?;
            Ok(message)
        });
        (address, thread)
    }

    fn hello() -> Message {
        Message::Hello {
            version: LINK_VERSION,
            function: "blk0".into(),
        }
    }

    /// Sends HELLO and reads the answer.
    fn exchange(link: &mut SourceLink) -> Result<Message, String> {
        hello().write_to(link).map_err(|e| e.to_string())?;
        Message::read_from(link).map_err(|e| e.to_string())
    }

    #[test]
    fn both_sides_authenticated_carry_messages() {
        let dir = tmp("ok");
        let pki = Pki::new(dir.clone());
        let agent = pki.files("agent", &["127.0.0.1"], &pki);
        let source = pki.files("source", &["source.example"], &pki);
        let (address, seen) = destination(&agent);
        let mut link = connect(&address, None, source_config(&source).unwrap(), None).unwrap();
        assert_eq!(exchange(&mut link).unwrap(), Message::Ready);
        assert_eq!(seen.join().unwrap().unwrap(), hello());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_source_signed_by_another_ca_is_refused() {
        let dir = tmp("wrong-ca");
        let pki = Pki::new(dir.join("good"));
        let rogue = Pki::new(dir.join("rogue"));
        let agent = pki.files("agent", &["127.0.0.1"], &pki);
        let source = rogue.files("source", &["source.example"], &pki);
        let (address, seen) = destination(&agent);
        let refused = connect(&address, None, source_config(&source).unwrap(), None)
            .map_err(|e| e.to_string())
            .and_then(|mut link| exchange(&mut link));
        assert!(refused.is_err(), "{refused:?}");
        let error = seen.join().unwrap().unwrap_err();
        assert!(error.contains("invalid peer certificate"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_source_without_a_certificate_is_refused() {
        let dir = tmp("no-cert");
        let pki = Pki::new(dir.clone());
        let agent = pki.files("agent", &["127.0.0.1"], &pki);
        let (address, seen) = destination(&agent);
        let anonymous = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(&agent.ca).unwrap())
            .with_no_client_auth();
        let refused = connect(&address, None, Arc::new(anonymous), None)
            .map_err(|e| e.to_string())
            .and_then(|mut link| exchange(&mut link));
        assert!(refused.is_err(), "{refused:?}");
        let error = seen.join().unwrap().unwrap_err();
        assert!(error.contains("no certificates"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_plaintext_source_is_refused_before_its_message_is_read() {
        let dir = tmp("plain");
        let pki = Pki::new(dir.clone());
        let agent = pki.files("agent", &["127.0.0.1"], &pki);
        let (address, seen) = destination(&agent);
        let mut plain = TcpStream::connect(&address).unwrap();
        let mut bytes = Vec::new();
        hello().write_to(&mut bytes).unwrap();
        plain.write_all(&bytes).unwrap();
        let error = seen.join().unwrap().unwrap_err();
        assert!(error.contains("TLS handshake"), "{error}");
        // What came back is a TLS alert, not a message.
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer);
        assert!(Message::read_from(&mut answer.as_slice()).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_destination_not_signed_by_the_ca_or_not_named_is_refused_by_the_source() {
        let dir = tmp("bad-agent");
        let pki = Pki::new(dir.join("good"));
        let rogue = Pki::new(dir.join("rogue"));
        let source = pki.files("source", &["source.example"], &pki);
        for agent in [
            rogue.files("agent", &["127.0.0.1"], &pki),
            pki.files("elsewhere", &["192.0.2.9", "other.example"], &pki),
        ] {
            let (address, seen) = destination(&agent);
            let error = connect(&address, None, source_config(&source).unwrap(), None)
                .expect_err("the source refuses the destination");
            assert!(matches!(error, TlsError::Handshake { .. }), "{error}");
            assert!(seen.join().unwrap().is_err(), "no message reached it");
        }
        // The name to check can be given when the address is not in the certificate.
        let agent = pki.files("named", &["agent.example"], &pki);
        let (address, seen) = destination(&agent);
        let mut link = connect(
            &address,
            Some("agent.example"),
            source_config(&source).unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(exchange(&mut link).unwrap(), Message::Ready);
        assert_eq!(seen.join().unwrap().unwrap(), hello());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A network that flips one bit of the first record the source sends once armed.
    struct Tamper {
        inner: TcpStream,
        armed: bool,
    }

    impl Read for Tamper {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read(buf)
        }
    }

    impl Write for Tamper {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.armed && !buf.is_empty() {
                self.armed = false;
                let mut changed = buf.to_vec();
                changed[buf.len() / 2] ^= 0x10;
                self.inner.write_all(&changed)?;
                return Ok(buf.len());
            }
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }

    #[test]
    fn a_message_changed_on_the_way_is_refused() {
        let dir = tmp("tamper");
        let pki = Pki::new(dir.clone());
        let agent = pki.files("agent", &["127.0.0.1"], &pki);
        let source = pki.files("source", &["source.example"], &pki);
        let (address, seen) = destination(&agent);
        let mut network = Tamper {
            inner: TcpStream::connect(&address).unwrap(),
            armed: false,
        };
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut connection = ClientConnection::new(source_config(&source).unwrap(), name).unwrap();
        while connection.is_handshaking() {
            connection.complete_io(&mut network).unwrap();
        }
        network.armed = true;
        let mut link = rustls::StreamOwned::new(connection, network);
        let _ = hello().write_to(&mut link);
        let error = seen
            .join()
            .unwrap()
            .expect_err("the changed HELLO is not read");
        assert!(
            error.contains("cannot decrypt"),
            "refused by the record layer: {error}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_silent_destination_times_the_source_out() {
        let dir = tmp("silent");
        let pki = Pki::new(dir.clone());
        let source = pki.files("source", &["source.example"], &pki);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let error = connect(
            &address,
            None,
            source_config(&source).unwrap(),
            Some(Duration::from_millis(200)),
        )
        .expect_err("nobody answers");
        match error {
            TlsError::Handshake { source, .. } => assert!(
                matches!(
                    source.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "{source}"
            ),
            other => panic!("{other}"),
        }
        drop(listener);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_files_are_reported_with_their_path() {
        let dir = tmp("files");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("empty.pem"), "").unwrap();
        let files = TlsFiles {
            cert: dir.join("empty.pem"),
            key: dir.join("missing.key"),
            ca: dir.join("empty.pem"),
        };
        let error = source_config(&files).unwrap_err().to_string();
        assert!(error.contains("missing.key"), "{error}");
        let pki = Pki::new(dir.join("pki"));
        let good = pki.files("x", &["x.example"], &pki);
        let error = destination_config(&TlsFiles {
            ca: dir.join("empty.pem"),
            ..good
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("empty.pem"), "{error}");
        assert_eq!(host_of("[::1]:4500"), "::1");
        assert_eq!(host_of("192.0.2.2:4500"), "192.0.2.2");
        assert_eq!(host_of("agent.example:4500"), "agent.example");
        let _ = std::fs::remove_dir_all(dir);
    }
}
