//! A private PostgreSQL cluster for running without any setup: initialised in
//! a data directory from the PostgreSQL binaries installed on the machine,
//! reachable only through a Unix socket in a directory of its own, started
//! when needed and stopped on request. As root the server runs as the
//! `postgres` user, as PostgreSQL requires. Used by `tenantd serve` without a
//! database URL, by the tests and by the benchmark.
//!
//! The cluster belongs to one `tenantd serve` at a time: [`DataDirOwner`]
//! holds an exclusive lock on `<data-dir>/tenantd.lock` for the process's
//! whole life, so no second process adopts a cluster that another is serving
//! or still stopping.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;

/// The superuser the cluster is initialised with.
const SUPERUSER: &str = "postgres";
const PORT: u16 = 5432;

#[derive(Debug, thiserror::Error)]
#[error(
    "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found on PATH or under \
     /usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: `apt-get install postgresql`; \
     Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql`), \
     or pass --database-url to use an existing server"
)]
pub struct NoBinaries;

/// A cluster in `data_dir`, possibly not running yet.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    /// The account the server runs as when this process is root.
    run_as: Option<nix::unistd::User>,
    port: u16,
    /// Also listening on 127.0.0.1 (for tests of TCP and TLS), with these
    /// settings and pg_hba.conf lines added when the cluster is made.
    tcp: Option<TcpExtras>,
}

/// What a cluster that also listens on 127.0.0.1 adds to its configuration.
#[derive(Debug, Clone)]
pub struct TcpExtras {
    /// Lines appended to postgresql.conf (`ssl = on`, …).
    pub conf: String,
    /// Lines pg_hba.conf gets before its own (`hostssl all all …`).
    pub hba: String,
}

impl LocalCluster {
    /// Finds the binaries and works out the directories; touches nothing.
    /// `dir` holds the cluster's files (`dir/pgdata`); as root, when the
    /// `postgres` user could not reach `dir`, the files go under
    /// `/var/lib/tenantd/` instead.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let bin_dir = find_binaries()?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolve {}", dir.display()))?;
        let run_as = if nix::unistd::geteuid().is_root() {
            Some(
                nix::unistd::User::from_name(SUPERUSER)
                    .context("look up the postgres user")?
                    .context(
                        "running as root, but there is no `postgres` user to run PostgreSQL as",
                    )?,
            )
        } else {
            None
        };
        let base = match &run_as {
            Some(_) if !reachable_by_others(&dir) => {
                let fallback = Path::new("/var/lib/tenantd").join(short_hash(&dir));
                tracing::info!(
                    requested = %dir.display(),
                    using = %fallback.display(),
                    "the postgres user cannot reach the data directory; keeping the cluster elsewhere"
                );
                fallback
            }
            _ => dir.clone(),
        };
        let data_dir = base.join("pgdata");
        // Socket paths are limited to ~100 bytes; long directories get a
        // short private one under /tmp.
        let socket_dir = if base.join("run/.s.PGSQL.5432.lock").as_os_str().len() < 100 {
            base.join("run")
        } else {
            PathBuf::from(format!("/tmp/tenantd-{}", short_hash(&base)))
        };
        Ok(Self {
            bin_dir,
            data_dir,
            socket_dir,
            run_as,
            port: PORT,
            tcp: None,
        })
    }

    /// The same cluster listening on 127.0.0.1:`port` too (and on a socket
    /// named for that port), with `extras` written into its configuration
    /// when it is made: for tests that need TCP or TLS. tenantd's own
    /// private cluster never listens on TCP.
    pub fn listening_on_tcp(mut self, port: u16, extras: TcpExtras) -> Self {
        self.port = port;
        self.tcp = Some(extras);
        self
    }

    /// The same cluster run by the server binaries in `bin_dir` (another
    /// PostgreSQL version, for tests).
    pub fn with_binaries(mut self, bin_dir: PathBuf) -> Self {
        self.bin_dir = bin_dir;
        self
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Initialises the cluster if it has never been, and starts it unless
    /// it is running already. Blocking: call from a blocking thread.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        for dir in [&self.data_dir, &self.socket_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            if let Some(user) = &self.run_as {
                nix::unistd::chown(dir.as_path(), Some(user.uid), Some(user.gid))
                    .with_context(|| format!("hand {} to the postgres user", dir.display()))?;
            }
        }
        if !self.data_dir.join("PG_VERSION").exists() {
            tracing::info!(dir = %self.data_dir.display(), "initialising a private PostgreSQL cluster");
            self.run(
                "initdb",
                [
                    OsStr::new("-D"),
                    self.data_dir.as_os_str(),
                    OsStr::new("-U"),
                    OsStr::new(SUPERUSER),
                    OsStr::new("--auth-local=trust"),
                    OsStr::new("--auth-host=reject"),
                    OsStr::new("--encoding=UTF8"),
                    OsStr::new("--no-locale"),
                    OsStr::new("--no-sync"),
                ],
            )?;
            let listen = if self.tcp.is_some() { "127.0.0.1" } else { "" };
            let conf = format!(
                "\n# Written by tenantd: a private cluster reachable only via its socket.\n\
                 listen_addresses = '{listen}'\n\
                 port = {}\n\
                 unix_socket_directories = '{}'\n\
                 unix_socket_permissions = 0700\n\
                 max_connections = 300\n\
                 shared_buffers = 256MB\n\
                 log_min_messages = warning\n{}",
                self.port,
                self.socket_dir.display(),
                self.tcp
                    .as_ref()
                    .map(|t| t.conf.as_str())
                    .unwrap_or_default()
            );
            // The superuser trusts the 0700 socket directory; every other
            // role, tenant roles included, proves its password (SCRAM).
            let hba = format!(
                "# Written by tenantd.\n{}\
                 local all postgres trust\n\
                 local all all scram-sha-256\n",
                self.tcp
                    .as_ref()
                    .map(|t| t.hba.as_str())
                    .unwrap_or_default()
            );
            std::fs::write(self.data_dir.join("pg_hba.conf"), hba).context("write pg_hba.conf")?;
            let path = self.data_dir.join("postgresql.conf");
            let mut current = std::fs::read_to_string(&path).context("read postgresql.conf")?;
            current.push_str(&conf);
            std::fs::write(&path, current).context("write postgresql.conf")?;
        }
        if self.is_running()? {
            return Ok(());
        }
        let log = self.data_dir.join("server.log");
        let started = self.run(
            "pg_ctl",
            [
                OsStr::new("start"),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("60"),
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
                OsStr::new("-l"),
                log.as_os_str(),
            ],
        );
        if let Err(e) = started {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<_> = tail.lines().rev().take(10).collect();
            let tail: Vec<_> = tail.into_iter().rev().collect();
            bail!(
                "{e:#}\nlast lines of {}:\n{}",
                log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    pub fn is_running(&self) -> anyhow::Result<bool> {
        let out = self.command(
            "pg_ctl",
            [
                OsStr::new("status"),
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
            ],
        )?;
        // 0: running; 3: not running; 4: no accessible data directory.
        Ok(out.status.code() == Some(0))
    }

    /// Stops the server, waiting for it; a server that is not running is fine.
    pub fn stop(&self) -> anyhow::Result<()> {
        if !self.is_running()? {
            return Ok(());
        }
        self.run(
            "pg_ctl",
            [
                OsStr::new("stop"),
                OsStr::new("-w"),
                OsStr::new("-m"),
                OsStr::new("fast"),
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
            ],
        )?;
        Ok(())
    }

    /// Connection options for `database` as the superuser, over the socket.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(self.port)
            .username(SUPERUSER)
            .database(database)
    }

    /// A libpq-style URL for `database`, for tools such as psql and pgbench.
    pub fn url(&self, database: &str) -> String {
        // A host name is required by some parsers (sqlx among them); `host=`
        // in the query then points every client at the socket directory.
        format!(
            "postgres://{SUPERUSER}@localhost:{}/{database}?host={}",
            self.port,
            self.socket_dir.display()
        )
    }

    fn run<I, S>(&self, program: &str, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.command(program, args)?;
        if !out.status.success() {
            bail!(
                "{program} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(out)
    }

    fn command<I, S>(&self, program: &str, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.args(args).current_dir("/").env("LC_ALL", "C");
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid.as_raw())
                .gid(user.gid.as_raw())
                .env("HOME", &user.dir);
        }
        cmd.output().with_context(|| format!("run {program}"))
    }
}

/// The lock file of a data directory, which names the owner's pid.
pub const OWNER_LOCK_FILE: &str = "tenantd.lock";
/// How long a live owner that is not (yet) marked as stopping is looked at
/// before a second process gives up: covers an owner that was just sent
/// SIGINT and has not written "stopping" yet.
const OWNER_GRACE: Duration = Duration::from_secs(1);
/// How often the lock is tried again while waiting.
const OWNER_POLL: Duration = Duration::from_millis(100);

/// This process's exclusive hold on a data directory: an flock on
/// `<dir>/tenantd.lock`, kept until the value is dropped or the process ends
/// (the kernel lets go then, however it ends). The file holds the owner's
/// pid and `running` or `stopping`; it is never deleted, since a lock on a
/// file that another process could delete and recreate would lock nothing.
#[derive(Debug)]
pub struct DataDirOwner {
    /// The locked file; unlocked (and closed) on drop. Opened close-on-exec,
    /// so PostgreSQL, started from here, does not inherit the lock.
    file: nix::fcntl::Flock<File>,
    path: PathBuf,
}

/// Why a data directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "the data directory {} is in use by another tenantd ({}; lock file {}): stop that \
         one first, or give this one another --data-dir",
        dir.display(), pid_text(*pid), lock.display()
    )]
    InUse {
        dir: PathBuf,
        lock: PathBuf,
        pid: Option<u32>,
    },
    #[error(
        "the previous tenantd ({}) was still stopping after {waited:?} and holds the data \
         directory {}; try again once it has exited",
        pid_text(*pid), dir.display()
    )]
    StillStopping {
        dir: PathBuf,
        pid: Option<u32>,
        waited: Duration,
    },
    #[error("lock {}: {source}", lock.display())]
    Io {
        lock: PathBuf,
        source: std::io::Error,
    },
}

fn pid_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_owned(),
    }
}

/// What the lock file says of its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    pid: Option<u32>,
    stopping: bool,
}

impl Holder {
    /// `<pid>\n<running|stopping>\n`; anything unreadable (the holder may
    /// be writing it) names no pid and does not count as stopping.
    fn parse(text: &str) -> Self {
        let mut lines = text.lines();
        let pid = lines.next().and_then(|l| l.trim().parse().ok());
        let stopping = lines.next().is_some_and(|l| l.trim() == "stopping");
        Holder { pid, stopping }
    }
}

impl DataDirOwner {
    /// Takes `dir` for this process. A holder that says it is stopping (a
    /// restart right after Ctrl-C) is waited for, up to `wait`, saying so
    /// once; a holder that is running is refused at once (after a second's
    /// look, in case it was just told to stop), naming its pid.
    pub async fn acquire(dir: &Path, wait: Duration) -> Result<Self, OwnerError> {
        use nix::fcntl::{Flock, FlockArg};
        let path = dir.join(OWNER_LOCK_FILE);
        let io = |source| OwnerError::Io {
            lock: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let started = Instant::now();
        let mut said = false;
        loop {
            file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(file) => {
                    let owner = DataDirOwner {
                        file,
                        path: path.clone(),
                    };
                    owner.write_state("running").map_err(io)?;
                    return Ok(owner);
                }
                Err((file, nix::errno::Errno::EWOULDBLOCK)) => file,
                Err((_, e)) => return Err(io(e.into())),
            };
            let holder = Holder::parse(&std::fs::read_to_string(&path).unwrap_or_default());
            let waited = started.elapsed();
            if holder.stopping {
                if !said {
                    tracing::info!(
                        pid = holder.pid,
                        data_dir = %dir.display(),
                        "waiting up to {wait:?} for the previous tenantd ({}) to stop and let go of the data directory",
                        pid_text(holder.pid)
                    );
                    said = true;
                }
                if waited >= wait {
                    return Err(OwnerError::StillStopping {
                        dir: dir.to_path_buf(),
                        pid: holder.pid,
                        waited,
                    });
                }
            } else if waited >= OWNER_GRACE {
                return Err(OwnerError::InUse {
                    dir: dir.to_path_buf(),
                    lock: path.clone(),
                    pid: holder.pid,
                });
            }
            tokio::time::sleep(OWNER_POLL).await;
        }
    }

    /// Tells a process waiting to take the directory over that this one is
    /// on its way out (call when shutdown begins).
    pub fn stopping(&self) {
        if let Err(e) = self.write_state("stopping") {
            tracing::warn!(lock = %self.path.display(), error = %e, "cannot mark the data directory's lock as stopping");
        }
    }

    fn write_state(&self, state: &str) -> std::io::Result<()> {
        let text = format!("{}\n{state}\n", std::process::id());
        self.file.set_len(0)?;
        self.file.write_all_at(text.as_bytes(), 0)
    }
}

/// The directory holding initdb, pg_ctl and postgres: on PATH, or the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn find_binaries() -> Result<PathBuf, NoBinaries> {
    find_binaries_in(std::env::var_os("PATH"), Path::new("/usr/lib/postgresql"))
}

fn find_binaries_in(
    path: Option<std::ffi::OsString>,
    versions_root: &Path,
) -> Result<PathBuf, NoBinaries> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    for dir in path.iter().flat_map(std::env::split_paths) {
        if complete(&dir) {
            return Ok(dir);
        }
        // A PATH entry may hold links into a versioned directory.
        let linked = dir.join("initdb").canonicalize().ok();
        if let Some(parent) = linked.as_deref().and_then(Path::parent)
            && complete(parent)
        {
            return Ok(parent.to_path_buf());
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(versions_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or(NoBinaries)
}

/// Whether every ancestor of `dir` lets other users through.
fn reachable_by_others(dir: &Path) -> bool {
    dir.ancestors().all(|a| {
        std::fs::metadata(a)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

fn short_hash(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(path.as_os_str().as_encoded_bytes())[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_is_accepted_as_a_database_url() {
        let cluster = LocalCluster {
            bin_dir: PathBuf::from("/bin"),
            data_dir: PathBuf::from("/tmp/x/pgdata"),
            socket_dir: PathBuf::from("/tmp/x/run"),
            run_as: None,
            port: PORT,
            tcp: None,
        };
        let url = crate::config::Secret::new(&cluster.url("tenantd"));
        assert!(
            crate::config::parse_database_url(&url).is_ok(),
            "{}",
            cluster.url("tenantd")
        );
    }

    fn fake_bin_dir(root: &Path) -> PathBuf {
        std::fs::create_dir_all(root).unwrap();
        for b in ["initdb", "pg_ctl", "postgres"] {
            std::fs::write(root.join(b), "").unwrap();
        }
        root.to_path_buf()
    }

    /// flock locks belong to an open file, so two owners in one process
    /// conflict just as two processes do.
    #[tokio::test]
    async fn a_data_dir_has_one_owner_and_a_stopping_one_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let first = DataDirOwner::acquire(dir.path(), Duration::from_secs(5))
            .await
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join(OWNER_LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{me}\nrunning\n"));

        // A running owner: refused after the grace, naming its pid.
        let asked = Instant::now();
        let err = DataDirOwner::acquire(dir.path(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(asked.elapsed() < OWNER_GRACE * 3, "{:?}", asked.elapsed());
        assert!(
            matches!(err, OwnerError::InUse { pid: Some(p), .. } if p == me),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("pid {me}")), "{err}");

        // A stopping owner that does not let go in time.
        first.stopping();
        let err = DataDirOwner::acquire(dir.path(), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(err, OwnerError::StillStopping { pid: Some(p), .. } if p == me),
            "{err:?}"
        );

        // A stopping owner that lets go while the next one waits.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            drop(first);
        });
        let second = DataDirOwner::acquire(dir.path(), Duration::from_secs(10))
            .await
            .unwrap();
        release.await.unwrap();
        let text = std::fs::read_to_string(dir.path().join(OWNER_LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{me}\nrunning\n"));
        drop(second);
        // Let go: the next one takes it at once.
        DataDirOwner::acquire(dir.path(), Duration::ZERO)
            .await
            .unwrap();
    }

    #[test]
    fn lock_file_text_is_read_leniently() {
        let cases = [
            ("42\nrunning\n", Some(42), false),
            ("42\nstopping\n", Some(42), true),
            ("42\n", Some(42), false),
            ("", None, false),
            ("garbage\nstopping", None, true),
        ];
        for (text, pid, stopping) in cases {
            assert_eq!(Holder::parse(text), Holder { pid, stopping }, "{text:?}");
        }
    }

    #[test]
    fn no_binaries_says_what_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_binaries_in(Some(empty.path().into()), empty.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("apt-get install postgresql"), "{msg}");
        assert!(msg.contains("--database-url"), "{msg}");
    }

    #[test]
    fn path_first_then_the_newest_versioned_directory() {
        let root = tempfile::tempdir().unwrap();
        let versions = root.path().join("lib");
        fake_bin_dir(&versions.join("13/bin"));
        let newest = fake_bin_dir(&versions.join("16/bin"));
        std::fs::create_dir_all(versions.join("17/bin")).unwrap(); // incomplete
        assert_eq!(find_binaries_in(None, &versions).unwrap(), newest);
        let on_path = fake_bin_dir(&root.path().join("path"));
        assert_eq!(
            find_binaries_in(Some(on_path.clone().into()), &versions).unwrap(),
            on_path
        );
    }
}
