//! Arbitrary text as a vPCI layout file: never a panic; what is accepted compiles, reads back,
//! and writes out to text that parses to the same layout.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vfio_variant::config::{ConfigSpace, NoBacking};
use vfio_variant::vpci::{compile::compile, parse_layout};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(layout) = parse_layout("fuzz.toml", text) else {
        return;
    };
    let layout = Arc::new(layout);
    let again = parse_layout("emitted.toml", &layout.to_toml()).expect("emitted layout parses");
    assert_eq!(*layout, again);
    let template = Arc::new(compile(Arc::clone(&layout)));
    let mut space = ConfigSpace::new(template);
    let mut config = vec![0u8; space.size()];
    if space.read(0, &mut config, &NoBacking).is_ok() {
        for offset in (0..config.len() as u64).step_by(4) {
            let _ = space.write(offset, &[0xff; 4], &NoBacking, &mut |_| {});
        }
    }
});
