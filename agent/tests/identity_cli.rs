//! `parley identity` through the binary: enrolling a node with files only (an offline
//! root), and bad input that gives a clear error and changes nothing on disk.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn parley(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parley"))
        .arg("identity")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("PARLEY_IDENTITY_DIR")
        .output()
        .expect("run parley")
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "parley failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn fails(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
}

/// Every file in `dir` with its mode and contents.
fn snapshot(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let meta = e.metadata().unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        (
                            meta.permissions().mode() & 0o777,
                            std::fs::read(e.path()).unwrap(),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    node: PathBuf,
    files: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let node = tmp.path().join("node");
    let files = tmp.path().join("files");
    std::fs::create_dir(&files).unwrap();
    ok(&parley(&root, &["init", "--trust-domain", "example.org"]));
    Setup {
        root,
        node,
        files,
        _tmp: tmp,
    }
}

fn request(s: &Setup, id: &str) -> PathBuf {
    let out = ok(&parley(&s.node, &["request", "--id", id]));
    let path = s.files.join("request.json");
    std::fs::write(&path, out).unwrap();
    path
}

fn issue(s: &Setup, request: &Path, ttl: &str) -> PathBuf {
    let out = ok(&parley(
        &s.root,
        &["issue", request.to_str().unwrap(), "--ttl", ttl],
    ));
    let path = s.files.join("response.json");
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn a_node_enrolls_with_files_and_an_offline_root() {
    let s = setup();
    assert_eq!(mode(&s.root.join("root.key")), 0o600);
    assert_eq!(mode(&s.root), 0o700);

    let request_path = request(&s, "spiffe://example.org/node/edge-1");
    assert_eq!(mode(&s.node.join("pending.key")), 0o600);
    let request: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&request_path).unwrap()).unwrap();
    let fields: Vec<&String> = request.as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        ["point", "subject"],
        "the request carries more than the public point"
    );

    let response = issue(&s, &request_path, "1h");
    let out = ok(&parley(&s.node, &["accept", response.to_str().unwrap()]));
    assert!(out.contains("spiffe://example.org/node/edge-1"), "{out}");
    assert_eq!(mode(&s.node.join("node.key")), 0o600);
    assert!(
        !s.node.join("pending.key").exists(),
        "the spent request secret was kept"
    );

    let show: serde_json::Value =
        serde_json::from_str(&ok(&parley(&s.node, &["show", "-o", "json"]))).unwrap();
    assert_eq!(show["node"]["id"], "spiffe://example.org/node/edge-1");
    assert_eq!(show["node"]["expired"], false);
    assert_eq!(show["holds_root_key"], false);
    assert_eq!(show["trust_bundle"][0]["trust_domain"], "example.org");
    let root_show: serde_json::Value =
        serde_json::from_str(&ok(&parley(&s.root, &["show", "-o", "json"]))).unwrap();
    assert_eq!(show["trust_bundle"], root_show["trust_bundle"]);

    // The node's private key appears nowhere the root (or the files in transit) saw.
    let node_secret = std::fs::read_to_string(s.node.join("node.key")).unwrap();
    let node_secret = node_secret.trim();
    for dir in [&s.root, &s.files] {
        for (name, (_, contents)) in snapshot(dir) {
            assert!(
                !String::from_utf8_lossy(&contents).contains(node_secret),
                "the node's key leaked into {name}"
            );
        }
    }
    let table = ok(&parley(&s.node, &["show"]));
    assert!(
        table.contains("node:      spiffe://example.org/node/edge-1"),
        "{table}"
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing_on_disk() {
    let s = setup();

    // A garbled request.
    let garbled = s.files.join("garbled.json");
    std::fs::write(
        &garbled,
        "{\"subject\": \"spiffe://example.org/node/x\", \"point\": \"zz\"}",
    )
    .unwrap();
    let before = snapshot(&s.root);
    fails(
        &parley(&s.root, &["issue", garbled.to_str().unwrap()]),
        "malformed request point",
    );
    std::fs::write(&garbled, "not json").unwrap();
    fails(
        &parley(&s.root, &["issue", garbled.to_str().unwrap()]),
        "is not a valid certificate request",
    );
    assert_eq!(snapshot(&s.root), before);

    // A request for another trust domain, or for something a root does not issue.
    let foreign = request(&s, "spiffe://other.org/node/x");
    fails(
        &parley(&s.root, &["issue", foreign.to_str().unwrap()]),
        "another trust domain",
    );
    let workload = request(&s, "spiffe://example.org/ns/prod/wl/web");
    fails(
        &parley(&s.root, &["issue", workload.to_str().unwrap()]),
        "node identities (/node/NAME) only",
    );
    assert_eq!(snapshot(&s.root), before);

    // An invalid SPIFFE ID never becomes a request.
    let node_before = snapshot(&s.node);
    fails(
        &parley(&s.node, &["request", "--id", "spiffe://Example.org/node/x"]),
        "invalid SPIFFE ID",
    );
    assert_eq!(snapshot(&s.node), node_before);

    // An expired response (issued for one second, accepted with no skew allowed).
    let req = request(&s, "spiffe://example.org/node/edge-1");
    let response = issue(&s, &req, "1s");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let node_before = snapshot(&s.node);
    fails(
        &parley(
            &s.node,
            &["--clock-skew", "0", "accept", response.to_str().unwrap()],
        ),
        "expired",
    );
    assert_eq!(snapshot(&s.node), node_before);

    // A tampered response.
    let response = issue(&s, &req, "1h");
    let mut answer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&response).unwrap()).unwrap();
    let r = answer["reconstruction"].as_str().unwrap().to_owned();
    let flipped = format!("{}{}", &r[..63], if r.ends_with('0') { "1" } else { "0" });
    answer["reconstruction"] = flipped.into();
    let tampered = s.files.join("tampered.json");
    std::fs::write(&tampered, answer.to_string()).unwrap();
    fails(
        &parley(&s.node, &["accept", tampered.to_str().unwrap()]),
        "does not match the certificate",
    );
    assert_eq!(snapshot(&s.node), node_before);

    // A request secret others can read is refused, with the fix.
    std::fs::set_permissions(
        s.node.join("pending.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let node_before = snapshot(&s.node);
    fails(
        &parley(&s.node, &["accept", response.to_str().unwrap()]),
        "chmod 600",
    );
    assert_eq!(snapshot(&s.node), node_before);
    std::fs::set_permissions(
        s.node.join("pending.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    ok(&parley(&s.node, &["accept", response.to_str().unwrap()]));

    // A second init over an existing root is refused.
    let before = snapshot(&s.root);
    fails(
        &parley(&s.root, &["init", "--trust-domain", "example.org"]),
        "already trusts a root",
    );
    assert_eq!(snapshot(&s.root), before);

    // Issuing without a root key says where to get one.
    fails(
        &parley(&s.node, &["issue", req.to_str().unwrap()]),
        "parley identity init",
    );
}
