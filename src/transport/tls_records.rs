//! TLS record protection for upgraded wss sessions: rustls's handshake and key schedule, then only
//! its record protection objects.
//!
//! After the upgrade a session needs a TLS connection for exactly three things: open and seal
//! application data records, answer a KeyUpdate, and exchange alerts (close_notify both ways, fatal
//! ones on errors). rustls's full `UnbufferedServerConnection` keeps about 3.6 KiB per session for
//! that (the connection itself, 1,088 B in a 1,280 B block, its handshake-era state and buffers,
//! and the two AEAD keys). So when the upgrade is done the connection is converted with
//! `dangerous_into_kernel_connection()` (the API rustls provides for kTLS) into:
//! - a [`KernelConnection`], rustls's key schedule, which computes the next traffic secrets on a
//!   KeyUpdate;
//! - one `MessageEncrypter` and one `MessageDecrypter`, built by the negotiated suite's own AEAD
//!   algorithm from the extracted secrets: rustls's code (the ring provider) does every nonce, AAD,
//!   padding and content-type detail of TLS 1.3 and 1.2; this module only frames records (the
//!   5-byte header) and counts sequence numbers;
//! - a few words of state. About 2.1 KiB in all (`Records` in a 640 B block, the two AEAD keys in
//!   640 B blocks, the key schedule's 224 B).
//!
//! What rustls's record layer would otherwise do, and where it is done here:
//! - a record is decrypted in place in the per-core scratch buffer and its payload goes straight to
//!   the frame parser (no per-record copy);
//! - TLS 1.3 KeyUpdate: the read key is replaced; if the peer asked for an update, ours is sent
//!   under the old key and then the write key is replaced. Other post-handshake handshake
//!   messages are refused (unexpected_message); on TLS 1.2 a renegotiation attempt gets a
//!   no_renegotiation warning, as rustls answers it;
//! - alerts: close_notify ends the session like EOF; user_canceled and other TLS 1.2 warnings are
//!   ignored; anything else ends it. On a bad record we send a fatal alert (bad_record_mac,
//!   record_overflow, unexpected_message, decode_error) before closing;
//! - the suite's confidentiality limit: on TLS 1.3 our write key is updated before it is reached,
//!   on TLS 1.2 the connection is closed, like rustls does.

use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite,
};

/// Largest plaintext of one record.
const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest ciphertext of one record (TLS 1.2 allows 2,048 bytes of expansion, 1.3 allows 256).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 2048;
/// TLS 1.3 handshake message type of KeyUpdate.
const KEY_UPDATE: u8 = 24;

/// Why opening records stopped.
pub(super) enum Fail<E> {
    /// The peer broke the protocol: send this alert, then close.
    Tls(AlertDescription, rustls::Error),
    /// The application (frame parser) ended the session.
    App(E),
}

/// The per-session TLS state after the upgrade (see the module docs). Boxed by its owner.
pub(super) struct Records {
    kernel: KernelConnection<ServerConnectionData>,
    enc: Box<dyn MessageEncrypter>,
    dec: Box<dyn MessageDecrypter>,
    tx_seq: u64,
    rx_seq: u64,
    /// The peer sent close_notify.
    pub(super) peer_closed: bool,
    /// We sent close_notify (nothing may be sealed after it).
    pub(super) closed: bool,
}

impl Records {
    /// Take over a connection whose handshake is complete and that has nothing left to send.
    pub(super) fn new(conn: UnbufferedServerConnection) -> Result<Self, rustls::Error> {
        let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
        let suite = kernel.negotiated_cipher_suite();
        Ok(Self {
            enc: encrypter(suite, secrets.tx.1)?,
            dec: decrypter(suite, secrets.rx.1)?,
            tx_seq: secrets.tx.0,
            rx_seq: secrets.rx.0,
            kernel,
            peer_closed: false,
            closed: false,
        })
    }

    #[cfg(test)]
    pub(super) fn tx_seq(&self) -> u64 {
        self.tx_seq
    }

    fn suite(&self) -> SupportedCipherSuite {
        self.kernel.negotiated_cipher_suite()
    }

    fn tls13(&self) -> bool {
        matches!(self.suite(), SupportedCipherSuite::Tls13(_))
    }

    /// Open the whole records at the start of `buf`: application data goes to `app` (in place, as
    /// a mutable slice of `buf`), anything to answer is sealed into `out`. Returns the bytes
    /// consumed; an incomplete record at the end is left to the caller.
    pub(super) fn open<E>(
        &mut self,
        buf: &mut [u8],
        out: &mut Vec<u8>,
        app: &mut impl FnMut(&mut [u8]) -> Result<(), E>,
    ) -> (usize, Result<(), Fail<E>>) {
        let mut used = 0;
        while !self.peer_closed {
            let rest = &mut buf[used..];
            if rest.len() < 5 {
                break;
            }
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            if len > MAX_CIPHERTEXT {
                let e = rustls::Error::General("TLS record too large".into());
                return (used, Err(Fail::Tls(AlertDescription::RecordOverflow, e)));
            }
            if rest.len() < 5 + len {
                break;
            }
            let typ = ContentType::from(rest[0]);
            if self.tls13() && typ != ContentType::ApplicationData {
                let e = rustls::Error::General(format!("unexpected {typ:?} record"));
                return (used, Err(Fail::Tls(AlertDescription::UnexpectedMessage, e)));
            }
            let version = ProtocolVersion::from(u16::from_be_bytes([rest[1], rest[2]]));
            let body = &mut rest[5..5 + len];
            let base = body.as_ptr() as usize;
            let opaque = InboundOpaqueMessage::new(typ, version, body);
            let (typ, range) = match self.dec.decrypt(opaque, self.rx_seq) {
                Ok(plain) => {
                    let start = plain.payload.as_ptr() as usize - base;
                    (plain.typ, 5 + start..5 + start + plain.payload.len())
                }
                Err(e) => return (used, Err(Fail::Tls(AlertDescription::BadRecordMac, e))),
            };
            self.rx_seq += 1;
            used += 5 + len;
            let payload = &mut rest[range];
            let r = match typ {
                ContentType::ApplicationData => app(payload).map_err(Fail::App),
                ContentType::Alert => self.on_alert(payload),
                ContentType::Handshake => self.on_handshake(payload, out),
                other => Err(Fail::Tls(
                    AlertDescription::UnexpectedMessage,
                    rustls::Error::General(format!("unexpected {other:?} record")),
                )),
            };
            if let Err(e) = r {
                return (used, Err(e));
            }
        }
        (used, Ok(()))
    }

    fn on_alert<E>(&mut self, payload: &[u8]) -> Result<(), Fail<E>> {
        let &[level, desc] = payload else {
            let e = rustls::Error::General("malformed alert".into());
            return Err(Fail::Tls(AlertDescription::DecodeError, e));
        };
        let desc = AlertDescription::from(desc);
        match desc {
            AlertDescription::CloseNotify => self.peer_closed = true,
            AlertDescription::UserCanceled => {}
            // TLS 1.2 warnings other than close_notify do not end the connection.
            _ if level == 1 && !self.tls13() => {}
            _ => {
                // A fatal alert from the peer: close without answering it.
                self.peer_closed = true;
                return Err(Fail::Tls(
                    AlertDescription::CloseNotify,
                    rustls::Error::AlertReceived(desc),
                ));
            }
        }
        Ok(())
    }

    fn on_handshake<E>(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), Fail<E>> {
        let internal = |e| Fail::Tls(AlertDescription::InternalError, e);
        if !self.tls13() {
            // Renegotiation is not supported: say so and carry on (what rustls does).
            let warn = [1, u8::from(AlertDescription::NoRenegotiation)];
            return self.seal(ContentType::Alert, &warn, out).map_err(internal);
        }
        let fail = |desc, what: &str| Fail::Tls(desc, rustls::Error::General(what.into()));
        // The only handshake message a client may send now is a KeyUpdate, which has a one-byte
        // body and must end its record (the key changes after it).
        match payload {
            [KEY_UPDATE, 0, 0, 1, request @ (0 | 1)] => {
                self.update_rx().map_err(internal)?;
                if *request == 1 && !self.closed {
                    self.update_tx(out).map_err(internal)?;
                }
                Ok(())
            }
            [KEY_UPDATE, ..] => Err(fail(AlertDescription::DecodeError, "malformed KeyUpdate")),
            _ => Err(fail(
                AlertDescription::UnexpectedMessage,
                "unexpected post-handshake message",
            )),
        }
    }

    fn update_rx(&mut self) -> Result<(), rustls::Error> {
        let (seq, secrets) = self.kernel.update_rx_secret()?;
        self.dec = decrypter(self.suite(), secrets)?;
        self.rx_seq = seq;
        Ok(())
    }

    /// Send a KeyUpdate (update_not_requested) under the current key, then switch to the next.
    fn update_tx(&mut self, out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        self.seal_one(ContentType::Handshake, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
        let (seq, secrets) = self.kernel.update_tx_secret()?;
        self.enc = encrypter(self.suite(), secrets)?;
        self.tx_seq = seq;
        Ok(())
    }

    /// Seal `plain` as records of `typ` (at most 16 KiB each), appended to `out`.
    pub(super) fn seal(
        &mut self,
        typ: ContentType,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        if self.closed {
            return Err(rustls::Error::General("TLS connection closed".into()));
        }
        for chunk in plain.chunks(MAX_PLAINTEXT) {
            self.seal_one(typ, chunk, out)?;
        }
        Ok(())
    }

    fn seal_one(
        &mut self,
        typ: ContentType,
        chunk: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        if self.tx_seq >= confidentiality_limit(self.suite()) {
            if !self.tls13() || typ == ContentType::Handshake {
                return Err(rustls::Error::EncryptError);
            }
            self.update_tx(out)?;
        }
        let msg = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(chunk),
        };
        let sealed = self.enc.encrypt(msg, self.tx_seq)?;
        self.tx_seq += 1;
        out.extend_from_slice(&sealed.encode());
        Ok(())
    }

    /// Seal a close_notify; nothing can be sealed after it.
    pub(super) fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        let r = self.seal(ContentType::Alert, &[1, 0], out);
        self.closed = true;
        r
    }

    /// Seal a fatal alert (after an error; nothing can be sealed after it).
    pub(super) fn fatal(&mut self, desc: AlertDescription, out: &mut Vec<u8>) {
        if desc != AlertDescription::CloseNotify && !self.closed {
            let _ = self.seal(ContentType::Alert, &[2, u8::from(desc)], out);
        }
        self.closed = true;
    }
}

fn confidentiality_limit(suite: SupportedCipherSuite) -> u64 {
    match suite {
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    }
}

fn key_iv(
    secrets: ConnectionTrafficSecrets,
) -> Result<
    (
        rustls::crypto::cipher::AeadKey,
        rustls::crypto::cipher::Iv,
        bool,
    ),
    rustls::Error,
> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv } => Ok((key, iv, true)),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv, false)),
        _ => Err(rustls::Error::General(
            "unsupported cipher suite for wss sessions".into(),
        )),
    }
}

fn encrypter(
    suite: SupportedCipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageEncrypter>, rustls::Error> {
    let (key, iv, gcm) = key_iv(secrets)?;
    Ok(match suite {
        SupportedCipherSuite::Tls13(s) => s.aead_alg.encrypter(key, iv),
        // TLS 1.2 GCM: a 4-byte salt, then the first explicit nonce; ChaCha20: the whole IV.
        SupportedCipherSuite::Tls12(s) if gcm => {
            s.aead_alg
                .encrypter(key, &iv.as_ref()[..4], &iv.as_ref()[4..])
        }
        SupportedCipherSuite::Tls12(s) => s.aead_alg.encrypter(key, iv.as_ref(), &[]),
    })
}

fn decrypter(
    suite: SupportedCipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageDecrypter>, rustls::Error> {
    let (key, iv, gcm) = key_iv(secrets)?;
    Ok(match suite {
        SupportedCipherSuite::Tls13(s) => s.aead_alg.decrypter(key, iv),
        SupportedCipherSuite::Tls12(s) if gcm => s.aead_alg.decrypter(key, &iv.as_ref()[..4]),
        SupportedCipherSuite::Tls12(s) => s.aead_alg.decrypter(key, iv.as_ref()),
    })
}
