//! The ECQV scheme (SEC 4 v1.0, "Elliptic Curve Qu-Vanstone Implicit Certificate Scheme")
//! on P-256, as pure functions over scalars, points and certificate bytes.
//!
//! Written here on RustCrypto's `p256` rather than taken from a crate: the one small ECQV
//! crate we evaluated (`ecqv` 0.1) lets a CA issue only from the requester's whole request
//! object, secret included, and builds against a pre-release `elliptic-curve` it no longer
//! compiles with. The scheme itself is four formulas; they are checked below against the
//! published CAMP/SCMS known-answer vectors.
//!
//! Roles (SEC 4 sections 3.4 to 3.6):
//! - requester: picks `k_U`, sends `R_U = k_U·G`;
//! - issuer: picks `k`, computes `P_U = R_U + k·G`, encodes the certificate `Cert_U`
//!   (which contains `P_U`), `e = Hn(Cert_U)`, `r = e·k + d_CA`;
//! - requester: `d_U = e·k_U + r`, checks `d_U·G == e·P_U + Q_CA`;
//! - anyone: `Q_U = e·P_U + Q_CA`.
//!
//! The issuer never sees `k_U`, so it never learns `d_U`.

use p256::elliptic_curve::bigint::U256;
use p256::elliptic_curve::ops::Reduce;
use p256::{AffinePoint, ProjectivePoint, Scalar};
use sha2::{Digest, Sha256};

/// `Hn(Cert_U)` per SEC 4 section 2.3 with SHA-256: the leftmost ⌊log2 n⌋ = 255 bits of the
/// digest, i.e. the digest shifted right by one bit. As 2^255 < n the result is already a
/// scalar; reducing it is a no-op that keeps the conversion total.
pub fn hash_to_scalar(cert: &[u8]) -> Scalar {
    let digest = Sha256::digest(cert);
    let mut shifted = [0u8; 32];
    let mut carry = 0u8;
    for (out, byte) in shifted.iter_mut().zip(digest.iter()) {
        *out = (byte >> 1) | (carry << 7);
        carry = byte & 1;
    }
    <Scalar as Reduce<U256>>::reduce_bytes(&shifted.into())
}

/// Issuer: `P_U = R_U + k·G`.
pub fn reconstruction_point(request_point: &AffinePoint, k: &Scalar) -> AffinePoint {
    (ProjectivePoint::from(*request_point) + ProjectivePoint::GENERATOR * k).to_affine()
}

/// Issuer: `r = e·k + d_CA (mod n)`, with `e = Hn(cert)`.
pub fn private_reconstruction_value(cert: &[u8], k: &Scalar, issuer_secret: &Scalar) -> Scalar {
    hash_to_scalar(cert) * k + issuer_secret
}

/// Requester: `d_U = e·k_U + r (mod n)`. The caller must check `d_U·G` against
/// [`reconstruct_public_key`] before trusting it.
pub fn requester_private_key(cert: &[u8], request_secret: &Scalar, r: &Scalar) -> Scalar {
    hash_to_scalar(cert) * request_secret + r
}

/// Anyone: `Q_U = e·P_U + Q_CA`. Always "succeeds": a forged certificate yields a key that
/// no signature will verify against, which is how ECQV rejects it.
pub fn reconstruct_public_key(
    cert: &[u8],
    reconstruction_point: &AffinePoint,
    issuer_public: &AffinePoint,
) -> AffinePoint {
    (ProjectivePoint::from(*reconstruction_point) * hash_to_scalar(cert)
        + ProjectivePoint::from(*issuer_public))
    .to_affine()
}

/// `d·G`.
pub fn public_from_secret(secret: &Scalar) -> AffinePoint {
    (ProjectivePoint::GENERATOR * secret).to_affine()
}

#[cfg(test)]
mod tests {
    use p256::elliptic_curve::PrimeField;
    use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
    use p256::{EncodedPoint, FieldBytes};
    use proptest::prelude::*;

    use super::*;

    /// A known-answer vector from the CAMP LLC SCMS test set (`implicit.txt` in the
    /// public `conz27/crypto-test-vectors` repository): P-256, SHA-256, with the toy
    /// certificate encoding `Cert_U = tbsCert || compressed(P_U)`, and the issuer's
    /// nonce `k` given so each role can be checked on its own.
    struct Vector {
        tbs_cert: &'static [u8],
        k_u: &'static str,
        r_u: (&'static str, &'static str),
        d_ca: &'static str,
        q_ca: (&'static str, &'static str),
        k: &'static str,
        p_u: (&'static str, &'static str),
        cert_u: &'static str,
        e: &'static str,
        r: &'static str,
        d_u: &'static str,
        q_u: (&'static str, &'static str),
    }

    const VECTORS: [Vector; 2] = [
        Vector {
            tbs_cert: b"This is a test!\x00",
            k_u: "1384C31D6982D52BCA3BED8A7E60F52FECDAB44E5C0EA166815A8159E09FFB42",
            r_u: (
                "F45A99137B1BB2C150D6D8CF7292CA07DA68C003DAA766A9AF7F67F5EE916828",
                "F6A25216F44CB64A96C229AE00B479857B3B81C1319FB2ADF0E8DB2681769729",
            ),
            d_ca: "97D1368E8C07A54F66C9DCE284BA76CAF4178206614F809A4EB43CB3106AA60E",
            q_ca: (
                "3BB8FFD19B25EE1BB939CD4935FBFA8FBAADBA64843338A95595A70ED7479B70",
                "EB60DDC790E3CB05E85225F636D8A7C20DF3A8135C4B2AE5396367B4E86077F8",
            ),
            k: "E2F9CBCEC3F28F7DFBEF044732C41119816C62909FB720B091FB8F380F1B70DC",
            p_u: (
                "4A1890E30A584208DAD3838D0C5CECB1ED6B01D48893C684C59908F5B38E3D82",
                "BAE8FB2EF2DC080F248F44FCEC458B1B35ECDC80F00C959292CBE21BE2FF2EA2",
            ),
            cert_u: "54686973206973206120746573742100024A1890E30A584208DAD3838D0C5CECB1ED6B01D48893C684C59908F5B38E3D82",
            e: "4B3766671CF02DAA0DF2B882AEE31FBEF9BBF3CC238B3F15C7497C193FD61C26",
            r: "1FA86893A1AABE8A79F63360F4B6D5617380B4D84B8C260DD8D3D64163C874FD",
            d_u: "C8599ECA52B58D691B2BB609CDB53DDD9F49C0D635AB652EC79C546914590274",
            q_u: (
                "6E89D7C0F910AAA4AD3137EBE01EF781C0BAB6748318D66FE714471F7F860EB2",
                "1EFE06E2ACC3A2343D2E4445F2083BFA4379672DFBFE0B2575002082407FFDDC",
            ),
        },
        Vector {
            tbs_cert: b"This is a test!\x00",
            k_u: "1384C31D6982D52BCA3BED8A7E60F52FECDAB44E5C0EA166815A8159E09FFB42",
            r_u: (
                "F45A99137B1BB2C150D6D8CF7292CA07DA68C003DAA766A9AF7F67F5EE916828",
                "F6A25216F44CB64A96C229AE00B479857B3B81C1319FB2ADF0E8DB2681769729",
            ),
            d_ca: "97D1368E8C07A54F66C9DCE284BA76CAF4178206614F809A4EB43CB3106AA60E",
            q_ca: (
                "3BB8FFD19B25EE1BB939CD4935FBFA8FBAADBA64843338A95595A70ED7479B70",
                "EB60DDC790E3CB05E85225F636D8A7C20DF3A8135C4B2AE5396367B4E86077F8",
            ),
            k: "3396DA2ECBFC6E5F231E2C80EB27AB84F09DD5E724F8652ADE86E60BC800EAD7",
            p_u: (
                "6694D1F99A18CBE8035E053B2E56C12EECB94E9D5DBA88E07E5B50CBE309103E",
                "74A698788B8F35B3A86E553228D592FCB7C85611637690A85EEACA02EB178887",
            ),
            cert_u: "54686973206973206120746573742100036694D1F99A18CBE8035E053B2E56C12EECB94E9D5DBA88E07E5B50CBE309103E",
            e: "27FE62399BE5978ACDAECD70293B6B4C7480103864AAD3F020B4A4E6438600AC",
            r: "001CF7456A157A90FCEA0634699E7A3644FEBFB86C119E6A9686928B8E3F7EF0",
            d_u: "C9CCC8E83AB985C436A8BC09C0CAA8A5AC627DD7BC9336A5E8AB81B77D3A031D",
            q_u: (
                "8ED40E9601BEEB146A4A0AB96D20EE0FE4CA1E389397F2B1CC67AD9F5B0F579E",
                "73E589E8A9A135306F4AA324F17B66906153BD333961F9BE530F20EB8D3339C7",
            ),
        },
    ];

    fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn scalar(hex: &str) -> Scalar {
        let array: [u8; 32] = bytes(hex).try_into().unwrap();
        Scalar::from_repr(FieldBytes::from(array)).unwrap()
    }

    fn point((x, y): (&str, &str)) -> AffinePoint {
        let x: [u8; 32] = bytes(x).try_into().unwrap();
        let y: [u8; 32] = bytes(y).try_into().unwrap();
        let encoded = EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
        AffinePoint::from_encoded_point(&encoded).unwrap()
    }

    #[test]
    fn matches_the_camp_known_answers_in_every_role() {
        for (i, v) in VECTORS.iter().enumerate() {
            // The requester's point is k_U·G.
            assert_eq!(
                public_from_secret(&scalar(v.k_u)),
                point(v.r_u),
                "vector {i}: R_U"
            );
            assert_eq!(
                public_from_secret(&scalar(v.d_ca)),
                point(v.q_ca),
                "vector {i}: Q_CA"
            );
            // Issuer.
            let p_u = reconstruction_point(&point(v.r_u), &scalar(v.k));
            assert_eq!(p_u, point(v.p_u), "vector {i}: P_U");
            let mut cert = v.tbs_cert.to_vec();
            cert.extend_from_slice(p_u.to_encoded_point(true).as_bytes());
            assert_eq!(cert, bytes(v.cert_u), "vector {i}: Cert_U");
            assert_eq!(hash_to_scalar(&cert), scalar(v.e), "vector {i}: e");
            let r = private_reconstruction_value(&cert, &scalar(v.k), &scalar(v.d_ca));
            assert_eq!(r, scalar(v.r), "vector {i}: r");
            // Requester.
            let d_u = requester_private_key(&cert, &scalar(v.k_u), &scalar(v.r));
            assert_eq!(d_u, scalar(v.d_u), "vector {i}: d_U");
            // Anyone.
            let q_u = reconstruct_public_key(&cert, &point(v.p_u), &point(v.q_ca));
            assert_eq!(q_u, point(v.q_u), "vector {i}: Q_U");
            assert_eq!(public_from_secret(&d_u), q_u, "vector {i}: d_U·G");
        }
    }

    fn nonzero_scalar() -> impl Strategy<Value = Scalar> {
        any::<[u8; 32]>().prop_filter_map("zero or out of range", |b| {
            let s = Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(b)))?;
            (!bool::from(p256::elliptic_curve::Field::is_zero(&s))).then_some(s)
        })
    }

    proptest! {
        #[test]
        fn the_reconstructed_public_key_is_d_times_g(
            k_u in nonzero_scalar(),
            k in nonzero_scalar(),
            d_ca in nonzero_scalar(),
            tbs in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let p_u = reconstruction_point(&public_from_secret(&k_u), &k);
            let mut cert = tbs;
            cert.extend_from_slice(p_u.to_encoded_point(true).as_bytes());
            let r = private_reconstruction_value(&cert, &k, &d_ca);
            let d_u = requester_private_key(&cert, &k_u, &r);
            let q_u = reconstruct_public_key(&cert, &p_u, &public_from_secret(&d_ca));
            prop_assert_eq!(public_from_secret(&d_u), q_u);
        }

        #[test]
        fn changing_any_certificate_byte_changes_the_key(
            k_u in nonzero_scalar(),
            k in nonzero_scalar(),
            d_ca in nonzero_scalar(),
            index in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let p_u = reconstruction_point(&public_from_secret(&k_u), &k);
            let mut cert = b"subject".to_vec();
            cert.extend_from_slice(p_u.to_encoded_point(true).as_bytes());
            let q_ca = public_from_secret(&d_ca);
            let d_u = requester_private_key(&cert, &k_u, &private_reconstruction_value(&cert, &k, &d_ca));
            let at = index.index(cert.len());
            cert[at] ^= flip;
            // The reconstruction point is inside the certificate; a changed byte there may
            // not even decode, and otherwise yields a different point.
            let p_changed = if at >= b"subject".len() {
                EncodedPoint::from_bytes(&cert[b"subject".len()..])
                    .ok()
                    .and_then(|e| Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&e)))
            } else {
                Some(p_u)
            };
            if let Some(p_changed) = p_changed {
                prop_assert_ne!(reconstruct_public_key(&cert, &p_changed, &q_ca), public_from_secret(&d_u));
            }
        }
    }
}
