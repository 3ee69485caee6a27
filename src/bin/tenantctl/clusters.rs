//! `tenantctl clusters …`: the PostgreSQL clusters tenants are placed on,
//! the Citus nodes behind a Citus coordinator and the jobs that move
//! tenants between them (ClusterService).

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tenantd::pb::{self, cluster_service_client::ClusterServiceClient};
use tonic::transport::Channel;

use crate::cli::parse_uuid;
use crate::error::CliError;
use crate::output::{self, OutputFormat};
use crate::session::Session;

#[derive(Debug, Subcommand)]
pub enum ClustersCommand {
    /// The clusters tenants are placed on, `default` (the catalog's own
    /// database) first.
    List,
    /// One cluster.
    Get { name: String },
    /// Register a PostgreSQL server for tenants; tenantd checks what it
    /// needs there first and prints what would limit it.
    Add {
        /// 1-40 lower-case letters, digits and inner hyphens.
        name: String,
        /// postgres://user@host:port/database (TLS as libpq: sslmode,
        /// sslrootcert, sslcert, sslkey); no password in it.
        #[arg(long)]
        url: String,
        /// A file inside the replicas' --cluster-secrets-dir holding the
        /// password.
        #[arg(long, conflicts_with = "password_env")]
        password_file: Option<String>,
        /// An environment variable of every replica (TENANTD_CLUSTER_…)
        /// holding the password.
        #[arg(long)]
        password_env: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Change a cluster's weight or caps.
    Set {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Let new tenants land on a cluster again.
    Open { name: String },
    /// Move every tenant off a cluster (to the open clusters, as placement
    /// would place them); no new tenants land there.
    Drain {
        name: String,
        /// Follow the moves until they end; exit 1 unless all succeeded.
        #[arg(long)]
        watch: bool,
    },
    /// No new tenants on a cluster; its tenants stay and serve.
    Close { name: String },
    /// Unregister a cluster that holds no tenant.
    Remove { name: String },
    /// The coordinator and workers, with how many tenants each holds.
    Nodes,
    /// Add a worker to the Citus cluster (needs a superuser database role).
    AddNode {
        /// host:port of the new worker.
        node: String,
    },
    /// Allow or stop placing tenants on a node.
    SetNode {
        /// host:port, as `clusters nodes` shows it.
        node: String,
        #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
        should_have_shards: bool,
    },
    /// Move one tenant (id or slug) to another node.
    Move {
        #[arg(value_name = "ID_OR_SLUG")]
        tenant: String,
        /// host:port of the target node.
        node: String,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Move tenants as Citus's rebalancer plans it.
    Rebalance {
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Move every tenant off a Citus node; new tenants stop landing there.
    DrainNode {
        node: String,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Placement jobs, newest first.
    Jobs {
        /// How many (1-100).
        #[arg(long, default_value_t = 20)]
        limit: i32,
    },
    /// One placement job and its moves.
    Job {
        #[arg(value_parser = parse_uuid)]
        id: String,
    },
    /// Follow a placement job until it ends.
    Watch {
        #[arg(value_parser = parse_uuid)]
        id: String,
    },
    /// Cancel a placement job: pending moves are skipped, a running move is
    /// rolled back unless Citus already switched the tenant over.
    Cancel {
        #[arg(value_parser = parse_uuid)]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Share of new tenants (1-10000; 100 when added without it).
    #[arg(long)]
    weight: Option<i32>,
    /// No tenant placed past this many (0: no cap).
    #[arg(long)]
    max_tenants: Option<i64>,
    /// No tenant placed once the database holds this many relations (0: no cap).
    #[arg(long)]
    max_relations: Option<i64>,
    /// Tenant connections each replica may hold to the cluster, its share
    /// of the replica's --pool-budget (0: no cap of its own).
    #[arg(long)]
    connection_budget: Option<i32>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Follow the job until it ends; exit 1 unless it succeeded.
    #[arg(long)]
    watch: bool,
}

fn client(session: &Session) -> ClusterServiceClient<Channel> {
    ClusterServiceClient::new(session.channel())
}

pub async fn run(command: ClustersCommand, session: &Session) -> Result<(), CliError> {
    let mut c = client(session);
    let (job, watch) = match command {
        ClustersCommand::List => {
            let request = session.request(pb::ListClustersRequest {});
            let clusters = session.call(c.list_clusters(request)).await?.clusters;
            return print_clusters(session.output, &clusters);
        }
        ClustersCommand::Get { name } => {
            let request = session.request(pb::GetClusterRequest { name });
            let cluster = session.call(c.get_cluster(request)).await?;
            return print_clusters(session.output, &[cluster]);
        }
        ClustersCommand::Add {
            name,
            url,
            password_file,
            password_env,
            limits,
        } => {
            let request = pb::AddClusterRequest {
                name,
                url,
                password_file: password_file.unwrap_or_default(),
                password_env: password_env.unwrap_or_default(),
                weight: limits.weight.unwrap_or(0),
                max_tenants: limits.max_tenants.unwrap_or(0),
                max_relations: limits.max_relations.unwrap_or(0),
                connection_budget: limits.connection_budget.unwrap_or(0),
            };
            let added = session
                .call(c.add_cluster(session.request(request)))
                .await?;
            return print_added(session.output, &added);
        }
        ClustersCommand::Set { name, limits } => {
            let request = pb::UpdateClusterRequest {
                name,
                state: pb::ClusterState::Unspecified.into(),
                weight: limits.weight,
                max_tenants: limits.max_tenants,
                max_relations: limits.max_relations,
                connection_budget: limits.connection_budget,
            };
            let cluster = session
                .call(c.update_cluster(session.request(request)))
                .await?;
            return print_clusters(session.output, &[cluster]);
        }
        ClustersCommand::Open { name } => {
            return set_state(session, &mut c, name, pb::ClusterState::Open).await;
        }
        ClustersCommand::Drain { name, watch } => {
            let request = session.request(pb::DrainClusterRequest { name });
            let drained = session.call(c.drain_cluster(request)).await?;
            if let Some(cluster) = &drained.cluster {
                print_clusters(session.output, std::slice::from_ref(cluster))?;
            }
            crate::tenants::moves::print_list(session.output, &drained.moves)?;
            if !watch {
                return Ok(());
            }
            let mut failed = 0;
            for m in drained.moves {
                if crate::tenants::moves::show(session, m, true).await.is_err() {
                    failed += 1;
                }
            }
            if failed > 0 {
                return Err(CliError::Failed(format!(
                    "{failed} move(s) did not succeed"
                )));
            }
            return Ok(());
        }
        ClustersCommand::Close { name } => {
            return set_state(session, &mut c, name, pb::ClusterState::Closed).await;
        }
        ClustersCommand::Remove { name } => {
            let request = session.request(pb::RemoveClusterRequest { name: name.clone() });
            session.call(c.remove_cluster(request)).await?;
            return match session.output {
                OutputFormat::Json => output::print_json(&json!({ "removed": name })),
                OutputFormat::Table => output::print_text(&format!("cluster {name} removed")),
            };
        }
        ClustersCommand::Nodes => {
            let nodes = session
                .call(c.list_nodes(session.request(pb::ListNodesRequest {})))
                .await?
                .nodes;
            return print_nodes(session.output, &nodes);
        }
        ClustersCommand::AddNode { node } => {
            let node = session
                .call(c.add_node(session.request(pb::AddNodeRequest { node })))
                .await?;
            return print_nodes(session.output, &[node]);
        }
        ClustersCommand::SetNode {
            node,
            should_have_shards,
        } => {
            let request = pb::SetNodeShouldHaveShardsRequest {
                node,
                should_have_shards,
            };
            let node = session
                .call(c.set_node_should_have_shards(session.request(request)))
                .await?;
            return print_nodes(session.output, &[node]);
        }
        ClustersCommand::Move {
            tenant,
            node,
            watch,
        } => {
            let tenant_id = crate::tenants::resolve_id(session, &tenant).await?;
            let request = pb::MoveTenantRequest { tenant_id, node };
            let job = session
                .call(c.move_tenant(session.request(request)))
                .await?;
            (job, watch.watch)
        }
        ClustersCommand::Rebalance { watch } => {
            let request = session.request(pb::RebalanceTenantsRequest {});
            (
                session.call(c.rebalance_tenants(request)).await?,
                watch.watch,
            )
        }
        ClustersCommand::DrainNode { node, watch } => {
            let request = session.request(pb::DrainNodeRequest { node });
            (session.call(c.drain_node(request)).await?, watch.watch)
        }
        ClustersCommand::Jobs { limit } => {
            let request = session.request(pb::ListClusterJobsRequest { page_size: limit });
            let jobs = session.call(c.list_cluster_jobs(request)).await?.jobs;
            return print_jobs(session.output, &jobs);
        }
        ClustersCommand::Job { id } => {
            let request = session.request(pb::ClusterJobRequest { id });
            (session.call(c.get_cluster_job(request)).await?, false)
        }
        ClustersCommand::Watch { id } => return watch(session, &mut c, id).await,
        ClustersCommand::Cancel { id } => {
            let request = session.request(pb::ClusterJobRequest { id });
            (session.call(c.cancel_cluster_job(request)).await?, false)
        }
    };
    if watch {
        return self::watch(session, &mut c, job.id).await;
    }
    print_job(session.output, &job)
}

async fn set_state(
    session: &Session,
    c: &mut ClusterServiceClient<Channel>,
    name: String,
    state: pb::ClusterState,
) -> Result<(), CliError> {
    let request = pb::UpdateClusterRequest {
        name,
        state: state.into(),
        ..Default::default()
    };
    let cluster = session
        .call(c.update_cluster(session.request(request)))
        .await?;
    print_clusters(session.output, &[cluster])
}

fn cluster_state(raw: i32) -> String {
    output::enum_word(
        pb::ClusterState::try_from(raw)
            .ok()
            .map(|s| s.as_str_name()),
        "CLUSTER_STATE_",
        raw,
    )
}

fn cap(n: i64) -> Value {
    if n > 0 { json!(n) } else { Value::Null }
}

fn cluster_json(c: &pb::Cluster) -> Value {
    json!({
        "name": c.name,
        "url": c.url,
        "state": cluster_state(c.state),
        "weight": c.weight,
        "max_tenants": cap(c.max_tenants),
        "max_relations": cap(c.max_relations),
        "connection_budget": cap(c.connection_budget.into()),
        "tenants": c.tenants,
        "password_file": c.password_file,
        "password_env": c.password_env,
        "created_at": output::rfc3339(c.created_at.as_ref()),
    })
}

fn print_clusters(format: OutputFormat, clusters: &[pb::Cluster]) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => output::print_json(&json!(
            clusters.iter().map(cluster_json).collect::<Vec<_>>()
        )),
        OutputFormat::Table => {
            let mut table = output::table(Some(&[
                "NAME",
                "STATE",
                "TENANTS",
                "WEIGHT",
                "MAX TENANTS",
                "MAX RELATIONS",
                "CONNECTIONS",
                "URL",
            ]));
            let or_dash = |n: i64| if n > 0 { n.to_string() } else { "-".to_owned() };
            for c in clusters {
                table.add_row(vec![
                    c.name.clone(),
                    cluster_state(c.state),
                    c.tenants.to_string(),
                    c.weight.to_string(),
                    or_dash(c.max_tenants),
                    or_dash(c.max_relations),
                    or_dash(c.connection_budget.into()),
                    if c.url.is_empty() {
                        "(the catalog's database)".to_owned()
                    } else {
                        c.url.clone()
                    },
                ]);
            }
            output::print_text(&table.to_string())
        }
    }
}

fn print_added(format: OutputFormat, added: &pb::AddClusterResponse) -> Result<(), CliError> {
    let Some(cluster) = &added.cluster else {
        return Err(CliError::Failed(
            "the server answered no cluster".to_owned(),
        ));
    };
    match format {
        OutputFormat::Json => output::print_json(&json!({
            "cluster": cluster_json(cluster),
            "server_version": added.server_version,
            "superuser": added.superuser,
            "wal_level": added.wal_level,
            "max_connections": added.max_connections,
            "citus": added.citus,
            "warnings": added.warnings,
        })),
        OutputFormat::Table => {
            print_clusters(format, std::slice::from_ref(cluster))?;
            output::print_text(&format!(
                "PostgreSQL {}, {}, wal_level {}, max_connections {}{}",
                added.server_version,
                if added.superuser {
                    "superuser"
                } else {
                    "not a superuser"
                },
                added.wal_level,
                added.max_connections,
                if added.citus { ", Citus" } else { "" }
            ))?;
            for w in &added.warnings {
                output::print_text(&format!("warning: {w}"))?;
            }
            Ok(())
        }
    }
}

/// Prints each change of the job; the exit status tells how it ended.
async fn watch(
    session: &Session,
    c: &mut ClusterServiceClient<Channel>,
    id: String,
) -> Result<(), CliError> {
    let request = session.stream_request(pb::ClusterJobRequest { id });
    let mut stream = session.call(c.watch_cluster_job(request)).await?;
    let mut shown: Vec<(String, i32, String)> = Vec::new();
    let mut last = None;
    // A move can take a long time: the watch waits for as long as the
    // server keeps the stream open.
    while let Some(job) = session
        .next_message(&mut stream, Duration::from_secs(24 * 3600))
        .await?
    {
        if session.output == OutputFormat::Table {
            for m in &job.moves {
                // Each change of status, and of Citus's phase while it runs.
                let key = (m.tenant_id.clone(), m.status, m.phase.clone());
                if m.status != pb::MoveStatus::Pending as i32 && !shown.contains(&key) {
                    output::print_text(&move_line(m))?;
                    shown.push(key);
                }
            }
        }
        last = Some(job);
    }
    let Some(job) = last else {
        return Err(CliError::Failed(
            "the server ended the stream without the job".to_owned(),
        ));
    };
    print_job(session.output, &job)?;
    if job.status == pb::ClusterJobStatus::Succeeded as i32 {
        return Ok(());
    }
    Err(CliError::Failed(format!(
        "the placement job ended {}",
        job_status(job.status)
    )))
}

fn job_status(raw: i32) -> String {
    output::enum_word(
        pb::ClusterJobStatus::try_from(raw)
            .ok()
            .map(|s| s.as_str_name()),
        "CLUSTER_JOB_STATUS_",
        raw,
    )
}

fn job_kind(raw: i32) -> String {
    output::enum_word(
        pb::ClusterJobKind::try_from(raw)
            .ok()
            .map(|s| s.as_str_name()),
        "CLUSTER_JOB_KIND_",
        raw,
    )
}

fn move_status(raw: i32) -> String {
    output::enum_word(
        pb::MoveStatus::try_from(raw).ok().map(|s| s.as_str_name()),
        "MOVE_STATUS_",
        raw,
    )
}

fn move_line(m: &pb::TenantMove) -> String {
    let error = if m.error.is_empty() {
        String::new()
    } else {
        format!(": {}", m.error)
    };
    let progress = if m.phase.is_empty() {
        String::new()
    } else {
        format!(
            " ({}, {} of {} MB on the target)",
            m.phase.to_lowercase(),
            m.target_bytes / 1_000_000,
            m.source_bytes / 1_000_000
        )
    };
    format!(
        "{}  {} -> {}  {}{progress}{error}",
        m.tenant_id,
        m.source,
        m.target,
        move_status(m.status)
    )
}

fn node_json(n: &pb::Node) -> Value {
    json!({
        "id": n.id,
        "name": n.name,
        "coordinator": n.coordinator,
        "active": n.active,
        "should_have_shards": n.should_have_shards,
        "tenants": n.tenants,
    })
}

fn print_nodes(format: OutputFormat, nodes: &[pb::Node]) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => {
            output::print_json(&json!(nodes.iter().map(node_json).collect::<Vec<_>>()))
        }
        OutputFormat::Table => {
            let mut table = output::table(Some(&[
                "ID",
                "NODE",
                "ROLE",
                "ACTIVE",
                "SHOULD HAVE SHARDS",
                "TENANTS",
            ]));
            for n in nodes {
                table.add_row(vec![
                    n.id.to_string(),
                    n.name.clone(),
                    if n.coordinator {
                        "coordinator"
                    } else {
                        "worker"
                    }
                    .to_owned(),
                    n.active.to_string(),
                    n.should_have_shards.to_string(),
                    n.tenants.to_string(),
                ]);
            }
            output::print_text(&table.to_string())
        }
    }
}

fn job_json(j: &pb::ClusterJob) -> Value {
    json!({
        "id": j.id,
        "kind": job_kind(j.kind),
        "status": job_status(j.status),
        "node": j.node,
        "requested_by": j.requested_by,
        "created_at": output::rfc3339(j.created_at.as_ref()),
        "started_at": output::rfc3339(j.started_at.as_ref()),
        "finished_at": output::rfc3339(j.finished_at.as_ref()),
        "cancel_requested": j.cancel_requested,
        "error": j.error,
        "moves": j.moves.iter().map(|m| json!({
            "tenant_id": m.tenant_id,
            "source": m.source,
            "target": m.target,
            "status": move_status(m.status),
            "started_at": output::rfc3339(m.started_at.as_ref()),
            "finished_at": output::rfc3339(m.finished_at.as_ref()),
            "error": m.error,
            "phase": m.phase,
            "source_bytes": m.source_bytes,
            "target_bytes": m.target_bytes,
        })).collect::<Vec<_>>(),
    })
}

fn print_job(format: OutputFormat, job: &pb::ClusterJob) -> Result<(), CliError> {
    if format == OutputFormat::Json {
        return output::print_json(&job_json(job));
    }
    let count = |s: pb::MoveStatus| job.moves.iter().filter(|m| m.status == s as i32).count();
    let rows = vec![
        ("id", job.id.clone()),
        ("kind", job_kind(job.kind)),
        ("status", job_status(job.status)),
        ("node", job.node.clone()),
        ("requested by", job.requested_by.clone()),
        ("created", output::rfc3339_seconds(job.created_at.as_ref())),
        (
            "finished",
            output::rfc3339_seconds(job.finished_at.as_ref()),
        ),
        (
            "moves",
            format!(
                "{} done, {} failed, {} cancelled, {} skipped, {} to go",
                count(pb::MoveStatus::Done),
                count(pb::MoveStatus::Failed),
                count(pb::MoveStatus::Cancelled),
                count(pb::MoveStatus::Skipped),
                count(pb::MoveStatus::Pending) + count(pb::MoveStatus::Running),
            ),
        ),
    ];
    output::print_text(&output::key_value_table(rows).to_string())?;
    if job.moves.is_empty() {
        return Ok(());
    }
    let mut table = output::table(Some(&["TENANT", "FROM", "TO", "STATUS", "ERROR"]));
    for m in &job.moves {
        table.add_row(vec![
            m.tenant_id.clone(),
            m.source.clone(),
            m.target.clone(),
            move_status(m.status),
            m.error.clone(),
        ]);
    }
    output::print_text(&table.to_string())
}

fn print_jobs(format: OutputFormat, jobs: &[pb::ClusterJob]) -> Result<(), CliError> {
    if format == OutputFormat::Json {
        return output::print_json(&json!(jobs.iter().map(job_json).collect::<Vec<_>>()));
    }
    let mut table = output::table(Some(&["ID", "KIND", "STATUS", "NODE", "MOVES", "CREATED"]));
    for j in jobs {
        table.add_row(vec![
            j.id.clone(),
            job_kind(j.kind),
            job_status(j.status),
            j.node.clone(),
            j.moves.len().to_string(),
            output::rfc3339_seconds(j.created_at.as_ref()),
        ]);
    }
    output::print_text(&table.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> ClustersCommand {
        let cli = Cli::try_parse_from(["tenantctl", "clusters"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Clusters { command } => command,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commands_parse() {
        assert!(matches!(
            parse(&["move", "acme", "10.0.0.2:5432", "--watch"]),
            ClustersCommand::Move {
                watch: WatchArgs { watch: true },
                ..
            }
        ));
        assert!(matches!(
            parse(&["set-node", "w1:5432", "--should-have-shards", "false"]),
            ClustersCommand::SetNode {
                should_have_shards: false,
                ..
            }
        ));
        assert!(
            Cli::try_parse_from(["tenantctl", "clusters", "job", "not-a-uuid"]).is_err(),
            "job ids are UUIDs"
        );
    }
}
