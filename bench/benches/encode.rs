//! Encoding one realistic `block-added` event (four deploys, 64-hex hashes, ~1.1 KB).
//!
//! * `encode/serde_json`: `serde_json::to_vec` of the envelope as a plain serde type
//!   ([`Envelope`]), what the replaced node did once per client per event.
//! * `encode/simd_json`: the same envelope with simd-json's serde serializer.
//! * `encode/herald`: herald's own encoder, `Event::encode` (once per event, shared).
//! * `encode/shared_second_access`: `BusEntry::json()` once it is already computed, which
//!   is what every subscriber but the first pays on herald.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_bench::payload::{Envelope, block_added};
use herald_core::bus::{Bus, BusConfig};

fn encode(c: &mut Criterion) {
    let event = block_added(1_000_000, 1_700_000_000_000);
    let len = event.encode().len() as u64;
    let mut group = c.benchmark_group("encode");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(len));

    group.bench_function("serde_json", |b| {
        b.iter(|| serde_json::to_vec(&Envelope::new(black_box(&event), None)).expect("encodes"));
    });
    group.bench_function("simd_json", |b| {
        b.iter(|| {
            simd_json::serde::to_vec(&Envelope::new(black_box(&event), None)).expect("encodes")
        });
    });
    group.bench_function("herald", |b| b.iter(|| black_box(&event).encode()));

    // One entry in the (unsealed) startup segment, read back by a subscriber.
    let bus = Bus::new(BusConfig::default());
    bus.publish(event.clone());
    let entry = bus
        .subscribe()
        .try_recv()
        .expect("the startup segment replays the event");
    assert_eq!(entry.json().len() as u64, len, "first access encodes");
    group.bench_function("shared_second_access", |b| {
        b.iter(|| black_box(black_box(&entry).json().len()));
    });
    group.finish();

    // Same bytes on every path, so the comparison is like for like.
    let simd = simd_json::serde::to_vec(&Envelope::new(&event, None)).expect("encodes");
    assert_eq!(
        simd,
        serde_json::to_vec(&Envelope::new(&event, None)).expect("encodes")
    );
    assert_eq!(&simd[..], &entry.json()[..]);
}

criterion_group!(benches, encode);
criterion_main!(benches);
