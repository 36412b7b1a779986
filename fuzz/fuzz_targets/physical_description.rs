//! Arbitrary config-space bytes and resource text as a physical function's description, then
//! `derive`: never a panic, and what derive produces is a valid layout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfio_variant::physical::sysfs::describe_bytes;
use vfio_variant::vpci::derive::{DeriveOptions, derive};
use vfio_variant::vpci::parse_layout;

fuzz_target!(|data: &[u8]| {
    // First 4096 bytes (or fewer) are the config space; the rest is the resource text.
    let split = data.len().min(4096);
    let (config, resource) = data.split_at(split);
    let Ok(resource) = std::str::from_utf8(resource) else {
        return;
    };
    let Ok(description) = describe_bytes(config.to_vec(), resource) else {
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
