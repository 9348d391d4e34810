//! An in-memory [`ContainerRuntime`] for fast unit tests of the agent's logic.
//!
//! It mimics the Podman behaviour the agent relies on (unique names, labels, start
//! failures cleaned up, an engine that can go down) and nothing more. Real Podman is
//! exercised by the end-to-end tests.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    ContainerRuntime, ContainerSpec, ContainerState, LineSplitter, LogChunk, LogStream, LogWindow,
    ManagedContainer, RuntimeError, RuntimeInfo, labels,
};

#[derive(Debug, Default)]
struct State {
    images: HashSet<String>,
    /// Containers by id.
    containers: BTreeMap<String, (ContainerSpec, ContainerState)>,
    next_id: u64,
    down: bool,
    /// Images whose containers fail to start (a bad command, say).
    failing_images: HashSet<String>,
    creates: u64,
    /// What each container wrote, by container name.
    output: BTreeMap<String, Vec<u8>>,
    /// Exit codes of exited containers, by container name.
    exit_codes: BTreeMap<String, i32>,
}

/// A fake engine. Clones share state, so a test keeps one clone to inspect and steer.
#[derive(Debug, Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
}

impl FakeRuntime {
    /// A running fake engine holding the given images.
    pub fn with_images<'a>(images: impl IntoIterator<Item = &'a str>) -> Self {
        let fake = Self::default();
        fake.lock().images = images.into_iter().map(str::to_owned).collect();
        fake
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has already failed; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the engine down (`true`) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Makes containers of `image` fail at start.
    pub fn fail_starts_of(&self, image: &str) {
        self.lock().failing_images.insert(image.to_owned());
    }

    /// Makes the container named `name` write `text` on its standard output.
    pub fn write_output(&self, name: &str, text: &str) {
        self.lock()
            .output
            .entry(name.to_owned())
            .or_default()
            .extend_from_slice(text.as_bytes());
    }

    /// Simulates a container exiting on its own with `code`.
    pub fn exit_container(&self, name: &str, code: i32) {
        let mut state = self.lock();
        state.exit_codes.insert(name.to_owned(), code);
        for (spec, container_state) in state.containers.values_mut() {
            if spec.name == name {
                *container_state = ContainerState::Exited;
            }
        }
    }

    /// The spec a container was created from, by name.
    pub fn spec_of(&self, name: &str) -> Option<ContainerSpec> {
        self.lock()
            .containers
            .values()
            .find(|(spec, _)| spec.name == name)
            .map(|(spec, _)| spec.clone())
    }

    /// The state of the container named `name`, if it exists.
    pub fn state_of(&self, name: &str) -> Option<ContainerState> {
        self.lock()
            .containers
            .values()
            .find(|(spec, _)| spec.name == name)
            .map(|(_, state)| state.clone())
    }

    /// Number of containers ever created.
    pub fn creates(&self) -> u64 {
        self.lock().creates
    }

    /// Names of the containers that exist now, in any state.
    pub fn container_names(&self) -> Vec<String> {
        self.lock()
            .containers
            .values()
            .map(|(spec, _)| spec.name.clone())
            .collect()
    }

    fn check_up(state: &State) -> Result<(), RuntimeError> {
        if state.down {
            Err(RuntimeError::Unavailable {
                endpoint: "fake".to_owned(),
                reason: "connection refused".to_owned(),
            })
        } else {
            Ok(())
        }
    }
}

impl ContainerRuntime for FakeRuntime {
    async fn info(&self) -> Result<RuntimeInfo, RuntimeError> {
        Self::check_up(&self.lock())?;
        Ok(RuntimeInfo {
            version: "0.0.0-fake".to_owned(),
            api_version: "0.0.0".to_owned(),
            rootless: true,
            cgroup_version: "v2".to_owned(),
            oci_runtime: "fake".to_owned(),
            graph_root: None,
        })
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        let state = self.lock();
        Self::check_up(&state)?;
        if state.images.contains(image) {
            Ok(())
        } else {
            Err(RuntimeError::ImageNotFound {
                image: image.to_owned(),
                reason: "not in the fake's image list".to_owned(),
            })
        }
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let mut state = self.lock();
        Self::check_up(&state)?;
        if state.containers.values().any(|(c, _)| c.name == spec.name) {
            return Err(RuntimeError::NameInUse {
                name: spec.name.clone(),
            });
        }
        if !state.images.contains(&spec.image) {
            return Err(RuntimeError::Failed {
                operation: "create a container",
                message: format!("{}: image not known", spec.image),
            });
        }
        state.creates += 1;
        if state.failing_images.contains(&spec.image) {
            return Err(RuntimeError::Failed {
                operation: "start a container",
                message: "executable file not found".to_owned(),
            });
        }
        state.next_id += 1;
        let id = format!("fake{:060}", state.next_id);
        state
            .containers
            .insert(id.clone(), (spec.clone(), ContainerState::Running));
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        Self::check_up(&state)?;
        match state.containers.get_mut(id) {
            Some((_, container_state)) => {
                *container_state = ContainerState::Running;
                Ok(())
            }
            None => Err(RuntimeError::Failed {
                operation: "start a container",
                message: format!("no such container {id}"),
            }),
        }
    }

    async fn list_managed(&self, node: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let state = self.lock();
        Self::check_up(&state)?;
        Ok(state
            .containers
            .iter()
            .filter(|(_, (spec, _))| {
                spec.labels.get(labels::MANAGED).map(String::as_str) == Some("true")
                    && spec.labels.get(labels::NODE).map(String::as_str) == Some(node)
            })
            .filter_map(|(id, (spec, container_state))| {
                let exited = *container_state == ContainerState::Exited;
                Some(ManagedContainer {
                    id: id.clone(),
                    name: spec.name.clone(),
                    workload: spec.labels.get(labels::WORKLOAD)?.clone(),
                    replica: spec.labels.get(labels::REPLICA)?.parse().ok()?,
                    image: spec.image.clone(),
                    state: container_state.clone(),
                    exit_code: exited
                        .then(|| state.exit_codes.get(&spec.name).copied().unwrap_or(0)),
                    spec_label: spec.labels.get(labels::SPEC).cloned(),
                    epoch: spec.labels.get(labels::EPOCH).and_then(|e| e.parse().ok()),
                })
            })
            .collect())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        Self::check_up(&state)?;
        state.containers.remove(id);
        Ok(())
    }

    /// The whole output, or its last `tail` lines; the fake keeps no timestamps, so the
    /// window's times are ignored.
    async fn logs(&self, id: &str, window: &LogWindow) -> Result<LogChunk, RuntimeError> {
        let state = self.lock();
        Self::check_up(&state)?;
        let Some((spec, _)) = state.containers.get(id) else {
            return Err(RuntimeError::Failed {
                operation: "read a container's logs",
                message: format!("no such container {id} (HTTP 404)"),
            });
        };
        let mut lines = LineSplitter::default();
        lines.push(
            LogStream::Stdout,
            state.output.get(&spec.name).map_or(&[][..], Vec::as_slice),
        );
        let mut chunk = lines.finish();
        if let Some(tail) = window.tail {
            let keep = chunk.lines.len().min(tail as usize);
            chunk.lines.drain(..chunk.lines.len() - keep);
        }
        Ok(chunk)
    }
}
