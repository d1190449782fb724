//! With the `cuda` feature, compiles each `src/kernels/cuda/*.cu` into a
//! fatbin (sm_80 and sm_90 machine code, plus sm_90 PTX for later chips)
//! that the binary embeds and loads with the driver API at run time: no CUDA
//! library is linked, so the binary starts where none is installed. Without
//! the feature this does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return p.into();
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            let p = Path::new(&home).join("bin/nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    "nvcc".into()
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = Path::new("src/kernels/cuda");
    // Cargo rescans a directory named here: any kernel or header change.
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("src/kernels/cuda exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    let nvcc = nvcc();
    for src in &sources {
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name");
        let target = out.join(format!("{stem}.fatbin"));
        let status = Command::new(&nvcc)
            .args(["--fatbin", "-O3", "-std=c++17", "-lineinfo"])
            .args(["-gencode", "arch=compute_80,code=sm_80"])
            .args(["-gencode", "arch=compute_90,code=sm_90"])
            .args(["-gencode", "arch=compute_90,code=compute_90"])
            .arg("-I")
            .arg(dir)
            .arg("-o")
            .arg(&target)
            .arg(src)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "the `cuda` feature needs nvcc ({}: {e}); set NVCC or CUDA_HOME, \
                     or `eval \"$(bash .ci/cuda-toolchain.sh)\"`",
                    nvcc.display()
                )
            });
        assert!(status.success(), "nvcc failed on {}", src.display());
    }
}
