//! Dense kernels vs the f64 reference on random shapes, for every
//! instruction set this CPU has (the ones it lacks are named on stderr),
//! plus batch invariance, cross-kernel agreement, unaligned byte ranges and
//! malformed input.
//!
//! # Tolerance
//!
//! Weights widen to f32 exactly, and each product is formed inside a fused
//! multiply-add (or exactly, for `vdpbf16ps`: 8-bit × 8-bit significands),
//! so the only f32 error is from adding `k` terms. Whatever the order, no
//! term passes through more than `k` roundings, and the classic bound is
//! `|ŷ − y| ≤ γ_k · Σ|wᵢxᵢ|` with `γ_k = k·u / (1 − k·u)`, `u = 2⁻²⁴`.
//! Kernels that round activations to bf16 (unit roundoff 2⁻⁸) add
//! `2⁻⁸ · Σ|wᵢxᵢ|`, times `1 + γ_k` for the sums taken afterwards.

use std::sync::Arc;

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const KINDS: [HalfKind; 2] = [HalfKind::Bf16, HalfKind::F16];

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `rows × cols` random weights of `kind`, as little-endian bytes.
fn weight_bytes(kind: HalfKind, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    random(rows * cols, seed)
        .into_iter()
        .flat_map(|v| match kind {
            HalfKind::Bf16 => bf16::from_f32(v).to_le_bytes(),
            HalfKind::F16 => f16::from_f32(v).to_le_bytes(),
        })
        .collect()
}

fn owned(bytes: Vec<u8>) -> WeightBytes {
    WeightBytes::Owned(Arc::new(bytes))
}

/// `γ_k` for f32.
fn gamma(k: usize) -> f64 {
    let ku = k as f64 * f64::powi(2.0, -24);
    ku / (1.0 - ku)
}

/// Checks `got` (m × rows) against the reference within the bound of the
/// module docs.
fn check_close(
    isa: DenseIsa,
    kind: HalfKind,
    (rows, cols): (usize, usize),
    w: &[u8],
    x: &[f32],
    m: usize,
    got: &[f32],
) {
    let want = dense_matmul_reference(kind, rows, cols, w, x, m).unwrap();
    let abs = dense_matmul_reference(
        kind,
        rows,
        cols,
        &w.chunks_exact(2)
            .flat_map(|b| [b[0], b[1] & 0x7F])
            .collect::<Vec<_>>(),
        &x.iter().map(|v| v.abs()).collect::<Vec<_>>(),
        m,
    )
    .unwrap();
    let g = gamma(cols);
    let rel = if isa.rounds_activations(kind) {
        f64::powi(2.0, -8) * (1.0 + g) + g
    } else {
        g
    };
    for (e, ((&got, &want), &abs)) in got.iter().zip(&want).zip(&abs).enumerate() {
        let bound = rel * abs;
        assert!(
            (got as f64 - want).abs() <= bound,
            "{} {kind:?} m={m} {rows}x{cols}: y[{}][{}] = {got}, reference {want}, bound {bound}",
            isa.name(),
            e / rows,
            e % rows
        );
    }
}

#[test]
fn matches_reference_on_random_shapes() {
    let isas = DenseIsa::to_test("dense::matches_reference_on_random_shapes");
    // (rows, cols): `cols` never a multiple of a vector or an AMX block;
    // rows a multiple of 16 (AMX groups) or not, of 8 (blocks) or not; the
    // last two are slices of Qwen2.5-0.5B's MLP matrices.
    let shapes = [
        (45, 67),
        (48, 67),
        (129, 300),
        (160, 300),
        (7, 5),
        (1, 33),
        (208, 4864),
        (300, 896),
    ];
    for (s, &(rows, cols)) in shapes.iter().enumerate() {
        for kind in KINDS {
            let w = weight_bytes(kind, rows, cols, s as u64);
            for &isa in &isas {
                let mat = DenseMatrix::new_for(isa, kind, rows, cols, owned(w.clone())).unwrap();
                for m in [1, 3, 8, 17, 64] {
                    let x = random(m * cols, 100 + m as u64);
                    let mut y = vec![f32::NAN; m * rows];
                    mat.matmul(&x, m, &mut y);
                    check_close(isa, kind, (rows, cols), &w, &x, m, &y);
                }
            }
        }
    }
}

/// Large values near the ends of the f16 and bf16 ranges still meet the
/// bound (no overflow in the widening, no lost exponent bits).
#[test]
fn wide_exponents() {
    let isas = DenseIsa::to_test("dense::wide_exponents");
    let (rows, cols, m) = (19, 70, 3);
    for kind in KINDS {
        let scale = match kind {
            HalfKind::Bf16 => 1e30f32,
            HalfKind::F16 => 6e4,
        };
        let w: Vec<u8> = random(rows * cols, 4)
            .into_iter()
            .flat_map(|v| match kind {
                HalfKind::Bf16 => bf16::from_f32(v * scale).to_le_bytes(),
                HalfKind::F16 => f16::from_f32(v * scale).to_le_bytes(),
            })
            .collect();
        let x = random(m * cols, 5);
        for &isa in &isas {
            let mat = DenseMatrix::new_for(isa, kind, rows, cols, owned(w.clone())).unwrap();
            let mut y = vec![f32::NAN; m * rows];
            mat.matmul(&x, m, &mut y);
            check_close(isa, kind, (rows, cols), &w, &x, m, &y);
        }
    }
}

/// Each row's result does not depend on which rows come with it: batches
/// of 6, 17 (passes of 4/3/2 rows and a single one; AMX tiles of 16 and 1)
/// and 70 (two slabs of accumulators in the batched passes) equal every row
/// computed alone, bit for bit, for every instruction set, on rows shorter
/// than a panel of the batched passes and on rows of three panels.
#[test]
fn rows_are_batch_invariant() {
    let isas = DenseIsa::to_test("dense::rows_are_batch_invariant");
    for (kind, rows, cols) in [
        (HalfKind::Bf16, 75, 130),
        (HalfKind::F16, 75, 130),
        (HalfKind::Bf16, 80, 130),
        (HalfKind::Bf16, 24, 555),
        (HalfKind::F16, 24, 555),
    ] {
        let w = weight_bytes(kind, rows, cols, 8);
        for &isa in &isas {
            let mat = DenseMatrix::new_for(isa, kind, rows, cols, owned(w.clone())).unwrap();
            for m in [6, 17, 70] {
                let x = random(m * cols, 9 + m as u64);
                let mut batch = vec![0f32; m * rows];
                mat.matmul(&x, m, &mut batch);
                for i in 0..m {
                    let mut alone = vec![0f32; rows];
                    mat.matmul(&x[i * cols..(i + 1) * cols], 1, &mut alone);
                    assert_eq!(
                        bits(&alone),
                        bits(&batch[i * rows..(i + 1) * rows]),
                        "{kind:?} {}: row {i} alone vs in a batch of {m}",
                        isa.name()
                    );
                }
            }
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|v| v.to_bits()).collect()
}

/// The portable, AVX2 and AVX-512 kernels share one body over exactly
/// rounded vector operations, so they agree bit for bit.
#[test]
fn widening_kernels_agree_bit_for_bit() {
    let isas = DenseIsa::to_test("dense::widening_kernels_agree_bit_for_bit");
    let (rows, cols, m) = (37, 555, 9);
    for kind in KINDS {
        let w = weight_bytes(kind, rows, cols, 12);
        let x = random(m * cols, 13);
        let matmul = |isa| {
            let mat = DenseMatrix::new_for(isa, kind, rows, cols, owned(w.clone())).unwrap();
            let mut y = vec![0f32; m * rows];
            mat.matmul(&x, m, &mut y);
            y
        };
        let portable = matmul(DenseIsa::Scalar);
        for &isa in &isas {
            if isa.rounds_activations(kind) {
                continue;
            }
            let y = matmul(isa);
            assert_eq!(bits(&y), bits(&portable), "{kind:?} {}", isa.name());
        }
    }
}

/// Weights at byte offsets 1, 2 and 6 of a memory map (only 2-byte or no
/// alignment) give the same results as an aligned copy.
#[test]
fn unaligned_mapped_bytes() {
    let isas = DenseIsa::to_test("dense::unaligned_mapped_bytes");
    let (rows, cols, m) = (33, 101, 5);
    let x = random(m * cols, 21);
    for kind in KINDS {
        let w = weight_bytes(kind, rows, cols, 22);
        for offset in [1, 2, 6] {
            let mut map = memmap2::MmapMut::map_anon(offset + w.len()).unwrap();
            map[offset..].copy_from_slice(&w);
            let bytes = WeightBytes::Mapped {
                map: Arc::new(map.make_read_only().unwrap()),
                offset,
                len: w.len(),
            };
            for &isa in &isas {
                let aligned =
                    DenseMatrix::new_for(isa, kind, rows, cols, owned(w.clone())).unwrap();
                let mapped = DenseMatrix::new_for(isa, kind, rows, cols, bytes.clone()).unwrap();
                let mut want = vec![0f32; m * rows];
                aligned.matmul(&x, m, &mut want);
                let mut got = vec![0f32; m * rows];
                mapped.matmul(&x, m, &mut got);
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{kind:?} {} at offset {offset}",
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn rejects_misshapen_bytes() {
    let err = DenseMatrix::new(HalfKind::Bf16, 3, 5, owned(vec![0; 29]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3 x 5") && err.contains("30") && err.contains("29"),
        "{err}"
    );
    let err = DenseMatrix::new(HalfKind::F16, usize::MAX / 2, 3, owned(vec![]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("too large"), "{err}");
    assert!(dense_matmul_reference(HalfKind::F16, 2, 2, &[0; 6], &[0.0; 2], 1).is_err());
}

#[test]
fn empty_shapes() {
    let mat = DenseMatrix::new(HalfKind::Bf16, 4, 0, owned(vec![])).unwrap();
    let mut y = vec![f32::NAN; 2 * 4];
    mat.matmul(&[], 2, &mut y);
    assert!(y.iter().all(|&v| v == 0.0));
    let mat = DenseMatrix::new(HalfKind::F16, 0, 7, owned(vec![])).unwrap();
    mat.matmul(&[0.0; 14], 2, &mut []);
    let mat = DenseMatrix::new(HalfKind::F16, 3, 7, owned(vec![0; 42])).unwrap();
    mat.matmul(&[], 0, &mut []);
}

#[test]
fn isa_detection_is_consistent() {
    let available = DenseIsa::available();
    assert_eq!(available[0], DenseIsa::Scalar);
    assert_eq!(available.last(), Some(&DenseIsa::detect()));
    for &isa in DenseIsa::ALL {
        assert!(isa.capped() <= isa && isa.capped().is_supported());
        assert_eq!(
            available.contains(&isa),
            isa.is_supported() && isa.level() <= crate::kernels::isa::limit().unwrap()
        );
    }
    let mat = DenseMatrix::new(HalfKind::F16, 16, 1, owned(vec![0; 32])).unwrap();
    assert!(
        mat.isa() <= DenseIsa::Avx512,
        "bf16 kernels cannot take f16"
    );
}

/// On CPUs with AMX-BF16, bf16 matrices of whole 16-row groups really take
/// the tiled path (so the tests above exercise it) and release the
/// checkpoint's bytes for a copy of the same size plus the padding of
/// `cols` to 32; the rest fall back to `vdpbf16ps`.
#[test]
fn amx_layout_is_used_where_it_applies() {
    if !DenseIsa::available().contains(&DenseIsa::AmxBf16) {
        let amx = DenseIsa::AmxBf16;
        let run = isa::path_run(amx.level(), amx.is_supported());
        isa::report(
            "dense::amx_layout_is_used_where_it_applies",
            &[(amx.name(), run)],
        );
        return;
    }
    let new = |kind, rows, cols| {
        DenseMatrix::new_for(
            DenseIsa::AmxBf16,
            kind,
            rows,
            cols,
            owned(weight_bytes(kind, rows, cols, 1)),
        )
        .unwrap()
    };
    let tiled = new(HalfKind::Bf16, 32, 70);
    assert_eq!(tiled.isa(), DenseIsa::AmxBf16);
    assert_eq!(tiled.size_in_bytes(), 32 * 96 * 2);
    assert_eq!(new(HalfKind::Bf16, 24, 70).isa(), DenseIsa::Avx512Bf16);
    assert_eq!(new(HalfKind::F16, 32, 70).isa(), DenseIsa::Avx512);
}

/// `R1SERVE_ISA`'s cap: dispatch never goes above it nor to a kernel this
/// CPU lacks, and takes the best kernel within both.
#[test]
fn dispatch_is_capped() {
    for value in ["scalar", "avx2", "avx512", "avx512bf16", "amx"] {
        let limit = isa::parse(Some(value)).unwrap();
        let got = DenseIsa::best_under(limit);
        assert!(
            got.level() <= limit && got.is_supported(),
            "{value}: {got:?}"
        );
        for &better in DenseIsa::ALL {
            if better.level() <= limit && better.is_supported() {
                assert!(better <= got, "{value}: {got:?} under {better:?}");
            }
        }
    }
    assert_eq!(DenseIsa::best_under(Level::Scalar), DenseIsa::Scalar);
    assert_eq!(
        DenseIsa::detect(),
        DenseIsa::best_under(isa::limit().unwrap())
    );
}

/// `--dtype float32` keeps bf16 weights off the kernels that round
/// activations (on CPUs that have them; elsewhere both settings take the
/// same widening kernel), for the loads inside `with_precision` only.
#[test]
fn float32_precision_passes_over_rounding_kernels() {
    let new = |kind| DenseMatrix::new(kind, 32, 64, owned(weight_bytes(kind, 32, 64, 2))).unwrap();
    let auto = new(HalfKind::Bf16);
    let exact = with_precision(Precision::Float32, || new(HalfKind::Bf16));
    assert!(!exact.isa().rounds_activations(HalfKind::Bf16));
    assert_eq!(exact.isa(), DenseIsa::detect().min(DenseIsa::Avx512));
    assert_eq!(new(HalfKind::Bf16).isa(), auto.isa(), "setting leaked");
    let rounding = auto.isa().rounds_activations(HalfKind::Bf16);
    eprintln!(
        "dense::float32_precision_passes_over_rounding_kernels: auto takes {}, float32 {}{}",
        auto.isa().name(),
        exact.isa().name(),
        if rounding {
            ""
        } else {
            " (this CPU has no kernel that rounds activations: both are f32)"
        }
    );
    let f16 = with_precision(Precision::Float32, || new(HalfKind::F16));
    assert_eq!(f16.isa(), new(HalfKind::F16).isa());
}
