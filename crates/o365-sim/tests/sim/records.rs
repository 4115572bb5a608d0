//! Content: the records the simulator publishes and serves.

use crate::support::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_blobs_hold_realistic_records_with_microsofts_oddities() {
    let (sim, token) = sim_with_token().await;
    for ct in [
        "Audit.AzureActiveDirectory",
        "Audit.Exchange",
        "Audit.SharePoint",
        "Audit.General",
        "DLP.All",
    ] {
        let blobs = sim.publish(TENANT_A, ct, 2, None).await;
        for blob in &blobs {
            assert_eq!(blob.records.len(), 20);
            assert!(blob.content_id.ends_with("$04") && blob.content_id.matches('$').count() == 4);
            assert!(blob.content_uri.ends_with(&blob.content_id));
            let body = mgmt_ok(&blob.content_uri, &token).await;
            // The body is the records verbatim.
            for r in &blob.records {
                assert!(body.contains(r.as_str()));
            }
            let arr: Vec<Value> =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{ct}: {e}\n{body}"));
            assert_eq!(arr.len(), 20);
            for (rec, id) in arr.iter().zip(&blob.record_ids) {
                assert_eq!(rec["Id"], id.as_str());
                assert_eq!(rec["OrganizationId"], TENANT_A);
                assert!(rec["CreationTime"].as_str().unwrap().len() == 19);
                assert!(rec["Workload"].is_string() && rec["Operation"].is_string());
            }
            let raw = blob.records.join("\n");
            for needle in [
                "\"ClientIP\":null",
                "\"ClientIP\":\"1.2.3.4:12345\"",
                "\"ClientIP\":\"[fdfd::555]:12346\"",
                "\"UserType\":\"0\"",
                "9223372036854775807",
                "18446744073709551615",
                "1.0e-7",
                "\\ud83d\\ude00",
                "\\u00e9",
                "é",
                "日本",
                "\"\"",
            ] {
                assert!(raw.contains(needle), "{ct}: missing {needle}");
            }
        }
        // ~1 in 20 records of the first blob reappears byte-identically in the second.
        let dup: Vec<_> = blobs[1]
            .records
            .iter()
            .filter(|r| blobs[0].records.contains(r))
            .collect();
        assert_eq!(dup.len(), 1, "{ct}");
    }
    // General has RecordType > 255.
    let g = sim.publish(TENANT_A, "Audit.General", 1, Some(8)).await;
    assert!(g[0]
        .records
        .iter()
        .any(|r| r.contains("\"RecordType\":261")));
    assert_eq!(sim.records_published(), 5 * 40 + 8);
    assert_eq!(
        sim.unique_record_ids().len() as u64,
        sim.records_published() - 5 - 1
    );
    // publish_raw is served byte-exactly.
    let raw = vec![
        r#"{"Id":"0b7e3d0a-0000-4000-8000-000000000001","RecordType":1,"Odd":[1,{"a":null}]}"#
            .to_string(),
        r#"{ "Id" : "0b7e3d0a-0000-4000-8000-000000000002" }"#.to_string(),
    ];
    let blob = sim
        .publish_raw(TENANT_A, "Audit.Exchange", raw.clone())
        .await;
    let body = mgmt_ok(&blob.content_uri, &token).await;
    assert!(body.contains(&raw[0]) && body.contains(&raw[1]));
    assert_eq!(blob.record_ids[1], "0b7e3d0a-0000-4000-8000-000000000002");
    sim.stop().await;
}
