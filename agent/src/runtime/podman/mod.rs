//! [`ContainerRuntime`] on Podman's REST API, through podman-api.
//!
//! Podman's JSON models never leave this module.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use podman_api::Podman;
use podman_api::opts::{
    ContainerCreateOpts, ContainerDeleteOpts, ContainerListFilter, ContainerListOpts,
    ContainerLogsOpts, PullOpts,
};

use parley_negotiation::messages::Resources;

use super::{
    ContainerRuntime, ContainerSpec, ContainerState, LineSplitter, LogChunk, LogStream, LogWindow,
    ManagedContainer, RuntimeError, RuntimeInfo, labels,
};

pub mod service;

/// Podman reached through its REST service on a unix socket.
#[derive(Debug, Clone)]
pub struct PodmanRuntime {
    podman: Podman,
    socket: PathBuf,
    limits: CallLimits,
}

impl PodmanRuntime {
    /// A client for the Podman service listening on `socket`. Nothing is sent until the
    /// first call.
    pub fn new(socket: &Path) -> Self {
        Self::with_limits(socket, CallLimits::default())
    }

    /// As [`PodmanRuntime::new`], with other bounds on how long calls may take.
    pub fn with_limits(socket: &Path, limits: CallLimits) -> Self {
        Self {
            podman: Podman::unix(socket),
            socket: socket.to_path_buf(),
            limits,
        }
    }

    /// Sorts a podman-api error into the agent's error kinds. Transport failures mean the
    /// service is down; HTTP faults carry Podman's own message.
    fn classify(&self, operation: &'static str, error: podman_api::Error) -> RuntimeError {
        use podman_api::Error as E;
        use podman_api::conn::Error as C;
        match error {
            E::Fault { code, message } | E::Error(C::Fault { code, message }) => {
                RuntimeError::Failed {
                    operation,
                    message: format!("{message} (HTTP {})", code.as_u16()),
                }
            }
            E::IO(e) | E::Error(C::IO(e)) => self.unavailable(e),
            E::Error(C::Hyper(e)) => self.unavailable(e),
            other => RuntimeError::Failed {
                operation,
                message: other.to_string(),
            },
        }
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Unavailable {
            endpoint: self.socket.display().to_string(),
            reason: reason.to_string(),
        }
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        self.podman
            .images()
            .get(image)
            .exists()
            .await
            .map_err(|e| self.classify("look up an image", e))
    }
}

/// HTTP status Podman answers when a container name is taken.
const CONFLICT: u16 = 409;
/// HTTP status Podman answers for a container that does not exist.
const NOT_FOUND: u16 = 404;

/// The calls themselves, without bounds on how long Podman may take (see the trait
/// implementation below, which bounds each).
impl PodmanRuntime {
    async fn info_unbounded(&self) -> Result<RuntimeInfo, RuntimeError> {
        let info = self
            .podman
            .info()
            .await
            .map_err(|e| self.classify("report its info", e))?;
        let host = info.host;
        let version = info.version;
        let graph_root = info.store.and_then(|s| s.graph_root);
        Ok(RuntimeInfo {
            version: version
                .as_ref()
                .and_then(|v| v.version.clone())
                .unwrap_or_default(),
            api_version: version.and_then(|v| v.api_version).unwrap_or_default(),
            rootless: host
                .as_ref()
                .and_then(|h| h.security.as_ref())
                .and_then(|s| s.rootless)
                .unwrap_or(false),
            cgroup_version: host
                .as_ref()
                .and_then(|h| h.cgroup_version.clone())
                .unwrap_or_default(),
            oci_runtime: host
                .and_then(|h| h.oci_runtime)
                .and_then(|r| r.name)
                .unwrap_or_default(),
            graph_root,
        })
    }

    async fn ensure_image_unbounded(&self, image: &str) -> Result<(), RuntimeError> {
        if self.image_present(image).await? {
            return Ok(());
        }
        tracing::info!(image, "image not present locally, pulling");
        let opts = PullOpts::builder().reference(image).quiet(true).build();
        let images = self.podman.images();
        let mut reports = images.pull(&opts);
        // Podman reports a failed pull inside the stream (`error`), not as an HTTP error.
        while let Some(report) = reports.next().await {
            match report {
                Ok(report) => {
                    if let Some(error) = report.error {
                        return Err(RuntimeError::ImageNotFound {
                            image: image.to_owned(),
                            reason: error.trim().to_owned(),
                        });
                    }
                }
                Err(e) => {
                    return Err(match self.classify("pull an image", e) {
                        RuntimeError::Failed { message, .. } => RuntimeError::ImageNotFound {
                            image: image.to_owned(),
                            reason: message,
                        },
                        other => other,
                    });
                }
            }
        }
        if self.image_present(image).await? {
            Ok(())
        } else {
            Err(RuntimeError::ImageNotFound {
                image: image.to_owned(),
                reason: "the pull finished but the image is still not present".to_owned(),
            })
        }
    }

    async fn create_and_start_unbounded(
        &self,
        spec: &ContainerSpec,
    ) -> Result<String, RuntimeError> {
        let mut builder = ContainerCreateOpts::builder();
        builder = builder
            .name(&spec.name)
            .image(&spec.image)
            .labels(spec.labels.iter())
            .env(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stop_timeout(spec.stop_timeout_secs);
        if !spec.command.is_empty() {
            builder = builder.command(spec.command.iter());
        }
        if let Some(limits) = &spec.limits {
            builder = builder.resource_limits(resource_limits(limits));
        }
        for volume in &spec.volumes {
            self.ensure_volume(volume).await?;
        }
        if !spec.volumes.is_empty() {
            builder =
                builder.volumes(
                    spec.volumes
                        .iter()
                        .map(|v| podman_api::models::NamedVolume {
                            dest: Some(v.target.clone()),
                            name: Some(v.name.clone()),
                            is_anonymous: None,
                            options: None,
                        }),
                );
        }
        if !spec.mounts.is_empty() {
            builder =
                builder.mounts(
                    spec.mounts
                        .iter()
                        .map(|m| podman_api::models::ContainerMount {
                            destination: Some(m.target.clone()),
                            source: Some(m.source.display().to_string()),
                            _type: Some("bind".to_owned()),
                            options: Some(vec![if m.read_only { "ro" } else { "rw" }.to_owned()]),
                            uid_mappings: None,
                            gid_mappings: None,
                        }),
                );
        }
        let created = self
            .podman
            .containers()
            .create(&builder.build())
            .await
            .map_err(|e| match self.classify("create a container", e) {
                RuntimeError::Failed { message, .. }
                    if message.contains(&format!("HTTP {CONFLICT}"))
                        || message.contains("already in use") =>
                {
                    RuntimeError::NameInUse {
                        name: spec.name.clone(),
                    }
                }
                other => other,
            })?;
        let id = created.id;
        if let Err(start_error) = self.podman.containers().get(&id).start(None).await {
            let start_error = self.classify("start a container", start_error);
            // A created-but-unstartable container would block the name forever; remove it
            // and report the start error, which is the one the user can act on.
            if let Err(cleanup) = self.remove(&id).await {
                tracing::warn!(container = %spec.name, error = %cleanup, "could not remove a container that failed to start");
            }
            return Err(start_error);
        }
        Ok(id)
    }

    /// Makes the named volume `volume` with its labels unless it exists: Podman would
    /// make a missing one at create, but without labels that say whose it is.
    async fn ensure_volume(&self, volume: &crate::runtime::VolumeSpec) -> Result<(), RuntimeError> {
        let volumes = self.podman.volumes();
        let exists = volumes
            .get(&volume.name)
            .exists()
            .await
            .map_err(|e| self.classify("inspect a volume", e))?;
        if exists {
            return Ok(());
        }
        let opts = podman_api::opts::VolumeCreateOpts::builder()
            .name(&volume.name)
            .labels(volume.labels.iter())
            .build();
        match volumes.create(&opts).await {
            Ok(_) => {
                tracing::info!(volume = %volume.name, "made a named volume");
                Ok(())
            }
            // Made meanwhile by another start of the same replica: what was wanted.
            Err(e) if e.to_string().contains("already exists") => Ok(()),
            Err(e) => Err(self.classify("create a volume", e)),
        }
    }

    async fn start_unbounded(&self, id: &str) -> Result<(), RuntimeError> {
        self.podman
            .containers()
            .get(id)
            .start(None)
            .await
            .map_err(|e| self.classify("start a container", e))
    }

    async fn list_managed_unbounded(
        &self,
        node: &str,
    ) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let opts = ContainerListOpts::builder()
            .all(true)
            .filter([
                ContainerListFilter::LabelKeyVal(labels::MANAGED.into(), "true".into()),
                ContainerListFilter::LabelKeyVal(labels::NODE.into(), node.into()),
            ])
            .build();
        let listed = self
            .podman
            .containers()
            .list(&opts)
            .await
            .map_err(|e| self.classify("list containers", e))?;
        Ok(listed
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                // Podman ANDs label filters, but check anyway: adopting a container of
                // another node would make two agents fight over it.
                if labels.get(labels::NODE).map(String::as_str) != Some(node) {
                    return None;
                }
                let workload = labels.get(labels::WORKLOAD)?.clone();
                let replica = labels.get(labels::REPLICA)?.parse().ok()?;
                let state = ContainerState::from_engine(c.state.as_deref().unwrap_or(""));
                Some(ManagedContainer {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default(),
                    workload,
                    replica,
                    image: c.image.unwrap_or_default(),
                    exit_code: (state == ContainerState::Exited)
                        .then_some(c.exit_code)
                        .flatten(),
                    spec_label: labels.get(labels::SPEC).cloned(),
                    epoch: labels.get(labels::EPOCH).and_then(|e| e.parse().ok()),
                    state,
                })
            })
            .collect())
    }

    async fn remove_unbounded(&self, id: &str) -> Result<(), RuntimeError> {
        let opts = ContainerDeleteOpts::builder().force(true).build();
        match self.podman.containers().get(id).delete(&opts).await {
            Ok(()) => Ok(()),
            Err(e) => match self.classify("remove a container", e) {
                RuntimeError::Failed { message, .. }
                    if message.contains(&format!("HTTP {NOT_FOUND}")) =>
                {
                    Ok(())
                }
                other => Err(other),
            },
        }
    }

    async fn logs_unbounded(&self, id: &str, window: &LogWindow) -> Result<LogChunk, RuntimeError> {
        // Podman takes times as (fractional) unix seconds.
        let seconds = |micros: u64| format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
        let mut opts = ContainerLogsOpts::builder().stdout(true).stderr(true);
        if let Some(since) = window.since_micros {
            opts = opts.since(seconds(since));
        }
        if let Some(until) = window.until_micros {
            opts = opts.until(seconds(until));
        }
        if let Some(tail) = window.tail {
            opts = opts.tail(tail.to_string());
        }
        let container = self.podman.containers().get(id);
        let opts = opts.build();
        let mut chunks = container.logs(&opts);
        let mut lines = LineSplitter::default();
        while let Some(chunk) = chunks.next().await {
            match chunk.map_err(|e| self.classify("read a container's logs", e))? {
                podman_api::conn::TtyChunk::StdErr(bytes) => lines.push(LogStream::Stderr, &bytes),
                podman_api::conn::TtyChunk::StdOut(bytes)
                | podman_api::conn::TtyChunk::StdIn(bytes) => {
                    lines.push(LogStream::Stdout, &bytes);
                }
            }
        }
        Ok(lines.finish())
    }
}

/// How long each kind of Podman call may take before the service is taken as wedged. A
/// call that never returns would otherwise hold the node's state lock, and with it every
/// reconcile pass and every award being stored, for ever.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Quick calls: info, list, logs, start.
    pub quick: Duration,
    /// Creating and starting a container, and stopping and removing one (which waits out
    /// the container's stop timeout).
    pub container: Duration,
    /// Pulling an image.
    pub pull: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            quick: Duration::from_secs(30),
            container: Duration::from_secs(120),
            pull: Duration::from_secs(600),
        }
    }
}

impl PodmanRuntime {
    /// Runs `call`, or fails as unavailable once `limit` has passed.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        limit: Duration,
        call: impl Future<Output = Result<T, RuntimeError>>,
    ) -> Result<T, RuntimeError> {
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(self.unavailable(format!(
                "no answer within {} s while trying to {operation}; the service may be wedged \
                 (restart it, or check `journalctl --user -u podman`)",
                limit.as_secs()
            ))),
        }
    }
}

impl ContainerRuntime for PodmanRuntime {
    async fn info(&self) -> Result<RuntimeInfo, RuntimeError> {
        self.bounded("report its info", self.limits.quick, self.info_unbounded())
            .await
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.bounded(
            "pull an image",
            self.limits.pull,
            self.ensure_image_unbounded(image),
        )
        .await
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let call = self.create_and_start_unbounded(spec);
        self.bounded("create a container", self.limits.container, call)
            .await
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.bounded(
            "start a container",
            self.limits.quick,
            self.start_unbounded(id),
        )
        .await
    }

    async fn list_managed(&self, node: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let call = self.list_managed_unbounded(node);
        self.bounded("list containers", self.limits.quick, call)
            .await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.bounded(
            "remove a container",
            self.limits.container,
            self.remove_unbounded(id),
        )
        .await
    }

    async fn logs(&self, id: &str, window: &LogWindow) -> Result<LogChunk, RuntimeError> {
        let call = self.logs_unbounded(id, window);
        self.bounded("read a container's logs", self.limits.quick, call)
            .await
    }
}

/// The cgroup limits for `limits`: a CPU quota of `cpu_millis` thousandths of a CPU (per
/// 100 ms period) and a memory limit; a zero means no limit of that kind.
fn resource_limits(limits: &Resources) -> podman_api::models::LinuxResources {
    // The generated model has some twenty optional fields; JSON fills the two we set and
    // leaves the others out, as Podman expects.
    let mut json = serde_json::Map::new();
    if limits.cpu_millis > 0 {
        json.insert(
            "cpu".to_owned(),
            serde_json::json!({ "quota": limits.cpu_millis * CPU_PERIOD_MICROS / 1_000, "period": CPU_PERIOD_MICROS }),
        );
    }
    if limits.memory_bytes > 0 {
        json.insert(
            "memory".to_owned(),
            serde_json::json!({ "limit": limits.memory_bytes }),
        );
    }
    serde_json::from_value(serde_json::Value::Object(json))
        .expect("the limits JSON matches Podman's model")
}

/// The CFS period the CPU quota is expressed in, in microseconds (the kernel default).
const CPU_PERIOD_MICROS: u64 = 100_000;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn limits_become_a_cpu_quota_and_a_memory_limit() {
        let limits = resource_limits(&Resources {
            cpu_millis: 500,
            memory_bytes: 256 << 20,
        });
        let cpu = limits.cpu.unwrap();
        assert_eq!((cpu.quota, cpu.period), (Some(50_000), Some(100_000)));
        assert_eq!(limits.memory.unwrap().limit, Some(256 << 20));
        let none = resource_limits(&Resources::default());
        assert!(none.cpu.is_none() && none.memory.is_none());
    }

    /// A wedged Podman at `socket`: it accepts connections and never answers, until the
    /// task returned is aborted.
    pub(crate) fn wedged_podman(socket: &Path) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                // Kept open and unanswered.
                open.push(stream);
            }
        })
    }

    /// A wedged Podman: the socket accepts connections and reads requests, and never
    /// answers. Every call must give up within its bound and say so.
    #[tokio::test]
    async fn a_podman_that_never_answers_fails_each_call_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("podman.sock");
        let held = wedged_podman(&socket);
        let limit = Duration::from_millis(300);
        let runtime = PodmanRuntime::with_limits(
            &socket,
            CallLimits {
                quick: limit,
                container: limit,
                pull: limit,
            },
        );
        let started = std::time::Instant::now();
        for result in [
            runtime.info().await.map(|_| ()),
            runtime.list_managed("n").await.map(|_| ()),
            runtime.ensure_image("localhost/x:1").await,
            runtime.remove("abc").await,
        ] {
            let error = result.expect_err("a wedged Podman answered");
            assert!(matches!(error, RuntimeError::Unavailable { .. }), "{error}");
            assert!(error.to_string().contains("may be wedged"), "{error}");
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        held.abort();
    }
}
