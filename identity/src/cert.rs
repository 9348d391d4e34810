//! Parley's implicit certificate: the bytes an ECQV issuer hashes, binding a SPIFFE ID,
//! a validity period and the public-key reconstruction point `P_U`.
//!
//! Encoding (all integers big-endian), about 130 bytes for typical IDs:
//!
//! ```text
//! "PRLY" | version u8 (=1) | kind u8 | serial [16] | not_before u64 | not_after u64
//!        | issuer_len u16 | issuer | subject_len u16 | subject | P_U compressed [33]
//! ```
//!
//! Every variable-length field is length-prefixed, so no two certificates share an
//! encoding; decoding is strict (exact lengths, valid IDs, a point on the curve, nothing
//! trailing) and bounded before anything is allocated.

use p256::AffinePoint;
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};

use crate::spiffe::{MAX_SPIFFE_ID_LEN, SpiffeId};

const MAGIC: &[u8; 4] = b"PRLY";
const VERSION: u8 = 1;
const POINT_LEN: usize = 33;
const FIXED_LEN: usize = 4 + 1 + 1 + 16 + 8 + 8 + 2 + 2 + POINT_LEN;

/// Largest encoded certificate: the fixed fields plus two maximal SPIFFE IDs.
pub const MAX_CERT_LEN: usize = FIXED_LEN + 2 * MAX_SPIFFE_ID_LEN;

/// What a certificate's holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// An agent host, issued by its trust domain's root.
    Node,
    /// A workload, issued by the node that runs it.
    Workload,
}

impl CertKind {
    fn code(self) -> u8 {
        match self {
            Self::Node => 1,
            Self::Workload => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Node),
            2 => Some(Self::Workload),
            _ => None,
        }
    }
}

/// Why bytes are not a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed implicit certificate: {0}")]
pub struct MalformedCert(pub &'static str);

/// A decoded implicit certificate. Holding one proves nothing: its public key must be
/// reconstructed with the issuer's key and then used (a signature, a TLS handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImplicitCert {
    /// Who holds it.
    pub kind: CertKind,
    /// Unique per issuer.
    pub serial: [u8; 16],
    /// Start of validity (seconds since the Unix epoch).
    pub not_before: u64,
    /// End of validity (seconds since the Unix epoch).
    pub not_after: u64,
    /// The issuer's SPIFFE ID (a trust domain for node certificates).
    pub issuer: SpiffeId,
    /// The holder's SPIFFE ID.
    pub subject: SpiffeId,
    /// `P_U`, from which the holder's public key is reconstructed.
    pub reconstruction_point: AffinePoint,
    encoded: Vec<u8>,
}

impl ImplicitCert {
    /// Builds and encodes a certificate.
    pub fn new(
        kind: CertKind,
        serial: [u8; 16],
        not_before: u64,
        not_after: u64,
        issuer: SpiffeId,
        subject: SpiffeId,
        reconstruction_point: AffinePoint,
    ) -> Self {
        let mut encoded =
            Vec::with_capacity(FIXED_LEN + issuer.as_str().len() + subject.as_str().len());
        encoded.extend_from_slice(MAGIC);
        encoded.push(VERSION);
        encoded.push(kind.code());
        encoded.extend_from_slice(&serial);
        encoded.extend_from_slice(&not_before.to_be_bytes());
        encoded.extend_from_slice(&not_after.to_be_bytes());
        for id in [&issuer, &subject] {
            // SPIFFE IDs are at most 2048 bytes, so the length fits in a u16.
            encoded.extend_from_slice(&(id.as_str().len() as u16).to_be_bytes());
            encoded.extend_from_slice(id.as_str().as_bytes());
        }
        encoded.extend_from_slice(reconstruction_point.to_encoded_point(true).as_bytes());
        Self {
            kind,
            serial,
            not_before,
            not_after,
            issuer,
            subject,
            reconstruction_point,
            encoded,
        }
    }

    /// The canonical bytes: what travels, and what `e = Hn(Cert_U)` is computed over.
    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }

    /// Decodes a certificate, refusing anything but the canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, MalformedCert> {
        if bytes.len() > MAX_CERT_LEN {
            return Err(MalformedCert("longer than any certificate can be"));
        }
        let mut reader = Reader(bytes);
        if reader.take(4)? != MAGIC {
            return Err(MalformedCert("not a Parley certificate"));
        }
        if reader.u8()? != VERSION {
            return Err(MalformedCert("unsupported version"));
        }
        let kind = CertKind::from_code(reader.u8()?).ok_or(MalformedCert("unknown kind"))?;
        let serial: [u8; 16] = reader
            .take(16)?
            .try_into()
            .map_err(|_| MalformedCert("short serial"))?;
        let not_before = reader.u64()?;
        let not_after = reader.u64()?;
        if not_after < not_before {
            return Err(MalformedCert("validity ends before it starts"));
        }
        let issuer = reader.spiffe_id()?;
        let subject = reader.spiffe_id()?;
        let point = p256::EncodedPoint::from_bytes(reader.take(POINT_LEN)?)
            .map_err(|_| MalformedCert("bad reconstruction point"))?;
        if !point.is_compressed() {
            return Err(MalformedCert("reconstruction point not compressed"));
        }
        let reconstruction_point =
            Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&point))
                .ok_or(MalformedCert("reconstruction point not on the curve"))?;
        if !reader.0.is_empty() {
            return Err(MalformedCert("trailing bytes"));
        }
        let cert = Self::new(
            kind,
            serial,
            not_before,
            not_after,
            issuer,
            subject,
            reconstruction_point,
        );
        // Re-encoding must give back the input: no second encoding of one certificate.
        if cert.encoded != bytes {
            return Err(MalformedCert("not in canonical form"));
        }
        Ok(cert)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MalformedCert> {
        if self.0.len() < n {
            return Err(MalformedCert("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, MalformedCert> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, MalformedCert> {
        let bytes: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| MalformedCert("truncated"))?;
        Ok(u64::from_be_bytes(bytes))
    }

    fn spiffe_id(&mut self) -> Result<SpiffeId, MalformedCert> {
        let len_bytes: [u8; 2] = self
            .take(2)?
            .try_into()
            .map_err(|_| MalformedCert("truncated"))?;
        let len = usize::from(u16::from_be_bytes(len_bytes));
        if len > MAX_SPIFFE_ID_LEN {
            return Err(MalformedCert("SPIFFE ID too long"));
        }
        let text = std::str::from_utf8(self.take(len)?)
            .map_err(|_| MalformedCert("SPIFFE ID not UTF-8"))?;
        SpiffeId::parse(text).map_err(|_| MalformedCert("invalid SPIFFE ID"))
    }
}

/// Lower-case hex, for certificates and points in text files and messages.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex written by [`to_hex`] (either case), refusing odd lengths and non-hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecqv::public_from_secret;

    fn sample() -> ImplicitCert {
        ImplicitCert::new(
            CertKind::Node,
            [7; 16],
            1_000,
            2_000,
            SpiffeId::parse("spiffe://example.org").unwrap(),
            SpiffeId::parse("spiffe://example.org/node/edge-1").unwrap(),
            public_from_secret(&p256::Scalar::from(42u64)),
        )
    }

    #[test]
    fn round_trips_and_stays_small() {
        let cert = sample();
        assert!(
            cert.as_bytes().len() < 160,
            "{} bytes",
            cert.as_bytes().len()
        );
        assert_eq!(ImplicitCert::decode(cert.as_bytes()).unwrap(), cert);
    }

    #[test]
    fn refuses_every_truncation_and_trailing_bytes() {
        let bytes = sample().as_bytes().to_vec();
        for len in 0..bytes.len() {
            assert!(
                ImplicitCert::decode(&bytes[..len]).is_err(),
                "accepted {len} bytes"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            ImplicitCert::decode(&long),
            Err(MalformedCert("trailing bytes"))
        );
    }

    #[test]
    fn refuses_bad_fields() {
        let good = sample().as_bytes().to_vec();
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(ImplicitCert::decode(&bad_magic).is_err());
        let mut bad_kind = good.clone();
        bad_kind[5] = 9;
        assert_eq!(
            ImplicitCert::decode(&bad_kind),
            Err(MalformedCert("unknown kind"))
        );
        let mut backwards = good.clone();
        backwards[22..30].copy_from_slice(&5_000u64.to_be_bytes());
        assert!(ImplicitCert::decode(&backwards).is_err());
        assert!(ImplicitCert::decode(&vec![0u8; MAX_CERT_LEN + 1]).is_err());
    }

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        assert_eq!(
            from_hex(&to_hex(&[0, 1, 0xab, 0xff])).unwrap(),
            [0, 1, 0xab, 0xff]
        );
        assert_eq!(from_hex("ABcd").unwrap(), [0xab, 0xcd]);
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
        assert!(from_hex("é1").is_none());
    }
}
