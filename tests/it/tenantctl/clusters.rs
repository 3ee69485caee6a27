//! `tenantctl clusters …` on a Citus coordinator with two workers, and on
//! plain PostgreSQL, where it says there is nothing to place.

use super::Ctl;
use crate::citus::{CitusDb, PORTS, skip};
use crate::common::{TestServer, config_for};

#[tokio::test]
async fn clusters_on_plain_postgresql_say_there_is_no_citus() {
    let server = TestServer::start().await;
    let ctl = Ctl::new(format!("http://{}", server.addr));
    let (code, stderr) = ctl.fails(&["clusters", "nodes"]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("FAILED_PRECONDITION"), "{stderr}");
    assert!(stderr.contains("not a Citus coordinator"), "{stderr}");
    let (code, stderr) = ctl.fails(&["clusters", "move", "acme", "nowhere"]).await;
    assert_eq!(code, 1, "{stderr}");
}

#[tokio::test]
async fn clusters_move_a_tenant_and_watch_it() {
    if skip() {
        return;
    }
    let db = CitusDb::create().await;
    let running = TestServer::run(config_for(db.tenantd_options()))
        .await
        .expect("tenantd on Citus");
    let ctl = Ctl::new(format!("http://{}", running.local_addr()));
    let tenant = ctl
        .json(&[
            "tenants",
            "create",
            "--name",
            "Moving Co",
            "--slug",
            "moving-co",
        ])
        .await;
    let nodes = ctl.json(&["clusters", "nodes"]).await;
    let nodes = nodes.as_array().expect("a list of nodes");
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[0]["coordinator"], true);
    let on = |i: usize| format!("127.0.0.1:{}", PORTS[i]);
    let here = ctl.json(&["tenants", "get", "moving-co"]).await["node"]
        .as_str()
        .expect("a node on Citus")
        .to_owned();
    let there = if here == on(1) { on(2) } else { on(1) };

    // In table form, with --watch: each move's outcome, then the job.
    let out = ctl
        .ok(&["clusters", "move", "moving-co", &there, "--watch"])
        .await;
    assert!(out.contains(&format!("{here} -> {there}  done")), "{out}");
    assert!(out.contains("succeeded"), "{out}");
    let got = ctl.json(&["tenants", "get", "moving-co"]).await;
    assert_eq!(got["node"], there.as_str());
    assert_eq!(got["id"], tenant["id"]);

    let jobs = ctl.json(&["clusters", "jobs"]).await;
    let job = &jobs.as_array().expect("a list of jobs")[0];
    assert_eq!(job["kind"], "move");
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["moves"][0]["status"], "done");
    let id = job["id"].as_str().unwrap();
    let one = ctl.json(&["clusters", "job", id]).await;
    assert_eq!(one["moves"][0]["target"], there.as_str());
    let (code, stderr) = ctl.fails(&["clusters", "cancel", id]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("FAILED_PRECONDITION"), "{stderr}");

    // Bad input names its field.
    let (_, stderr) = ctl.fails(&["clusters", "drain-node", "no-port"]).await;
    assert!(stderr.contains("node"), "{stderr}");
    running.stop().await.unwrap();
    db.drop_all().await;
}
