//! Every RPC refuses a caller without credentials, and one whose key lacks
//! the scope it needs.

use std::time::Duration;

use tenantd::pb;
use tonic::{Code, Status};

use crate::common::data::{read, stmt};
use crate::common::identity::{PASSWORD, login, user};
use crate::common::{Clients, TestServer, new_tenant};

/// One call of an RPC, with a request naming nothing that exists.
#[derive(Clone)]
enum Call {
    CreateTenant(pb::CreateTenantRequest),
    GetTenant(pb::GetTenantRequest),
    ListTenants(pb::ListTenantsRequest),
    UpdateTenant(pb::UpdateTenantRequest),
    SuspendTenant(pb::TenantLifecycleRequest),
    ResumeTenant(pb::TenantLifecycleRequest),
    ArchiveTenant(pb::TenantLifecycleRequest),
    PurgeTenant(pb::PurgeTenantRequest),
    PlanUpgrade(pb::PlanUpgradeRequest),
    StartUpgrade(pb::StartUpgradeRequest),
    WatchUpgrade(pb::WatchUpgradeRequest),
    GetUpgrade(pb::GetUpgradeRequest),
    ListUpgrades(pb::ListUpgradesRequest),
    PauseUpgrade(pb::UpgradeRunRequest),
    ResumeUpgrade(pb::UpgradeRunRequest),
    CancelUpgrade(pb::UpgradeRunRequest),
    RetryFailed(pb::UpgradeRunRequest),
    CreateUser(pb::CreateUserRequest),
    GetUser(pb::GetUserRequest),
    UpdateUser(pb::UpdateUserRequest),
    DeactivateUser(pb::DeactivateUserRequest),
    ChangePassword(pb::ChangePasswordRequest),
    AddMember(pb::AddMemberRequest),
    ChangeRole(pb::ChangeRoleRequest),
    RemoveMember(pb::RemoveMemberRequest),
    ListMembers(pb::ListMembersRequest),
    ListUserTenants(pb::ListUserTenantsRequest),
    VerifyAudit(pb::VerifyAuditRequest),
    Login(pb::LoginRequest),
    Refresh(pb::RefreshRequest),
    Logout(pb::LogoutRequest),
    RevokeAllSessions(pb::RevokeAllSessionsRequest),
    ListSessions(pb::ListSessionsRequest),
    ValidateToken(pb::ValidateTokenRequest),
    CheckPermission(pb::CheckPermissionRequest),
    Execute(pb::ExecuteRequest),
    Transaction(pb::TransactionRequest),
    MoveTenantToCluster(pb::MoveTenantToClusterRequest),
    GetMove(pb::TenantMoveRequest),
    ListMoves(pb::ListMovesRequest),
    WatchMove(pb::TenantMoveRequest),
    CancelMove(pb::TenantMoveRequest),
    ListClusters(pb::ListClustersRequest),
    GetCluster(pb::GetClusterRequest),
    AddCluster(pb::AddClusterRequest),
    UpdateCluster(pb::UpdateClusterRequest),
    RemoveCluster(pb::RemoveClusterRequest),
    ListNodes(pb::ListNodesRequest),
    AddNode(pb::AddNodeRequest),
    SetNodeShouldHaveShards(pb::SetNodeShouldHaveShardsRequest),
    MoveTenant(pb::MoveTenantRequest),
    RebalanceTenants(pb::RebalanceTenantsRequest),
    DrainNode(pb::DrainNodeRequest),
    GetClusterJob(pb::ClusterJobRequest),
    ListClusterJobs(pb::ListClusterJobsRequest),
    WatchClusterJob(pb::ClusterJobRequest),
    CancelClusterJob(pb::ClusterJobRequest),
}

impl Call {
    /// Sends the call through `c`; only its status matters.
    async fn send(self, c: &mut Clients) -> Result<(), Status> {
        match self {
            Call::CreateTenant(r) => c.tenants.create_tenant(r).await.map(drop),
            Call::GetTenant(r) => c.tenants.get_tenant(r).await.map(drop),
            Call::ListTenants(r) => c.tenants.list_tenants(r).await.map(drop),
            Call::UpdateTenant(r) => c.tenants.update_tenant(r).await.map(drop),
            Call::SuspendTenant(r) => c.tenants.suspend_tenant(r).await.map(drop),
            Call::ResumeTenant(r) => c.tenants.resume_tenant(r).await.map(drop),
            Call::ArchiveTenant(r) => c.tenants.archive_tenant(r).await.map(drop),
            Call::PurgeTenant(r) => c.tenants.purge_tenant(r).await.map(drop),
            Call::PlanUpgrade(r) => c.migrations.plan_upgrade(r).await.map(drop),
            Call::StartUpgrade(r) => c.migrations.start_upgrade(r).await.map(drop),
            Call::WatchUpgrade(r) => c.migrations.watch_upgrade(r).await.map(drop),
            Call::GetUpgrade(r) => c.migrations.get_upgrade(r).await.map(drop),
            Call::ListUpgrades(r) => c.migrations.list_upgrades(r).await.map(drop),
            Call::PauseUpgrade(r) => c.migrations.pause_upgrade(r).await.map(drop),
            Call::ResumeUpgrade(r) => c.migrations.resume_upgrade(r).await.map(drop),
            Call::CancelUpgrade(r) => c.migrations.cancel_upgrade(r).await.map(drop),
            Call::RetryFailed(r) => c.migrations.retry_failed(r).await.map(drop),
            Call::CreateUser(r) => c.users.create_user(r).await.map(drop),
            Call::GetUser(r) => c.users.get_user(r).await.map(drop),
            Call::UpdateUser(r) => c.users.update_user(r).await.map(drop),
            Call::DeactivateUser(r) => c.users.deactivate_user(r).await.map(drop),
            Call::ChangePassword(r) => c.users.change_password(r).await.map(drop),
            Call::AddMember(r) => c.users.add_member(r).await.map(drop),
            Call::ChangeRole(r) => c.users.change_role(r).await.map(drop),
            Call::RemoveMember(r) => c.users.remove_member(r).await.map(drop),
            Call::ListMembers(r) => c.users.list_members(r).await.map(drop),
            Call::ListUserTenants(r) => c.users.list_user_tenants(r).await.map(drop),
            Call::VerifyAudit(r) => c.users.verify_audit(r).await.map(drop),
            Call::Login(r) => c.sessions.login(r).await.map(drop),
            Call::Refresh(r) => c.sessions.refresh(r).await.map(drop),
            Call::Logout(r) => c.sessions.logout(r).await.map(drop),
            Call::RevokeAllSessions(r) => c.sessions.revoke_all_sessions(r).await.map(drop),
            Call::ListSessions(r) => c.sessions.list_sessions(r).await.map(drop),
            Call::ValidateToken(r) => c.sessions.validate_token(r).await.map(drop),
            Call::CheckPermission(r) => c.sessions.check_permission(r).await.map(drop),
            Call::Execute(r) => c.data.execute(r).await.map(drop),
            Call::Transaction(r) => c.data.transaction(r).await.map(drop),
            Call::MoveTenantToCluster(r) => c.tenants.move_tenant(r).await.map(drop),
            Call::GetMove(r) => c.tenants.get_move(r).await.map(drop),
            Call::ListMoves(r) => c.tenants.list_moves(r).await.map(drop),
            Call::WatchMove(r) => c.tenants.watch_move(r).await.map(drop),
            Call::CancelMove(r) => c.tenants.cancel_move(r).await.map(drop),
            Call::ListClusters(r) => c.clusters.list_clusters(r).await.map(drop),
            Call::GetCluster(r) => c.clusters.get_cluster(r).await.map(drop),
            Call::AddCluster(r) => c.clusters.add_cluster(r).await.map(drop),
            Call::UpdateCluster(r) => c.clusters.update_cluster(r).await.map(drop),
            Call::RemoveCluster(r) => c.clusters.remove_cluster(r).await.map(drop),
            Call::ListNodes(r) => c.clusters.list_nodes(r).await.map(drop),
            Call::AddNode(r) => c.clusters.add_node(r).await.map(drop),
            Call::SetNodeShouldHaveShards(r) => {
                c.clusters.set_node_should_have_shards(r).await.map(drop)
            }
            Call::MoveTenant(r) => c.clusters.move_tenant(r).await.map(drop),
            Call::RebalanceTenants(r) => c.clusters.rebalance_tenants(r).await.map(drop),
            Call::DrainNode(r) => c.clusters.drain_node(r).await.map(drop),
            Call::GetClusterJob(r) => c.clusters.get_cluster_job(r).await.map(drop),
            Call::ListClusterJobs(r) => c.clusters.list_cluster_jobs(r).await.map(drop),
            Call::WatchClusterJob(r) => c.clusters.watch_cluster_job(r).await.map(drop),
            Call::CancelClusterJob(r) => c.clusters.cancel_cluster_job(r).await.map(drop),
        }
    }
}

/// An RPC, the call made of it, and how a key that may only read tenants
/// is answered (`None`: it may make the call).
struct Case {
    rpc: &'static str,
    call: Call,
    with_reader_key: Option<Code>,
}

const DENIED: Option<Code> = Some(Code::PermissionDenied);

/// A fresh id that names nothing.
fn id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn lifecycle() -> pb::TenantLifecycleRequest {
    pb::TenantLifecycleRequest {
        id: id(),
        ..Default::default()
    }
}

fn run() -> pb::UpgradeRunRequest {
    pb::UpgradeRunRequest {
        run_id: id(),
        ..Default::default()
    }
}

/// Every RPC of the control plane, with what a tenants:read key gets.
fn control_plane() -> Vec<Case> {
    use Call::*;
    let case = |rpc, call, with_reader_key| Case {
        rpc,
        call,
        with_reader_key,
    };
    vec![
        case("CreateTenant", CreateTenant(new_tenant("x")), DENIED),
        case(
            "GetTenant",
            GetTenant(pb::GetTenantRequest {
                selector: Some(pb::get_tenant_request::Selector::Id(id())),
            }),
            None,
        ),
        case("ListTenants", ListTenants(Default::default()), None),
        case(
            "UpdateTenant",
            UpdateTenant(pb::UpdateTenantRequest {
                id: id(),
                ..Default::default()
            }),
            DENIED,
        ),
        case("SuspendTenant", SuspendTenant(lifecycle()), DENIED),
        case("ResumeTenant", ResumeTenant(lifecycle()), DENIED),
        case("ArchiveTenant", ArchiveTenant(lifecycle()), DENIED),
        case(
            "PurgeTenant",
            PurgeTenant(pb::PurgeTenantRequest {
                id: id(),
                confirm_slug: "x-y".into(),
                ..Default::default()
            }),
            DENIED,
        ),
        case("PlanUpgrade", PlanUpgrade(Default::default()), DENIED),
        case("StartUpgrade", StartUpgrade(Default::default()), DENIED),
        case(
            "WatchUpgrade",
            WatchUpgrade(pb::WatchUpgradeRequest {
                run_id: id(),
                ..Default::default()
            }),
            DENIED,
        ),
        case(
            "GetUpgrade",
            GetUpgrade(pb::GetUpgradeRequest { run_id: id() }),
            DENIED,
        ),
        case("ListUpgrades", ListUpgrades(Default::default()), DENIED),
        case("PauseUpgrade", PauseUpgrade(run()), DENIED),
        case("ResumeUpgrade", ResumeUpgrade(run()), DENIED),
        case("CancelUpgrade", CancelUpgrade(run()), DENIED),
        case("RetryFailed", RetryFailed(run()), DENIED),
        case("CreateUser", CreateUser(user("A", "a@example.com")), DENIED),
        case("GetUser", GetUser(pb::GetUserRequest { id: id() }), DENIED),
        case(
            "UpdateUser",
            UpdateUser(pb::UpdateUserRequest {
                id: id(),
                ..Default::default()
            }),
            DENIED,
        ),
        case(
            "DeactivateUser",
            DeactivateUser(pb::DeactivateUserRequest {
                id: id(),
                ..Default::default()
            }),
            DENIED,
        ),
        case(
            "ChangePassword",
            ChangePassword(pb::ChangePasswordRequest {
                user_id: id(),
                current_password: String::new(),
                new_password: PASSWORD.into(),
            }),
            DENIED,
        ),
        case(
            "AddMember",
            AddMember(pb::AddMemberRequest {
                tenant_id: id(),
                user_id: id(),
                role: 4,
            }),
            DENIED,
        ),
        case(
            "ChangeRole",
            ChangeRole(pb::ChangeRoleRequest {
                tenant_id: id(),
                user_id: id(),
                role: 4,
            }),
            DENIED,
        ),
        case(
            "RemoveMember",
            RemoveMember(pb::RemoveMemberRequest {
                tenant_id: id(),
                user_id: id(),
            }),
            DENIED,
        ),
        case(
            "ListMembers",
            ListMembers(pb::ListMembersRequest {
                tenant_id: id(),
                ..Default::default()
            }),
            DENIED,
        ),
        case(
            "ListUserTenants",
            ListUserTenants(pb::ListUserTenantsRequest { user_id: id() }),
            DENIED,
        ),
        case(
            "VerifyAudit",
            VerifyAudit(pb::VerifyAuditRequest {}),
            DENIED,
        ),
        case("Login", Login(login("a@example.com", PASSWORD, "")), DENIED),
        // Moves between clusters: reads take tenants:read, the rest
        // clusters:admin.
        case(
            "MoveTenant (TenantService)",
            MoveTenantToCluster(pb::MoveTenantToClusterRequest {
                tenant_id: id(),
                cluster: "default".into(),
            }),
            DENIED,
        ),
        case(
            "GetMove",
            GetMove(pb::TenantMoveRequest { id: id() }),
            Some(Code::NotFound),
        ),
        case(
            "ListMoves",
            ListMoves(pb::ListMovesRequest::default()),
            None,
        ),
        case(
            "WatchMove",
            WatchMove(pb::TenantMoveRequest { id: id() }),
            Some(Code::NotFound),
        ),
        case(
            "CancelMove",
            CancelMove(pb::TenantMoveRequest { id: id() }),
            DENIED,
        ),
        // The cluster registry: reads take tenants:read, changes
        // clusters:admin.
        case(
            "ListClusters",
            ListClusters(pb::ListClustersRequest {}),
            None,
        ),
        case(
            "GetCluster",
            GetCluster(pb::GetClusterRequest {
                name: "default".into(),
            }),
            None,
        ),
        case(
            "AddCluster",
            AddCluster(pb::AddClusterRequest {
                name: "elsewhere".into(),
                url: "postgres://tenantd@127.0.0.1:9/db".into(),
                ..Default::default()
            }),
            DENIED,
        ),
        case(
            "UpdateCluster",
            UpdateCluster(pb::UpdateClusterRequest {
                name: "default".into(),
                state: pb::ClusterState::Closed.into(),
                ..Default::default()
            }),
            DENIED,
        ),
        case(
            "RemoveCluster",
            RemoveCluster(pb::RemoveClusterRequest {
                name: "default".into(),
            }),
            DENIED,
        ),
        // Reads of ClusterService take tenants:read: on plain PostgreSQL
        // the reader key gets them answered FAILED_PRECONDITION (no Citus).
        case(
            "ListNodes",
            ListNodes(pb::ListNodesRequest {}),
            Some(Code::FailedPrecondition),
        ),
        case(
            "AddNode",
            AddNode(pb::AddNodeRequest {
                node: "127.0.0.1:9".into(),
            }),
            DENIED,
        ),
        case(
            "SetNodeShouldHaveShards",
            SetNodeShouldHaveShards(pb::SetNodeShouldHaveShardsRequest {
                node: "127.0.0.1:9".into(),
                should_have_shards: false,
            }),
            DENIED,
        ),
        case(
            "MoveTenant",
            MoveTenant(pb::MoveTenantRequest {
                tenant_id: id(),
                node: "127.0.0.1:9".into(),
            }),
            DENIED,
        ),
        case(
            "RebalanceTenants",
            RebalanceTenants(pb::RebalanceTenantsRequest {}),
            DENIED,
        ),
        case(
            "DrainNode",
            DrainNode(pb::DrainNodeRequest {
                node: "127.0.0.1:9".into(),
            }),
            DENIED,
        ),
        case(
            "GetClusterJob",
            GetClusterJob(pb::ClusterJobRequest { id: id() }),
            Some(Code::FailedPrecondition),
        ),
        case(
            "ListClusterJobs",
            ListClusterJobs(pb::ListClusterJobsRequest { page_size: 0 }),
            Some(Code::FailedPrecondition),
        ),
        case(
            "WatchClusterJob",
            WatchClusterJob(pb::ClusterJobRequest { id: id() }),
            Some(Code::FailedPrecondition),
        ),
        case(
            "CancelClusterJob",
            CancelClusterJob(pb::ClusterJobRequest { id: id() }),
            DENIED,
        ),
        case(
            "Refresh",
            Refresh(pb::RefreshRequest {
                refresh_token: "x".into(),
                client_ip: String::new(),
            }),
            DENIED,
        ),
        case(
            "Logout",
            Logout(pb::LogoutRequest {
                access_token: String::new(),
            }),
            Some(Code::InvalidArgument),
        ),
        case(
            "RevokeAllSessions",
            RevokeAllSessions(pb::RevokeAllSessionsRequest {
                user_id: id(),
                ..Default::default()
            }),
            DENIED,
        ),
        case(
            "ListSessions",
            ListSessions(pb::ListSessionsRequest { user_id: id() }),
            DENIED,
        ),
        case(
            "ValidateToken",
            ValidateToken(pb::ValidateTokenRequest {
                access_token: "x".into(),
            }),
            DENIED,
        ),
        case(
            "CheckPermission",
            CheckPermission(pb::CheckPermissionRequest {
                access_token: "x".into(),
                tenant_id: id(),
                permission: "data:read".into(),
            }),
            DENIED,
        ),
    ]
}

/// The data plane's RPCs, on a tenant that exists: only the credential
/// decides.
fn data_plane(tenant: &str) -> Vec<Case> {
    vec![
        Case {
            rpc: "Execute",
            call: Call::Execute(read(tenant, "SELECT 1")),
            with_reader_key: DENIED,
        },
        Case {
            rpc: "Transaction",
            call: Call::Transaction(pb::TransactionRequest {
                tenant_id: tenant.to_owned(),
                statements: vec![stmt("SELECT 1")],
                read_only: true,
                ..Default::default()
            }),
            with_reader_key: DENIED,
        },
    ]
}

/// The code a ListTenants with `credential` is refused with.
async fn list_refused(server: &TestServer, credential: &str) -> Code {
    server
        .clients_as(credential)
        .await
        .tenants
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap_err()
        .code()
}

#[tokio::test]
async fn every_rpc_refuses_a_missing_credential_and_a_wrong_scope() {
    let server = TestServer::start().await;
    // A key that may only read tenants, made the way an operator would.
    let mut db = server.db.connect().await;
    let (reader, _) = tenantd::identity::keys::create(
        &mut db,
        "reader",
        &[tenantd::domain::identity::Scope::TenantsRead],
    )
    .await
    .unwrap();
    let mut anonymous = server.anonymous_clients().await;
    let mut narrow = server.clients_as(&reader).await;
    // Keys are cached; wait for the new one to load (refreshed every 5 s).
    for _ in 0..70 {
        if narrow
            .tenants
            .list_tenants(pb::ListTenantsRequest::default())
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    narrow
        .tenants
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .expect("the reader key reads tenants");

    let tenant = server.clients().await.tenant("walk").await.id;
    for case in control_plane().into_iter().chain(data_plane(&tenant)) {
        let refused = case.call.clone().send(&mut anonymous).await;
        assert_eq!(
            refused.unwrap_err().code(),
            Code::Unauthenticated,
            "{} without credentials",
            case.rpc
        );
        if let Some(code) = case.with_reader_key {
            let refused = case.call.send(&mut narrow).await;
            assert_eq!(
                refused.unwrap_err().code(),
                code,
                "{} with a tenants:read key",
                case.rpc
            );
        }
    }

    // A made-up key and a garbage token are refused too.
    assert_eq!(
        list_refused(&server, "tdk_0123456789ab_forged").await,
        Code::Unauthenticated
    );
    assert_eq!(
        list_refused(&server, "eyJhbGciOiJIUzI1NiJ9.e30.bad").await,
        Code::Unauthenticated
    );
}
