//! SPIFFE IDs, validated per the SPIFFE ID specification (SPIFFE-ID.md, section 2).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest SPIFFE ID accepted, in bytes (the specification's limit for URIs).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Longest trust domain accepted, in bytes (a DNS name's limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// Why a string is not a SPIFFE ID. Every rule of the specification has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The string is empty.
    #[error("a SPIFFE ID cannot be empty")]
    Empty,
    /// The string is longer than 2048 bytes.
    #[error("a SPIFFE ID is at most {MAX_SPIFFE_ID_LEN} bytes; this one has {0}")]
    TooLong(usize),
    /// The scheme is not `spiffe://` (it is case-sensitive).
    #[error("a SPIFFE ID starts with `spiffe://`")]
    WrongScheme,
    /// Nothing between the scheme and the path.
    #[error("the trust domain is missing")]
    EmptyTrustDomain,
    /// The trust domain is longer than 255 bytes.
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// A trust domain character outside `[a-z0-9.-_]` (this also catches ports,
    /// user info and upper case).
    #[error(
        "the trust domain may only hold lowercase letters, digits, '.', '-' and '_'; found {0:?}"
    )]
    BadTrustDomainChar(char),
    /// A path character outside `[a-zA-Z0-9.-_]`.
    #[error("path segments may only hold letters, digits, '.', '-' and '_'; found {0:?}")]
    BadPathChar(char),
    /// `//` in the path, or a trailing `/`.
    #[error("the path has an empty segment (a doubled or trailing '/')")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("path segments cannot be '.' or '..'")]
    DotSegment,
    /// A query (`?…`).
    #[error("a SPIFFE ID cannot have a query ('?')")]
    Query,
    /// A fragment (`#…`).
    #[error("a SPIFFE ID cannot have a fragment ('#')")]
    Fragment,
}

/// A validated SPIFFE ID such as `spiffe://example.org/ns/prod/wl/web`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (== `id.len()` when there is no path).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates `id`.
    pub fn parse(id: &str) -> Result<Self, SpiffeIdError> {
        if id.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong(id.len()));
        }
        let rest = id.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let (domain, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        validate_trust_domain(domain)?;
        if !path.is_empty() {
            // `path` starts with '/': every segment follows one.
            for segment in path[1..].split('/') {
                validate_segment(segment)?;
            }
        }
        Ok(Self {
            id: id.to_owned(),
            path_start: SCHEME.len() + domain.len(),
        })
    }

    /// The SPIFFE ID of a trust domain itself (no path), e.g. `spiffe://example.org`.
    pub fn for_trust_domain(trust_domain: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("{SCHEME}{trust_domain}"))
    }

    /// A SPIFFE ID in `trust_domain` with the given path segments. A segment holding a
    /// `/` is refused: it would make two, and `node/a/b` is not the node `a/b`.
    pub fn from_segments(trust_domain: &str, segments: &[&str]) -> Result<Self, SpiffeIdError> {
        let mut id = format!("{SCHEME}{trust_domain}");
        for segment in segments {
            if segment.contains('/') {
                return Err(SpiffeIdError::BadPathChar('/'));
            }
            id.push('/');
            id.push_str(segment);
        }
        Self::parse(&id)
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The path, e.g. `/ns/prod/wl/web`; empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The path segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path().split('/').skip(1)
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

fn validate_trust_domain(domain: &str) -> Result<(), SpiffeIdError> {
    if domain.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    match domain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        Some(bad) => Err(SpiffeIdError::BadTrustDomainChar(bad)),
        None => Ok(()),
    }
}

fn validate_segment(segment: &str) -> Result<(), SpiffeIdError> {
    if segment.is_empty() {
        return Err(SpiffeIdError::EmptySegment);
    }
    if segment == "." || segment == ".." {
        return Err(SpiffeIdError::DotSegment);
    }
    match segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(bad) => Err(SpiffeIdError::BadPathChar(bad)),
        None => Ok(()),
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids_and_splits_them() {
        let id = SpiffeId::parse("spiffe://example.org/ns/prod/wl/web").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/prod/wl/web");
        assert_eq!(
            id.segments().collect::<Vec<_>>(),
            ["ns", "prod", "wl", "web"]
        );

        let domain = SpiffeId::parse("spiffe://a-b_c.9").unwrap();
        assert_eq!(domain.trust_domain(), "a-b_c.9");
        assert_eq!(domain.path(), "");
        assert_eq!(domain.segments().count(), 0);

        for ok in [
            "spiffe://td/Path.With-Upper_And.Dots",
            "spiffe://td/a/b/c/d/e",
            "spiffe://td/...",
            "spiffe://td/.hidden",
        ] {
            assert!(SpiffeId::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            SpiffeId::from_segments("example.org", &["node", "a/b"]),
            Err(SpiffeIdError::BadPathChar('/'))
        );
        assert_eq!(
            SpiffeId::from_segments("example.org", &["node", "edge-1"])
                .unwrap()
                .as_str(),
            "spiffe://example.org/node/edge-1"
        );
    }

    #[test]
    fn every_rule_rejects_with_its_own_error() {
        use SpiffeIdError as E;
        let cases: &[(&str, E)] = &[
            ("", E::Empty),
            ("https://example.org/web", E::WrongScheme),
            ("SPIFFE://example.org/web", E::WrongScheme),
            ("spiffe:/example.org", E::WrongScheme),
            ("spiffe://", E::EmptyTrustDomain),
            ("spiffe:///web", E::EmptyTrustDomain),
            ("spiffe://Example.org", E::BadTrustDomainChar('E')),
            ("spiffe://example.org:8080/web", E::BadTrustDomainChar(':')),
            ("spiffe://user@example.org", E::BadTrustDomainChar('@')),
            ("spiffe://exa mple.org", E::BadTrustDomainChar(' ')),
            ("spiffe://example.org/", E::EmptySegment),
            ("spiffe://example.org//web", E::EmptySegment),
            ("spiffe://example.org/web/", E::EmptySegment),
            ("spiffe://example.org/./web", E::DotSegment),
            ("spiffe://example.org/web/..", E::DotSegment),
            ("spiffe://example.org/we%20b", E::BadPathChar('%')),
            ("spiffe://example.org/wéb", E::BadPathChar('é')),
            ("spiffe://example.org/web?x=1", E::Query),
            ("spiffe://example.org/web#frag", E::Fragment),
        ];
        for (input, expected) in cases {
            assert_eq!(SpiffeId::parse(input).as_ref(), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn enforces_the_length_limits() {
        let long_domain = format!("spiffe://{}", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        assert_eq!(
            SpiffeId::parse(&long_domain),
            Err(SpiffeIdError::TrustDomainTooLong)
        );
        let at_limit = format!(
            "spiffe://td/{}",
            "a".repeat(MAX_SPIFFE_ID_LEN - "spiffe://td/".len())
        );
        assert_eq!(at_limit.len(), MAX_SPIFFE_ID_LEN);
        assert!(SpiffeId::parse(&at_limit).is_ok());
        let over = format!("{at_limit}a");
        assert_eq!(
            SpiffeId::parse(&over),
            Err(SpiffeIdError::TooLong(MAX_SPIFFE_ID_LEN + 1))
        );
    }

    #[test]
    fn round_trips_through_serde_and_validates_on_the_way_in() {
        let id = SpiffeId::parse("spiffe://example.org/node/a").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://example.org/node/a\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://example.org/../x\"").is_err());
    }
}
