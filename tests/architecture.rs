//! The shape of the house, checked: the wiring (`src/app.rs`) is imported only by the entry
//! points, Redis keys are built only in `src/store/` and name a tenant through its hash tag,
//! and the production package links neither
//! the simulator nor the test harness unless the `demo` feature asks for them (README, "How it
//! works").

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 20, "found the sources: {files:?}");
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root)
                .expect("under the package")
                .to_string_lossy()
                .into_owned();
            (rel, std::fs::read_to_string(&p).expect("readable source"))
        })
        .collect()
}

#[test]
fn only_the_entry_points_import_the_wiring() {
    let entry_points = |f: &str| {
        f == "src/app.rs" || f == "src/main.rs" || f == "src/demo.rs" || f.starts_with("src/cli/")
    };
    let offenders: Vec<String> = sources()
        .into_iter()
        .filter(|(f, text)| {
            !entry_points(f) && (text.contains("crate::app") || text.contains("o365_relay::app"))
        })
        .map(|(f, _)| f)
        .collect();
    assert!(
        offenders.is_empty(),
        "components must receive what they need, not reach into the wiring: {offenders:?}"
    );
}

#[test]
fn the_redis_client_is_used_only_inside_the_store() {
    let offenders: Vec<String> = sources()
        .into_iter()
        .filter(|(f, _)| !f.starts_with("src/store/"))
        .filter(|(_, text)| {
            text.lines().any(|l| {
                l.trim_start().starts_with("use redis")
                    || [
                        "redis::cmd",
                        "redis::Script",
                        "redis::Client",
                        "redis::aio",
                        "AsyncCommands",
                    ]
                    .iter()
                    .any(|api| l.contains(api))
            })
        })
        .map(|(f, _)| f)
        .collect();
    assert!(
        offenders.is_empty(),
        "Redis outside src/store/: {offenders:?}"
    );
}

/// In a Redis Cluster a script or pipeline may touch the keys of one slot only; the store puts
/// a tenant's id into its keys through `Store::tenant` (a hash tag in cluster mode). A key
/// formatted with the bare id would land in another slot and fail there with CROSSSLOT — on a
/// cluster only, where few tests run — so it is refused here.
#[test]
fn store_keys_name_a_tenant_through_its_hash_tag() {
    let mut offenders = Vec::new();
    for (f, text) in sources()
        .into_iter()
        .filter(|(f, _)| f.starts_with("src/store/"))
    {
        // Production code only: the tests below `mod tests` read keys as they are.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (i, l) in code.lines().enumerate() {
            let builds_key = l.contains("format!(\"") && l.contains(':');
            let bare = ["{t}", "{t:", "{tenant}", "{tid}", "{t.as_str()}"]
                .iter()
                .any(|p| l.contains(p));
            if builds_key && bare {
                offenders.push(format!("{f}:{}: {}", i + 1, l.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "keys naming a tenant without Store::tenant: {offenders:#?}"
    );
}

#[test]
fn the_production_package_links_the_simulator_and_the_harness_only_for_the_demo() {
    let manifest: toml_like::Manifest =
        toml_like::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    for dep in ["o365-sim", "test-support"] {
        let line = manifest
            .dependency(dep)
            .unwrap_or_else(|| panic!("{dep} is a dependency of the demo"));
        assert!(
            line.contains("optional = true"),
            "{dep} must be optional: {line}"
        );
        assert!(
            manifest.feature("demo").contains(&format!("dep:{dep}")),
            "the demo feature enables {dep}"
        );
    }
}

/// Just enough of the manifest's text for the checks above (no TOML parser in the tests).
mod toml_like {
    use std::path::Path;

    pub struct Manifest(String);

    pub fn read(path: &Path) -> Manifest {
        Manifest(std::fs::read_to_string(path).expect("Cargo.toml"))
    }

    impl Manifest {
        fn section(&self, name: &str) -> &str {
            let start = self
                .0
                .find(&format!("\n[{name}]\n"))
                .unwrap_or_else(|| panic!("[{name}] in Cargo.toml"));
            let rest = &self.0[start + name.len() + 3..];
            &rest[..rest.find("\n[").unwrap_or(rest.len())]
        }

        pub fn dependency(&self, name: &str) -> Option<&str> {
            self.section("dependencies")
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}.")))
        }

        pub fn feature(&self, name: &str) -> &str {
            self.section("features")
                .lines()
                .find(|l| l.starts_with(&format!("{name} =")))
                .unwrap_or("")
        }
    }
}
