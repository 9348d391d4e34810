//! `parley metrics`: the agent's Prometheus metrics, as `GET /metrics` serves them.

use super::CliError;
use crate::api::client::ApiClient;

/// Arguments of `parley metrics`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The same text the local API serves at GET /metrics (Prometheus text \
format): placements, failed auctions, bids, declines by reason, awards, re-auctions, peers \
by state, refused messages by kind, workloads and assignments.

Examples:
  parley metrics | grep parley_peers
  parley metrics > /var/lib/node_exporter/textfile/parley.prom   # for node_exporter's textfile collector
  curl --unix-socket $XDG_RUNTIME_DIR/parley/parley.sock http://parley/metrics"
)]
pub struct MetricsArgs {}

/// Runs `parley metrics`.
pub async fn execute(_args: MetricsArgs, client: ApiClient) -> Result<(), CliError> {
    print!("{}", client.get_text("/metrics").await?);
    Ok(())
}
