//! The catalog's instance types and the examples in docs/vpci-format.md are valid layouts.

use std::path::Path;
use std::sync::Arc;

use vfio_variant::physical::sysfs::describe_sysfs_dir;
use vfio_variant::vpci::bind::bind;
use vfio_variant::vpci::compile::compile;
use vfio_variant::vpci::{load_layout, parse_layout};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

#[test]
fn catalog_layouts_are_valid() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(repo().join("catalog")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let layout = load_layout(&path).unwrap_or_else(|e| panic!("{e}"));
            compile(Arc::new(layout.clone()));
            names.push(layout.name);
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "idxd-1dwq",
            "mlx-vf",
            "qemu-nvme",
            "virtio-blk-transitional",
            "virtio-net-transitional"
        ]
    );
}

#[test]
fn format_document_examples_parse_and_bind() {
    let text = std::fs::read_to_string(repo().join("docs/vpci-format.md")).unwrap();
    let blocks: Vec<&str> = text
        .split("```toml")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(!blocks.is_empty());
    let igbvf = describe_sysfs_dir(&repo().join("framework/tests/data/pci/igbvf")).unwrap();
    for block in blocks {
        let layout = parse_layout("vpci-format.md", block).unwrap_or_else(|e| panic!("{e}"));
        bind(&layout, &igbvf).unwrap_or_else(|e| panic!("{e}"));
    }
}
