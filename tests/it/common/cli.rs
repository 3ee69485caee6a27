//! What the command lines define: `tenantd serve`'s flags through its clap
//! definition, and `tenantctl --help`.

use std::collections::BTreeSet;

use clap::Parser;

/// `tenantd serve`'s arguments as a command of their own.
#[derive(Parser)]
#[command(name = "tenantd-serve")]
pub struct Serve {
    #[command(flatten)]
    pub args: tenantd::config::ServeArgs,
}

/// `tenantctl --help`, with no variable of this shell shown in it.
pub fn tenantctl_help() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantctl"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("run tenantctl --help");
    assert!(out.status.success(), "tenantctl --help failed");
    String::from_utf8(out.stdout).expect("tenantctl --help is UTF-8")
}

/// The variables tenantctl reads, named in `help` as `[env: NAME=…]`.
pub fn env_vars(help: &str) -> BTreeSet<String> {
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}
