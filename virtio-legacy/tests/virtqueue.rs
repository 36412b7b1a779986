//! Split virtqueue processing: normal, chained and indirect chains, and malformed rings.

mod common;

use common::{DriverQueue, Memory, ro, wo};
use vfio_variant_virtio_legacy::hw::virtqueue::{Buffer, Virtqueue, VirtqueueError};

const SIZE: u16 = 8;

fn setup() -> (std::sync::Arc<Memory>, DriverQueue, Virtqueue) {
    let mem = Memory::new(1 << 20);
    let driver = DriverQueue::new(SIZE, 0x1000);
    let device = Virtqueue::new(SIZE, driver.desc, driver.avail, driver.used).unwrap();
    (mem, driver, device)
}

#[test]
fn single_descriptor_round_trip() {
    let (mem, mut driver, mut device) = setup();
    mem.put(0x10000, b"hello");
    let head = driver.add(&mem, &[ro(0x10000, 5)]);
    let chain = device.pop(&*mem).unwrap().unwrap();
    assert_eq!(chain.head, head);
    assert_eq!(chain.read_all(&*mem).unwrap(), b"hello");
    assert!(chain.writable.is_empty());
    assert!(device.pop(&*mem).unwrap().is_none());
    device.push_used(&*mem, chain.head, 0).unwrap();
    assert_eq!(driver.take_used(&mem), Some((u32::from(head), 0)));
    assert_eq!(driver.poll_used(&mem), None);
}

#[test]
fn chained_descriptors_split_readable_and_writable() {
    let (mem, mut driver, mut device) = setup();
    mem.put(0x10000, b"abc");
    mem.put(0x11000, b"def");
    driver.add(
        &mem,
        &[
            ro(0x10000, 3),
            ro(0x11000, 3),
            wo(0x12000, 2),
            wo(0x13000, 4),
        ],
    );
    let chain = device.pop(&*mem).unwrap().unwrap();
    assert_eq!(chain.read_all(&*mem).unwrap(), b"abcdef");
    assert_eq!(chain.writable_len(), 6);
    // A write spanning both writable buffers, starting one byte in.
    assert_eq!(chain.write_at(&*mem, 1, b"xyzzy").unwrap(), 5);
    assert_eq!(mem.get(0x12001, 1), b"x");
    assert_eq!(mem.get(0x13000, 4), b"yzzy");
}

#[test]
fn indirect_descriptors() {
    let (mem, mut driver, mut device) = setup();
    mem.put(0x10000, b"indirect");
    let head = driver.add_indirect(&mem, 0x20000, &[ro(0x10000, 8), wo(0x11000, 16)]);
    let chain = device.pop(&*mem).unwrap().unwrap();
    assert_eq!(chain.head, head);
    assert_eq!(
        chain.readable,
        vec![Buffer {
            addr: 0x10000,
            len: 8
        }]
    );
    assert_eq!(
        chain.writable,
        vec![Buffer {
            addr: 0x11000,
            len: 16
        }]
    );
}

#[test]
fn ring_wraps_around() {
    let (mem, mut driver, mut device) = setup();
    for round in 0..(3 * u32::from(SIZE)) {
        let head = driver.add(&mem, &[wo(0x10000, 4)]);
        let chain = device.pop(&*mem).unwrap().unwrap();
        device.push_used(&*mem, chain.head, round).unwrap();
        assert_eq!(driver.take_used(&mem), Some((u32::from(head), round)));
    }
}

#[test]
fn descriptor_loop_is_detected() {
    let (mem, mut driver, mut device) = setup();
    driver.write_desc(&mem, 0, 0x10000, 4, 1, 1);
    driver.write_desc(&mem, 1, 0x10000, 4, 1, 0);
    driver.publish(&mem, 0);
    assert_eq!(
        device.pop(&*mem),
        Err(VirtqueueError::Loop(u32::from(SIZE)))
    );
}

#[test]
fn out_of_range_indices_are_detected() {
    let (mem, mut driver, mut device) = setup();
    driver.publish(&mem, SIZE);
    assert!(matches!(
        device.pop(&*mem),
        Err(VirtqueueError::IndexOutOfRange { index: 8, .. })
    ));
    let (mem, mut driver, mut device) = setup();
    driver.write_desc(&mem, 0, 0x10000, 4, 1, 100);
    driver.publish(&mem, 0);
    assert!(matches!(
        device.pop(&*mem),
        Err(VirtqueueError::IndexOutOfRange { index: 100, .. })
    ));
}

#[test]
fn available_index_overrun_is_detected() {
    let (mem, driver, mut device) = setup();
    mem.put(driver.avail + 2, &(SIZE + 1).to_le_bytes());
    assert!(matches!(
        device.pop(&*mem),
        Err(VirtqueueError::AvailOverrun { .. })
    ));
}

#[test]
fn malformed_indirect_tables_are_detected() {
    // Length not a multiple of 16.
    let (mem, mut driver, mut device) = setup();
    driver.write_desc(&mem, 0, 0x20000, 20, 4, 0);
    driver.publish(&mem, 0);
    assert!(matches!(
        device.pop(&*mem),
        Err(VirtqueueError::BadIndirect(_))
    ));
    // Indirect with NEXT.
    let (mem, mut driver, mut device) = setup();
    driver.write_desc(&mem, 0, 0x20000, 16, 4 | 1, 1);
    driver.publish(&mem, 0);
    assert!(matches!(
        device.pop(&*mem),
        Err(VirtqueueError::BadIndirect(_))
    ));
    // Nested indirect.
    let (mem, mut driver, mut device) = setup();
    driver.add_indirect(&mem, 0x20000, &[ro(0x10000, 4)]);
    let nested = DriverQueue::at(SIZE, 0x20000, 0, 0);
    nested.write_desc(&mem, 0, 0x30000, 16, 4, 0);
    assert!(matches!(
        device.pop(&*mem),
        Err(VirtqueueError::BadIndirect(_))
    ));
    // A loop inside an indirect table.
    let (mem, mut driver, mut device) = setup();
    driver.add_indirect(&mem, 0x20000, &[ro(0x10000, 4), ro(0x10000, 4)]);
    let table = DriverQueue::at(SIZE, 0x20000, 0, 0);
    table.write_desc(&mem, 1, 0x10000, 4, 1, 0);
    assert!(matches!(device.pop(&*mem), Err(VirtqueueError::Loop(2))));
}

#[test]
fn readable_after_writable_is_rejected() {
    let (mem, mut driver, mut device) = setup();
    driver.add(&mem, &[wo(0x10000, 4), ro(0x11000, 4)]);
    assert_eq!(
        device.pop(&*mem),
        Err(VirtqueueError::ReadableAfterWritable)
    );
}

#[test]
fn unmapped_ring_is_an_error_not_a_panic() {
    let mem = Memory::new(0x1000);
    let mut device = Virtqueue::new(SIZE, u64::MAX - 8, 0x10_0000, u64::MAX - 1).unwrap();
    assert!(matches!(device.pop(&*mem), Err(VirtqueueError::Dma(_))));
    assert!(device.push_used(&*mem, 0, 0).is_err());
}

#[test]
fn bad_sizes_are_refused() {
    for size in [0u16, 3, 65535] {
        assert_eq!(
            Virtqueue::new(size, 0, 0, 0),
            Err(VirtqueueError::BadSize(size))
        );
    }
}
