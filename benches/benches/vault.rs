//! Hot paths of the foundation: naming a block (CID), storing a record
//! (encrypt + CID + write + metadata), and parsing a FHIR bundle.
//!
//! `cargo bench -p cohort-benches --bench vault`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use cohort_engine::keys::keystore::KdfParams;
use cohort_engine::records::vault::{Access, NewRecord};
use cohort_engine::storage::cid::cid_of;

fn cid(c: &mut Criterion) {
    let mut g = c.benchmark_group("cid_of");
    for size in [1024usize, 256 * 1024, 4 * 1024 * 1024] {
        let bytes = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &bytes, |b, bytes| {
            b.iter(|| cid_of(bytes))
        });
    }
    g.finish();
}

fn put(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cohort_engine::DataDir::open(tmp.path()).unwrap();
    let vault = dir
        .unlock_with(
            "bench",
            KdfParams {
                m_cost_kib: 1024,
                t_cost: 1,
                p_cost: 1,
            },
        )
        .unwrap();
    let access = Access::new("bench", "bench");
    let body = vec![b'x'; 1200];
    let mut i = 0u64;
    c.bench_function("vault_put_1200B_record", |b| {
        b.iter(|| {
            i += 1;
            let id = format!("Observation/o{i}");
            let rec = NewRecord {
                patient_id: "p1",
                record_id: &id,
                resource_type: "Observation",
                content: &body,
            };
            vault.put(&access, &rec).unwrap()
        })
    });
}

fn parse(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let opts = cohort_engine::records::generate::Options::new(100, 1, tmp.path());
    cohort_engine::records::generate::generate(&opts).unwrap();
    let bytes = std::fs::read(tmp.path().join("bundle-0000001.json")).unwrap();
    let resources = cohort_engine::records::fhir::parse_bundle("b", &bytes)
        .unwrap()
        .resources
        .len();
    let mut g = c.benchmark_group("parse_bundle");
    g.throughput(Throughput::Elements(resources as u64));
    g.bench_function("100_patients", |b| {
        b.iter(|| cohort_engine::records::fhir::parse_bundle("b", &bytes).unwrap())
    });
    g.finish();
}

criterion_group!(benches, cid, put, parse);
criterion_main!(benches);
