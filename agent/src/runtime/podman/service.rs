//! Finding the user's Podman REST service, or starting one.
//!
//! Most hosts run Podman's service through socket activation (`podman.socket`). Where none
//! answers, the agent can run `podman system service` as its own child, restart it if it
//! dies, and stop it on shutdown. Containers survive either way: they belong to conmon,
//! not to the service.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::PodmanRuntime;
use crate::runtime::{ContainerRuntime, RuntimeError};

/// How long a freshly started service gets to answer its first request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopping service gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest wait between restarts of a service that keeps dying.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// Where the Podman service the agent uses came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceOrigin {
    /// A service was already answering on the socket (socket activation, or the user's).
    Existing,
    /// The agent started `podman system service` itself.
    StartedByAgent,
    /// Nothing answers and the agent was told not to start a service.
    Unavailable,
}

/// Settings for [`connect`].
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Socket the service listens on.
    pub socket: PathBuf,
    /// Start `podman system service` when nothing answers.
    pub autostart: bool,
    /// The podman executable to start it with.
    pub podman_binary: PathBuf,
}

/// Connects to the Podman service, starting one if allowed and needed. With a service the
/// agent started, a supervisor task keeps it running until `shutdown` is cancelled, then
/// stops it; the returned handle completes when it has.
pub async fn connect(
    settings: &ServiceSettings,
    shutdown: CancellationToken,
) -> Result<(PodmanRuntime, ServiceOrigin, tokio::task::JoinHandle<()>), RuntimeError> {
    let runtime = PodmanRuntime::new(&settings.socket);
    match runtime.info().await {
        Ok(info) => {
            tracing::info!(socket = %settings.socket.display(), version = %info.version, rootless = info.rootless, "using the Podman service already listening");
            return Ok((runtime, ServiceOrigin::Existing, tokio::spawn(async {})));
        }
        Err(RuntimeError::Unavailable { reason, .. }) if settings.autostart => {
            tracing::info!(socket = %settings.socket.display(), %reason, "no Podman service answers; starting `podman system service`");
        }
        Err(RuntimeError::Unavailable { reason, .. }) => {
            tracing::warn!(socket = %settings.socket.display(), %reason, "no Podman service answers and podman_autostart is off; workloads cannot start until one does");
            return Ok((runtime, ServiceOrigin::Unavailable, tokio::spawn(async {})));
        }
        Err(other) => return Err(other),
    }

    let child = start_service(settings, &runtime).await?;
    tracing::info!(socket = %settings.socket.display(), pid = child.id(), "started `podman system service`");
    let supervisor = tokio::spawn(supervise(
        settings.clone(),
        runtime.clone(),
        child,
        shutdown,
    ));
    Ok((runtime, ServiceOrigin::StartedByAgent, supervisor))
}

async fn start_service(
    settings: &ServiceSettings,
    runtime: &PodmanRuntime,
) -> Result<Child, RuntimeError> {
    if let Some(parent) = settings.socket.parent() {
        create_private_dir(parent).map_err(|e| RuntimeError::Failed {
            operation: "prepare its socket directory",
            message: format!("{}: {e}", parent.display()),
        })?;
    }
    let mut child = Command::new(&settings.podman_binary)
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", settings.socket.display()))
        // What systemd handed the agent is the agent's: Podman must not report readiness or
        // ping the watchdog in its name, nor take over an activated socket.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| RuntimeError::Unavailable {
            endpoint: settings.socket.display().to_string(),
            reason: format!(
                "cannot run {} ({e}); install Podman (see the README) or set podman_binary",
                settings.podman_binary.display()
            ),
        })?;

    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| RuntimeError::Failed {
            operation: "run its service",
            message: e.to_string(),
        })? {
            return Err(RuntimeError::Unavailable {
                endpoint: settings.socket.display().to_string(),
                reason: format!(
                    "`podman system service` exited at start ({status}); its error is in the log above"
                ),
            });
        }
        match runtime.info().await {
            Ok(_) => return Ok(child),
            Err(RuntimeError::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                stop_child(&mut child).await;
                return Err(e);
            }
        }
    }
}

/// Restarts the service whenever it exits, with capped exponential backoff, until shutdown.
async fn supervise(
    settings: ServiceSettings,
    runtime: PodmanRuntime,
    mut child: Child,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                stop_child(&mut child).await;
                tracing::info!("stopped the Podman service this agent had started");
                return;
            }
            status = child.wait() => {
                tracing::error!(status = ?status, "the Podman service this agent started exited; restarting it");
            }
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            match start_service(&settings, &runtime).await {
                Ok(restarted) => {
                    tracing::info!(pid = restarted.id(), "restarted the Podman service");
                    child = restarted;
                    backoff = Duration::from_secs(1);
                    break;
                }
                Err(e) => {
                    backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
                    tracing::error!(error = %e, retry_in = ?backoff, "could not restart the Podman service");
                }
            }
        }
    }
}

/// SIGTERM, then SIGKILL after a grace period.
async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Creates `dir` (and parents) readable by the owner only, as runtime directories are.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
