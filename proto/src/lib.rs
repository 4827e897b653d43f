//! Generated code for the `receipts.v1` protobuf package: message types, the
//! `ReceiptService` and `ReceiptBackendService` clients and servers.
//!
//! The `.proto` files under `proto/receipts/v1/` are the contract and their
//! comments are the API documentation; this crate only re-exports what
//! `build.rs` generates from them. Do not use it directly from applications:
//! the `receipts-sdk` crate wraps it.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The `receipts.v1` package.
pub mod v1 {
    tonic::include_proto!("receipts.v1");
}

/// The encoded `FileDescriptorSet` of the package, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/receipts_descriptor.bin"));
