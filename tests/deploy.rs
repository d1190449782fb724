//! The Kubernetes manifests of `deploy/kubernetes` validated without a
//! cluster, by `tests/k8s_manifests.py` (see there for what is checked).

mod common;

use std::path::Path;

#[test]
fn kubernetes_manifests_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new(common::server::python())
        .arg(root.join("tests/k8s_manifests.py"))
        .arg(root)
        .output()
        .expect("cannot run Python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let objects: usize = stdout.trim().parse().expect("a count");
    assert!(objects >= 5, "{stdout}");
}
