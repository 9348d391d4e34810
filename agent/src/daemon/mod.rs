//! The running agent's composition root: it opens the store, connects to Podman, starts
//! the mesh, the node, the local API and the reconciler, and stops them in order (one
//! shutdown path, [`shutdown::Shutdown`]). The CLI only resolves the configuration and
//! calls [`run`].
//!
//! Start-up order matters: configuration is validated before anything is opened; the
//! store is opened before Podman is contacted; the API socket is bound only once the agent
//! can serve requests. Shutdown runs the other way round and closes the store last.

pub mod shutdown;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parley_negotiation::codec::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use parley_negotiation::messages::NodeMeta;

use crate::capacity::HostCapacity;
use crate::config::Config;
use crate::hostcheck::HostFacts;
use crate::mesh;
use crate::node::{Node, NodeInfo};
use crate::runtime::podman::service::{self, ServiceSettings};
use shutdown::Shutdown;
use signals::{reload_on_hangup, wait_for_signal};

/// How long tasks get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the agent with a resolved configuration until SIGTERM or SIGINT.
pub fn run(config: Config, reset_state: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, reset_state)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent stopped");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, reset_state: bool) -> anyhow::Result<()> {
    // Everything the agent creates (store files, sockets, later keys) is the user's alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));

    // Bound first so that a second agent on the same socket fails before it touches any
    // state; requests that arrive before serving starts wait in the listen backlog.
    let activated = crate::systemd::activated_api_socket()
        .context("cannot use the API socket passed by systemd")?;
    let (listener, owns_socket) = match activated {
        Some(listener) => {
            tracing::info!("using the API socket passed by systemd (socket activation)");
            (listener, false)
        }
        None => (
            crate::api::bind(&config.api_socket)
                .with_context(|| format!("cannot listen on {}", config.api_socket.display()))?,
            true,
        ),
    };
    let result = serve_on(&config, listener, reset_state).await;
    // A socket systemd passed stays: systemd owns it and accepts on it while we restart.
    if owns_socket && let Err(e) = std::fs::remove_file(&config.api_socket) {
        tracing::debug!(error = %e, "could not remove the API socket");
    }
    result
}

async fn serve_on(
    config: &Config,
    listener: tokio::net::UnixListener,
    reset_state: bool,
) -> anyhow::Result<()> {
    // Watched from the start, so a signal during a slow start-up (a Podman service that
    // takes seconds to come up) still ends in an orderly shutdown.
    let signal = wait_for_signal()?;
    tokio::pin!(signal);
    // SIGHUP's default action ends the process; it must be caught before anyone sends it.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot watch SIGHUP")?;

    service::create_private_dir(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let store_path = config.data_dir.join("store");
    if reset_state {
        move_store_aside(&store_path)?;
    }
    let store = parley_store::Store::open(&store_path)?;

    // Every task of the agent is spawned through it, so that shutdown waits for all of
    // them (an award being persisted above all) before the store closes.
    let shutdown = Shutdown::new();
    let settings = ServiceSettings {
        socket: config.podman_socket.clone(),
        autostart: config.podman_autostart,
        podman_binary: config.podman_binary.clone(),
    };
    let (podman, origin, podman_supervisor) =
        service::connect(&settings, shutdown.token.clone()).await?;

    let engine = {
        use crate::runtime::ContainerRuntime as _;
        podman.info().await.ok()
    };
    // Rootless containers on cgroup v1 get no limits (Podman ignores them); everywhere
    // else the engine enforces what workloads ask for. An engine not answering yet is
    // assumed to enforce: the create call would say otherwise.
    let enforce_limits = engine
        .as_ref()
        .is_none_or(|info| !(info.rootless && info.cgroup_version == "v1"));
    // Container storage: where Podman says, else (Podman not answering) the data
    // directory, usually on the same filesystem.
    let disk = mesh::DiskWatch {
        path: engine
            .as_ref()
            .and_then(|info| info.graph_root.clone())
            .map_or_else(|| config.data_dir.clone(), PathBuf::from),
        reserve_bytes: config.reserve_disk_bytes,
    };
    let host_warnings = HostFacts::gather(engine).warnings();
    for warning in &host_warnings {
        tracing::warn!(check = %warning.check, fix = %warning.fix, "{}", warning.problem);
    }

    let capacity = HostCapacity::read();
    let allocatable = capacity.allocatable(&config.reserve);
    tracing::info!(
        host_cpu_millis = capacity.cpu_millis,
        host_memory_mib = capacity.memory_bytes >> 20,
        allocatable_cpu_millis = allocatable.cpu_millis,
        allocatable_memory_mib = allocatable.memory_bytes >> 20,
        "capacity (host, lowered by cgroup limits, minus the reserve)"
    );
    let meta = NodeMeta {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_min: MIN_PROTOCOL_VERSION,
        protocol_max: PROTOCOL_VERSION,
        arch: oci_arch().to_owned(),
        labels: config.labels.clone(),
        allocatable,
        // The negotiation loop lowers it by what committed replicas ask for.
        free: allocatable,
        images: Vec::new(),
        address: None,
        issuer: false,
        disk_free_bytes: crate::capacity::disk_available(&disk.path)
            .map(|available| available.saturating_sub(disk.reserve_bytes)),
        // This agent keeps lease registers (sled's `registers` tree): it can be an
        // acceptor of strong workloads.
        lease_registers: true,
    };
    let prepared = match &config.mesh {
        // Starting can wait on an issuer (a lapsed identity); a signal still stops it.
        Some(settings) => tokio::select! {
            prepared = mesh::start(settings, meta.clone(), &store, Some(disk)) => Some(prepared?),
            () = &mut signal => {
                tracing::info!("stopped while joining the mesh");
                shutdown.spawn(podman_supervisor);
                shutdown
                    .drain(SHUTDOWN_GRACE, None, &store)
                    .await
                    .context("could not flush the state store on shutdown")?;
                return Ok(());
            }
        },
        None => None,
    };
    let mesh = prepared.as_ref().map(|p| p.handle.clone());
    let mesh_heartbeat = mesh.as_ref().map(|m| Arc::clone(&m.heartbeat));
    let mesh_transport = mesh.as_ref().map(|m| m.transport.clone());
    shutdown.spawn(reload_on_hangup(
        hangups,
        mesh.as_ref().map(|m| m.policy.clone()),
        shutdown.token.clone(),
    ));

    let node = Node::new(
        NodeInfo {
            name: config.node_name.clone(),
            lease_watchdog: true,
            data_dir: config.data_dir.display().to_string(),
            podman_socket: config.podman_socket.display().to_string(),
            podman_origin: origin,
            host_warnings,
            meta,
            mesh,
            identities: config.mesh.as_ref().map(|settings| {
                crate::enroll::workload::WorkloadIdentities::new(
                    config.data_dir.join("workload-identities"),
                    settings.identity_dir.clone(),
                    settings.workload_identity_ttl_secs,
                )
            }),
            enforce_limits,
        },
        store.clone(),
        podman,
    )?;

    if let Some(prepared) = prepared {
        let committed = node.assignments()?;
        let records = node.stored_records()?;
        prepared.spawn(
            Arc::clone(&node),
            committed,
            records,
            shutdown.token.clone(),
            &shutdown.tasks,
        );
        node.resume_ownership().await?;
        node.resume_revocations().await;
    }

    tracing::info!(
        socket = %config.api_socket.display(),
        node = %config.node_name,
        data_dir = %config.data_dir.display(),
        config_file = config.config_file.as_ref().map(|path| path.display().to_string()).unwrap_or_else(|| "none (defaults)".to_owned()),
        "agent listening"
    );

    let router = crate::api::router(Arc::clone(&node));
    let stopped = shutdown.token.clone().cancelled_owned();
    shutdown.spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "the API server stopped with an error");
        }
    });
    // A pass may take as long as a pull and a container call, bounded (CallLimits).
    let limits = crate::runtime::podman::CallLimits::default();
    let reconciling = crate::systemd::Heartbeat::new(
        "reconcile",
        config.reconcile_interval * 2 + limits.pull + limits.container * 2,
    );
    shutdown.spawn(crate::reconcile::run(
        Arc::clone(&node),
        config.reconcile_interval,
        shutdown.token.clone(),
        Arc::clone(&reconciling),
    ));
    shutdown.spawn(podman_supervisor);

    let mut loops = vec![reconciling];
    loops.extend(mesh_heartbeat);
    let watchdog = crate::systemd::spawn_watchdog(shutdown.token.clone(), loops);
    crate::systemd::ready(&format!(
        "listening on {}; node {}",
        config.api_socket.display(),
        config.node_name
    ));

    signal.await;
    tracing::info!("shutting down");
    crate::systemd::stopping();
    shutdown.token.cancel();
    if let Some(watchdog) = watchdog {
        let _ = watchdog.await;
    }
    shutdown
        .drain(SHUTDOWN_GRACE, mesh_transport.as_ref(), &store)
        .await
        .context("could not flush the state store on shutdown")?;
    drop(node);
    tracing::info!("agent stopped");
    Ok(())
}

/// The architecture name OCI images use for this build (`amd64`, `arm64`, …).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// Renames the store directory to `store.broken-<unix seconds>` so that a fresh one can be
/// created; the old one is kept for inspection, never deleted.
fn move_store_aside(store_path: &std::path::Path) -> anyhow::Result<()> {
    if !store_path.exists() {
        tracing::info!(path = %store_path.display(), "--reset-state: no store to move aside");
        return Ok(());
    }
    let stamp = crate::clock::unix_secs();
    let aside = store_path.with_file_name(format!("store.broken-{stamp}"));
    std::fs::rename(store_path, &aside).with_context(|| {
        format!(
            "cannot move the state store {} aside to {}",
            store_path.display(),
            aside.display()
        )
    })?;
    tracing::warn!(from = %store_path.display(), to = %aside.display(), "moved the state store aside; workloads will be restored from container labels");
    Ok(())
}
