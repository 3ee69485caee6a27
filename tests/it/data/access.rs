//! Who may read and write a tenant's data: users by their role, service
//! keys by the data scope.

use std::time::Duration;

use tenantd::pb::{self, value::Kind};
use tonic::Code;

use super::scalar;
use crate::common::TestServer;
use crate::common::data::{exec, read};
use crate::common::identity::{add_member, log_in, user};

#[tokio::test]
async fn users_read_and_write_by_their_role_and_keys_by_the_data_scope() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = c.tenant("roles").await;
    for (name, role) in [
        ("emma", pb::MemberRole::Employee),
        ("max", pb::MemberRole::Manager),
        ("nina", pb::MemberRole::Unspecified),
    ] {
        let u = c
            .users
            .create_user(user(name, &format!("{name}@example.com")))
            .await
            .unwrap()
            .into_inner();
        if role != pb::MemberRole::Unspecified {
            add_member(&mut c, &t.id, &u.id, role).await;
        }
    }
    let write = exec(
        &t.id,
        "INSERT INTO locations (name) VALUES (gen_random_uuid()::text)",
        vec![],
    );
    let count = read(&t.id, "SELECT count(*) FROM locations");

    let mut emma = server
        .clients_as(&log_in(&mut c, "emma@example.com", "").await.access_token)
        .await;
    emma.data.execute(count.clone()).await.unwrap();
    let err = emma.data.execute(write.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("data:write"), "{}", err.message());

    let mut max = server
        .clients_as(&log_in(&mut c, "max@example.com", "").await.access_token)
        .await;
    max.data.execute(write.clone()).await.unwrap();

    let mut nina = server
        .clients_as(&log_in(&mut c, "nina@example.com", "").await.access_token)
        .await;
    let err = nina.data.execute(count.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let mut db = server.db.connect().await;
    let (narrow, _) = tenantd::identity::keys::create(
        &mut db,
        "reader",
        &[tenantd::domain::identity::Scope::TenantsRead],
    )
    .await
    .unwrap();
    let (data_key, _) =
        tenantd::identity::keys::create(&mut db, "data", &[tenantd::domain::identity::Scope::Data])
            .await
            .unwrap();
    let mut narrow = server.clients_as(&narrow).await;
    let mut data_key = server.clients_as(&data_key).await;
    // Keys are cached; the new ones load within 5 s.
    let mut loaded = false;
    for _ in 0..70 {
        if data_key.data.execute(count.clone()).await.is_ok() {
            loaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(loaded, "the data key never worked");
    data_key.data.execute(write.clone()).await.unwrap();
    let err = narrow.data.execute(count.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let r = c.data.execute(count).await.unwrap().into_inner();
    assert_eq!(scalar(&r), Kind::Int64(2));
}
