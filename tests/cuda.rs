//! The CUDA backend against the CPU backend, op by op through the device
//! seam (`Backend`) and end to end on real checkpoints. Built only with
//! `--features cuda`, and run by `benches/cuda/device-check.sh` on a GPU
//! machine. Without the feature a single ignored test says the CUDA tests
//! did not run; with it and no GPU they fail, naming why: they are never
//! counted as passed without running.

#[cfg(not(feature = "cuda"))]
#[test]
#[ignore = "built without `--features cuda`: the CUDA tests did not run (benches/cuda/device-check.sh runs them on a GPU)"]
fn cuda_tests_did_not_run() {}

#[cfg(feature = "cuda")]
mod common;

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::{self, Lcg};
    use half::{bf16, f16};
    use r1serve::kernels::attention::{AttnSeq, AttnShape};
    use r1serve::kernels::backend::{Backend, RopeStyle};
    use r1serve::kernels::bytes::{HalfKind, WeightBytes};
    use r1serve::kernels::cpu::{Cpu, HostAct};
    use r1serve::kernels::cuda::{device_count, Cuda};
    use r1serve::kernels::tensor::RawTensor;
    use r1serve::kv_cache::spec::{KvSpec, LayerKvSpec};
    use r1serve::kv_cache::storage::KvDtype;
    use r1serve::model::{build, build_on, open_weights, source, LogitsRow, Model, RowNeed};
    use r1serve::types::BlockId;
    use std::sync::Arc;

    /// f32's unit roundoff.
    const U: f32 = f32::EPSILON / 2.0;

    fn gpu() -> Cuda {
        assert!(
            device_count() > 0,
            "no CUDA device is visible (libcuda.so.1 missing or no GPU): the CUDA tests cannot run here"
        );
        Cuda::new(0, 0.5).expect("open cuda:0")
    }

    fn host(data: Vec<f32>, width: usize) -> HostAct {
        HostAct { data, width }
    }

    /// Asserts `|gpu - cpu| <= tol(i)` element-wise, naming the worst one.
    fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], tol: impl Fn(usize) -> f32) {
        assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
        let mut worst = (0usize, 0f32, 0f32);
        for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
            let (d, t) = ((g - c).abs(), tol(i));
            assert!(
                d <= t,
                "{what}: element {i}: gpu {g} vs cpu {c} (|diff| {d} > tolerance {t})"
            );
            if d / t.max(f32::MIN_POSITIVE) > worst.1 / worst.2.max(f32::MIN_POSITIVE) {
                worst = (i, d, t);
            }
        }
        eprintln!(
            "{what}: max |diff| {} at {} (tolerance there {})",
            worst.1, worst.0, worst.2
        );
    }

    fn half_tensor(kind: HalfKind, values: &[f32], dims: Vec<usize>) -> RawTensor {
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| match kind {
                HalfKind::Bf16 => bf16::from_f32(v).to_le_bytes(),
                HalfKind::F16 => f16::from_f32(v).to_le_bytes(),
            })
            .collect();
        RawTensor::Half {
            kind,
            dims,
            bytes: WeightBytes::Owned(Arc::new(bytes)),
        }
    }

    /// Row-wise ops: both devices compute each row in f32 with sums over
    /// `width` terms in different orders, so a norm may differ by
    /// `2·width·u` relative (Higham's bound for two recursive sums), SiLU
    /// by `16u` relative (CUDA's `expf` is within 2 ulps, 4u, Rust's within
    /// 1; then a sum, a quotient and a product, u each, per side).
    #[test]
    fn rowwise_ops_match_cpu() {
        let (g, c) = (gpu(), Cpu);
        let mut rng = Lcg(7);
        for (rows, width) in [(1, 576), (5, 896), (33, 3584)] {
            let x = rng.vec(rows * width);
            let y = rng.vec(rows * width);
            let w = rng.vec(width);
            let (gx, cx) = (g.from_host(&x, width).unwrap(), host(x.clone(), width));
            let (gy, cy) = (g.from_host(&y, width).unwrap(), host(y.clone(), width));
            let (gw, cw) = (g.vector(w.clone()).unwrap(), c.vector(w.clone()).unwrap());
            let norm_tol = |out: &[f32]| {
                let out = out.to_vec();
                move |i: usize| 2.0 * (width as f32 + 4.0) * U * out[i].abs() + 1e-30
            };

            let cn = c.rms_norm(&cx, &cw, 1e-6).unwrap();
            let gn = g.to_host(&g.rms_norm(&gx, &gw, 1e-6).unwrap()).unwrap();
            assert_close("rms_norm", &gn, &cn.data, norm_tol(&cn.data));

            let (mut gx2, mut cx2) = (g.from_host(&x, width).unwrap(), cx.clone());
            let cn = c.add_rms_norm(&mut cx2, &cy, &cw, 1e-6).unwrap();
            let gn = g
                .to_host(&g.add_rms_norm(&mut gx2, &gy, &gw, 1e-6).unwrap())
                .unwrap();
            assert_eq!(g.to_host(&gx2).unwrap(), cx2.data, "residual add is exact");
            assert_close("add_rms_norm", &gn, &cn.data, norm_tol(&cn.data));

            let (mut gg, mut cg) = (g.from_host(&x, width).unwrap(), cx.clone());
            c.silu_mul(&mut cg, &cy).unwrap();
            g.silu_mul(&mut gg, &gy).unwrap();
            let exp = cg.data.clone();
            assert_close("silu_mul", &g.to_host(&gg).unwrap(), &cg.data, |i| {
                16.0 * U * exp[i].abs() + 1e-30
            });

            let pick: Vec<usize> = (0..rows).rev().step_by(2).collect();
            let gr = g.to_host(&g.gather_rows(&gx, &pick).unwrap()).unwrap();
            assert_eq!(gr, c.gather_rows(&cx, &pick).unwrap().data, "gather_rows");

            for (head_dim, style) in [(64, RopeStyle::Half), (128, RopeStyle::Interleaved)] {
                if width % head_dim != 0 {
                    continue;
                }
                let inv: Vec<f32> = (0..head_dim / 2)
                    .map(|i| 10000f32.powf(-2.0 * i as f32 / head_dim as f32))
                    .collect();
                let pos: Vec<usize> = (0..rows).map(|r| r * 977 + 3).collect();
                let (mut gq, mut cq) = (g.from_host(&x, width).unwrap(), cx.clone());
                c.rope(
                    &mut cq,
                    head_dim,
                    style,
                    &c.rope_tables(&inv, &pos).unwrap(),
                )
                .unwrap();
                g.rope(
                    &mut gq,
                    head_dim,
                    style,
                    &g.rope_tables(&inv, &pos).unwrap(),
                )
                .unwrap();
                // The same angles (computed on the host); two products and
                // a difference per value, which nvcc may fuse: each side is
                // within 3u·(|a·c| + |b·s|) <= 6u·max|x|, so 16u covers both.
                let xmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_close(
                    &format!("rope {style:?}"),
                    &g.to_host(&gq).unwrap(),
                    &cq.data,
                    |_| 16.0 * U * xmax,
                );
            }
        }
        let table = rng.vec(100 * 64);
        let t = half_tensor(HalfKind::Bf16, &table, vec![100, 64]);
        let ids = [3u32, 99, 0, 3];
        let ge = g
            .to_host(&g.embed(&g.embedding(&t).unwrap(), &ids).unwrap())
            .unwrap();
        assert_eq!(
            ge,
            c.embed(&c.embedding(&t).unwrap(), &ids).unwrap().data,
            "embed"
        );
        assert!(
            g.embed(&g.embedding(&t).unwrap(), &[100]).is_err(),
            "id out of range"
        );
    }

    /// cuBLAS multiplies the activations rounded to the weight's 16-bit
    /// type (relative error at most 2⁻⁹ for bf16, 2⁻¹² for f16) by the
    /// exact weights, accumulating in f32; the CPU multiplies unrounded
    /// activations. So `|gpu - cpu| <= (r + 2·in·u) · Σ|x_i w_i|` per output,
    /// with `r` the rounding's relative error.
    #[test]
    fn matmul_matches_cpu() {
        let (g, c) = (gpu(), Cpu);
        let mut rng = Lcg(11);
        for (kind, r) in [
            (HalfKind::Bf16, 2f32.powi(-8)),
            (HalfKind::F16, 2f32.powi(-11)),
        ] {
            for (rows, out, inp, bias) in [
                (1, 96, 320, true),
                (7, 896, 896, false),
                (33, 250, 4864, true),
            ] {
                let w = rng.vec(out * inp);
                let x = rng.vec(rows * inp);
                let b = bias.then(|| rng.vec(out));
                let gl = g
                    .linear(half_tensor(kind, &w, vec![out, inp]), b.clone())
                    .unwrap();
                let cl = c
                    .linear(half_tensor(kind, &w, vec![out, inp]), b.clone())
                    .unwrap();
                let gy = g
                    .to_host(&g.matmul(&gl, &g.from_host(&x, inp).unwrap()).unwrap())
                    .unwrap();
                let cy = c.matmul(&cl, &host(x.clone(), inp)).unwrap().data;
                let wr: Vec<f32> = match kind {
                    HalfKind::Bf16 => w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
                    HalfKind::F16 => w.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
                };
                let mag: Vec<f32> = (0..rows * out)
                    .map(|i| {
                        let (row, o) = (i / out, i % out);
                        (0..inp)
                            .map(|k| (x[row * inp + k] * wr[o * inp + k]).abs())
                            .sum::<f32>()
                            + b.as_ref().map_or(0.0, |b| b[o].abs())
                    })
                    .collect();
                assert_close(
                    &format!("matmul {kind:?} {rows}x{inp} -> {out}"),
                    &gy,
                    &cy,
                    |i| (r + 2.0 * (inp as f32 + 2.0) * U) * mag[i],
                );
            }
        }
    }

    /// One attention configuration: `cases` are `(ctx_len, q_len)` per
    /// sequence, all in one batch.
    struct AttnCase<'a> {
        cases: &'a [(usize, usize)],
        kv_heads: usize,
        group: usize,
        head_dim: usize,
        block_size: usize,
        dtype: KvDtype,
    }

    /// Writes random keys and values through both devices' `write_kv` (the
    /// CPU and GPU round them to the cache type identically), then compares
    /// `paged_attention`. Both read the same stored values. The tensor-core
    /// kernel of the 16-bit caches rounds `q·scale` to the cache type: the
    /// test hands both sides q already rounded, with a power-of-two scale,
    /// so that rounding is exact. A score sums `head_dim` products: each
    /// side is within `hd·u·Σ|q_i k_i|·scale` of exact, so the scores differ
    /// by `δ <= 2·hd·u·max Σ|q_i k_i|·scale`, which moves each softmax weight
    /// by at most a relative `2δ`; the tensor-core kernel rounds the weights
    /// to the cache type (relative `r`: 2⁻⁸ bf16, 2⁻¹¹ f16; at most `r·max|v|`
    /// on an output); the weighted sum of `n` values and the normaliser add
    /// `(n + 4)·u` per side (recursive summation, worst case), and the
    /// exponentials 3 ulps. So per element:
    /// `|gpu - cpu| <= max|v| · (4δ + r + 2(n + 8)·u)`.
    fn attention_case(g: &Cuda, a: &AttnCase, seed: u64) {
        let c = Cpu;
        let mut rng = Lcg(seed);
        let (hd, kvh) = (a.head_dim, a.kv_heads);
        let heads = kvh * a.group;
        let spec = KvSpec::uniform(
            LayerKvSpec::Full {
                num_kv_heads: kvh,
                k_dim: hd,
                v_dim: hd,
            },
            1,
        );
        let blocks: usize = a
            .cases
            .iter()
            .map(|(n, _)| n.div_ceil(a.block_size))
            .sum::<usize>()
            + 3;
        let mut gc = g.alloc_cache(&spec, a.block_size, blocks, a.dtype).unwrap();
        let mut cc = c.alloc_cache(&spec, a.block_size, blocks, a.dtype).unwrap();
        let mut free: Vec<u32> = (0..blocks as u32).collect();
        for i in (1..free.len()).rev() {
            free.swap(i, rng.below(i + 1));
        }
        let tables: Vec<Vec<BlockId>> = a
            .cases
            .iter()
            .map(|(n, _)| {
                (0..n.div_ceil(a.block_size))
                    .map(|_| BlockId(free.pop().unwrap()))
                    .collect()
            })
            .collect();
        let mut vmax = 0f32;
        let mut kmax = 0f32;
        for ((n, _), table) in a.cases.iter().zip(&tables) {
            let k = rng.vec(n * kvh * hd);
            let v = rng.vec(n * kvh * hd);
            kmax = k.iter().fold(kmax, |m, x| m.max(x.abs()));
            vmax = v.iter().fold(vmax, |m, x| m.max(x.abs()));
            let seq = [AttnSeq {
                q_start: 0,
                q_len: *n,
                ctx_len: *n,
                block_table: table,
            }];
            let w = kvh * hd;
            c.write_kv(&mut cc, 0, &seq, &host(k.clone(), w), &host(v.clone(), w))
                .unwrap();
            g.write_kv(
                &mut gc,
                0,
                &seq,
                &g.from_host(&k, w).unwrap(),
                &g.from_host(&v, w).unwrap(),
            )
            .unwrap();
        }
        let mut seqs = Vec::new();
        let mut rows = 0;
        for ((n, q_len), table) in a.cases.iter().zip(&tables) {
            seqs.push(AttnSeq {
                q_start: rows,
                q_len: *q_len,
                ctx_len: *n,
                block_table: table,
            });
            rows += q_len;
        }
        let round: fn(f32) -> f32 = match a.dtype {
            KvDtype::Bf16 => |x| bf16::from_f32(x).to_f32(),
            KvDtype::F16 => |x| f16::from_f32(x).to_f32(),
            KvDtype::Fp8E4m3 | KvDtype::F32 => |x| x,
        };
        let q: Vec<f32> = rng.vec(rows * heads * hd).into_iter().map(round).collect();
        let shape = AttnShape {
            num_heads: heads,
            scale: 0.125,
        };
        let co = c
            .paged_attention(&cc, 0, &seqs, &shape, &host(q.clone(), heads * hd))
            .unwrap()
            .data;
        let go = g
            .to_host(
                &g.paged_attention(&gc, 0, &seqs, &shape, &g.from_host(&q, heads * hd).unwrap())
                    .unwrap(),
            )
            .unwrap();
        let qmax = q.iter().fold(0f32, |m, x| m.max(x.abs()));
        let r = match a.dtype {
            KvDtype::Bf16 => 2f32.powi(-8),
            KvDtype::F16 => 2f32.powi(-11),
            KvDtype::Fp8E4m3 | KvDtype::F32 => 0.0,
        };
        // fp8 rounding may raise a magnitude by up to 1/16.
        let delta = 2.0 * hd as f32 * U * hd as f32 * qmax * kmax * 1.0625 * shape.scale;
        let n_max = a.cases.iter().map(|(n, _)| *n).max().unwrap() as f32;
        let tol = vmax * (4.0 * delta + r + 2.0 * (n_max + 8.0) * U);
        assert_close(
            &format!(
                "attention {:?} kvh {kvh} group {} hd {hd} block {} cases {:?}",
                a.dtype, a.group, a.block_size, a.cases
            ),
            &go,
            &co,
            |_| tol,
        );
    }

    /// GQA ratios 1, 2, 7 and 8; head dims 64 and 128; blocks of 16 and
    /// 32; every cache type; decode rows and a prefill chunk over a cached
    /// prefix in one batch, contexts 1 to 4,096.
    #[test]
    fn attention_matches_cpu() {
        let g = gpu();
        // 1024 and 1025 keys straddle a doubling of the partition size, where a
        // shorter row has more partitions than a longer one.
        let cases = [
            (1, 1),
            (17, 1),
            (300, 1),
            (100, 37),
            (1024, 1),
            (1025, 1),
            (4096, 1),
            (2049, 2),
        ];
        let mut seed = 1;
        for dtype in [KvDtype::F16, KvDtype::Bf16, KvDtype::Fp8E4m3, KvDtype::F32] {
            for (kv_heads, group, head_dim, block_size) in [
                (4, 1, 64, 16),
                (2, 2, 128, 32),
                (2, 7, 64, 16),
                (1, 8, 128, 16),
                (3, 3, 64, 32),
            ] {
                seed += 1;
                attention_case(
                    &g,
                    &AttnCase {
                        cases: &cases,
                        kv_heads,
                        group,
                        head_dim,
                        block_size,
                        dtype,
                    },
                    seed,
                );
            }
        }
    }

    /// Long reasoning contexts: 32,768 and 131,072 keys, decode rows.
    #[test]
    fn attention_long_contexts_match_cpu() {
        let g = gpu();
        for (dtype, kv_heads, group, block_size) in [
            (KvDtype::Bf16, 4, 7, 16),
            (KvDtype::F16, 2, 8, 32),
            (KvDtype::Fp8E4m3, 2, 2, 16),
        ] {
            attention_case(
                &g,
                &AttnCase {
                    cases: &[(32_768, 1), (131_072, 1), (65_537, 2)],
                    kv_heads,
                    group,
                    head_dim: 128,
                    block_size,
                    dtype,
                },
                99,
            );
        }
    }

    /// Logits after each token of `prompt` and `steps` greedy tokens, one
    /// sequence alone.
    fn greedy_with_logits(
        model: &mut dyn Model,
        prompt: &[u32],
        steps: usize,
    ) -> (Vec<u32>, Vec<Vec<f32>>) {
        let mut run = common::SoloRun::new(model, prompt.len() + steps, KvDtype::F16);
        let mut logits = vec![run.feed(prompt)];
        let mut out = vec![common::argmax(&logits[0])];
        while out.len() < steps {
            logits.push(run.feed(&[*out.last().unwrap()]));
            out.push(common::argmax(logits.last().unwrap()));
        }
        (out, logits)
    }

    /// The CPU backend holding every linear weight as the CUDA backend
    /// does (GGUF-quantized tensors widened and rounded once to bf16), so
    /// the two differ only in activations: exact f32 here, rounded to bf16
    /// at each GPU matmul input.
    struct CpuBf16Weights;

    impl Backend for CpuBf16Weights {
        type Act = HostAct;
        type Linear = <Cpu as Backend>::Linear;
        type Embedding = <Cpu as Backend>::Embedding;
        type Vector = Vec<f32>;
        type Cache = <Cpu as Backend>::Cache;
        type RopeTables = <Cpu as Backend>::RopeTables;

        fn name(&self) -> String {
            "cpu-bf16-weights".into()
        }
        fn step_tokens(&self) -> usize {
            Cpu.step_tokens()
        }
        fn linear(
            &self,
            weight: RawTensor,
            bias: Option<Vec<f32>>,
        ) -> anyhow::Result<Self::Linear> {
            let weight = match weight {
                w @ RawTensor::Half { .. } => w,
                w => half_tensor(HalfKind::Bf16, &w.to_f32_vec()?, w.dims()),
            };
            Cpu.linear(weight, bias)
        }
        fn embedding(&self, table: &RawTensor) -> anyhow::Result<Self::Embedding> {
            Cpu.embedding(table)
        }
        fn vector(&self, values: Vec<f32>) -> anyhow::Result<Vec<f32>> {
            Ok(values)
        }
        fn alloc_cache(
            &self,
            spec: &KvSpec,
            block_size: usize,
            num_blocks: usize,
            dtype: KvDtype,
        ) -> anyhow::Result<Self::Cache> {
            Cpu.alloc_cache(spec, block_size, num_blocks, dtype)
        }
        fn rows(&self, x: &HostAct) -> usize {
            Cpu.rows(x)
        }
        fn embed(&self, t: &Self::Embedding, ids: &[u32]) -> anyhow::Result<HostAct> {
            Cpu.embed(t, ids)
        }
        fn matmul(&self, w: &Self::Linear, x: &HostAct) -> anyhow::Result<HostAct> {
            Cpu.matmul(w, x)
        }
        fn rms_norm(&self, x: &HostAct, w: &Vec<f32>, eps: f32) -> anyhow::Result<HostAct> {
            Cpu.rms_norm(x, w, eps)
        }
        fn add_rms_norm(
            &self,
            x: &mut HostAct,
            y: &HostAct,
            w: &Vec<f32>,
            eps: f32,
        ) -> anyhow::Result<HostAct> {
            Cpu.add_rms_norm(x, y, w, eps)
        }
        fn add(&self, x: &mut HostAct, y: &HostAct) -> anyhow::Result<()> {
            Cpu.add(x, y)
        }
        fn rope_tables(&self, f: &[f32], p: &[usize]) -> anyhow::Result<Self::RopeTables> {
            Cpu.rope_tables(f, p)
        }
        fn rope(
            &self,
            x: &mut HostAct,
            hd: usize,
            style: RopeStyle,
            t: &Self::RopeTables,
        ) -> anyhow::Result<()> {
            Cpu.rope(x, hd, style, t)
        }
        fn silu_mul(&self, g: &mut HostAct, u: &HostAct) -> anyhow::Result<()> {
            Cpu.silu_mul(g, u)
        }
        fn write_kv(
            &self,
            c: &mut Self::Cache,
            layer: usize,
            seqs: &[AttnSeq],
            k: &HostAct,
            v: &HostAct,
        ) -> anyhow::Result<()> {
            Cpu.write_kv(c, layer, seqs, k, v)
        }
        fn paged_attention(
            &self,
            c: &Self::Cache,
            layer: usize,
            seqs: &[AttnSeq],
            shape: &AttnShape,
            q: &HostAct,
        ) -> anyhow::Result<HostAct> {
            Cpu.paged_attention(c, layer, seqs, shape, q)
        }
        fn gather_rows(&self, x: &HostAct, rows: &[usize]) -> anyhow::Result<HostAct> {
            Cpu.gather_rows(x, rows)
        }
        fn logits_to_host(&self, x: HostAct) -> anyhow::Result<Vec<f32>> {
            Cpu.logits_to_host(x)
        }
    }

    /// Logits rows reduced on the GPU give the host's reductions
    /// (`kernels::logits` defines them) bit for bit: argmax ties and NaN
    /// ordering, candidate floors at several temperatures, masked rows, and
    /// rows with more candidates than the GPU brings back, which come back
    /// whole (the sampler then takes the same candidates from them).
    #[test]
    fn logits_reduction_matches_host() {
        use r1serve::kernels::logits::{reduce_rows, within};
        let g = gpu();
        for width in [37usize, 4_099, 152_064] {
            let mut rng = common::Lcg(width as u64);
            let mut rows: Vec<Vec<f32>> = Vec::new();
            let mut needs = Vec::new();
            for (i, need) in [
                RowNeed::Argmax,
                RowNeed::Within {
                    nats: 18.0,
                    limit: 0,
                },
                RowNeed::Full,
                RowNeed::Within {
                    nats: 30.0,
                    limit: 40,
                },
                RowNeed::Within {
                    nats: 3.0,
                    limit: 0,
                },
                RowNeed::Argmax,
                RowNeed::Within {
                    nats: 60.0,
                    limit: 0,
                },
            ]
            .into_iter()
            .enumerate()
            {
                // Logit-like spread (±20) on a quantized grid, so ties are common.
                let mut row: Vec<f32> = rng
                    .vec(width)
                    .iter()
                    .map(|v| (v * 80.0).round() / 4.0)
                    .collect();
                match i {
                    // Masked tokens and a tie for the top at two indices.
                    1 => {
                        for j in (0..width).step_by(3) {
                            row[j] = f32::NEG_INFINITY;
                        }
                        row[width / 2] = 40.0;
                        row[width - 1] = 40.0;
                    }
                    // A NaN above everything in total order, a negative NaN below.
                    5 => {
                        row[width / 3] = f32::NAN;
                        row[0] = -f32::NAN;
                    }
                    // Flat: every token a candidate, more than the GPU keeps.
                    6 => row.iter_mut().for_each(|v| *v *= 0.01),
                    _ => {}
                }
                rows.push(row);
                needs.push(need);
            }
            // A row with nothing finite: no candidates.
            rows.push(vec![f32::NEG_INFINITY; width]);
            needs.push(RowNeed::Within {
                nats: 30.0,
                limit: 0,
            });
            let flat: Vec<f32> = rows.concat();
            let want = reduce_rows(flat.clone(), &needs);
            let got = g
                .logits_out(g.from_host(&flat, width).unwrap(), &needs)
                .unwrap();
            assert_eq!(got.len(), want.len());
            for (r, (got, want)) in got.into_iter().zip(want).enumerate() {
                let got = match (got, needs[r]) {
                    (LogitsRow::Full(whole), RowNeed::Within { nats, limit }) => {
                        assert_eq!(whole, rows[r], "width {width}, row {r}: whole row");
                        LogitsRow::Within(within(&whole, nats, limit))
                    }
                    (got, _) => got,
                };
                // Bits, so NaN rows compare too.
                let bits = |row: &LogitsRow| match row {
                    LogitsRow::Full(v) => {
                        v.iter().map(|x| ('f', 0, x.to_bits())).collect::<Vec<_>>()
                    }
                    LogitsRow::Argmax(t) => vec![('a', *t, 0)],
                    LogitsRow::Within(c) => c.iter().map(|(t, x)| ('w', *t, x.to_bits())).collect(),
                };
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "width {width}, row {r} ({:?})",
                    needs[r]
                );
            }
            eprintln!(
                "logits reduction, width {width}: {} rows equal to the host's",
                rows.len()
            );
        }
    }

    /// Greedy tokens of `reference` and `gpu` for 5 chat prompts × 32
    /// tokens: equal, or the first divergence is a near-tie. `noise` is
    /// the largest disagreement of the two logit vectors on identical
    /// input (each prompt's prefill); a divergence is a near-tie when the
    /// reference's logits of the two tokens differ by at most twice that
    /// (each of the two may move by `noise`).
    fn compare_greedy(
        what: &str,
        prompts: &[Vec<u32>],
        reference: &mut dyn Model,
        gpu: &mut dyn Model,
    ) {
        let mut exact = 0;
        for (i, p) in prompts.iter().enumerate() {
            let (ct, cl) = greedy_with_logits(reference, p, 32);
            let (gt, gl) = greedy_with_logits(gpu, p, 32);
            let noise = cl[0]
                .iter()
                .zip(&gl[0])
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let rel = common::rel_diff(&gl[0], &cl[0]);
            eprintln!("{what} prompt {i}: prefill logits max |gpu - ref| {noise} (relative {rel})");
            match ct.iter().zip(&gt).position(|(a, b)| a != b) {
                None => exact += 1,
                Some(k) => {
                    let gap = cl[k][ct[k] as usize] - cl[k][gt[k] as usize];
                    eprintln!(
                        "{what} prompt {i}: diverges at token {k} (ref {} vs gpu {}), ref logit gap {gap}",
                        ct[k], gt[k]
                    );
                    assert!(
                        gap <= 2.0 * noise,
                        "{what} prompt {i}: divergence at token {k} is not a near-tie (gap {gap}, noise {noise})"
                    );
                }
            }
        }
        eprintln!("{what}: {exact}/5 prompts token-exact over 32 tokens");
    }

    /// The GPU against the CPU path twice: the CPU as it serves the GGUF
    /// (quantized weights times activations quantized to 8 bits), and the
    /// CPU on the GPU's own bf16 weights with exact f32 activations, where
    /// the only difference left is the GPU's bf16 rounding of matmul inputs
    /// (2⁻⁹ relative per value), so its noise, and with it the near-tie
    /// allowance, is much smaller.
    fn greedy_matches_cpu(path: &std::path::Path) {
        let prompts = common::chat_prompts(path);
        let src = source::resolve(path.to_str().unwrap(), None).unwrap();
        let (w, cfg) = open_weights(&src).unwrap();
        let mut gpu_model = build_on(gpu(), &w, cfg.clone()).unwrap();
        let mut cpu = build(&w, cfg.clone()).unwrap();
        compare_greedy(
            "cpu (gguf kernels)",
            &prompts,
            cpu.as_mut(),
            gpu_model.as_mut(),
        );
        drop(cpu);
        let mut same_weights = build_on(CpuBf16Weights, &w, cfg).unwrap();
        compare_greedy(
            "cpu (bf16 weights)",
            &prompts,
            same_weights.as_mut(),
            gpu_model.as_mut(),
        );
    }

    #[test]
    fn smollm2_greedy_matches_cpu() {
        greedy_matches_cpu(&common::smollm2());
    }

    #[test]
    fn qwen05_greedy_matches_cpu() {
        greedy_matches_cpu(&common::qwen05());
    }

    /// A sequence's tokens on the GPU do not depend on its batch: five
    /// prompts prefilled and decoded together give each one's solo tokens.
    /// (Attention and the row-wise kernels are batch-invariant by
    /// construction; cuBLAS may pick another GEMM algorithm for another
    /// row count, so logits are compared within bf16 rounding, tokens
    /// exactly.)
    #[test]
    fn gpu_batch_invariance() {
        use r1serve::model::{BatchSeq, ForwardBatch};
        let path = common::smollm2();
        let prompts = common::chat_prompts(&path);
        let src = source::resolve(path.to_str().unwrap(), None).unwrap();
        let (w, cfg) = open_weights(&src).unwrap();
        let mut m = build_on(gpu(), &w, cfg).unwrap();
        let steps = 16;
        let solo: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| greedy_with_logits(m.as_mut(), p, steps).0)
            .collect();
        let bs = 16;
        let per: Vec<usize> = prompts
            .iter()
            .map(|p| (p.len() + steps).div_ceil(bs))
            .collect();
        m.allocate_cache(bs, per.iter().sum(), KvDtype::F16)
            .unwrap();
        let mut next = 0u32;
        let tables: Vec<Vec<BlockId>> = per
            .iter()
            .map(|&n| {
                let t = (next..next + n as u32).map(BlockId).collect();
                next += n as u32;
                t
            })
            .collect();
        let mut ctx: Vec<usize> = vec![0; prompts.len()];
        let mut outs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
        let mut feed: Vec<Vec<u32>> = prompts.clone();
        for _ in 0..steps {
            let mut batch = ForwardBatch {
                tokens: Vec::new(),
                seqs: Vec::new(),
            };
            for (i, f) in feed.iter().enumerate() {
                ctx[i] += f.len();
                batch.tokens.extend_from_slice(f);
                batch.seqs.push(BatchSeq {
                    num_tokens: f.len(),
                    ctx_len: ctx[i],
                    block_table: tables[i].clone(),
                    want_logits: true,
                    all_logits: false,
                    need: RowNeed::Argmax,
                });
            }
            let logits = m.forward(&batch).unwrap();
            for (i, l) in logits.iter().enumerate() {
                let LogitsRow::Argmax(t) = *l else {
                    panic!("an argmax was asked, {l:?} came back")
                };
                outs[i].push(t);
                feed[i] = vec![t];
            }
        }
        assert_eq!(outs, solo, "batched greedy tokens differ from solo ones");
    }
}
