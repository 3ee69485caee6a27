//! Nothing a call leaves in its session reaches the next call, whoever
//! makes it.

use tenantd::pb::{self, value::Kind};
use tonic::Code;

use super::{
    assert_screened, backends_sql, install_function, read_scalar, scalar, sqlstate, wait_for_none,
};
use crate::common::data::{exec, read, stmt};
use crate::common::{TestServer, bad_fields};

#[tokio::test]
async fn nothing_a_call_leaves_in_the_session_reaches_the_next_call() {
    // One connection per tenant, so every call lands on the same session.
    let server = TestServer::start_with(|c| c.tenant_pools.pool_size = 1).await;
    let mut c = server.clients().await;
    let t = c.tenant("session").await;
    let role = &t.schema_name;
    let mut db = server.db.connect().await;
    // Privileges tenantd takes from every role are given back to this one,
    // so that what is tested here is the session reset itself.
    sqlx::raw_sql(&format!(
        "GRANT TEMPORARY ON DATABASE \"{}\" TO {role}; \
         GRANT EXECUTE ON FUNCTION pg_advisory_lock(bigint) TO {role}; \
         CREATE SEQUENCE {role}.counter; \
         GRANT USAGE, SELECT ON SEQUENCE {role}.counter TO {role}",
        server.db.name
    ))
    .execute(&mut db)
    .await
    .unwrap();
    let check = "SELECT pg_backend_pid()::text || ' ' \
        || current_setting('TimeZone') || ' ' || current_setting('work_mem') || ' ' \
        || current_setting('search_path') || ' ' || current_setting('extra_float_digits') || ' ' \
        || (SELECT count(*) FROM customers) || ' ' \
        || (SELECT count(*) FROM pg_cursors) || ' ' \
        || (SELECT count(*) FROM pg_listening_channels()) || ' ' \
                || (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) || ' ' \
        || (SELECT count(*) FROM pg_class WHERE relpersistence = 't')";
    let Kind::Text(clean) = read_scalar(&mut c, &t.id, check).await else {
        panic!("not text")
    };
    let pid = clean.split(' ').next().unwrap().to_owned();

    // What a call may leave through the API: session settings it may SET,
    // sequence state, a cursor.
    for sql in [
        "SET TimeZone = 'Asia/Tokyo'",
        "SET extra_float_digits = 1",
        "SELECT nextval('counter')",
        "DECLARE open_one CURSOR FOR SELECT 1",
    ] {
        c.data.execute(exec(&t.id, sql, vec![])).await.unwrap();
    }
    // Everything else that makes state is refused before it runs…
    for sql in [
        "DECLARE held CURSOR WITH HOLD FOR SELECT 1",
        "LISTEN somewhere",
        "PREPARE mine AS SELECT 1",
        "CREATE TEMP TABLE customers (code text)",
        "SET work_mem = '1GB'",
        "SELECT set_config('work_mem', '1GB', false)",
        "ALTER ROLE CURRENT_USER SET work_mem = '2GB'",
        "DO $$ BEGIN PERFORM 1; END $$",
    ] {
        let err = c.data.execute(exec(&t.id, sql, vec![])).await.unwrap_err();
        assert_screened(&err, "sql");
    }
    // …and made by SQL the screen never sees, it is reset all the same.
    install_function(
        &server,
        &t,
        "leave_everything",
        &format!(
            "PERFORM set_config('work_mem', '1GB', false); \
             PERFORM set_config('search_path', 'public', false); \
             PERFORM set_config('TimeZone', 'Asia/Tokyo', false); \
             EXECUTE 'LISTEN somewhere'; \
             EXECUTE 'DECLARE held CURSOR WITH HOLD FOR SELECT 1'; \
             CREATE TEMP TABLE customers (code text); \
             INSERT INTO customers VALUES ('temp'); \
             PERFORM pg_advisory_lock(42); \
             PERFORM nextval('{role}.counter');"
        ),
    )
    .await;
    c.data
        .execute(exec(&t.id, "SELECT leave_everything()", vec![]))
        .await
        .unwrap();
    assert_eq!(
        read_scalar(&mut c, &t.id, check).await,
        Kind::Text(clean.clone()),
        "the same session ({pid}) as before, as clean as before"
    );
    // The same when the call fails, in its statement (PostgreSQL skips the
    // rest of the request, COMMIT and reset included) or at its COMMIT (a
    // deferred constraint): rolled back, reset, and the session kept.
    sqlx::raw_sql(&format!(
        "CREATE TABLE {role}.once (id int UNIQUE DEFERRABLE INITIALLY DEFERRED); \
         INSERT INTO {role}.once VALUES (1); \
         GRANT SELECT, INSERT ON {role}.once TO {role}"
    ))
    .execute(&mut db)
    .await
    .unwrap();
    for (sql, state) in [
        (
            "SELECT 1 / (count(*) - count(*)) FROM (SELECT leave_everything()) AS made",
            "22012",
        ),
        (
            "INSERT INTO once SELECT 1 FROM (SELECT leave_everything()) AS made",
            "23505",
        ),
    ] {
        let err = c.data.execute(exec(&t.id, sql, vec![])).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some(state), "{sql}: {err:?}");
        assert_eq!(
            read_scalar(&mut c, &t.id, check).await,
            Kind::Text(clean.clone()),
            "{sql}: the same session ({pid}), as clean as before"
        );
    }
    assert_eq!(
        read_scalar(&mut c, &t.id, "SELECT count(*) FROM once").await,
        Kind::Int64(1),
        "the failed COMMIT wrote nothing"
    );
    // Role settings are the values a session starts from, which RESET ALL
    // returns to: a new session starts from a role reset to what tenantd
    // gave it.
    install_function(
        &server,
        &t,
        "leave_role_settings",
        "EXECUTE format('ALTER ROLE %I SET work_mem = %L', current_user, '2GB'); \
         EXECUTE format('ALTER ROLE %I IN DATABASE %I SET TimeZone = %L', \
                        current_user, current_database(), 'Asia/Tokyo');",
    )
    .await;
    c.data
        .execute(exec(&t.id, "SELECT leave_role_settings()", vec![]))
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(role)
        .execute(&mut db)
        .await
        .unwrap();
    wait_for_none(&mut db, &backends_sql(role)).await;
    let mut after = None;
    for _ in 0..3 {
        match c.data.execute(read(&t.id, check)).await {
            Ok(r) => {
                after = Some(scalar(&r.into_inner()));
                break;
            }
            // The call that meets the terminated connection may fail.
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        }
    }
    let Some(Kind::Text(after)) = after else {
        panic!("no answer")
    };
    let (new_pid, rest) = after.split_once(' ').unwrap();
    assert_ne!(new_pid, pid, "a new session");
    assert_eq!(
        rest,
        clean.split_once(' ').unwrap().1,
        "as clean as the first"
    );
    let settings: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_db_role_setting s, unnest(s.setconfig) c \
         WHERE s.setrole = $1::regrole AND c <> 'search_path=' || $1",
    )
    .bind(role)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(settings, 0, "the role's own settings were reset");
    let err = c
        .data
        .execute(read(&t.id, "SELECT lastval()"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("55000"), "{err:?}");

    // A read-only Transaction cannot commit early and write after it.
    let err = c
        .data
        .transaction(pb::TransactionRequest {
            tenant_id: t.id.clone(),
            statements: vec![
                stmt(";COMMIT"),
                stmt("INSERT INTO customers (code, name) VALUES ('x', 'x')"),
            ],
            read_only: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), vec!["statements[0].sql".to_owned()]);

    // Statements deallocated behind tenantd's back are prepared again.
    c.data.execute(read(&t.id, "SELECT 1")).await.unwrap();
    install_function(&server, &t, "drop_prepared", "EXECUTE 'DEALLOCATE ALL';").await;
    c.data
        .execute(exec(&t.id, "SELECT drop_prepared()", vec![]))
        .await
        .unwrap();
    assert_eq!(read_scalar(&mut c, &t.id, "SELECT 1").await, Kind::Int64(1));

    // A role password changed from inside is set again at the next login.
    install_function(
        &server,
        &t,
        "change_password",
        "EXECUTE format('ALTER ROLE %I PASSWORD %L', current_user, 'mine');",
    )
    .await;
    c.data
        .execute(exec(&t.id, "SELECT change_password()", vec![]))
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(&t.schema_name)
        .execute(&mut db)
        .await
        .unwrap();
    wait_for_none(&mut db, &backends_sql(&t.schema_name)).await;
    let mut answered = None;
    for _ in 0..3 {
        match c.data.execute(read(&t.id, "SELECT 2")).await {
            Ok(r) => {
                answered = Some(r.into_inner());
                break;
            }
            // The call that meets the terminated connection may fail.
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        }
    }
    assert_eq!(scalar(&answered.expect("calls work again")), Kind::Int64(2));
}

#[tokio::test]
async fn one_members_sql_stays_unseen_by_the_next_call() {
    // One connection, so the second call lands on the session the first
    // prepared its statement on.
    let server = TestServer::start_with(|c| c.tenant_pools.pool_size = 1).await;
    let mut c = server.clients().await;
    let t = c.tenant("unseen").await;
    c.data
        .execute(exec(
            &t.id,
            "UPDATE customers SET name = name WHERE code = 'pw:SECRET-4711'",
            vec![],
        ))
        .await
        .unwrap();
    // Every way of listing the session's prepared statements is refused
    // (data::screen); what remains visible holds nothing of the first call.
    let r = c
        .data
        .execute(read(
            &t.id,
            "SELECT coalesce(string_agg(statement, ';'), '') FROM pg_cursors",
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(Kind::Text(seen)) = &r.rows[0].values[0].kind else {
        panic!("{r:?}")
    };
    assert!(!seen.contains("SECRET"), "{seen}");
}
