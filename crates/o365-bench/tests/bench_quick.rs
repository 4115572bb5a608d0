//! `o365-bench --quick` (what CI runs so the benchmark cannot rot): it must run every section
//! against the local Redis and RabbitMQ, print its table and exit 0. No assertion on speed —
//! timing goals live in BENCHMARKS.md, not in tests.

use std::process::Command;

#[test]
fn quick_benchmark_prints_its_table_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_o365-bench"))
        .arg("--quick")
        .output()
        .expect("o365-bench starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "o365-bench --quick failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("## o365-bench results"), "{stdout}");
    assert!(
        stdout.contains("| section") && stdout.contains("| ceiling"),
        "no table header:\n{stdout}"
    );
    for section in [
        "| 1 ingest",
        "| 2 end to end",
        "| 3 tokens",
        "| 4 memory",
        "| 5 reconcile",
        "| 6 fairness",
        "| 7 tenants",
        "| 8 dedup-memory",
        "| 9 scale",
    ] {
        assert!(stdout.contains(section), "no '{section}' row:\n{stdout}");
    }
    for ratio_row in [
        "notifications/s vs minimal webhook",
        "CPU µs per request",
        "records/s",
        "Redis CPU µs per new record",
        "relay + Redis CPU µs per record",
        "peak above idle",
    ] {
        assert!(
            stdout.contains(ratio_row),
            "no '{ratio_row}' row:\n{stdout}"
        );
    }
}
