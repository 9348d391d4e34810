//! `parley join`: enroll this host with a join token over QUIC, then run the agent.

use std::process::ExitCode;

use parley_identity::files::IdentityDir;
use parley_identity::{PendingRequest, SpiffeId};
use zeroize::Zeroizing;

use super::GlobalOptions;
use super::agent::AgentArgs;
use crate::config::{self, Environment};
use crate::enroll::join::{self, JoinToken};

/// Arguments of `parley join`.
#[derive(Debug, clap::Args)]
#[command(after_help = "On an agent that holds the trust domain's root key, \
`parley identity token --node NODE_NAME --ttl 1h` prints a one-time token for that one node \
name. On the new host, `parley join` \
makes this node's key (it never leaves the host), sends a certificate request for \
spiffe://TRUST_DOMAIN/node/NODE_NAME with the token to ADDRESS over QUIC, checks that the \
answer comes from the trust domain's root, stores the identity in the identity directory, \
and starts the agent joined to the mesh through ADDRESS. Every `parley agent` option \
applies; --listen is required.

A host that already holds an identity of the token's trust domain skips enrollment and \
starts (the token is not spent), so the same command can stay in a unit file. Next time, \
`parley agent --join ADDRESS` (or `join` in the config file) does the same.

Examples:
  parley join 192.0.2.10:7946 --token-file token.txt --listen 0.0.0.0:7946 \\
      --advertise 192.0.2.11:7946
  PARLEY_JOIN_TOKEN=\"$T\" parley join edge-1.lan:7946 --listen 10.0.0.7:7946 --no-start")]
pub struct JoinArgs {
    /// The issuing agent's mesh address, HOST:PORT (`parley identity token` prints it)
    #[arg(value_name = "ADDRESS")]
    pub address: String,
    /// The join token from `parley identity token`. On the command line it is visible
    /// to every user of the host (ps, /proc) while the command runs: prefer
    /// --token-file or the environment variable
    #[arg(
        long,
        env = "PARLEY_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file",
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// Read the join token from FILE (`-`: standard input), kept out of the process list
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Enroll only; do not start the agent
    #[arg(long)]
    pub no_start: bool,
    /// Agent options, as for `parley agent`.
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// Runs `parley join`.
pub fn execute(mut args: JoinArgs, global: &GlobalOptions) -> ExitCode {
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(super::EXIT_FAILED)
    };
    let text = match read_token(args.token.take(), args.token_file.as_deref()) {
        Ok(text) => text,
        Err(message) => return fail(message),
    };
    let token: JoinToken = match text.parse() {
        Ok(token) => token,
        Err(e) => return fail(e.to_string()),
    };
    args.agent.join.push(args.address.clone());
    let config = match args.agent.resolve(global, &Environment::current()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(config::EXIT_CONFIG as u8);
        }
    };
    let Some(mesh) = &config.mesh else {
        return fail(
            "joining a mesh needs --listen (the UDP address this agent serves on)".to_owned(),
        );
    };
    let identity = IdentityDir::new(&mesh.identity_dir);
    if identity.has_credential() {
        match identity.load_credential() {
            Ok(credential) if credential.id().trust_domain() == token.trust_domain => {
                tracing::info!(id = %credential.id(), dir = %mesh.identity_dir.display(), "already enrolled; the join token is not used");
            }
            Ok(credential) => {
                return fail(format!(
                    "{} already holds the identity {} of another trust domain; use another \
                     --identity-dir to join {}",
                    mesh.identity_dir.display(),
                    credential.id(),
                    token.trust_domain
                ));
            }
            Err(e) => {
                return fail(format!(
                    "{} holds an identity that cannot be used ({e}); move it aside to enroll again",
                    mesh.identity_dir.display()
                ));
            }
        }
    } else {
        let subject =
            match SpiffeId::from_segments(&token.trust_domain, &["node", &config.node_name]) {
                Ok(subject) => subject,
                Err(e) => {
                    return fail(format!(
                        "node name {:?} cannot be a SPIFFE ID: {e}",
                        config.node_name
                    ));
                }
            };
        match enroll(&args.address, &token, subject, &identity) {
            Ok(message) => println!("{message}"),
            Err(message) => return fail(message),
        }
    }
    if args.no_start {
        return ExitCode::SUCCESS;
    }
    crate::daemon::run(config, args.agent.reset_state)
}

/// The token's text, from the argument (or environment) or from a file or standard input;
/// zeroized when dropped.
fn read_token(
    argument: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Zeroizing<String>, String> {
    use std::io::Read as _;
    // A token is about 150 bytes; anything much larger is not one.
    const MAX_TOKEN_FILE: u64 = 4096;
    let Some(path) = file else {
        return Ok(Zeroizing::new(argument.unwrap_or_default()));
    };
    let mut text = Zeroizing::new(String::new());
    let read = if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_TOKEN_FILE)
            .read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_TOKEN_FILE).read_to_string(&mut text))
    };
    read.map_err(|e| format!("cannot read the join token from {}: {e}", path.display()))?;
    Ok(Zeroizing::new(text.trim().to_owned()))
}

/// Enrolls through `address`; returns what to tell the user.
fn enroll(
    address: &str,
    token: &JoinToken,
    subject: SpiffeId,
    identity: &IdentityDir,
) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let pending = PendingRequest::new(subject);
    let response = runtime.block_on(async {
        let addr = tokio::net::lookup_host(address)
            .await
            .map_err(|e| format!("cannot resolve {address}: {e}"))?
            .next()
            .ok_or_else(|| format!("{address} resolves to no address"))?;
        join::enroll(addr, token, pending.request())
            .await
            .map_err(|e| e.to_string())
    })?;
    let now = crate::clock::unix_secs();
    let credential = identity
        .accept_pending(
            pending,
            &response,
            now,
            parley_identity::credential::DEFAULT_CLOCK_SKEW_SECS,
        )
        .map_err(|e| format!("the issuer's answer cannot be used: {e}"))?;
    Ok(format!(
        "enrolled as {} (valid until {}), identity in {}",
        credential.id(),
        super::events::format_millis(credential.cert().not_after.saturating_mul(1000)),
        identity.path().display()
    ))
}
