//! Section 3, token efficiency: three relay processes sharing Redis and the work queue, two
//! tenants, notifications round-robin over the three webhooks; the simulator counts the token
//! requests per tenant.

use crate::harness::{start_sim, Ctx, RelayProc, TENANT_A, TENANT_B};
use crate::report::Row;
use o365_sim::CONTENT_TYPES;
use std::time::{Duration, Instant};

pub async fn run(ctx: &Ctx, n_blobs: usize) -> anyhow::Result<Vec<Row>> {
    println!("3. token efficiency: 3 relay processes sharing Redis, 2 tenants, {n_blobs} blobs");
    let sim = start_sim(&[TENANT_A, TENANT_B], 5).await?;
    let section = ctx.section("tokens", &sim);
    let result = async {
        let sink = ctx.sink(&section).await?;
        let mut relays = Vec::new();
        for _ in 0..3 {
            relays.push(RelayProc::spawn(ctx, &section, &[]).await?);
        }
        let counter = sink.counter().await?;
        let mut blobs = Vec::new();
        for (i, t) in [TENANT_A, TENANT_B].iter().enumerate() {
            let mine = n_blobs / 2 + if i == 0 { n_blobs % 2 } else { 0 };
            for (j, ct) in CONTENT_TYPES.iter().enumerate() {
                let k = mine / 5 + usize::from(j < mine % 5);
                blobs.extend(sim.publish(t, ct, k, None).await);
            }
        }
        let want = sim.unique_record_ids().len() as u64;
        let t0 = Instant::now();
        let refs: Vec<&RelayProc> = relays.iter().collect();
        ctx.notify(&refs, &blobs).await?;
        let t1 = counter.wait_for(want, Duration::from_secs(600)).await?;
        let (a, b) = (sim.token_requests(TENANT_A), sim.token_requests(TENANT_B));
        println!(
            "   {} blobs, {want} records relayed in {:.1} s by 3 processes; content GETs {}; token requests: tenant A {a}, tenant B {b} (token lifetime 1 h)",
            blobs.len(),
            (t1 - t0).as_secs_f64(),
            sim.content_gets()
        );
        drop(counter);
        sink.close().await;
        for r in relays {
            r.stop().await;
        }
        let ok = a == 1 && b == 1;
        Ok::<_, anyhow::Error>(vec![Row::new(
            "3 tokens",
            format!("token requests per tenant ({} blobs, 3 procs)", blobs.len()),
            format!("{a} / {b}"),
        )
        .target(format!(
            "1 each per lifetime {}",
            if ok { "(met)" } else { "(missed)" }
        ))])
    }
    .await;
    section.cleanup().await;
    sim.stop().await;
    result
}
