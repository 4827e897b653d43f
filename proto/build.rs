//! Generates the receipts.v1 types with protox (a pure-Rust protobuf compiler),
//! so building needs no `protoc` binary installed.

use prost::Message as _;
use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &["receipts/v1/receipts.proto", "receipts/v1/backend.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Served by gRPC reflection so `grpcurl` and Postman can discover the API.
    fs::write(out.join("receipts_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
