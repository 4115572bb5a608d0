//! What `/proc` tells of the processes and the machine: CPU seconds of the relay, of this
//! process and of RabbitMQ; the relay's memory; how busy the whole machine was; what machine
//! this is (proc(5)).

use std::process::Command;

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a `/proc/<pid>/stat`, in seconds.
pub fn cpu_secs(path: &str) -> f64 {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime is field 14, stime 15 (1-based) = index 11, 12 after the name.
    (ticks(11) + ticks(12)) / clk_tck()
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM:`, `VmRSS:`); `None` when unreadable.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// (VmHWM, VmRSS) of a process in kB (0 when unreadable).
pub fn memory_kb(pid: u32) -> (u64, u64) {
    (
        status_kb(pid, "VmHWM:").unwrap_or(0),
        status_kb(pid, "VmRSS:").unwrap_or(0),
    )
}

/// The RabbitMQ server process (`beam.smp`) of the machine's broker (AMQP port 5672), to
/// account its CPU.
pub fn rabbit_pid() -> Option<u32> {
    rabbit_pid_on(5672)
}

/// The RabbitMQ server process (`beam.smp`) listening on AMQP `port`. When only one `beam.smp`
/// runs it is that one; when several do (another test's RabbitMQ cluster nodes beside the
/// machine's broker), the one holding the listening socket.
pub fn rabbit_pid_on(port: u16) -> Option<u32> {
    let beams: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "beam.smp").then_some(pid)
        })
        .collect();
    if beams.len() <= 1 {
        return beams.first().copied();
    }
    let inodes = listening_inodes(port);
    beams.into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|l| {
                l.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .any(|inode| inodes.contains(&inode))
    })
}

/// Socket inodes listening (state `0A`) on TCP `port`, from `/proc/net/tcp` and `tcp6`.
fn listening_inodes(port: u16) -> Vec<u64> {
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.get(1)?.ends_with(&local) && *f.get(3)? == "0A")
                        .then(|| f.get(9)?.parse().ok())
                        .flatten()
                })
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// (busy, total) jiffies of the whole machine from `/proc/stat`.
pub fn machine_jiffies() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// CPU seconds of the participants at one instant.
#[derive(Clone, Copy)]
pub struct CpuSnap {
    relay: f64,
    bench: f64,
    rabbit: f64,
    busy: f64,
    total: f64,
}

impl CpuSnap {
    /// `relay`: the relay process, when one is measured.
    pub fn take(relay: Option<u32>, rabbit: Option<u32>) -> CpuSnap {
        let (busy, total) = machine_jiffies();
        CpuSnap {
            relay: relay.map_or(0.0, |p| cpu_secs(&format!("/proc/{p}/stat"))),
            bench: cpu_secs("/proc/self/stat"),
            rabbit: rabbit.map_or(0.0, |p| cpu_secs(&format!("/proc/{p}/stat"))),
            busy,
            total,
        }
    }

    /// CPU µs per op of the measured child process (the `relay` of [`CpuSnap::take`]).
    pub fn child_us(&self, later: &CpuSnap, ops: f64) -> f64 {
        (later.relay - self.relay) / ops.max(1.0) * 1e6
    }

    /// "relay X µs + this process Y µs + RabbitMQ Z µs per op; machine N % busy".
    pub fn per_op(&self, later: &CpuSnap, ops: f64, this: &str) -> String {
        self.per_op_named(later, ops, "relay", this)
    }

    /// [`CpuSnap::per_op`] with the measured child process called `child`.
    pub fn per_op_named(&self, later: &CpuSnap, ops: f64, child: &str, this: &str) -> String {
        let us = |a: f64, b: f64| (b - a) / ops.max(1.0) * 1e6;
        let busy = (later.busy - self.busy) / (later.total - self.total).max(1.0) * 100.0;
        let relay = us(self.relay, later.relay);
        let mut parts = Vec::new();
        if relay > 0.0 {
            parts.push(format!("{child} {relay:.0} µs"));
        }
        parts.push(format!("{this} {:.0} µs", us(self.bench, later.bench)));
        if later.rabbit > 0.0 {
            parts.push(format!("RabbitMQ {:.0} µs", us(self.rabbit, later.rabbit)));
        }
        format!(
            "CPU per op: {}; machine {busy:.0} % busy",
            parts.join(" + ")
        )
    }
}

/// "MODEL, N CPUs, M GiB RAM, load average A B C".
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!("{model}, {cpus} CPUs, {mem_gb:.1} GiB RAM, load average {load}")
}
