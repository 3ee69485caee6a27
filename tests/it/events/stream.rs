//! EventService: every event exactly once and in order across reconnects
//! and replicas, slow watchers cut off with their cursor, filters, and who
//! may see what.

use std::collections::HashSet;
use std::time::Duration;

use tenantd::pb;
use tonic::Code;

use super::{next, role_flips};
use crate::common::fleet::Replica;
use crate::common::identity::{add_member, log_in, new_user, tenant_owned_by};
use crate::common::{TestDb, bad_fields, clients_at, clients_with_window, config_for};

const WAIT: Duration = Duration::from_secs(30);

fn watch_from(after: i64) -> pb::WatchEventsRequest {
    pb::WatchEventsRequest {
        after,
        filter: None,
        from_now: false,
    }
}

async fn head(c: &mut crate::common::Clients) -> i64 {
    c.events
        .list_events(pb::ListEventsRequest {
            after: 0,
            filter: None,
            page_size: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .head
}

#[tokio::test]
async fn a_watcher_killed_mid_burst_resumes_on_another_replica_without_gap_or_duplicate() {
    let db = TestDb::create().await;
    let a = Replica::start(config_for(db.options())).await;
    let b = Replica::start(config_for(db.options())).await;
    let mut ca = clients_at(&a.endpoint()).await;
    let mut cb = clients_at(&b.endpoint()).await;
    let tenant = ca.tenant("events").await;
    let start = head(&mut ca).await;

    // The burst: 1,000 changes through both replicas at once.
    let burst = {
        let (ca, cb, t) = (ca.clone(), cb.clone(), tenant.id.clone());
        tokio::spawn(async move {
            tokio::join!(role_flips(&ca, &t, 500, 4), role_flips(&cb, &t, 500, 4));
        })
    };

    // A watcher on A from the start cursor, killed after 300 events.
    let mut seen: Vec<i64> = Vec::new();
    {
        let mut stream = ca
            .events
            .watch_events(watch_from(start))
            .await
            .unwrap()
            .into_inner();
        while seen.len() < 300 {
            let e = next(&mut stream, WAIT).await.unwrap().expect("an event");
            seen.push(e.cursor);
        }
    }
    // Resumed on B with the last cursor it handled, while the burst goes on.
    let mut stream = cb
        .events
        .watch_events(watch_from(*seen.last().unwrap()))
        .await
        .unwrap()
        .into_inner();
    burst.await.unwrap();
    let end = head(&mut cb).await;
    assert!(
        end - start >= 1000,
        "the burst wrote {} events",
        end - start
    );
    while *seen.last().unwrap() < end {
        let e = next(&mut stream, WAIT).await.unwrap().expect("an event");
        seen.push(e.cursor);
    }
    let expected: Vec<i64> = (start + 1..=end).collect();
    assert_eq!(seen, expected, "every event once, in order");

    // Paging gives the same sequence.
    let mut paged = Vec::new();
    let mut after = start;
    while after < end {
        let page = ca
            .events
            .list_events(pb::ListEventsRequest {
                after,
                filter: None,
                page_size: 333,
            })
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.events.iter().map(|e| e.cursor));
        after = page.next_after;
    }
    paged.retain(|c| *c <= end);
    assert_eq!(paged, expected);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_watcher_that_does_not_read_is_cut_off_with_its_cursor_and_resumes_from_it() {
    let db = TestDb::create().await;
    let mut config = config_for(db.options());
    config.events.buffer = 16;
    config.events.poll_interval = Duration::from_millis(20);
    let a = Replica::start(config).await;
    let mut c = clients_at(&a.endpoint()).await;
    let tenant = c.tenant("slow").await;
    let start = head(&mut c).await;
    // Its own connection with a 64 KiB window: the server's sends stop
    // after that much (a few hundred events) rather than after the
    // client's default 2 MiB, which would hold all 3,000 events and let
    // the watcher keep up whenever the writers are slow.
    let mut slow_client = clients_with_window(&a.endpoint(), 64 * 1024).await;
    let mut slow = slow_client
        .events
        .watch_events(watch_from(start))
        .await
        .unwrap()
        .into_inner();
    // The writers are not held up by the watcher that does not read.
    let began = std::time::Instant::now();
    role_flips(&c, &tenant.id, 3000, 4).await;
    let took = began.elapsed();
    let end = head(&mut c).await;

    let mut last = start;
    let status = loop {
        match next(&mut slow, WAIT).await {
            Ok(Some(e)) => {
                assert_eq!(e.cursor, last + 1, "in order without gaps before the cut");
                last = e.cursor;
            }
            Ok(None) => panic!("the stream ended without a status at {last}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&format!("after = {last}")),
        "the status names the cursor of the last event sent ({last}): {status:?}"
    );
    assert!(
        last < end,
        "cut off before the end ({last} of {end}); took {took:?}"
    );

    let mut resumed = c
        .events
        .watch_events(watch_from(last))
        .await
        .unwrap()
        .into_inner();
    while last < end {
        let e = next(&mut resumed, WAIT).await.unwrap().expect("an event");
        assert_eq!(e.cursor, last + 1);
        last = e.cursor;
    }
    a.stop().await;
}

#[tokio::test]
async fn filters_select_by_kind_category_and_tenant() {
    let server = crate::common::TestServer::start().await;
    let mut c = server.clients().await;
    let start = head(&mut c).await;
    let one = c.tenant("evone").await;
    let two = c.tenant("evtwo").await;
    let (user, _) = new_user(&mut c, "filt").await;
    add_member(&mut c, &one.id, &user, pb::MemberRole::Employee).await;
    add_member(&mut c, &two.id, &user, pb::MemberRole::Manager).await;
    c.tenants
        .suspend_tenant(crate::common::lifecycle(&two.id))
        .await
        .unwrap();

    let list = |kinds: &[&str], tenant: &str| pb::ListEventsRequest {
        after: start,
        filter: Some(pb::EventFilter {
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            tenant_id: tenant.into(),
        }),
        page_size: 1000,
    };
    let kinds = |r: &pb::ListEventsResponse| -> Vec<(String, String)> {
        r.events
            .iter()
            .map(|e| (e.kind.clone(), e.tenant_id.clone()))
            .collect()
    };
    let all = c
        .events
        .list_events(list(&[], ""))
        .await
        .unwrap()
        .into_inner();
    assert!(all.events.len() >= 6, "{all:?}");
    let members = c
        .events
        .list_events(list(&["member"], ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&members),
        vec![
            ("member.add".into(), one.id.clone()),
            ("member.add".into(), two.id.clone())
        ]
    );
    assert!(
        members
            .events
            .iter()
            .all(|e| e.category == pb::EventCategory::Member as i32)
    );
    let of_two = c
        .events
        .list_events(list(&["tenant.suspend", "member.add"], &two.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&of_two),
        vec![
            ("member.add".into(), two.id.clone()),
            ("tenant.suspend".into(), two.id.clone())
        ]
    );
    let details: serde_json::Value = serde_json::from_str(&of_two.events[1].details_json).unwrap();
    assert_eq!(details["to"], "suspended", "{details}");
    // A watch with the same filter sends the same events.
    let mut w = c
        .events
        .watch_events(pb::WatchEventsRequest {
            after: start,
            filter: list(&["tenant.suspend", "member.add"], &two.id).filter,
            from_now: false,
        })
        .await
        .unwrap()
        .into_inner();
    for expected in &of_two.events {
        let e = next(&mut w, WAIT).await.unwrap().unwrap();
        assert_eq!(&e, expected);
    }
    // from_now: only what commits after.
    let mut fresh = c
        .events
        .watch_events(pb::WatchEventsRequest {
            after: 0,
            filter: None,
            from_now: true,
        })
        .await
        .unwrap()
        .into_inner();
    c.tenants
        .resume_tenant(crate::common::lifecycle(&two.id))
        .await
        .unwrap();
    let e = next(&mut fresh, WAIT).await.unwrap().unwrap();
    assert_eq!(
        (e.kind.as_str(), e.tenant_id.as_str()),
        ("tenant.resume", two.id.as_str())
    );
}

#[tokio::test]
async fn bad_requests_name_their_field() {
    let server = crate::common::TestServer::start().await;
    let mut c = server.clients().await;
    let bad_kinds = [
        "Tenant",
        "tenants",
        "tenant.",
        ".create",
        "tenant.create.x",
        "tenant create",
        "tenant.create'--",
        "tenant.crëate",
        "TENANT.CREATE",
        "",
        " tenant",
        "tenant\n",
        "tenant.create/*x*/",
    ];
    for (i, bad) in bad_kinds.iter().enumerate() {
        let filter = pb::EventFilter {
            kinds: vec!["member".into(), (*bad).into()],
            tenant_id: String::new(),
        };
        let err = c
            .events
            .list_events(pb::ListEventsRequest {
                after: 0,
                filter: Some(filter.clone()),
                page_size: 10,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{i}: {bad:?}");
        assert_eq!(bad_fields(&err), vec!["filter.kinds[1]"], "{bad:?}");
        let err = c
            .events
            .watch_events(pb::WatchEventsRequest {
                after: 0,
                filter: Some(filter),
                from_now: false,
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), vec!["filter.kinds[1]"], "{bad:?}");
    }
    for bad in ["nope", "123", "'; DROP TABLE x; --"] {
        let err = c
            .events
            .list_events(pb::ListEventsRequest {
                after: 0,
                filter: Some(pb::EventFilter {
                    kinds: vec![],
                    tenant_id: bad.into(),
                }),
                page_size: 10,
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), vec!["filter.tenant_id"], "{bad:?}");
    }
    for (after, page_size, field) in [
        (-1, 10, "after"),
        (0, -1, "page_size"),
        (0, 1001, "page_size"),
    ] {
        let err = c
            .events
            .list_events(pb::ListEventsRequest {
                after,
                filter: None,
                page_size,
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), vec![field]);
    }
    let err = c
        .events
        .watch_events(pb::WatchEventsRequest {
            after: 5,
            filter: None,
            from_now: true,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), vec!["after"]);
}

#[tokio::test]
async fn a_user_sees_only_its_own_tenant_and_only_while_its_role_allows() {
    let server = crate::common::TestServer::start().await;
    let mut c = server.clients().await;
    let (owner, owner_email) = new_user(&mut c, "own").await;
    let mine = tenant_owned_by(&mut c, "mine", &owner).await;
    let theirs = c.tenant("theirs").await;
    let (admin, admin_email) = new_user(&mut c, "adm").await;
    let (emp, emp_email) = new_user(&mut c, "emp").await;
    add_member(&mut c, &mine.id, &admin, pb::MemberRole::Admin).await;
    add_member(&mut c, &mine.id, &emp, pb::MemberRole::Employee).await;
    add_member(&mut c, &theirs.id, &admin, pb::MemberRole::Admin).await;

    // An EMPLOYEE may not; a token bound to no tenant may not.
    let token = log_in(&mut c, &emp_email, &mine.id).await.access_token;
    let err = server
        .clients_as(&token)
        .await
        .events
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let token = log_in(&mut c, &admin_email, "").await.access_token;
    let err = server
        .clients_as(&token)
        .await
        .events
        .watch_events(watch_from(0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // An ADMIN bound to `mine` sees `mine`'s events only, and may not ask
    // for another tenant's (in any spelling).
    let token = log_in(&mut c, &admin_email, &mine.id).await.access_token;
    let mut adm = server.clients_as(&token).await;
    for other in [
        theirs.id.clone(),
        theirs.id.to_uppercase(),
        theirs.id.replace('-', ""),
        format!("{{{}}}", theirs.id),
    ] {
        let err = adm
            .events
            .list_events(pb::ListEventsRequest {
                after: 0,
                filter: Some(pb::EventFilter {
                    kinds: vec![],
                    tenant_id: other.clone(),
                }),
                page_size: 100,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{other}: {err:?}");
    }
    let page = adm
        .events
        .list_events(pb::ListEventsRequest {
            after: 0,
            filter: None,
            page_size: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!page.events.is_empty());
    assert!(
        page.events.iter().all(|e| e.tenant_id == mine.id),
        "{:?}",
        page.events
    );
    // Members' logins into the tenant (with their addresses) are events of
    // the tenant for a service, not for other members.
    let all_of_mine = c
        .events
        .list_events(pb::ListEventsRequest {
            after: 0,
            filter: Some(pb::EventFilter {
                kinds: vec![],
                tenant_id: mine.id.clone(),
            }),
            page_size: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        all_of_mine.events.iter().any(|e| e.kind == "session.login"),
        "{all_of_mine:?}"
    );
    assert!(
        page.events.iter().all(|e| !e.kind.starts_with("session.")),
        "{:?}",
        page.events
    );
    for kinds in [
        vec!["session"],
        vec!["member", "session.login"],
        vec!["user"],
        vec!["cluster"],
    ] {
        let err = adm
            .events
            .list_events(pb::ListEventsRequest {
                after: 0,
                filter: Some(pb::EventFilter {
                    kinds: kinds.iter().map(|k| k.to_string()).collect(),
                    tenant_id: String::new(),
                }),
                page_size: 10,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{kinds:?}: {err:?}");
        assert_eq!(
            bad_fields(&err),
            vec![format!("filter.kinds[{}]", kinds.len() - 1)]
        );
    }
    let mut watch = adm
        .events
        .watch_events(watch_from(0))
        .await
        .unwrap()
        .into_inner();
    c.tenants
        .suspend_tenant(crate::common::lifecycle(&theirs.id))
        .await
        .unwrap();
    c.users
        .change_role(pb::ChangeRoleRequest {
            tenant_id: mine.id.clone(),
            user_id: emp.clone(),
            role: pb::MemberRole::Manager as i32,
        })
        .await
        .unwrap();
    let mut kinds = Vec::new();
    loop {
        let e = next(&mut watch, WAIT).await.unwrap().unwrap();
        assert_eq!(e.tenant_id, mine.id, "{e:?}");
        kinds.push(e.kind.clone());
        if e.kind == "member.change_role" {
            break;
        }
    }
    assert!(!kinds.contains(&"tenant.suspend".to_owned()), "{kinds:?}");

    // Demoted by the OWNER: the open watch ends within the revocation
    // window, and a new one is refused.
    let owner_token = log_in(&mut c, &owner_email, &mine.id).await.access_token;
    let mut by_owner = server.clients_as(&owner_token).await;
    by_owner
        .users
        .change_role(pb::ChangeRoleRequest {
            tenant_id: mine.id.clone(),
            user_id: admin.clone(),
            role: pb::MemberRole::Employee as i32,
        })
        .await
        .unwrap();
    let status = loop {
        match next(&mut watch, Duration::from_secs(10)).await {
            Ok(Some(e)) => assert_eq!(e.tenant_id, mine.id),
            Ok(None) => panic!("ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let err = adm
        .events
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Logged out: an open watch of the OWNER ends as unauthenticated.
    let mut watch = by_owner
        .events
        .watch_events(watch_from(0))
        .await
        .unwrap()
        .into_inner();
    c.sessions
        .revoke_all_sessions(pb::RevokeAllSessionsRequest {
            user_id: owner.clone(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let status = loop {
        match next(&mut watch, Duration::from_secs(15)).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn a_service_key_needs_events_read() {
    let server = crate::common::TestServer::start().await;
    let mut db = server.db.connect().await;
    let (narrow, _) = tenantd::identity::keys::create(
        &mut db,
        "narrow",
        &[tenantd::domain::identity::Scope::TenantsRead],
    )
    .await
    .unwrap();
    let (reader, _) = tenantd::identity::keys::create(
        &mut db,
        "reader",
        &[tenantd::domain::identity::Scope::EventsRead],
    )
    .await
    .unwrap();
    let mut reader = server.clients_as(&reader).await;
    let mut narrow = server.clients_as(&narrow).await;
    // Keys load within 5 s.
    let mut loaded = false;
    for _ in 0..70 {
        if reader
            .events
            .list_events(pb::ListEventsRequest::default())
            .await
            .is_ok()
        {
            loaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(loaded, "the events:read key never worked");
    let err = narrow
        .events
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = narrow.events.watch_events(watch_from(0)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = server
        .anonymous_clients()
        .await
        .events
        .watch_events(watch_from(0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}

#[tokio::test]
async fn upgrade_outcomes_are_events() {
    use crate::common::fleet::{self, EMAIL_REQUIRED, WAIT as RUN_WAIT, fleet_at_v1};
    let (server, _dir, tenants) = fleet_at_v1(8, &[("email_required", EMAIL_REQUIRED)]).await;
    let bad: Vec<&pb::Tenant> = tenants[..2].iter().collect();
    let mut db = server.db.connect().await;
    fleet::add_location_without_email(&mut db, &bad).await;
    let mut c = server.clients().await;
    let start = head(&mut c).await;
    let mut client = fleet::migration_client(server.endpoint()).await;
    let run = fleet::start(&mut client, fleet::start_request(4, 5)).await;
    fleet::wait_for_end(&mut client, &run.id, RUN_WAIT).await;
    let page = c
        .events
        .list_events(pb::ListEventsRequest {
            after: start,
            filter: Some(pb::EventFilter {
                kinds: vec!["upgrade".into()],
                tenant_id: String::new(),
            }),
            page_size: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    let of =
        |kind: &str| -> Vec<&pb::Event> { page.events.iter().filter(|e| e.kind == kind).collect() };
    assert_eq!(of("upgrade.start").len(), 1);
    let done: HashSet<&str> = of("upgrade.tenant_done")
        .iter()
        .map(|e| e.tenant_id.as_str())
        .collect();
    let failed: HashSet<&str> = of("upgrade.tenant_failed")
        .iter()
        .map(|e| e.tenant_id.as_str())
        .collect();
    assert_eq!(done.len(), 6, "{page:?}");
    assert_eq!(failed, bad.iter().map(|t| t.id.as_str()).collect());
    for e in of("upgrade.tenant_failed") {
        let d: serde_json::Value = serde_json::from_str(&e.details_json).unwrap();
        assert_eq!(d["sqlstate"], "23502", "{d}");
        assert_eq!(d["run"], run.id.as_str(), "{d}");
    }
    let finished = of("upgrade.finished");
    assert_eq!(finished.len(), 1);
    assert!(
        finished[0].details_json.contains("failed"),
        "{:?}",
        finished[0]
    );
    assert_eq!(page.events.last().unwrap().kind, "upgrade.finished");
    // The chain still verifies with the runner's events in it.
    let v = c
        .users
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
}

#[tokio::test]
async fn a_watcher_that_leaves_is_let_go_at_once_and_watchers_are_capped() {
    let server = crate::common::TestServer::start_with(|c| {
        c.events.max_watchers_per_caller = 3;
        c.events.max_watchers = 5;
    })
    .await;
    let mut c = server.clients().await;
    let metrics = server.metrics_addr().unwrap();
    let watchers = async || {
        crate::common::metrics::Scrape::of(metrics)
            .await
            .value("tenantd_event_watchers")
    };
    // Filters that never match: nothing is ever sent to these watchers.
    let quiet = || pb::WatchEventsRequest {
        after: 0,
        filter: Some(pb::EventFilter {
            kinds: vec!["citus".into()],
            tenant_id: String::new(),
        }),
        from_now: true,
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(c.events.watch_events(quiet()).await.unwrap().into_inner());
    }
    let err = c.events.watch_events(quiet()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("events-max-watchers-per-caller"),
        "{err:?}"
    );
    assert_eq!(watchers().await, 3.0);

    // Leaving (dropping the stream: the call is cancelled) frees the place
    // at once, though no event ever went to it.
    open.pop();
    crate::common::fleet::eventually("the watch let go", Duration::from_secs(5), || async {
        (watchers().await == 2.0).then_some(())
    })
    .await;
    open.push(c.events.watch_events(quiet()).await.unwrap().into_inner());

    // The replica's cap counts every caller.
    let (owner, email) = new_user(&mut c, "capo").await;
    let tenant = tenant_owned_by(&mut c, "cap", &owner).await;
    let token = log_in(&mut c, &email, &tenant.id).await.access_token;
    let mut user = server.clients_as(&token).await;
    let user_quiet = || pb::WatchEventsRequest {
        filter: Some(pb::EventFilter {
            kinds: vec!["upgrade".into()],
            tenant_id: String::new(),
        }),
        ..quiet()
    };
    for _ in 0..2 {
        open.push(
            user.events
                .watch_events(user_quiet())
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let err = user.events.watch_events(user_quiet()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("events-max-watchers"), "{err:?}");
    drop(open);
    crate::common::fleet::eventually("every watch let go", Duration::from_secs(5), || async {
        (watchers().await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_cursor_past_the_newest_event_is_refused() {
    let server = crate::common::TestServer::start().await;
    let mut c = server.clients().await;
    c.tenant("cur").await;
    let newest = head(&mut c).await;
    for after in [
        newest + 1,
        1_000_000_000_000,
        i64::MAX - 19_999,
        i64::MAX - 20_000,
        i64::MAX,
    ] {
        let err = c
            .events
            .list_events(pb::ListEventsRequest {
                after,
                filter: Some(pb::EventFilter {
                    kinds: vec!["citus".into()],
                    tenant_id: String::new(),
                }),
                page_size: 10,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{after}: {err:?}");
        assert_eq!(bad_fields(&err), vec!["after"]);
        let err = c.events.watch_events(watch_from(after)).await.unwrap_err();
        assert_eq!(bad_fields(&err), vec!["after"], "{after}");
    }
    // The newest itself is a cursor like any other.
    let page = c
        .events
        .list_events(pb::ListEventsRequest {
            after: newest,
            filter: None,
            page_size: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        page.events.is_empty() && page.next_after == newest,
        "{page:?}"
    );
}

/// Logs in `n` new ADMINs of `tenant`; their clients.
async fn admins_of(
    server: &crate::common::TestServer,
    c: &mut crate::common::Clients,
    tenant: &str,
    n: usize,
) -> Vec<crate::common::Clients> {
    let mut out = Vec::new();
    for i in 0..n {
        let (user, email) = new_user(c, &format!("adm{i}")).await;
        add_member(c, tenant, &user, pb::MemberRole::Admin).await;
        let token = log_in(c, &email, tenant).await.access_token;
        out.push(server.clients_as(&token).await);
    }
    out
}

#[tokio::test]
async fn users_take_neither_the_places_kept_for_services_nor_one_tenant_all() {
    let server = crate::common::TestServer::start_with(|c| {
        c.events.max_watchers = 8;
        c.events.max_watchers_per_caller = 1;
    })
    .await;
    let mut c = server.clients().await;
    let one = c.tenant("fair-one").await;
    let two = c.tenant("fair-two").await;
    let mut open = Vec::new();
    // One tenant's members: four callers' worth, no more.
    let mut of_one = admins_of(&server, &mut c, &one.id, 5).await;
    for a in of_one.iter_mut().take(4) {
        open.push(
            a.events
                .watch_events(watch_from(0))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let err = of_one[4]
        .events
        .watch_events(watch_from(0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("this tenant"), "{err:?}");
    // Users in all: the replica's limit less a quarter kept for services.
    let mut of_two = admins_of(&server, &mut c, &two.id, 3).await;
    for a in of_two.iter_mut().take(2) {
        open.push(
            a.events
                .watch_events(watch_from(0))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let err = of_two[2]
        .events
        .watch_events(watch_from(0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("kept"), "{err:?}");
    // A service still gets in.
    open.push(
        c.events
            .watch_events(watch_from(0))
            .await
            .unwrap()
            .into_inner(),
    );
}
