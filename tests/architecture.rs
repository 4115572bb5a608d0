//! The shape of the house, checked: no import circle among the relay's modules, the wiring
//! (`src/app.rs`) imported only by the entry points, Redis keys built only in `src/store/` and
//! naming a tenant through its hash tag, RabbitMQ spoken only by `src/broker/`, neither the
//! simulator nor the test harness linked into the production package unless the `demo` feature
//! asks for them, and no other workspace member (the example consumer) linked at all (README,
//! "How it works").

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

/// The lapin calls that talk to RabbitMQ: channels, declarations, publishes, gets, consumers
/// and acknowledgements.
const AMQP_OPERATIONS: [&str; 20] = [
    "create_channel(",
    ".confirm_select(",
    ".basic_get(",
    ".basic_publish(",
    ".basic_consume(",
    ".basic_cancel(",
    ".basic_qos(",
    ".basic_ack(",
    ".basic_nack(",
    ".basic_reject(",
    ".queue_declare(",
    ".queue_bind(",
    ".queue_unbind(",
    ".queue_delete(",
    ".queue_purge(",
    ".exchange_declare(",
    ".exchange_bind(",
    ".exchange_delete(",
    ".acker.",
    "Connection::connect",
];

/// The lines of `text` outside comments that call lapin or name it, as `(line number, line)`.
fn amqp_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .filter(|(_, l)| {
            l.contains("lapin::")
                || l.trim_start().starts_with("use lapin")
                || AMQP_OPERATIONS.iter().any(|op| l.contains(op))
        })
        .map(|(i, l)| (i + 1, l.trim().to_string()))
        .collect()
}

/// The broker owns lapin: every channel, declaration, publish, get and acknowledgement is in
/// `src/broker/`, where the confirms, the return ledger and the "ack only after the copy was
/// confirmed" rule live once. Elsewhere the relay calls the broker (`publish_batch`, `consume`,
/// `rotate`, `declare_queue`) and names message types through it. The one exception is the
/// configuration, which checks `O365_AMQP_URL` with lapin's own URL parser (so that a URL
/// accepted at start cannot fail to parse at a reconnect).
#[test]
fn only_the_broker_speaks_to_rabbitmq() {
    let allowed = |f: &str, line: &str| {
        f.starts_with("src/broker/") || (f == "src/config/amqp.rs" && line.contains("AMQPUri"))
    };
    let mut offenders = Vec::new();
    let mut broker_calls = 0;
    for (f, text) in sources() {
        for (n, line) in amqp_lines(&text) {
            if allowed(&f, &line) {
                broker_calls += usize::from(f.starts_with("src/broker/"));
            } else {
                offenders.push(format!("{f}:{n}: {line}"));
            }
        }
    }
    assert!(broker_calls > 10, "the broker's own calls were found");
    assert!(
        offenders.is_empty(),
        "RabbitMQ outside src/broker/ (add what is needed to the broker instead): {offenders:#?}"
    );
}

#[test]
fn the_rabbitmq_check_finds_calls_and_names_but_not_comments() {
    let found = amqp_lines(
        "let ch = conn.create_channel().await?;\n// ch.basic_get(q)\nch.basic_get(q, o).await?;\nd.acker.ack(o);\nuse lapin::options::X;\nfn f() -> lapin::BasicProperties {}\nbroker.rotate(q);",
    );
    assert_eq!(
        found.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [1, 3, 4, 5, 6]
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

#[test]
fn no_other_workspace_member_is_linked_into_the_production_package() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = toml_like::read(&root.join("Cargo.toml"));
    let members = manifest.members();
    assert!(
        members.iter().any(|m| m == "examples/consumer-rust"),
        "read the members: {members:?}"
    );
    for member in members {
        let name = toml_like::read(&root.join(&member).join("Cargo.toml")).package_name();
        if name == "o365-sim" || name == "test-support" {
            continue; // the demo's, checked above
        }
        assert!(
            manifest.dependency(&name).is_none(),
            "{member} ({name}) must not be a dependency of the relay"
        );
    }
}

/// Just enough of the manifest's text for the checks above (no TOML parser in the tests).
mod toml_like {
    use std::path::Path;

    pub struct Manifest(String);

    pub fn read(path: &Path) -> Manifest {
        // A newline first, so that a section on the first line is found like any other.
        Manifest(format!(
            "\n{}",
            std::fs::read_to_string(path).expect("Cargo.toml")
        ))
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

        /// `[workspace] members`, written on one line.
        pub fn members(&self) -> Vec<String> {
            let line = self
                .section("workspace")
                .lines()
                .find(|l| l.starts_with("members = ["))
                .expect("members = [...] on one line");
            line.split('"')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        }

        /// `[package] name`.
        pub fn package_name(&self) -> String {
            self.section("package")
                .lines()
                .find_map(|l| l.strip_prefix("name = "))
                .expect("[package] name")
                .trim_matches('"')
                .to_string()
        }

        pub fn feature(&self, name: &str) -> &str {
            self.section("features")
                .lines()
                .find(|l| l.starts_with(&format!("{name} =")))
                .unwrap_or("")
        }
    }
}

/// The rooms of `src/` (README.md, "How it works"), lowest first, each with the rooms it may
/// import. A room imports only rooms below it, so the folders read as layers: Microsoft's side
/// knows nothing of tenants, tenancy nothing of the data path, the data path nothing of the
/// admin listener. The entry points (`app`, `cli`, `demo`, `main`) import anything.
const ROOMS: [(&str, &[&str]); 9] = [
    ("domain", &[]),
    ("config", &["domain"]),
    ("store", &["domain", "config"]),
    ("broker", &["domain", "config"]),
    ("ops", &["domain", "config", "broker"]),
    ("microsoft", &["domain", "config", "store", "ops"]),
    (
        "tenancy",
        &["domain", "config", "store", "ops", "microsoft"],
    ),
    (
        "pipeline",
        &[
            "domain",
            "config",
            "store",
            "broker",
            "ops",
            "microsoft",
            "tenancy",
        ],
    ),
    (
        "http",
        &[
            "domain",
            "config",
            "store",
            "broker",
            "ops",
            "microsoft",
            "tenancy",
            "pipeline",
        ],
    ),
];

/// The rooms whose folder holds modules of their own standing, each a node of the import
/// graph (`pipeline::worker`); elsewhere (`store`, `broker`, `config`, `cli`) the folder is one
/// module whose files are its parts.
const ROOMS_OF_MODULES: [&str; 6] = ["domain", "microsoft", "tenancy", "pipeline", "http", "ops"];

/// The module named by `path` (its `::` segments from the crate root): `pipeline::worker` for
/// `pipeline::worker::Worker` or `src/pipeline/worker.rs`, `store` for `store::dedup::Dedup`,
/// `domain` for `domain::TenantId` (an item of the room itself).
fn module_of(path: &[&str]) -> Option<String> {
    let first = *path.first()?;
    if first.is_empty() || first == "lib" || first == "main" {
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    match path.get(1) {
        Some(second)
            if ROOMS_OF_MODULES.contains(&first)
                && (src.join(first).join(format!("{second}.rs")).is_file()
                    || src.join(first).join(second).join("mod.rs").is_file()) =>
        {
            Some(format!("{first}::{second}"))
        }
        _ => Some(first.to_string()),
    }
}

/// The module a source file belongs to (`src/store/dedup/mod.rs` → `store`,
/// `src/pipeline/work_queue/settle.rs` → `pipeline::work_queue`); `None` for the crate roots.
fn module_of_file(file: &str) -> Option<String> {
    let rest = file.strip_prefix("src/")?.strip_suffix(".rs")?;
    let segments: Vec<&str> = rest.split('/').filter(|s| *s != "mod").collect();
    module_of(&segments)
}

/// The room of a module (`pipeline::worker` → `pipeline`).
fn room(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// The modules `text` names through `crate::` paths — `use crate::a::b`, `crate::a::f(…)` in
/// code, `use crate::{a, b::c}` — outside comments and unit tests, as their first two
/// segments (`module_of` decides how many name the module).
fn imports(text: &str) -> std::collections::BTreeSet<Vec<String>> {
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    // The entries of a `{…}` group that starts `s` (just after the brace): each entry's text.
    let entries = |group: &str| -> Vec<String> {
        let mut out = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    out.push(group[start..j].trim().to_string());
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(group[start..j].trim().to_string());
                    start = j + 1;
                }
                _ => {}
            }
        }
        out.retain(|e| e.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'));
        out
    };
    // `a::b…` → [["a", "b"]]; `a` → [["a"]]; `a::{b, c::d}` → [["a", "b"], ["a", "c"]].
    let paths = |s: &str| -> Vec<Vec<String>> {
        let first = ident(s);
        if first.is_empty() {
            return Vec::new();
        }
        let rest = s[first.len()..].strip_prefix("::").unwrap_or("");
        if let Some(group) = rest.strip_prefix('{') {
            let seconds: Vec<Vec<String>> = entries(group)
                .iter()
                .map(|e| vec![first.clone(), ident(e)])
                .collect();
            return if seconds.is_empty() {
                vec![vec![first]]
            } else {
                seconds
            };
        }
        let second = ident(rest);
        if second.is_empty() {
            vec![vec![first]]
        } else {
            vec![vec![first, second]]
        }
    };
    let mut out = std::collections::BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let after = &code[i + "crate::".len()..];
        match after.strip_prefix('{') {
            Some(group) => {
                for entry in entries(group) {
                    out.extend(paths(&entry));
                }
            }
            None => out.extend(paths(after)),
        }
    }
    out
}

/// The module graph of `src/`: each module and the modules it imports (itself left out).
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for (file, text) in sources() {
        let Some(module) = module_of_file(&file) else {
            continue;
        };
        let imported: Vec<String> = imports(&text)
            .iter()
            .filter_map(|p| module_of(&p.iter().map(String::as_str).collect::<Vec<_>>()))
            .filter(|m| *m != module)
            .collect();
        graph.entry(module).or_default().extend(imported);
    }
    graph
}

/// A cycle in `graph`, as the modules along it (first repeated at the end), if there is one.
fn find_cycle(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Option<Vec<String>> {
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_circle_among_the_relays_modules() {
    let graph = module_graph();
    assert!(
        graph.get("store").is_some_and(|s| s.contains("config"))
            && graph
                .get("pipeline::worker")
                .is_some_and(|s| s.contains("pipeline::work_queue")),
        "the graph was read: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "modules import each other in a circle: {} — move what both need to a module \
             below them",
            cycle.join(" → ")
        );
    }
}

#[test]
fn the_circle_check_reads_every_form_of_path_and_names_the_circle() {
    let found = imports(
        "use crate::a::b;\nuse crate::{c, d::{e, f}, g};\n// crate::commented\nlet x = crate::h::f();\n#[cfg(test)]\nuse crate::tested;",
    );
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["a::b", "c", "d::e", "d::f", "g", "h::f"]);
    let graph = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), [v.to_string()].into()))
        .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
    let acyclic = [("a", "b"), ("b", "c"), ("d", "a")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), [v.to_string()].into()))
        .collect();
    assert_eq!(find_cycle(&acyclic), None);
}

/// Each room imports only the rooms below it ([`ROOMS`]); a new import across the layers fails
/// here, naming the file and what it imports.
#[test]
fn each_room_imports_only_the_rooms_below_it() {
    let entry_points = ["app", "cli", "demo"];
    let mut offenders = Vec::new();
    let mut checked = 0;
    for (file, text) in sources() {
        let Some(module) = module_of_file(&file) else {
            continue;
        };
        let here = room(&module).to_string();
        if entry_points.contains(&here.as_str()) {
            continue;
        }
        let Some((_, allowed)) = ROOMS.iter().find(|(r, _)| *r == here) else {
            offenders.push(format!(
                "{file}: {here} is not a room of ROOMS (add it, with what it may import)"
            ));
            continue;
        };
        for path in imports(&text) {
            let Some(imported) = module_of(&path.iter().map(String::as_str).collect::<Vec<_>>())
            else {
                continue;
            };
            let there = room(&imported);
            checked += 1;
            if there != here && !allowed.contains(&there) {
                offenders.push(format!("{file} ({here}) imports {}", path.join("::")));
            }
        }
    }
    assert!(checked > 100, "the imports were read ({checked})");
    assert!(
        offenders.is_empty(),
        "imports against the layers (a room imports only the rooms below it; move what both need \
         down): {offenders:#?}"
    );
}

#[test]
fn the_layer_check_places_files_and_paths_in_their_modules() {
    assert_eq!(
        module_of_file("src/pipeline/worker.rs").as_deref(),
        Some("pipeline::worker")
    );
    assert_eq!(
        module_of_file("src/pipeline/work_queue/settle.rs").as_deref(),
        Some("pipeline::work_queue")
    );
    assert_eq!(
        module_of_file("src/store/dedup/mod.rs").as_deref(),
        Some("store")
    );
    assert_eq!(module_of_file("src/lib.rs"), None);
    assert_eq!(
        module_of(&["domain", "TenantId"]).as_deref(),
        Some("domain")
    );
    assert_eq!(
        module_of(&["domain", "secret"]).as_deref(),
        Some("domain::secret")
    );
    assert_eq!(module_of(&["store", "dedup"]).as_deref(), Some("store"));
    assert_eq!(room("http::admin"), "http");
}
