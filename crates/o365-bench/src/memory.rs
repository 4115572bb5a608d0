//! Section 4, memory: one relay process; its RSS at idle, then its peak (VmHWM) while it relays
//! one big blob of ~1 KB records to the sink.

use crate::harness::{start_sim, Ctx, RelayProc, TENANT_A};
use crate::procfs;
use crate::report::{mb, Row};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// ~1 KB records in Microsoft's shape (SharePoint FileAccessed), each a distinct `Id`.
fn big_records(total_bytes: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(total_bytes / 1000 + 1);
    let mut size = 0;
    let pad = "x".repeat(560);
    let mut i = 0u64;
    while size < total_bytes {
        let r = format!(
            r#"{{"CreationTime":"2026-11-26T04:12:00","Id":"{}","Operation":"FileAccessed","OrganizationId":"{TENANT_A}","RecordType":6,"UserKey":"i:0h.f|membership|1003200096971f55@live.com","UserType":0,"Version":1,"Workload":"SharePoint","ClientIP":"203.0.113.{}","ObjectId":"https://contoso.sharepoint.com/sites/finance/Shared Documents/{pad}/report-{i}.xlsx","UserId":"megan.bowen@contoso.onmicrosoft.com","EventSource":"SharePoint","ItemType":"File","ListItemUniqueId":"{}","Site":"d5180cfc-3479-44d6-b410-8c985ac894e3","UserAgent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64)","WebId":"8f5a3b1c-2d4e-4f60-8a9b-0c1d2e3f4a5b","SourceFileExtension":"xlsx","SourceFileName":"report-{i}.xlsx"}}"#,
            uuid::Uuid::new_v4(),
            i % 250,
            uuid::Uuid::new_v4(),
        );
        size += r.len() + 1;
        out.push(r);
        i += 1;
    }
    out
}

pub async fn run(ctx: &Ctx, blob_mb: usize) -> anyhow::Result<Vec<Row>> {
    println!("4. memory: one {blob_mb} MB blob of ~1 KB records, relay as a child process");
    let sim = start_sim(&[TENANT_A], 1).await?;
    let section = ctx.section("memory", &sim);
    let result = async {
        let sink = ctx.sink(&section).await?;
        let relay = RelayProc::spawn(ctx, &section, &[]).await?;
        let counter = sink.counter().await?;
        tokio::time::sleep(Duration::from_millis(if ctx.quick { 500 } else { 2000 })).await;
        let (idle_hwm, idle_rss) = relay.memory_kb();
        let records = big_records(blob_mb * 1024 * 1024);
        let want = records.len() as u64;
        let blob = sim.publish_raw(TENANT_A, "Audit.SharePoint", records).await;
        let peak = Arc::new(Mutex::new(0u64));
        let sampling = {
            let (pid, peak) = (relay.pid, peak.clone());
            tokio::spawn(async move {
                loop {
                    if let Some(kb) = procfs::status_kb(pid, "VmRSS:") {
                        let mut p = peak.lock().expect("peak");
                        *p = (*p).max(kb);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let t0 = Instant::now();
        ctx.notify(&[&relay], std::slice::from_ref(&blob)).await?;
        drop(blob);
        let t1 = counter.wait_for(want, Duration::from_secs(900)).await?;
        sampling.abort();
        let (hwm, rss_after) = relay.memory_kb();
        println!(
            "   {want} records ({blob_mb} MB) relayed in {:.1} s; idle RSS {} (HWM at idle {}), peak RSS {} (sampled max {}), RSS after {}",
            (t1 - t0).as_secs_f64(),
            mb(idle_rss),
            mb(idle_hwm),
            mb(hwm),
            mb(*peak.lock().expect("peak")),
            mb(rss_after),
        );
        drop(counter);
        sink.close().await;
        relay.stop().await;
        let above = hwm.saturating_sub(idle_rss);
        Ok::<_, anyhow::Error>(vec![
            Row::new("4 memory", "RSS at idle", mb(idle_rss)),
            Row::new(
                "4 memory",
                format!("peak RSS, one {blob_mb} MB blob"),
                mb(hwm),
            ),
            Row::new("4 memory", "peak above idle", mb(above)).target(format!(
                "≤ 64 MB {}",
                if above <= 64 * 1024 { "(met)" } else { "(missed)" }
            )),
        ])
    }
    .await;
    section.cleanup().await;
    sim.stop().await;
    result
}
