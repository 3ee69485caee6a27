//! `tenantctl events list|watch` and `tenantctl tenants usage`.

use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use super::Ctl;
use crate::common::TestServer;

#[tokio::test]
async fn events_are_listed_and_watched_and_usage_is_shown() {
    let server = TestServer::start_with(|c| {
        c.usage.sample_interval = Duration::from_millis(200);
    })
    .await;
    let ctl = Ctl::new(server.endpoint());
    let mut c = server.clients().await;
    let tenant = c.tenant("ctlev").await;

    // Watch from the start, as JSON lines, while a change happens.
    let mut watch = ctl
        .command(&["--output", "json", "events", "watch", "--kind", "tenant"])
        .spawn()
        .expect("start tenantctl events watch");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    c.tenants
        .suspend_tenant(crate::common::lifecycle(&tenant.id))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    let mut cursors = Vec::new();
    while kinds.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("an event line within 20 s")
            .unwrap()
            .expect("tenantctl still watching");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["tenant_id"], tenant.id.as_str(), "{event}");
        kinds.push(event["kind"].as_str().unwrap().to_owned());
        cursors.push(event["cursor"].as_i64().unwrap());
    }
    assert_eq!(kinds, ["tenant.create", "tenant.suspend"]);
    assert!(cursors[0] < cursors[1]);
    watch.kill().await.unwrap();

    // A page after the first event: the suspension, with its details.
    let after = cursors[0].to_string();
    let page = ctl
        .json(&["events", "list", "--after", &after, "--tenant", &tenant.id])
        .await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["kind"], "tenant.suspend");
    assert_eq!(events[0]["details"]["to"], "suspended");
    let table = ctl.ok(&["events", "list", "--kind", "tenant.create"]).await;
    assert!(
        table.contains("tenant.create") && table.contains(&tenant.id),
        "{table}"
    );
    let (code, err) = ctl.fails(&["events", "list", "--kind", "Tenant"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("filter.kinds[0]"), "{err}");

    // Usage: one tenant by slug, and the heaviest.
    let one = ctl.json(&["tenants", "usage", &tenant.slug]).await;
    assert_eq!(one["tenant_id"], tenant.id.as_str());
    assert_eq!(one["calls"], 0);
    let top = ctl
        .json(&["tenants", "usage", "--top", "5", "--by", "size"])
        .await;
    let listed = top["tenants"].as_array().unwrap();
    if top["sampled_tenants"] == 1 {
        assert_eq!(listed[0]["tenant_id"], tenant.id.as_str(), "{top}");
    }
    let table = ctl.ok(&["tenants", "usage"]).await;
    assert!(table.contains("tenants sampled"), "{table}");
}
