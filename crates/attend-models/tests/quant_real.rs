//! Dequantisation and products on the real model files, against values the
//! `gguf` Python package computed (scripts/reference/quant_dequant.py).
//!
//! The models come from `scripts/fetch-models.sh`; these tests fail when the
//! files are missing.

mod quant_support;

use attend_models::quant::{dequantize, matmul, QuantMatrix};
use attend_models::GgmlType;
use memmap2::Mmap;
use quant_support::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Deserialize;
use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;

#[derive(Deserialize)]
struct RowEntry {
    file: String,
    name: String,
    #[serde(rename = "type")]
    type_name: String,
    row: usize,
    cols: usize,
    offset: usize,
    row_bytes: usize,
}

#[derive(Deserialize)]
struct TensorEntry {
    file: String,
    name: String,
    #[serde(rename = "type")]
    type_name: String,
    rows: usize,
    cols: usize,
    offset: usize,
    sum: f64,
    sum_squares: f64,
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn models_dir() -> PathBuf {
    match std::env::var_os("ATTEND_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
            .join(".cache/attend/models"),
    }
}

/// Maps a model file, failing with the fix when it is missing.
fn map_model(file: &str) -> Mmap {
    let path = models_dir().join(file);
    let handle = File::open(&path).unwrap_or_else(|e| {
        panic!(
            "cannot open {}: {e}; run scripts/fetch-models.sh",
            path.display()
        )
    });
    // SAFETY: the test only reads the file, and nothing else writes the
    // model cache while tests run.
    unsafe { Mmap::map(&handle) }.unwrap()
}

fn type_from_name(name: &str) -> GgmlType {
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name}"))
}

fn load_models() -> HashMap<String, Mmap> {
    [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma-3-270m-q4_k_m.gguf",
    ]
    .into_iter()
    .map(|f| (f.to_string(), map_model(f)))
    .collect()
}

/// Rows dequantise bit for bit as the `gguf` package does: both compute
/// `f16 -> f32` exactly and then the same f32 operations in the same order
/// (for example `(d * sc) * q - dmin * m` for Q4_K), so the tolerance is zero.
#[test]
fn rows_match_gguf_package_exactly() {
    let models = load_models();
    let entries: Vec<RowEntry> =
        serde_json::from_str(&std::fs::read_to_string(fixture("quant_rows.json")).unwrap())
            .unwrap();
    let values_bytes = std::fs::read(fixture("quant_rows.bin")).unwrap();
    let expected_all: Vec<f32> = values_bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();

    let mut types_seen = std::collections::BTreeSet::new();
    let mut at = 0;
    for entry in &entries {
        let ty = type_from_name(&entry.type_name);
        types_seen.insert(entry.type_name.clone());
        let bytes = &models[&entry.file][entry.offset..entry.offset + entry.row_bytes];
        let mut got = vec![f32::NAN; entry.cols];
        dequantize(ty, bytes, &mut got).unwrap();
        let expected = &expected_all[at..at + entry.cols];
        at += entry.cols;
        for (c, (g, e)) in got.iter().zip(expected).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{} {} row {} col {c}: got {g}, gguf package {e}",
                entry.file,
                entry.name,
                entry.row
            );
        }
    }
    assert_eq!(at, expected_all.len(), "fixture values left over");
    let expected_types: std::collections::BTreeSet<String> =
        ["F32", "Q4_1", "Q4_K", "Q5_0", "Q6_K", "Q8_0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(types_seen, expected_types);
}

/// Every tensor of both files, dequantised whole: the f64 sum and sum of
/// squares match the `gguf` package's. The values agree bit for bit (see
/// above), so only the summation order differs: numpy sums pairwise, this
/// test sequentially, which bounds the difference by `n * eps_f64 * sum|v|`.
#[test]
fn whole_files_match_gguf_package_sums() {
    let models = load_models();
    let entries: Vec<TensorEntry> =
        serde_json::from_str(&std::fs::read_to_string(fixture("quant_tensors.json")).unwrap())
            .unwrap();
    assert!(
        entries.len() > 400,
        "fixture lists {} tensors",
        entries.len()
    );
    let mut row = Vec::new();
    for entry in &entries {
        let ty = type_from_name(&entry.type_name);
        let row_bytes = ty.bytes_for(entry.cols).unwrap();
        let data = &models[&entry.file][entry.offset..entry.offset + entry.rows * row_bytes];
        let (mut sum, mut sum_squares, mut sum_abs) = (0.0f64, 0.0f64, 0.0f64);
        row.resize(entry.cols, 0.0f32);
        for bytes in data.chunks_exact(row_bytes) {
            dequantize(ty, bytes, &mut row).unwrap();
            for &v in &row {
                let v = v as f64;
                sum += v;
                sum_squares += v * v;
                sum_abs += v.abs();
            }
        }
        let n = (entry.rows * entry.cols) as f64;
        let tolerance = n * f64::EPSILON * sum_abs;
        assert!(
            (sum - entry.sum).abs() <= tolerance,
            "{} {}: sum {sum}, gguf package {}",
            entry.file,
            entry.name,
            entry.sum
        );
        let tolerance = n * f64::EPSILON * sum_squares;
        assert!(
            (sum_squares - entry.sum_squares).abs() <= tolerance,
            "{} {}: sum of squares {sum_squares}, gguf package {}",
            entry.file,
            entry.name,
            entry.sum_squares
        );
    }
}

/// Products with real weights of every quantized type in the files against
/// the dequantise-then-f64 product, with the bounds of `quant_support`.
#[test]
fn real_tensors_product_within_bounds() {
    let models = load_models();
    let entries: Vec<TensorEntry> =
        serde_json::from_str(&std::fs::read_to_string(fixture("quant_tensors.json")).unwrap())
            .unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    for type_name in ["Q4_1", "Q8_0", "Q5_0", "Q4_K", "Q6_K"] {
        let entry = entries
            .iter()
            .find(|e| e.type_name == type_name && e.rows > 1 && e.rows <= 4096)
            .unwrap_or_else(|| panic!("no {type_name} matrix in the fixture"));
        let ty = type_from_name(type_name);
        let (rows, cols, tokens) = (entry.rows, entry.cols, 3);
        let bytes =
            &models[&entry.file][entry.offset..entry.offset + rows * ty.bytes_for(cols).unwrap()];
        let w = QuantMatrix::new(ty, bytes, rows, cols).unwrap();
        let x = random_activations(tokens, cols, &mut rng);
        let mut out = vec![f32::NAN; tokens * rows];
        matmul(&w, &x, tokens, &mut out).unwrap();

        let w_f32 = dequantize_all(ty, bytes, rows, cols);
        let magnitudes = term_magnitudes(ty, bytes, rows, cols);
        let x_hat = quantized_activations(&x, tokens, cols, ty);
        let against_x_hat = reference_product(&w_f32, &x_hat, rows, cols, tokens);
        let exact = reference_product(&w_f32, &x, rows, cols, tokens);
        for t in 0..tokens {
            for r in 0..rows {
                let got = out[t * rows + r] as f64;
                let rounding = rounding_bound(&magnitudes, &x_hat, r, t, cols);
                let err = (got - against_x_hat[t * rows + r]).abs();
                assert!(
                    err <= rounding,
                    "{} out[{t}, {r}]: {got} vs {}, bound {rounding:e}",
                    entry.name,
                    against_x_hat[t * rows + r]
                );
                let bound = activation_bound(&w_f32, &x, r, t, cols, ty.block_elems()) + rounding;
                let err = (got - exact[t * rows + r]).abs();
                assert!(
                    err <= bound,
                    "{} out[{t}, {r}]: {got} vs exact {}, bound {bound:e}",
                    entry.name,
                    exact[t * rows + r]
                );
            }
        }
    }
}
