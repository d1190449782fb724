//! Fast kernels vs candle's `QMatMul::forward` (same activation quantization,
//! so only f32 summation order differs) and vs the dequantized reference.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::Module;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const ALL: [GgmlDType; 10] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn weights(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> Arc<QTensor> {
    let w = tensor_2d(&random(n * k, seed), n, k).unwrap();
    Arc::new(QTensor::quantize(&w, dtype).unwrap())
}

fn candle(q: &Arc<QTensor>, x: &[f32], m: usize) -> Vec<f32> {
    let (_, k) = q.shape().dims2().unwrap();
    let mm = QMatMul::from_arc(q.clone()).unwrap();
    let xt = tensor_2d(x, m, k).unwrap();
    mm.forward(&xt)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest |a - b| relative to the largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |s, v| s.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |e, (x, y)| e.max((x - y).abs())) / scale
}

fn check(isas: &[Isa], dtype: GgmlDType, m: usize, k: usize, n: usize) {
    let q = weights(dtype, n, k, (m * 31 + k * 7 + n) as u64);
    let x = random(m * k, 99 + m as u64);
    let want = candle(&q, &x, m);
    for &isa in isas {
        let w = QMatrix::from_qtensor_for(&q, isa).unwrap();
        assert_eq!((w.n(), w.k(), w.dtype()), (n, k, dtype));
        let mut got = vec![f32::NAN; m * n];
        w.matmul(&x, m, &mut got);
        let e = rel_err(&got, &want);
        assert!(
            e < 1e-5,
            "{dtype:?} {isa:?} m={m} k={k} n={n}: rel err {e} vs candle"
        );
    }
}

#[test]
fn matches_candle_all_dtypes() {
    let isas = Isa::to_test("qmatmul::matches_candle_all_dtypes");
    for dtype in ALL {
        // n = 16, 48, 64: whole groups for the AMX layout (with an odd
        // block count at k = 96 and 224); the others fall back.
        let shapes = [
            (1, 256, 8),
            (3, 512, 33),
            (5, 768, 20),
            (13, 256, 9),
            (1, 96, 16),
            (2, 256, 48),
            (19, 224, 64),
        ];
        for (m, k, n) in shapes {
            if k % dtype.block_size() == 0 {
                check(&isas, dtype, m, k, n);
            }
        }
    }
}

#[test]
fn matches_candle_model_shapes() {
    let shapes = [
        (1, 896, 576),
        (3, 896, 640),
        (17, 896, 4864),
        (1, 4864, 896),
        (3, 4864, 600),
        (2, 576, 1536),
        (17, 576, 576),
    ];
    let dtypes = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ];
    let isas = Isa::to_test("qmatmul::matches_candle_model_shapes");
    for dtype in dtypes {
        for (m, k, n) in shapes {
            if k % dtype.block_size() == 0 {
                check(&isas, dtype, m, k, n);
            }
        }
    }
}

/// Each row's result does not depend on which rows come with it: batches
/// of 6 (VNNI groups of 4 and 2), 11 (AMX chunks of 8, 2 and 1; the
/// k-quants through VNNI, below their AMX minimum of 16) and 21 rows (AMX
/// chunks of 16, 4 and 1; Q4_K and Q6_K with their scales folded into
/// unpacked quants) and 27 rows (chunks of 16, 8, 2 and 1) equal every row
/// computed alone, bit for bit, for every instruction set.
#[test]
fn rows_are_batch_invariant() {
    let (k, n) = (768, 64);
    let isas = Isa::to_test("qmatmul::rows_are_batch_invariant");
    for m in [6, 11, 21, 27] {
        let x = random(m * k, 17 + m as u64);
        for dtype in ALL {
            let q = weights(dtype, n, k, 23);
            for &isa in &isas {
                let w = QMatrix::from_qtensor_for(&q, isa).unwrap();
                let mut batch = vec![0f32; m * n];
                w.matmul(&x, m, &mut batch);
                for i in 0..m {
                    let mut alone = vec![0f32; n];
                    w.matmul(&x[i * k..(i + 1) * k], 1, &mut alone);
                    assert_eq!(
                        alone,
                        batch[i * n..(i + 1) * n],
                        "{dtype:?} {:?}: row {i} alone vs in a batch of {m}",
                        w.isa()
                    );
                }
            }
        }
    }
}

/// On CPUs with AVX2 (but not AVX-VNNI alone) the 32-element block types,
/// Q4_K and Q6_K take the tiled layout when the rows fill whole groups (so
/// the tests above run its kernels: AVX2 halves, `vpdpbusd` alone, and AMX
/// for batches where the CPU has it); the rest keep ggml's rows, with the
/// AVX-512 VNNI kernels in place of AMX.
#[test]
fn tiled_layout_is_used_where_it_applies() {
    let paths = [Isa::Avx2, Isa::Avx512Vnni, Isa::Amx];
    isa::report(
        "qmatmul::tiled_layout_is_used_where_it_applies",
        &paths.map(|i| (i.name(), isa::path_run(i.level(), i.is_supported()))),
    );
    let available = Isa::available();
    for isa in paths.into_iter().filter(|i| available.contains(i)) {
        for dtype in ALL {
            let tiled = QMatrix::from_qtensor_for(&weights(dtype, 32, 256, 1), isa).unwrap();
            let ragged = QMatrix::from_qtensor_for(&weights(dtype, 24, 256, 1), isa).unwrap();
            let has_tiles =
                dtype.block_size() == QK || matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K);
            assert_eq!(tiled.is_tiled(), has_tiles, "{isa:?} {dtype:?}");
            let rows_isa = if isa == Isa::Amx {
                Isa::Avx512Vnni
            } else {
                isa
            };
            let want = if has_tiles { isa } else { rows_isa };
            assert_eq!(tiled.isa(), want, "{isa:?} {dtype:?}");
            assert!(!ragged.is_tiled(), "{isa:?} {dtype:?} with n = 24");
            assert_eq!(ragged.isa(), rows_isa, "{isa:?} {dtype:?} with n = 24");
            // As large as ggml's blocks for the 32-element types, and for
            // Q6_K up to each group's last 64-byte line; Q4_K's scales take
            // whole bytes (+3%).
            let ggml = 32 * 256 / dtype.block_size() * dtype.type_size();
            let size = tiled.size_in_bytes();
            match dtype {
                GgmlDType::Q4K => assert!(size <= ggml * 103 / 100, "Q4K: {size}"),
                GgmlDType::Q6K => assert_eq!(size, 2 * (ggml / 2).next_multiple_of(64), "Q6K"),
                _ => assert_eq!(size, ggml, "{dtype:?}"),
            }
        }
    }
}

/// Every tiled kernel computes each block's (or super-block's) exact
/// integer sum and folds it in with the same f32 operations, so the AVX2
/// halves, `vpdpbusd` and AMX give the same bits, at one row (the decode
/// kernels) and in batches.
#[test]
fn tiled_kernels_agree_across_instruction_sets() {
    let paths = [Isa::Avx2, Isa::Avx512Vnni, Isa::Amx];
    isa::report(
        "qmatmul::tiled_kernels_agree_across_instruction_sets",
        &paths.map(|i| (i.name(), isa::path_run(i.level(), i.is_supported()))),
    );
    let available = Isa::available();
    let isas: Vec<_> = paths
        .into_iter()
        .filter(|i| available.contains(i))
        .collect();
    let (k, n) = (768, 48);
    for dtype in ALL {
        let q = weights(dtype, n, k, 29);
        for m in [1, 6, 21] {
            let x = random(m * k, 31 + m as u64);
            let mut first: Option<(Isa, Vec<f32>)> = None;
            for &isa in &isas {
                let w = QMatrix::from_qtensor_for(&q, isa).unwrap();
                if !w.is_tiled() {
                    continue;
                }
                let mut got = vec![0f32; m * n];
                w.matmul(&x, m, &mut got);
                match &first {
                    None => first = Some((isa, got)),
                    Some((base, want)) => {
                        assert_eq!(&got, want, "{dtype:?} m={m}: {isa:?} vs {base:?}")
                    }
                }
            }
        }
    }
}

#[test]
fn close_to_dequantized_reference() {
    let (m, k, n) = (3, 512, 40);
    let x = random(m * k, 5);
    for dtype in ALL {
        let q = weights(dtype, n, k, 11);
        let want = matmul_reference(&q, &x, m).unwrap();
        let mut got = vec![0f32; m * n];
        QMatrix::from_qtensor(&q).unwrap().matmul(&x, m, &mut got);
        // Only the activations' 8-bit rounding separates the two.
        let e = rel_err(&got, &want);
        assert!(e < 2e-2, "{dtype:?}: rel err {e} vs dequantized reference");
    }
}

#[test]
fn zero_activations_and_empty_batch() {
    let q = weights(GgmlDType::Q4K, 16, 256, 3);
    let w = QMatrix::from_qtensor(&q).unwrap();
    let mut out = vec![1f32; 2 * 16];
    w.matmul(&[0f32; 2 * 256], 2, &mut out);
    assert!(out.iter().all(|&v| v == 0.0));
    w.matmul(&[], 0, &mut []);
}

#[test]
fn rejects_unsupported_and_misshapen() {
    let t = tensor_2d(&random(64 * 4, 1), 4, 64).unwrap();
    let f = QTensor::quantize(&t, GgmlDType::F32).unwrap();
    assert!(QMatrix::from_qtensor(&f).is_err());
    assert!(!QMatrix::supported(GgmlDType::F16));
    assert!(QMatrix::supported(GgmlDType::Q6K));
}

#[test]
fn isa_detection_is_consistent() {
    let available = Isa::available();
    assert!(available.contains(&Isa::Scalar));
    assert!(available.contains(&Isa::detect()));
    assert_eq!(available.last(), Some(&Isa::detect()));
    for &isa in Isa::ALL {
        assert_eq!(
            available.contains(&isa),
            isa::allowed(isa.level(), isa.is_supported())
        );
    }
}

/// `R1SERVE_ISA`'s cap: dispatch never goes above it nor to a kernel this
/// CPU lacks, and takes the best kernel within both.
#[test]
fn dispatch_is_capped() {
    for (value, limit) in [
        ("scalar", Level::Scalar),
        ("avx2", Level::Avx2),
        ("avx512vnni", Level::Avx512Vnni),
        ("amx", Level::Amx),
    ] {
        assert_eq!(isa::parse(Some(value)).unwrap(), limit);
        let got = Isa::best_under(limit);
        assert!(
            got.level() <= limit && got.is_supported(),
            "{value}: {got:?}"
        );
        for &better in Isa::ALL {
            if better.level() <= limit && better.is_supported() {
                assert!(
                    better.level() <= got.level(),
                    "{value}: {got:?} over {better:?}"
                );
            }
        }
    }
    assert_eq!(Isa::best_under(Level::Scalar), Isa::Scalar);
    assert_eq!(Isa::detect(), Isa::best_under(isa::limit().unwrap()));
}
