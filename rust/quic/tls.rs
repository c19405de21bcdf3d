//! TLS 1.3 for the QUIC engine: rustls with the ring provider.
//!
//! - Server: a certificate chain and its private key, both PEM.
//! - Client: the server is trusted either by the SHA-256 of its certificate's DER (what a browser's
//!   `serverCertificateHashes` does: no CA, no name check, the handshake signature still checked with the
//!   certificate's key) or by a CA bundle (PEM, the usual `WebPKI` path with the server name).

use std::fmt;
use std::sync::Arc;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// A TLS setup that cannot be built; the caller's fault (bad PEM, no certificate, bad key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM bundle, in order; an error if there is none or one does not parse.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError("certificate PEM: no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The SHA-256 of a DER certificate (what `serverCertificateHashes` pins).
pub fn cert_sha256(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The server side: TLS 1.3 only, no client certificates, `alpn` offered in order of preference.
///
/// Resumption and 0-RTT: with `session_tickets` > 0 the server keeps that many sessions in memory (rustls'
/// stateful `ServerSessionMemoryCache`: the oldest go first, so memory is bounded), sends one ticket per
/// connection (the ticket is the session's key in the cache) and accepts early data on a resumed connection.
/// Stateful on purpose: rustls takes a session out of the cache when a client presents it, so each ticket
/// resumes once and a replayed first flight finds nothing (RFC 8446 §8.1); rustls refuses 0-RTT with
/// stateless tickets (a ticketer) for that reason. A resumed connection's early data is not proof against
/// replay by itself (the first use of a ticket may be the attacker's): the engine reports it as it comes,
/// and the caller acts on none of it before the handshake completes (the `Handshake` event).
/// `session_tickets` 0: no ticket, no resumption, no 0-RTT.
pub fn server_config(
    chain_pem: &[u8],
    key_pem: &[u8],
    alpn: &[Vec<u8>],
    session_tickets: usize,
) -> Result<QuicServerConfig, TlsError> {
    let chain = certs_from_pem(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError(format!("private key PEM: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(format!("certificate and key: {e}")))?;
    config.alpn_protocols = alpn.to_vec();
    if session_tickets > 0 {
        config.session_storage = ServerSessionMemoryCache::new(session_tickets);
        config.send_tls13_tickets = 1; // as aioquic: one per connection (a resumed one gets a fresh one)
        config.max_early_data_size = u32::MAX; // QUIC allows only 0 or this (RFC 9001 §4.6.1)
    } else {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
    }
    QuicServerConfig::try_from(config).map_err(|e| TlsError(e.to_string()))
}

/// How a client trusts the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The SHA-256 of the server certificate's DER is one of these.
    Hashes(Vec<[u8; 32]>),
    /// `WebPKI` against these CA certificates (PEM), with the server name checked.
    Ca(Vec<u8>),
}

/// Server names a client engine keeps session tickets for (each with at most rustls' 8 newest tickets; a
/// ticket is used once).
const CLIENT_SESSIONS: usize = 256;

/// The client side: TLS 1.3 only, `alpn` offered. It keeps the tickets servers send (in memory, per server
/// name, for [`CLIENT_SESSIONS`] names) and resumes with one; with `early_data`, a resumed connection may send
/// data in 0-RTT, before the handshake completes (what the server's ticket allows).
pub fn client_config(trust: &Trust, alpn: &[Vec<u8>], early_data: bool) -> Result<QuicClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?;
    let mut config = match trust {
        Trust::Hashes(hashes) => {
            if hashes.is_empty() {
                return Err(TlsError("server_cert_hashes is empty".into()));
            }
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(HashVerifier {
                    hashes: hashes.clone(),
                    provider: provider(),
                }))
                .with_no_client_auth()
        }
        Trust::Ca(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs_from_pem(pem)? {
                roots.add(cert).map_err(|e| TlsError(format!("CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.to_vec();
    config.resumption = Resumption::in_memory_sessions(CLIENT_SESSIONS);
    config.enable_early_data = early_data;
    QuicClientConfig::try_from(config).map_err(|e| TlsError(e.to_string()))
}

/// Trusts a server certificate whose SHA-256 is pinned; the handshake signature is still verified with
/// the certificate's public key (ring's algorithms), so only the key's holder can pass.
#[derive(Debug)]
struct HashVerifier {
    hashes: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for HashVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let hash = cert_sha256(end_entity.as_ref());
        if self.hashes.contains(&hash) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
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
