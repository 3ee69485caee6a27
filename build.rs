//! Compiles the public API in `proto/` with a protoc that ships as a crate, so
//! no system protoc is needed, and writes the file descriptor set that gRPC
//! server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "proto/tenantd/v1/tenants.proto",
        "proto/tenantd/v1/migrations.proto",
        "proto/tenantd/v1/identity.proto",
        "proto/tenantd/v1/data.proto",
        "proto/tenantd/v1/clusters.proto",
        "proto/tenantd/v1/events.proto",
    ];
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // Requests that do not decode are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::grpc::codec::Codec")
        .file_descriptor_set_path(out_dir.join("tenantd_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    embed_tenant_migrations(&out_dir)?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=tenant_sql");
    println!("cargo:rerun-if-changed=global_sql");
    Ok(())
}

/// Writes `tenant_migrations.rs`: every `tenant_sql/*.sql` as a
/// `(file name, contents)` pair, in name order. Validation of the names and
/// numbering happens at run time, where a directory given with
/// `--tenant-migrations` is checked the same way.
fn embed_tenant_migrations(out_dir: &std::path::Path) -> std::io::Result<()> {
    let dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("tenant_sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "sql"));
    files.sort();
    let mut code = String::from("&[\n");
    for path in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file name");
        code.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("]\n");
    std::fs::write(out_dir.join("tenant_migrations.rs"), code)
}
