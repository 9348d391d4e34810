//! `parley identity`: create a trust domain, enroll a node with files only (offline root),
//! and show what a node holds.
//!
//! Offline enrollment, in three steps:
//!
//! ```text
//! new node:   parley identity request --id spiffe://example.org/node/edge-1 > request.json
//! root host:  parley identity issue request.json > response.json
//! new node:   parley identity accept response.json
//! ```
//!
//! The new node's private key never leaves it: the request carries only a public point.

use std::path::PathBuf;
use std::process::ExitCode;

use parley_identity::credential::{Validity, encode_public_key};
use parley_identity::files::{IdentityDir, IssueResponse, read_json_file};
use parley_identity::{CertRequest, SpiffeId};

use super::{Output, table};
use crate::config::Environment;

/// Arguments of `parley identity`.
#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    /// The identity directory [default: $XDG_DATA_HOME/parley/identity]
    #[arg(long, global = true, env = "PARLEY_IDENTITY_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Clock skew tolerated when checking validity periods, in seconds
    #[arg(long, global = true, value_name = "SECS", default_value_t = parley_identity::credential::DEFAULT_CLOCK_SKEW_SECS)]
    pub clock_skew: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: IdentityCommand,
}

/// The `parley identity` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Create a trust domain's root issuing key here (keep this directory safe, or offline)
    Init {
        /// The trust domain, e.g. example.org
        #[arg(long, value_name = "TD")]
        trust_domain: String,
    },
    /// Start enrolling this node: print a certificate request (the private key stays here)
    Request {
        /// The SPIFFE ID to ask for, e.g. spiffe://example.org/node/edge-1
        #[arg(long, value_name = "SPIFFE_ID")]
        id: String,
    },
    /// Answer a request with the root key kept here; prints the response for `accept`
    Issue {
        /// The request file written by `parley identity request`
        request: PathBuf,
        /// How long the certificate is valid: 90s, 30m, 12h, 7d (at most 30d: identities
        /// renew themselves from the issuing agent long before)
        #[arg(long, default_value = "24h", value_parser = parse_node_ttl)]
        ttl: u64,
    },
    /// Finish enrolling this node with the issuer's response
    Accept {
        /// The response file written by `parley identity issue`
        response: PathBuf,
    },
    /// Show this node's identity and the trust domains it trusts
    Show,
    /// Print a one-time join token for `parley join` (asks the local agent, which must
    /// hold the trust domain's root key). A token enrolls the one node name it is made
    /// for, and a name is enrolled once: two holders of one name would split the mesh
    Token {
        /// The node it enrolls: spiffe://TRUST_DOMAIN/node/NODE (the new host's node_name)
        #[arg(long, value_name = "NODE")]
        node: String,
        /// How long the token may be used: 90s, 30m, 12h, 7d (at most 7d)
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
        /// Re-enroll a name enrolled already (a rebuilt host, a lost key): once the new
        /// key is enrolled the old one is revoked, refused by every member
        #[arg(long)]
        replace: bool,
    },
    /// Revoke a node's key now (asks the local agent, which must hold the root key): the
    /// root signs a revocation, every member refuses the key at its next handshake and
    /// closes its connections, and the issuer refuses its renewals. The name may be
    /// enrolled again with a new token
    Revoke {
        /// The node: spiffe://TRUST_DOMAIN/node/NODE
        #[arg(value_name = "NODE")]
        node: String,
    },
    /// Check a workload identity (an `svid.json`, as mounted into a container at
    /// /run/parley/identity) against this node's trust bundle: its chain from the root
    /// through the node that issued it, and the owner's grant that shows that node was
    /// awarded the workload. A node key alone makes no identity that passes
    VerifySvid {
        /// The `svid.json` file
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Also require that this policy lets the owner place (`submit`) and the node host
        /// (`bid`) workloads of the identity's namespace
        #[arg(long, value_name = "POLICY_FILE")]
        policy: Option<PathBuf>,
    },
}

/// Runs `parley identity verify-svid`.
fn verify_svid(
    dir: &IdentityDir,
    file: &std::path::Path,
    policy: Option<&std::path::Path>,
    output: Output,
) -> Result<(), Box<dyn std::error::Error>> {
    use parley_negotiation::negotiator::Action;

    use crate::enroll::grant::{GrantError, verify_svid};
    use crate::enroll::workload::SvidFile;

    let bundle = dir.load_bundle()?;
    let svid: SvidFile = read_json_file(file, "workload identity")?;
    let verified = verify_svid(&svid, &bundle, now())?;
    if let Some(path) = policy {
        let policy = crate::policy::Policy::load(path)?;
        let namespace = verified
            .spiffe_id
            .split("/ns/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default()
            .to_owned();
        for (who, action) in [
            (&verified.owner, Action::Submit),
            (&verified.node, Action::Bid),
        ] {
            policy
                .check(who, action, &namespace)
                .map_err(|denied| GrantError::Policy(denied.to_string()))?;
        }
    }
    match output {
        Output::Json => print_json(&serde_json::to_value(&verified)?),
        Output::Table => println!(
            "{} verifies: issued by {} for replica {}{}, awarded by {}, valid until {} UTC",
            verified.spiffe_id,
            verified.node,
            verified.replica,
            verified
                .epoch
                .map(|epoch| format!(" at lease epoch {epoch}"))
                .unwrap_or_default(),
            verified.owner,
            super::events::format_millis(verified.not_after.saturating_mul(1000))
        ),
    }
    Ok(())
}

/// Runs `parley identity revoke` against the local agent.
pub async fn revoke(
    node: String,
    client: crate::api::client::ApiClient,
    output: Output,
) -> Result<(), super::CliError> {
    let issued: crate::api::types::RevocationIssued = client
        .post(
            "/v1/revocations",
            &crate::api::types::RevocationRequest { node },
        )
        .await?;
    match output {
        Output::Json => super::print_json(&issued)?,
        Output::Table => println!(
            "revoked the key {} of {}; every member refuses it from its next handshake",
            issued.public_key, issued.subject
        ),
    }
    Ok(())
}

/// Runs `parley identity token` against the local agent.
pub async fn token(
    request: crate::api::types::JoinTokenRequest,
    client: crate::api::client::ApiClient,
    output: Output,
) -> Result<(), super::CliError> {
    let issued: crate::api::types::JoinTokenIssued =
        client.post("/v1/join-tokens", &request).await?;
    match output {
        Output::Json => super::print_json(&issued)?,
        Output::Table => {
            // The token alone on stdout, for `T=$(parley identity token)`.
            println!("{}", issued.token);
            eprintln!(
                "one-time token enrolling spiffe://{}/node/{}, valid until {}; on the new host:\n  \
                 parley join {} --token TOKEN --listen IP:PORT",
                issued.trust_domain,
                issued.node,
                super::events::format_millis(issued.expires_at.saturating_mul(1000)),
                issued.address
            );
        }
    }
    Ok(())
}

/// A node certificate's lifetime: as [`parse_ttl`], at most what renewal grants
/// ([`crate::enroll::join::NODE_CERT_TTL_SECS`]), so that a stolen key lapses.
fn parse_node_ttl(text: &str) -> Result<u64, String> {
    let secs = parse_ttl(text)?;
    let max = crate::enroll::join::NODE_CERT_TTL_SECS;
    if secs > max {
        return Err(format!(
            "{text:?} is longer than the {} days a node certificate may live; issue for \
             less, and let the agent renew it",
            max / 86_400
        ));
    }
    Ok(secs)
}

/// Parses `90s`, `30m`, `12h`, `7d` (or plain seconds) into seconds.
pub(crate) fn parse_ttl(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 12h or 7d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}; use s, m, h or d"
            ));
        }
    };
    match value.checked_mul(scale) {
        Some(0) | None => Err(format!(
            "{text:?} must be more than zero and less than forever"
        )),
        Some(secs) => Ok(secs),
    }
}

fn now() -> u64 {
    crate::clock::unix_secs()
}

fn default_dir() -> Result<PathBuf, String> {
    let env = Environment::current();
    match (env.xdg_data_home, env.home) {
        (Some(data), _) => Ok(data.join("parley/identity")),
        (None, Some(home)) => Ok(home.join(".local/share/parley/identity")),
        (None, None) => Err("neither XDG_DATA_HOME nor HOME is set; pass --dir".to_owned()),
    }
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Runs `parley identity`.
pub fn execute(args: IdentityArgs, output: Output) -> ExitCode {
    let dir = match args.dir.map(Ok).unwrap_or_else(default_dir) {
        Ok(dir) => IdentityDir::new(dir),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&dir, args.command, args.clock_skew, output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(super::EXIT_FAILED)
        }
    }
}

fn run(
    dir: &IdentityDir,
    command: IdentityCommand,
    clock_skew: u64,
    output: Output,
) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        IdentityCommand::Init { trust_domain } => {
            let root = dir.init_root(&trust_domain)?;
            let key = encode_public_key(&root.public_key());
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "trust_domain": trust_domain,
                    "root_public_key": key,
                    "dir": dir.path(),
                })),
                Output::Table => {
                    println!(
                        "created the root of trust domain {trust_domain} in {}",
                        dir.path().display()
                    );
                    println!("root public key: {key}");
                    println!(
                        "root.key is the trust domain's master key: back it up and keep it private"
                    );
                }
            }
        }
        IdentityCommand::Request { id } => {
            let subject =
                SpiffeId::parse(&id).map_err(|e| format!("invalid SPIFFE ID {id:?}: {e}"))?;
            let request = dir.start_request(subject)?;
            // The request is the command's product in both modes: JSON on stdout.
            print_json(&serde_json::to_value(&request)?);
            if output == Output::Table {
                eprintln!(
                    "request saved; take it to the root's host, run `parley identity issue FILE`, then `parley identity accept RESPONSE` here"
                );
            }
        }
        IdentityCommand::Issue { request, ttl } => {
            let root = dir.load_root()?;
            let request: CertRequest = read_json_file(&request, "certificate request")?;
            let issued = root.issue(&request, Validity::starting(now(), ttl))?;
            let response = IssueResponse {
                issued,
                trust_domain: root.id().trust_domain().to_owned(),
                root_public_key: encode_public_key(&root.public_key()),
            };
            print_json(&serde_json::to_value(&response)?);
            if output == Output::Table {
                eprintln!("issued {} for {ttl} s", request.subject);
            }
        }
        IdentityCommand::Accept { response } => {
            let response: IssueResponse = read_json_file(&response, "issue response")?;
            let credential = dir.accept(&response, now(), clock_skew)?;
            let cert = credential.cert();
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "id": credential.id(),
                    "not_after": cert.not_after,
                })),
                Output::Table => println!(
                    "this node is now {} (valid until {} UTC)",
                    credential.id(),
                    super::events::format_millis(cert.not_after.saturating_mul(1000))
                ),
            }
        }
        IdentityCommand::VerifySvid { file, policy } => {
            verify_svid(dir, &file, policy.as_deref(), output)?;
        }
        // Answered by the agent (`token`), never from files.
        IdentityCommand::Revoke { .. } => {
            return Err("`parley identity revoke` asks the running agent to revoke".into());
        }
        IdentityCommand::Token { .. } => {
            return Err("`parley identity token` asks the running agent for a token".into());
        }
        IdentityCommand::Show => {
            let bundle = dir.load_bundle()?;
            let domains: Vec<serde_json::Value> = bundle
                .trust_domains()
                .map(|td| {
                    serde_json::json!({
                        "trust_domain": td,
                        "root_public_key": bundle.root(td).map(encode_public_key),
                    })
                })
                .collect();
            let credential = dir.load_credential();
            let node = credential.as_ref().ok().map(|c| {
                serde_json::json!({
                    "id": c.id(),
                    "not_before": c.cert().not_before,
                    "not_after": c.cert().not_after,
                    "public_key": encode_public_key(&c.public_key()),
                    "expired": c.cert().not_after < now(),
                })
            });
            let holds_root = dir.load_root().is_ok();
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "dir": dir.path(),
                    "node": node,
                    "holds_root_key": holds_root,
                    "trust_bundle": domains,
                })),
                Output::Table => {
                    println!("directory: {}", dir.path().display());
                    match &credential {
                        Ok(c) => println!(
                            "node:      {} (valid {} to {} UTC{})",
                            c.id(),
                            super::events::format_millis(c.cert().not_before.saturating_mul(1000)),
                            super::events::format_millis(c.cert().not_after.saturating_mul(1000)),
                            if c.cert().not_after < now() {
                                ", EXPIRED"
                            } else {
                                ""
                            }
                        ),
                        Err(e) => println!("node:      no identity ({e})"),
                    }
                    println!(
                        "root key:  {}",
                        if holds_root { "held here" } else { "not here" }
                    );
                    let rows: Vec<Vec<String>> = domains
                        .iter()
                        .map(|d| {
                            vec![
                                d["trust_domain"].as_str().unwrap_or_default().to_owned(),
                                d["root_public_key"].as_str().unwrap_or_default().to_owned(),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        table::render(&["TRUST DOMAIN", "ROOT PUBLIC KEY"], &rows)
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn a_node_certificate_lives_at_most_thirty_days() {
        assert_eq!(super::parse_node_ttl("30d"), Ok(30 * 86_400));
        let error = super::parse_node_ttl("31d").unwrap_err();
        assert!(error.contains("30 days"), "{error}");
    }

    #[test]
    fn ttls_parse_with_units() {
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("12h"), Ok(43_200));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert_eq!(parse_ttl("45"), Ok(45));
        for bad in ["", "0s", "h", "5w", "-1h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
