//! Unit tests of the layers' pure parts.

use super::*;

#[test]
fn grpc_timeout_parses_every_unit_and_refuses_malformed_values() {
    assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
    assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
    assert_eq!(grpc_timeout("2M"), Some(Duration::from_secs(120)));
    assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(grpc_timeout("7u"), Some(Duration::from_micros(7)));
    assert_eq!(grpc_timeout("9n"), Some(Duration::from_nanos(9)));
    for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S", "5 S"] {
        assert_eq!(grpc_timeout(bad), None, "{bad:?}");
    }
}

#[test]
fn unknown_paths_get_one_bounded_label() {
    let m = Method::of("/receipts.v1.ReceiptService/SubscribeReceipts");
    assert_eq!(
        (m.service, m.method, m.streaming),
        ("receipts.v1.ReceiptService", "SubscribeReceipts", true)
    );
    for path in ["/", "/x.Y/Z", "/receipts.v1.ReceiptService/Nope", "garbage"] {
        let m = Method::of(path);
        assert_eq!((m.service, m.method), ("other", "other"), "{path}");
    }
}

#[test]
fn the_method_table_lists_every_method_of_the_proto() {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(receipts_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes");
    let mut seen = 0;
    for file in &set.file {
        for service in &file.service {
            let name = format!("{}.{}", file.package(), service.name());
            for method in &service.method {
                let m = Method::of(&format!("/{name}/{}", method.name()));
                assert_eq!(m.service, name, "{name}/{} is missing", method.name());
                assert_eq!(
                    m.streaming,
                    method.server_streaming(),
                    "{name}/{} streaming flag",
                    method.name()
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 12, "the proto's methods were found ({seen})");
}
