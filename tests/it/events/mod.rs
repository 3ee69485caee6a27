//! Watching the fleet: the event stream (durable cursor, replicas, slow
//! watchers, who sees what), per-tenant usage, and the operator console.

mod console;
mod stream;
mod usage;

use std::time::Duration;

use tenantd::pb;
use tonic::Streaming;

use crate::common::Clients;
use crate::common::identity::{add_member, new_user};

/// The next event of a watch, or its ending status; panics after `within`.
pub async fn next(
    stream: &mut Streaming<pb::Event>,
    within: Duration,
) -> Result<Option<pb::Event>, tonic::Status> {
    tokio::time::timeout(within, stream.message())
        .await
        .expect("no event or status within the wait")
}

/// Changes that each write one event: `n` role changes of one member
/// (EMPLOYEE and MANAGER in turn) in `tenant`, by `writers` clients at once.
pub async fn role_flips(c: &Clients, tenant: &str, n: usize, writers: usize) {
    let mut c0 = c.clone();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let (user, _) = new_user(&mut c0, &format!("flip{w}")).await;
        add_member(&mut c0, tenant, &user, pb::MemberRole::Employee).await;
        let mut c = c.clone();
        let tenant = tenant.to_owned();
        let count = n / writers + usize::from(w < n % writers);
        tasks.spawn(async move {
            for i in 0..count {
                let role = if i % 2 == 0 {
                    pb::MemberRole::Manager
                } else {
                    pb::MemberRole::Employee
                };
                c.users
                    .change_role(pb::ChangeRoleRequest {
                        tenant_id: tenant.clone(),
                        user_id: user.clone(),
                        role: role as i32,
                    })
                    .await
                    .expect("change a role");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("writer");
    }
}
