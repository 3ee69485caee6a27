//! `tenantd-bench validate`: ValidateToken throughput and tail latency — the
//! call every internal service makes per request, answered from memory —
//! and Login throughput, which argon2id bounds by design.
//!
//! The phases, on one fresh database and one tenantd process (login rate
//! limits raised so that the limiter stays out of the measurement):
//! 1. setup (not timed): `--users` users through CreateUser, one Login as
//!    user 0 for the access token the next phase validates; one argon2id
//!    hash timed in this process with tenantd's own hasher, while tenantd
//!    is idle, for the bound on logins/s;
//! 2. ValidateToken: `--clients` workers spread round-robin over
//!    `--channels` HTTP/2 connections, each validating the token in a loop;
//! 3. Login at 1 client, then at `--login-clients`, round-robin over the
//!    users.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use tenantd::identity::passwords::Hasher;
use tenantd::pb;
use tenantd::pb::session_service_client::SessionServiceClient;
use tenantd::pb::user_service_client::UserServiceClient;

use crate::Target;
use crate::flags;
use crate::measure::{CallStats, Window, Worker, measure, ms, percentile};
use crate::pg::{BenchDatabase, PgServer, run_bench};
use crate::report::{Check, Limit, footnote, print_checks, print_markdown, targets_table};
use crate::server::{Authed, TenantdServer, status};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Concurrent ValidateToken workers.
    #[arg(long, default_value_t = 64)]
    clients: usize,

    /// HTTP/2 connections the ValidateToken workers are spread over
    /// (round-robin).
    #[arg(long, default_value_t = 4)]
    channels: usize,

    /// Measured seconds of the ValidateToken phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,

    /// Unrecorded seconds before each phase's measurement.
    #[arg(long, default_value_t = 2.0)]
    warmup_seconds: f64,

    /// Concurrent Login workers, each on a connection of its own (after a
    /// 1-client Login phase).
    #[arg(long, default_value_t = 4)]
    login_clients: usize,

    /// Measured seconds of each Login phase.
    #[arg(long, default_value_t = 10.0)]
    login_seconds: f64,

    /// Users created before the run; Login goes round-robin over them.
    #[arg(long, default_value_t = 50)]
    users: usize,

    /// tenantd's --password-hash-concurrency for the run (argon2id hashes
    /// at once).
    #[arg(long, default_value_t = 2)]
    hash_concurrency: usize,

    #[command(flatten)]
    target: Target,
}

/// Targets of the issue, absolute: ValidateToken does no I/O but the
/// request itself, so there is no raw-SQL side to compare with.
const MIN_VALIDATE_PER_SECOND: f64 = 20_000.0;
const MAX_VALIDATE_P99_MS: f64 = 5.0;

/// Every user's password: strong enough for CreateUser's check.
const PASSWORD: &str = "correct horse battery staple";
/// Hashes timed in this process for the single-hash time (their median),
/// after one that is not.
const TIMED_HASHES: usize = 11;
/// The login limits tenantd runs with, per minute: far above what argon2
/// allows, so that the limiter never answers.
const LOGIN_LIMIT: &str = "1000000";

/// Runs the benchmark and prints its results.
pub async fn run(args: ValidateArgs) -> anyhow::Result<()> {
    flags::between("--clients", args.clients, 1, 4096)?;
    ensure!(
        (1..=args.clients).contains(&args.channels),
        "--channels must be between 1 and --clients"
    );
    flags::between("--login-clients", args.login_clients, 1, 64)?;
    flags::between("--users", args.users, 1, 100_000)?;
    flags::between("--hash-concurrency", args.hash_concurrency, 1, 64)?;
    let validate = flags::measured("--seconds", args.seconds)?;
    let login = flags::measured("--login-seconds", args.login_seconds)?;
    let warmup = flags::warmup(args.warmup_seconds)?;
    let windows = [validate, login].map(|measure| Window { warmup, measure });
    run_bench(
        &args.target,
        async |tenantd, db| run_phases(&args, windows, tenantd, db).await,
        |server, results| report(&args, server, results),
    )
    .await
}

/// A phase's calls.
#[derive(Debug)]
struct Stats {
    clients: usize,
    calls: CallStats,
}

impl Stats {
    fn new(
        what: &str,
        clients: usize,
        window: Window,
        latencies: Vec<Duration>,
    ) -> anyhow::Result<Self> {
        let calls = CallStats::new(latencies, window.measure).with_context(|| {
            format!(
                "{what} clients={clients}: no call completed inside the measured window; \
                 raise the phase's seconds"
            )
        })?;
        Ok(Self { clients, calls })
    }

    /// `calls=… per_s=… p50_ms=… p95_ms=… p99_ms=…`.
    fn fields(&self) -> String {
        let c = &self.calls;
        format!(
            "calls={} per_s={:.1} p50_ms={:.2} p95_ms={:.2} p99_ms={:.2}",
            c.calls,
            c.per_second,
            ms(c.p50),
            ms(c.p95),
            ms(c.p99)
        )
    }
}

struct Results {
    users: usize,
    channels: usize,
    hash_concurrency: usize,
    validate_window: Window,
    login_window: Window,
    validate: Stats,
    /// Median of [`TIMED_HASHES`] argon2id hashes in this process.
    hash: Duration,
    /// The 1-client phase, then the --login-clients one (just one phase
    /// when that is 1).
    logins: Vec<Stats>,
}

impl Results {
    /// Logins/s that the hashes allow at most: concurrent hashes / one
    /// hash's time.
    fn login_bound(&self) -> f64 {
        self.hash_concurrency as f64 / self.hash.as_secs_f64()
    }
}

/// A user the bench created.
struct BenchUser {
    id: String,
    email: String,
}

/// `windows`: of the ValidateToken phase, of each Login phase.
async fn run_phases(
    args: &ValidateArgs,
    [validate_window, login_window]: [Window; 2],
    tenantd_bin: &Path,
    db: &BenchDatabase,
) -> anyhow::Result<Results> {
    let concurrency = args.hash_concurrency.to_string();
    let extra = [
        "--logins-per-minute-per-account",
        LOGIN_LIMIT,
        "--logins-per-minute-per-address",
        LOGIN_LIMIT,
        "--password-hash-concurrency",
        &concurrency,
    ]
    .map(OsStr::new);
    TenantdServer::serve(tenantd_bin, &db.url, &db.name, &extra, async |server| {
        eprintln!("tenantd-bench: tenantd serving on {}", server.addr);
        let hash = time_one_hash().await?;
        println!(
            "argon2id hash_ms={:.1} (median of {TIMED_HASHES} in the bench process) \
             hash_concurrency={} login_bound_per_s={:.1}",
            ms(hash),
            args.hash_concurrency,
            args.hash_concurrency as f64 / hash.as_secs_f64()
        );

        let users = Arc::new(create_users(server, args.users).await?);
        let (token, user_id) = first_token(server, &users[0]).await?;

        let workers = ValidateWorker::open_all(server, args, &token, &user_id).await?;
        eprintln!(
            "tenantd-bench: ValidateToken clients={} channels={}: {validate_window}",
            args.clients, args.channels
        );
        let latencies = measure(workers, validate_window)
            .await
            .context("run the ValidateToken phase")?;
        let validate = Stats::new("ValidateToken", args.clients, validate_window, latencies)?;
        println!(
            "validate clients={} channels={} {}",
            validate.clients,
            args.channels,
            validate.fields()
        );

        let mut logins = Vec::new();
        let mut counts = vec![1];
        if args.login_clients != 1 {
            counts.push(args.login_clients);
        }
        for clients in counts {
            let workers = LoginWorker::open_all(server, clients, &users).await?;
            eprintln!("tenantd-bench: Login clients={clients}: {login_window}");
            let latencies = measure(workers, login_window)
                .await
                .with_context(|| format!("run the Login phase with {clients} clients"))?;
            let stats = Stats::new("Login", clients, login_window, latencies)?;
            println!("login    clients={clients} {}", stats.fields());
            logins.push(stats);
        }
        Ok(Results {
            users: users.len(),
            channels: args.channels,
            hash_concurrency: args.hash_concurrency,
            validate_window,
            login_window,
            validate,
            hash,
            logins,
        })
    })
    .await
}

/// One argon2id hash's time: the median of a few, with tenantd's own hasher
/// (same parameters, same build profile) in this process, while tenantd is
/// idle.
async fn time_one_hash() -> anyhow::Result<Duration> {
    // `new` hashes a dummy password: keep it off the runtime's threads.
    let hasher = tokio::task::spawn_blocking(|| Hasher::new(1))
        .await
        .context("make an argon2id hasher")?;
    hasher.hash(PASSWORD).await.context("hash a password")?;
    let mut times = Vec::with_capacity(TIMED_HASHES);
    for _ in 0..TIMED_HASHES {
        let start = Instant::now();
        hasher
            .hash(PASSWORD)
            .await
            .context("time an argon2id hash")?;
        times.push(start.elapsed());
    }
    times.sort_unstable();
    Ok(percentile(&times, 0.50))
}

/// `n` users, bench-<i>@example.com, all with [`PASSWORD`].
async fn create_users(server: &TenantdServer, n: usize) -> anyhow::Result<Vec<BenchUser>> {
    eprintln!("tenantd-bench: creating {n} users");
    let mut client = UserServiceClient::new(server.connect().await?);
    let mut users = Vec::with_capacity(n);
    for i in 0..n {
        let email = format!("bench-{i}@example.com");
        let user = client
            .create_user(pb::CreateUserRequest {
                first_name: "Bench".to_owned(),
                last_name: format!("User {i}"),
                email: email.clone(),
                password: PASSWORD.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(status)
            .with_context(|| format!("CreateUser {email}"))?
            .into_inner();
        ensure!(
            user.email == email,
            "CreateUser {email} returned user {}",
            user.email
        );
        users.push(BenchUser { id: user.id, email });
    }
    Ok(users)
}

fn login_request(user: &BenchUser) -> pb::LoginRequest {
    pb::LoginRequest {
        identifier: Some(pb::login_request::Identifier::Email(user.email.clone())),
        password: PASSWORD.to_owned(),
        device: "tenantd-bench".to_owned(),
        ..Default::default()
    }
}

/// Checks a Login answer: a token for `user`.
fn check_login(user: &BenchUser, answer: &pb::LoginResponse) -> anyhow::Result<()> {
    let got = answer.principal.as_ref().map(|p| p.user_id.as_str());
    ensure!(
        got == Some(user.id.as_str()) && !answer.access_token.is_empty(),
        "Login {} answered for user {got:?}, not {}",
        user.email,
        user.id
    );
    Ok(())
}

/// Logs in as `user`: its access token and user id.
async fn first_token(server: &TenantdServer, user: &BenchUser) -> anyhow::Result<(String, String)> {
    let mut client = SessionServiceClient::new(server.connect().await?);
    let answer = client
        .login(login_request(user))
        .await
        .map_err(status)
        .with_context(|| format!("Login {}", user.email))?
        .into_inner();
    check_login(user, &answer)?;
    Ok((answer.access_token, user.id.clone()))
}

/// ValidateToken in a loop; the workers share `--channels` connections.
struct ValidateWorker {
    client: SessionServiceClient<Authed>,
    token: Arc<str>,
    user_id: Arc<str>,
}

impl ValidateWorker {
    async fn open_all(
        server: &TenantdServer,
        args: &ValidateArgs,
        token: &str,
        user_id: &str,
    ) -> anyhow::Result<Vec<Self>> {
        let (token, user_id): (Arc<str>, Arc<str>) = (token.into(), user_id.into());
        let connected = server.connect_spread(args.clients, args.channels).await?;
        Ok(connected
            .into_iter()
            .map(|authed| Self {
                client: SessionServiceClient::new(authed),
                token: Arc::clone(&token),
                user_id: Arc::clone(&user_id),
            })
            .collect())
    }
}

impl Worker for ValidateWorker {
    type Request = pb::ValidateTokenRequest;

    fn prepare(&mut self, _seq: u64) -> Self::Request {
        pb::ValidateTokenRequest {
            access_token: self.token.to_string(),
        }
    }

    async fn send(&mut self, request: Self::Request) -> anyhow::Result<()> {
        let principal = self
            .client
            .validate_token(request)
            .await
            .map_err(status)
            .context("ValidateToken")?
            .into_inner();
        ensure!(
            principal.user_id == *self.user_id,
            "ValidateToken answered user {:?}, not {}",
            principal.user_id,
            self.user_id
        );
        Ok(())
    }
}

/// Login in a loop, each worker on a connection of its own; worker `w` of
/// `n` logs in as users w, w + n, w + 2n, … (modulo the users), so that the
/// workers are on different accounts at any time.
struct LoginWorker {
    client: SessionServiceClient<Authed>,
    users: Arc<Vec<BenchUser>>,
    worker: usize,
    workers: usize,
}

impl LoginWorker {
    async fn open_all(
        server: &TenantdServer,
        clients: usize,
        users: &Arc<Vec<BenchUser>>,
    ) -> anyhow::Result<Vec<Self>> {
        let mut workers = Vec::with_capacity(clients);
        for worker in 0..clients {
            workers.push(Self {
                client: SessionServiceClient::new(server.connect().await?),
                users: Arc::clone(users),
                worker,
                workers: clients,
            });
        }
        Ok(workers)
    }

    fn user(&self, seq: u64) -> usize {
        // The user index only needs to be reduced modulo the users.
        let n = self.users.len() as u64;
        ((self.worker as u64 + seq.wrapping_mul(self.workers as u64)) % n) as usize
    }
}

impl Worker for LoginWorker {
    /// The user's index and the request.
    type Request = (usize, pb::LoginRequest);

    fn prepare(&mut self, seq: u64) -> Self::Request {
        let user = self.user(seq);
        (user, login_request(&self.users[user]))
    }

    async fn send(&mut self, (user, request): Self::Request) -> anyhow::Result<()> {
        let user = &self.users[user];
        let answer = self
            .client
            .login(request)
            .await
            .map_err(status)
            .with_context(|| format!("Login {}", user.email))?
            .into_inner();
        check_login(user, &answer)
    }
}

fn report(args: &ValidateArgs, server: &PgServer, r: &Results) {
    let checks = checks(r);
    print_checks(&checks);
    if let Some(login) = r.logins.last() {
        println!(
            "login throughput at {} clients: {:.1}/s, {:.0}% of the argon2id bound {:.1}/s \
             ({} hashes at once / {:.1} ms per hash)",
            login.clients,
            login.calls.per_second,
            100.0 * login.calls.per_second / r.login_bound(),
            r.login_bound(),
            r.hash_concurrency,
            ms(r.hash)
        );
    }
    print_markdown(&args.target, || markdown(server, r, &checks));
}

fn checks(r: &Results) -> [Check; 2] {
    [
        Check {
            label: "ValidateToken requests/s",
            markdown: "ValidateToken requests/s",
            value: Some(r.validate.calls.per_second),
            limit: Limit::AtLeast(MIN_VALIDATE_PER_SECOND),
            missing: "",
        },
        Check {
            label: "ValidateToken p99 ms",
            markdown: "ValidateToken p99, ms",
            value: Some(ms(r.validate.calls.p99)),
            limit: Limit::AtMost(MAX_VALIDATE_P99_MS),
            missing: "",
        },
    ]
}

fn markdown(server: &PgServer, r: &Results, checks: &[Check]) -> String {
    let mut md = String::new();
    let v = &r.validate.calls;
    md.push_str(
        "| ValidateToken | clients | channels | calls | requests/s | p50 ms | p95 ms | p99 ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let _ = writeln!(
        md,
        "| tenantd gRPC (no database) | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
        r.validate.clients,
        r.channels,
        v.calls,
        v.per_second,
        ms(v.p50),
        ms(v.p95),
        ms(v.p99)
    );
    md.push_str(
        "\n| Login | clients | logins | logins/s | p50 ms | p95 ms | p99 ms |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for l in &r.logins {
        let c = &l.calls;
        let _ = writeln!(
            md,
            "| tenantd gRPC | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            l.clients,
            c.calls,
            c.per_second,
            ms(c.p50),
            ms(c.p95),
            ms(c.p99)
        );
    }
    let _ = writeln!(
        md,
        "| bound: {} hashes at once / {:.1} ms per hash | | | {:.1} | | | |",
        r.hash_concurrency,
        ms(r.hash),
        r.login_bound()
    );
    targets_table(&mut md, "value", checks, 2);
    let _ = write!(
        md,
        "\nLogin throughput is bounded by argon2id (19 MiB, t=2) with {} concurrent hashes: \
         one hash took {:.1} ms here (median of {TIMED_HASHES}, tenantd's hasher in the bench \
         process while tenantd was idle), so at most {} / {:.1} ms = {:.1} logins/s",
        r.hash_concurrency,
        ms(r.hash),
        r.hash_concurrency,
        ms(r.hash),
        r.login_bound()
    );
    match r.logins.last() {
        Some(l) => {
            let _ = writeln!(
                md,
                "; measured {:.1} logins/s at {} clients ({:.0}% of the bound).",
                l.calls.per_second,
                l.clients,
                100.0 * l.calls.per_second / r.login_bound()
            );
        }
        None => md.push_str(".\n"),
    }
    footnote(
        &mut md,
        server,
        format_args!(
            "ValidateToken {:?} measured after {:?} warm-up, {} workers on {} HTTP/2 \
             connections; Login {}, each worker on its own connection, round-robin over {} \
             users, login rate limits raised to {LOGIN_LIMIT}/min for the run; the bench client \
             in its own process on the same cores as tenantd.",
            r.validate_window.measure,
            r.validate_window.warmup,
            r.validate.clients,
            r.channels,
            r.login_window.per_phase(),
            r.users,
        ),
    );
    md
}
