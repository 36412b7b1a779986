//! Arbitrary config-space bytes and resource text as a physical function's description, then
//! `derive`: never a panic, and what derive produces is a valid layout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfio_variant::physical::sysfs::describe_bytes;
use vfio_variant::vpci::derive::{DeriveOptions, derive};
use vfio_variant::vpci::parse_layout;

fuzz_target!(|data: &[u8]| {
    // Byte 0 picks the config size (256 or 4096); then the config bytes (zero-padded when the
    // input is short); the rest is the resource text.
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let size = if selector & 1 == 0 { 256 } else { 4096 };
    let (config, resource) = rest.split_at(rest.len().min(size));
    let mut config = config.to_vec();
    config.resize(size, 0);
    let Ok(resource) = std::str::from_utf8(resource) else {
        return;
    };
    let Ok(description) = describe_bytes(config, resource) else {
        return;
    };
    let options = DeriveOptions {
        name: "fuzz".into(),
        ..Default::default()
    };
    if let Ok(derived) = derive(&description, &options) {
        parse_layout("derived.toml", &derived.to_toml()).expect("derived layouts parse");
    }
});
