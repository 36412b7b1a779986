//! Certificates for the migration link, made at test time: a CA and the certificates it signs,
//! written as PEM files the way an operator's would be.

use std::path::{Path, PathBuf};

use vfio_variant::migration_driver::tls::TlsFiles;

/// A CA whose key is kept to sign certificates, and its certificate file.
pub struct Ca {
    dir: PathBuf,
    certificate: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    /// A new CA called `name`, its files in `dir/name`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let certificate = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), certificate.pem()).unwrap();
        Self {
            dir,
            certificate,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// The CA certificate file.
    pub fn file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate and key for `who`, naming `names` (DNS names or IP addresses), with
    /// `trust` as the CA file the other side must chain to.
    pub fn issue(&self, who: &str, names: &[&str], trust: &Ca) -> TlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, who);
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let files = TlsFiles {
            cert: self.dir.join(format!("{who}.pem")),
            key: self.dir.join(format!("{who}.key")),
            ca: trust.file(),
        };
        std::fs::write(&files.cert, certificate.pem() + &self.certificate.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }
}
