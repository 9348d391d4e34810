//! Harness for Parley's end-to-end tests: real `parley` processes driving real rootless
//! Podman.
//!
//! When the tests run as root (CI does), every agent, CLI call and podman command runs as
//! an unprivileged user (`PARLEY_E2E_USER`, default `parley-e2e`, prepared by
//! `scripts/setup-host.sh`) so that Podman is really rootless. The built binary is copied
//! somewhere that user can read. Each [`Agent`] gets its own directory, sockets, Podman
//! service and node name, and removes its containers when dropped, so tests can run in
//! parallel and leave nothing behind.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};

pub mod hostile;
pub mod mesh;
pub mod netbed;

/// The registry-free test image built by `scripts/make-test-image.sh`.
pub const TEST_IMAGE: &str = "localhost/parley-test:latest";

const SETUP_HINT: &str = "prepare the host with `sudo bash scripts/setup-host.sh --user parley-e2e` \
     (scripts/test.sh does this for you)";

/// Who runs Parley and Podman in these tests, and with which binary.
#[derive(Debug)]
pub struct TestUser {
    uid: u32,
    gid: u32,
    name: String,
    home: PathBuf,
    runtime_dir: PathBuf,
    /// Switch to this user before exec (only when the tests run as root).
    switch: bool,
    binary: PathBuf,
}

/// The test user, set up once per test process. Panics with a way out when Podman, the
/// user or the binary is missing: these tests are never skipped silently.
pub fn test_user() -> &'static TestUser {
    static USER: OnceLock<TestUser> = OnceLock::new();
    USER.get_or_init(TestUser::discover)
}

impl TestUser {
    fn discover() -> Self {
        match Command::new("podman").arg("--version").output() {
            Ok(out) if out.status.success() => {}
            _ => panic!(
                "podman is not installed or does not run; these tests need real rootless Podman: {SETUP_HINT}"
            ),
        }
        let running_as_root = nix::unistd::geteuid().is_root();
        let user = if running_as_root {
            let name = std::env::var("PARLEY_E2E_USER").unwrap_or_else(|_| "parley-e2e".to_owned());
            User::from_name(&name)
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("the test user {name} does not exist: {SETUP_HINT}"))
        } else {
            User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .expect("the current user has no passwd entry")
        };
        let runtime_dir = PathBuf::from(format!("/run/user/{}", user.uid));
        assert!(
            runtime_dir.is_dir(),
            "{} does not exist, so rootless Podman has no runtime directory: {SETUP_HINT}",
            runtime_dir.display()
        );
        let mut test_user = Self {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            name: user.name,
            home: user.dir,
            runtime_dir,
            switch: running_as_root,
            binary: PathBuf::new(),
        };
        test_user.binary = readable_copy_of_binary();
        let image = test_user.podman(["image", "exists", TEST_IMAGE]);
        assert!(
            image.status.success(),
            "the test image {TEST_IMAGE} is missing for user {}: {SETUP_HINT}",
            test_user.name
        );
        test_user
    }

    /// The `parley` binary, copied where the user can run it.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The user's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` as the test user with a clean, rootless environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        self.clean_environment(&mut command);
        if self.switch {
            command.uid(self.uid).gid(self.gid);
        }
        command
    }

    /// As [`TestUser::command`], with `program` in the network namespace `namespace`
    /// (under /run/netns). `nsenter` enters it as root, then becomes the user: std's
    /// `uid` switch would come before any `pre_exec` could call setns, which needs root.
    pub fn command_in_namespace(&self, namespace: &str, program: impl AsRef<OsStr>) -> Command {
        assert!(
            self.switch,
            "entering a network namespace needs root: run the suite as root (CI does)"
        );
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{namespace}"))
            .arg(format!("--setuid={}", self.uid))
            .arg(format!("--setgid={}", self.gid))
            .arg("--")
            .arg(program);
        self.clean_environment(&mut command);
        command
    }

    fn clean_environment(&self, command: &mut Command) {
        command
            .env_clear()
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .current_dir("/");
    }

    /// Runs `podman ARGS…` as the test user.
    pub fn podman<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command("podman")
            .args(args)
            .output()
            .expect("cannot run podman")
    }

    /// Runs `parley ARGS…` as the test user, against the agent socket `api_socket`.
    pub fn parley<I, S>(&self, api_socket: &Path, args: I) -> CliOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let output = self
            .command(&self.binary)
            .env("PARLEY_API_SOCKET", api_socket)
            .args(args)
            .output()
            .expect("run the parley CLI");
        CliOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// A storage.conf for a separate container storage under `dir`, with the same driver
    /// (and overlay mount program) as the user's own storage.
    fn isolated_storage_conf(&self, dir: &Path) -> String {
        let info = self.podman([
            "info",
            "--format",
            "{{.Store.GraphDriverName}}\n{{index .Store.GraphOptions \"overlay.mount_program\"}}",
        ]);
        assert!(
            info.status.success(),
            "podman info failed: {}",
            String::from_utf8_lossy(&info.stderr)
        );
        let info = String::from_utf8_lossy(&info.stdout).into_owned();
        let mut lines = info.lines();
        let driver = lines.next().unwrap_or("vfs").trim().to_owned();
        let mount_program = lines
            .next()
            // "map[Executable:/usr/bin/fuse-overlayfs Package:… Version:…]", or "<no value>".
            .and_then(|l| {
                l.trim()
                    .trim_start_matches("map[Executable:")
                    .split_whitespace()
                    .next()
            })
            .filter(|program| program.starts_with('/'))
            .map(str::to_owned);
        let mut conf = format!(
            "[storage]\ndriver = \"{driver}\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.join("storage").display(),
            dir.join("storage-run").display(),
        );
        if let Some(program) = mount_program {
            conf.push_str(&format!(
                "\n[storage.options.overlay]\nmount_program = \"{program}\"\n"
            ));
        }
        conf
    }

    /// The test image saved as an archive (once per test process), for loading into
    /// separate storages.
    fn test_image_archive(&self) -> &'static Path {
        static ARCHIVE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
        let (_, path) = ARCHIVE.get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("parley-e2e-image-")
                .tempdir_in("/tmp")
                .expect("create a directory for the image archive");
            self.chown(dir.path());
            let path = dir.path().join("parley-test.tar");
            let saved = self.podman([
                OsStr::new("save"),
                OsStr::new("-q"),
                OsStr::new("-o"),
                path.as_os_str(),
                OsStr::new(TEST_IMAGE),
            ]);
            assert!(
                saved.status.success(),
                "could not save the test image: {}",
                String::from_utf8_lossy(&saved.stderr)
            );
            (dir, path)
        });
        path
    }

    fn chown(&self, path: &Path) {
        if self.switch {
            nix::unistd::chown(
                path,
                Some(nix::unistd::Uid::from_raw(self.uid)),
                Some(nix::unistd::Gid::from_raw(self.gid)),
            )
            .expect("chown a test directory");
        }
    }
}

/// The workspace's freshly built `parley`, copied where an unprivileged user can execute
/// it (the checkout may live under /root). Warns about a binary older than the sources,
/// which may test yesterday's code.
fn readable_copy_of_binary() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let built = std::env::var_os("PARLEY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace.join("target"));
            target.join("debug/parley")
        });
    let meta = std::fs::metadata(&built).unwrap_or_else(|e| {
        panic!("cannot find the parley binary at {}: {e}; run `cargo build -p parley-agent` first (scripts/test.sh does)", built.display())
    });
    let built_at = meta.modified().expect("binary mtime");
    let newest_source = ["agent", "negotiation", "store", "identity"]
        .iter()
        .map(|krate| {
            // Only what goes into the binary: a changed test file must not force a rebuild.
            let manifest = std::fs::metadata(workspace.join(krate).join("Cargo.toml"))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            newest_mtime(&workspace.join(krate).join("src")).max(manifest)
        })
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    // Only a warning: a source file can change without changing the binary (a unit test
    // inside src/, a dev-dependency), and cargo, not mtimes, knows which.
    if built_at < newest_source {
        eprintln!(
            "WARNING: {} is older than some sources and may be stale; run `cargo build -p parley-agent` \
             before these tests (scripts/test.sh does)",
            built.display()
        );
    }
    let stamp = built_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = PathBuf::from(format!("/tmp/parley-e2e-bin-{}-{stamp}", meta.len()));
    let copy = dir.join("parley");
    if !copy.exists() {
        // Copies of earlier builds are of no further use once an hour old (a younger one
        // may belong to a test run of another checkout, going on right now).
        if let Ok(entries) = std::fs::read_dir("/tmp") {
            for entry in entries.flatten() {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(3600));
                if stale
                    && entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with("parley-e2e-bin-")
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        std::fs::create_dir_all(&dir).expect("create the binary directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // Copy under a unique name and rename, so parallel test processes never see a
        // half-written binary.
        let partial = dir.join(format!("parley.{}", std::process::id()));
        std::fs::copy(&built, &partial).expect("copy the parley binary");
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::rename(&partial, &copy).expect("rename the parley binary");
    }
    copy
}

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return newest;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let mtime = if meta.is_dir() {
            newest_mtime(&path)
        } else if path.extension().is_some_and(|e| e == "rs" || e == "toml") {
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
        } else {
            continue;
        };
        newest = newest.max(mtime);
    }
    newest
}

/// What a `parley` CLI call printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// The exit code (`-1` if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "parley failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts that the command failed with exit code `code` and a message on stderr
    /// containing `needle`.
    #[track_caller]
    pub fn fails_with(&self, code: i32, needle: &str) {
        assert_eq!(self.code(), code, "unexpected exit code: {self:?}");
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            self.stderr
        );
    }

    /// Parses stdout as JSON after asserting success.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// The first replica of workload `name` in a `parley ps -o json` answer.
#[track_caller]
pub fn first_replica(ps: &serde_json::Value, name: &str) -> serde_json::Value {
    let workload = ps["workloads"]
        .as_array()
        .expect("workloads array")
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {ps}"));
    workload["replicas"][0].clone()
}

/// A `parley agent` process with its own directory, sockets, Podman service and node name.
#[derive(Debug)]
pub struct Agent {
    user: &'static TestUser,
    dir: tempfile::TempDir,
    node: String,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    wrapper: Vec<String>,
    /// The network namespace the agent runs in (a [`netbed::NetBed`] host), if not the
    /// test's own.
    namespace: Option<String>,
    /// The subcommand (and its arguments) the agent runs as: `agent`, or `join ADDR …`.
    subcommand: Vec<String>,
    child: Option<Child>,
}

impl Agent {
    /// Starts an agent whose node name includes `tag`, and waits until it answers.
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, &[])
    }

    /// Starts an agent with extra `parley agent` arguments.
    pub fn start_with(tag: &str, extra_args: &[&str]) -> Self {
        Self::start_custom(tag, extra_args, &[], &[])
    }

    /// Starts an agent with extra arguments, extra environment variables, and a wrapper
    /// program the agent is started through (`systemd-socket-activate …`, say).
    pub fn start_custom(
        tag: &str,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Self {
        let mut agent = Self::unstarted(tag, extra_args, extra_env, wrapper);
        agent.launch();
        agent
    }

    /// An agent set up but not started: start it with [`Agent::try_launch`].
    pub fn unstarted(
        tag: &str,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let user = test_user();
        let dir = tempfile::Builder::new()
            .prefix("parley-e2e-")
            .tempdir_in("/tmp")
            .expect("create a test directory");
        user.chown(dir.path());
        let node = format!(
            "e2e-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            user,
            dir,
            node,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            namespace: None,
            subcommand: vec!["agent".to_owned()],
            child: None,
        }
    }

    /// The agent's resident memory now (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("the agent is not running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("read the agent's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// The agent's node name (written into its containers' labels).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The local API socket.
    pub fn api_socket(&self) -> PathBuf {
        match self.extra_args.iter().position(|a| a == "--api-socket") {
            Some(at) => PathBuf::from(&self.extra_args[at + 1]),
            None => self.dir.path().join("api.sock"),
        }
    }

    /// The agent's own directory (sockets, data, log), owned by the test user.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The binary the agent runs.
    pub fn binary(&self) -> &Path {
        &self.user.binary
    }

    /// The data directory (unless the test passed its own `--data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn launch(&mut self) {
        if let Err((status, log)) = self.try_launch(&[]) {
            panic!("the agent exited during start-up ({status}); its log:\n{log}");
        }
    }

    /// Starts the agent (stopped or never started) with `once_args` added for this start
    /// only, and waits until it answers. If it exits during start-up instead, returns its
    /// exit status and log.
    pub fn try_launch(&mut self, once_args: &[&str]) -> Result<(), (ExitStatus, String)> {
        assert!(self.child.is_none(), "the agent is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the agent log");
        self.user.chown(&self.log_path());
        let mut command = match (self.wrapper.split_first(), &self.namespace) {
            (Some((program, args)), None) => {
                let mut command = self.user.command(program);
                command.args(args).arg(&self.user.binary);
                command
            }
            (None, None) => self.user.command(&self.user.binary),
            (None, Some(namespace)) => self.user.command_in_namespace(namespace, &self.user.binary),
            (Some(_), Some(_)) => panic!("an agent in a namespace takes no wrapper"),
        };
        command.envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        command
            .args(&self.subcommand)
            .arg("--node-name")
            .arg(&self.node)
            .args(&self.extra_args)
            .args(once_args)
            .env("PARLEY_LOG", "info,parley_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        if !self.extra_args.iter().any(|a| a == "--api-socket") {
            command.arg("--api-socket").arg(self.api_socket());
        }
        if !self.extra_args.iter().any(|a| a == "--data-dir") {
            command.arg("--data-dir").arg(self.data_dir());
        }
        // Each agent starts its own Podman service on its own socket, unless the test
        // points it elsewhere.
        if !self.extra_args.iter().any(|a| a == "--podman-socket") {
            command
                .arg("--podman-socket")
                .arg(self.dir.path().join("podman.sock"));
        }
        // Not in the test's process group: a Ctrl-C on the test run must not skip Drop's
        // orderly shutdown of the agent.
        command.process_group(0);
        self.child = Some(command.spawn().expect("spawn parley agent"));
        self.wait_until_ready()
    }

    fn wait_until_ready(&mut self) -> Result<(), (ExitStatus, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err((status, self.log()));
            }
            if self.api_socket().exists() && self.cli(["status"]).status.success() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not answer within 60 s; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the agent to exit; returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the agent is not running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the agent") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the agent did not stop within 30 s of SIGTERM; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts an agent with its own container storage, as if on a host of its own: its
    /// containers are invisible to every other agent's Podman (names may repeat across
    /// agents, as across hosts). Images come read-only from the test user's storage (an
    /// additional image store), so the test image needs no copying.
    pub fn start_isolated(tag: &str, extra_args: &[&str]) -> Self {
        Self::start_isolated_as(tag, &["agent"], extra_args)
    }

    /// As [`Agent::start_isolated`], started as `parley SUBCOMMAND… OPTIONS…` (`join ADDR
    /// --token T`, say) rather than `parley agent OPTIONS…`.
    pub fn start_isolated_as(tag: &str, subcommand: &[&str], extra_args: &[&str]) -> Self {
        let mut agent = Self::unstarted_isolated(tag, extra_args);
        agent.start_as(subcommand);
        agent
    }

    /// Starts an agent made by [`Agent::unstarted_isolated`] as `parley SUBCOMMAND…`
    /// (its node name is known before: a join token can be made for it).
    pub fn start_as(&mut self, subcommand: &[&str]) {
        self.subcommand = subcommand.iter().map(|s| s.to_string()).collect();
        self.launch();
    }

    /// As [`Agent::start_isolated`], in the network namespace `namespace` (a
    /// [`netbed::NetBed`] host's): its Podman service, its watchdog and its containers'
    /// networks are in that namespace too.
    pub fn start_isolated_in(namespace: &str, tag: &str, extra_args: &[&str]) -> Self {
        let mut agent = Self::unstarted_isolated(tag, extra_args);
        agent.namespace = Some(namespace.to_owned());
        agent.launch();
        agent
    }

    /// As [`Agent::start_isolated`], but not started yet: see [`Agent::start_as`].
    pub fn unstarted_isolated(tag: &str, extra_args: &[&str]) -> Self {
        let mut agent = Self::unstarted(tag, extra_args, &[], &[]);
        // Rootless Podman reads its storage settings from $XDG_CONFIG_HOME/containers
        // (CONTAINERS_STORAGE_CONF is ignored for rootless users in Podman 4.3).
        let config_home = agent.dir.path().join("config");
        let containers = config_home.join("containers");
        std::fs::create_dir_all(&containers).expect("create the containers config dir");
        let conf = containers.join("storage.conf");
        std::fs::write(&conf, agent.user.isolated_storage_conf(agent.dir.path()))
            .expect("write storage.conf");
        for path in [&config_home, &containers, &conf] {
            agent.user.chown(path);
        }
        agent.extra_env.push((
            "XDG_CONFIG_HOME".to_owned(),
            config_home.display().to_string(),
        ));
        let archive = agent.user.test_image_archive();
        let loaded = agent.podman([
            OsStr::new("load"),
            OsStr::new("-q"),
            OsStr::new("-i"),
            archive.as_os_str(),
        ]);
        assert!(
            loaded.status.success(),
            "could not load the test image into an agent's storage: {}",
            String::from_utf8_lossy(&loaded.stderr)
        );
        agent
    }

    /// Runs `podman ARGS…` as the test user against this agent's container storage.
    pub fn podman<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.user
            .command("podman")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .output()
            .expect("cannot run podman")
    }

    /// Kills the agent with SIGKILL, as a crash would, and reaps it. The Podman service it
    /// started and its containers are left as a crash leaves them.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the agent is not running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
    }

    /// Stops the agent's process with SIGSTOP, as a wedged or swapped-out host would:
    /// nothing it started (its Podman service, its lease watchdog) stops with it.
    pub fn pause(&self) {
        let child = self.child.as_ref().expect("the agent is not running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGSTOP).expect("send SIGSTOP");
    }

    /// Lets a paused agent go on (SIGCONT).
    pub fn resume(&self) {
        let child = self.child.as_ref().expect("the agent is not running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT).expect("send SIGCONT");
    }

    /// Sends SIGHUP (reload the policy) to the running agent.
    pub fn hangup(&self) {
        let child = self.child.as_ref().expect("the agent is not running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).expect("send SIGHUP");
    }

    /// Stops the agent and starts it again over the same data directory and node name.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "the agent exited with {status} on SIGTERM; its log:\n{}",
            self.log()
        );
        self.launch();
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs `parley ARGS…` against this agent, as the test user.
    pub fn cli<I, S>(&self, args: I) -> CliOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.user.parley(&self.api_socket(), args)
    }

    /// Starts `parley ARGS…` against this agent, as the test user, with its stdout piped
    /// (for commands that keep running, like `logs --follow`).
    pub fn cli_spawn<I, S>(&self, args: I) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.user
            .command(&self.user.binary)
            .env("PARLEY_API_SOCKET", self.api_socket())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the parley CLI")
    }

    /// `parley run NAME` of a container that sleeps for an hour and stops at once.
    pub fn run_sleeper(&self, name: &str) -> CliOutput {
        self.run_sleepers(name, 1)
    }

    /// `parley run NAME --replicas N` of containers that sleep for an hour and stop at once.
    pub fn run_sleepers(&self, name: &str, replicas: u32) -> CliOutput {
        self.run_sleepers_with(name, replicas, &[])
    }

    /// As [`Agent::run_sleepers`], with more `parley run` options (`--consistency
    /// strong`, say).
    pub fn run_sleepers_with(&self, name: &str, replicas: u32, options: &[&str]) -> CliOutput {
        let replicas = replicas.to_string();
        let mut args = vec![
            "run",
            name,
            "--image",
            TEST_IMAGE,
            "--replicas",
            &replicas,
            "--stop-timeout",
            "1",
        ];
        args.extend(options);
        args.extend(["--", "sleep", "3600"]);
        self.cli(args)
    }

    /// `parley ps -o json`.
    pub fn ps(&self) -> serde_json::Value {
        self.cli(["ps", "-o", "json"]).json()
    }

    /// The container id of workload `name`'s first replica.
    #[track_caller]
    pub fn container_id(&self, name: &str) -> String {
        let replica = first_replica(&self.ps(), name);
        replica["container_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no container: {replica}"))
            .to_owned()
    }

    /// Names of the workloads `parley ps` lists, sorted.
    pub fn workload_names(&self) -> Vec<String> {
        let ps = self.ps();
        let mut names: Vec<String> = ps["workloads"]
            .as_array()
            .unwrap_or_else(|| panic!("no workloads array: {ps}"))
            .iter()
            .map(|w| w["name"].as_str().expect("workload name").to_owned())
            .collect();
        names.sort();
        names
    }

    /// Ids of the containers Podman holds for this agent's node, in any state.
    pub fn podman_containers(&self) -> Vec<String> {
        let out = self.podman([
            "ps",
            "-a",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=io.parley.node={}", self.node),
        ]);
        assert!(
            out.status.success(),
            "podman ps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        // A killed agent leaves the Podman service it started running; stop it.
        let podman_socket = self.dir.path().join("podman.sock");
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!(
                "podman system service --time=0 unix://{}",
                podman_socket.display()
            ))
            .status();
        // Leave no container behind, whatever the test did. A container the stopped agent
        // was removing at that moment can refuse the first attempt; an isolated agent's
        // storage goes away with its directory, and a container left in it would run on,
        // unreachable.
        for _ in 0..3 {
            let ids = self.podman_containers_quietly();
            if ids.is_empty() {
                break;
            }
            // Killed first: a container whose stop was cut off by the agent's end (its
            // Podman service killed mid-stop) is forgotten by `rm -f` with its process
            // still running (Podman 4.3), outliving the test's storage.
            let mut kill = vec!["kill".to_owned()];
            kill.extend(ids.iter().cloned());
            let _ = self.podman(kill);
            let mut args = vec![
                "rm".to_owned(),
                "-f".to_owned(),
                "-t".to_owned(),
                "0".to_owned(),
            ];
            args.extend(ids);
            let _ = self.podman(args);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Agent {
    fn podman_containers_quietly(&self) -> Vec<String> {
        let out = self.podman([
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=io.parley.node={}", self.node),
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A small tmpfs owned by the test user, for running out of disk on purpose. Mounting
/// needs root (or passwordless sudo); without either the test fails saying so.
#[derive(Debug)]
pub struct SmallFs {
    dir: tempfile::TempDir,
    filler: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `size_bytes` owned by the test user.
    pub fn mount(size_bytes: u64) -> Self {
        let user = test_user();
        let dir = tempfile::Builder::new()
            .prefix("parley-e2e-smallfs-")
            .tempdir_in("/tmp")
            .expect("create a mount point");
        let options = format!(
            "size={size_bytes},uid={},gid={},mode=0700",
            user.uid, user.gid
        );
        let mut command = if nix::unistd::geteuid().is_root() {
            Command::new("mount")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "mount"]);
            sudo
        };
        let out = command
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill up, which needs root or passwordless sudo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let filler = dir.path().join("filler");
        Self { dir, filler }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system to the last byte.
    pub fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(&self.filler).expect("create the filler");
        let block = vec![0u8; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling the small file system failed: {e}"),
            }
        }
        // Fill the last partial block too.
        while file.write(&[0u8]).is_ok_and(|n| n == 1) {}
    }

    /// Frees what [`SmallFs::fill`] took.
    pub fn free(&self) {
        let _ = std::fs::remove_file(&self.filler);
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let mut command = if nix::unistd::geteuid().is_root() {
            Command::new("umount")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "umount"]);
            sudo
        };
        let _ = command.arg("-l").arg(self.dir.path()).output();
    }
}

/// A trust domain for tests: a root key in a directory of the test user's, and node
/// identities enrolled from it through the real `parley identity` commands.
#[derive(Debug)]
pub struct TrustDomain {
    name: String,
    dir: tempfile::TempDir,
}

impl TrustDomain {
    /// Creates the root of trust domain `name` (`parley identity init`).
    pub fn new(name: &str) -> Self {
        let user = test_user();
        let dir = tempfile::Builder::new()
            .prefix("parley-e2e-td-")
            .tempdir_in("/tmp")
            .expect("create a trust domain directory");
        user.chown(dir.path());
        let domain = Self {
            name: name.to_owned(),
            dir,
        };
        domain
            .identity(&domain.root(), ["init", "--trust-domain", name])
            .ok();
        domain
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn identity<I, S>(&self, dir: &Path, args: I) -> CliOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let user = test_user();
        let mut command = user.command(&user.binary);
        command.arg("identity").arg("--dir").arg(dir).args(args);
        let output = command.output().expect("run parley identity");
        CliOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Writes a file the test user may read and the test may rewrite (a policy file, say)
    /// beside the domain's identities, and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write a file for the agents");
        test_user().chown(&path);
        path
    }

    /// A directory of the test user's, for files and identities of a test's own.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The root's public key (hex), as `parley identity show` prints it.
    pub fn root_public_key(&self) -> String {
        let shown = self.identity(&self.root(), ["show", "-o", "json"]).json();
        shown["trust_bundle"][0]["root_public_key"]
            .as_str()
            .expect("the root directory trusts its own root")
            .to_owned()
    }

    /// Enrols `spiffe://DOMAIN/node/NODE` in the root's own directory, which then holds
    /// the node's identity beside the root key: an agent using it is an issuer.
    pub fn enroll_issuer(&self, node: &str) -> PathBuf {
        self.enroll_into(&self.root(), node, "24h")
    }

    /// As [`TrustDomain::enroll`], with a certificate valid for `ttl` (`20s`, `5m`, …).
    pub fn enroll_for(&self, node: &str, ttl: &str) -> PathBuf {
        self.enroll_into(&self.dir.path().join(node), node, ttl)
    }

    /// Enrols `spiffe://DOMAIN/node/NODE` (request, issue, accept) and returns its
    /// identity directory, for `parley agent --identity-dir`.
    pub fn enroll(&self, node: &str) -> PathBuf {
        self.enroll_into(&self.dir.path().join(node), node, "24h")
    }

    fn enroll_into(&self, dir: &Path, node: &str, ttl: &str) -> PathBuf {
        let dir = dir.to_path_buf();
        let id = format!("spiffe://{}/node/{node}", self.name);
        let request = self.identity(&dir, ["request", "--id", id.as_str()]);
        let request_file = self.dir.path().join(format!("{node}.request.json"));
        std::fs::write(&request_file, request.ok()).expect("write the request");
        let response = self.identity(
            &self.root(),
            [
                OsStr::new("issue"),
                request_file.as_os_str(),
                OsStr::new("--ttl"),
                OsStr::new(ttl),
            ],
        );
        let response_file = self.dir.path().join(format!("{node}.response.json"));
        std::fs::write(&response_file, response.ok()).expect("write the response");
        self.identity(&dir, [OsStr::new("accept"), response_file.as_os_str()])
            .ok();
        dir
    }
}
