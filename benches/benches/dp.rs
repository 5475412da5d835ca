//! Throughput of count releases: discrete Laplace (pure ε) and discrete
//! Gaussian (ρ-zCDP), each at two noise scales. A release includes building
//! the OpenDP measurement, calibrating its scale against OpenDP's privacy
//! map, sampling, and computing the 95% accuracy.
//!
//! Run: `cargo bench --bench dp -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use cohort_anonymizer::dp::{self, Privacy};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn count_releases(c: &mut Criterion) {
    let mut group = c.benchmark_group("count_release");
    group.throughput(Throughput::Elements(1));
    let cases = [
        ("discrete_laplace/scale_1", Privacy::Pure { epsilon: 1.0 }),
        (
            "discrete_laplace/scale_100",
            Privacy::Pure { epsilon: 0.01 },
        ),
        ("discrete_gaussian/sigma_1", Privacy::Zcdp { rho: 0.5 }),
        (
            "discrete_gaussian/sigma_100",
            Privacy::Zcdp { rho: 0.00005 },
        ),
    ];
    for (name, privacy) in cases {
        group.bench_function(name, |b| {
            b.iter(|| dp::count(black_box(1_000), 1, privacy).expect("count release"))
        });
    }
    group.finish();
}

fn float_sum_releases(c: &mut Criterion) {
    // For comparison: OpenDP's f64 Laplace samples on the 2^-1074 grid.
    let mut group = c.benchmark_group("sum_f64_release");
    group.throughput(Throughput::Elements(1));
    group.bench_function("laplace/scale_10", |b| {
        b.iter(|| {
            dp::sum_f64(
                black_box(1234.5),
                -5.0,
                5.0,
                2,
                Privacy::Pure { epsilon: 1.0 },
            )
            .expect("sum release")
        })
    });
    group.finish();
}

fn noise_samples(c: &mut Criterion) {
    // Raw sampler throughput: one histogram release over 10,000 bins draws
    // 10,000 noise samples from one measurement.
    const BINS: usize = 10_000;
    let counts = vec![1_000i64; BINS];
    let mut group = c.benchmark_group("noise_samples");
    group.throughput(Throughput::Elements(BINS as u64));
    for (name, privacy) in [
        ("discrete_laplace/scale_10", Privacy::Pure { epsilon: 0.1 }),
        ("discrete_gaussian/sigma_10", Privacy::Zcdp { rho: 0.005 }),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| dp::histogram(black_box(&counts), 1, 1, privacy).expect("histogram release"))
        });
    }
    group.finish();
}

criterion_group!(benches, count_releases, float_sum_releases, noise_samples);
criterion_main!(benches);
