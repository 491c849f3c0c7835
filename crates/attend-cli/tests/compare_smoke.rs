//! The attend side of the peer comparison harness, `bench/compare.py --quick`, as a
//! smoke run: every attention and decode case runs through the built binary and
//! lands in the Markdown table with a number. No peers run; no timing is checked.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

/// Returns the table rows between the compare markers: the cells of each line that
/// starts with `|`, after the header and its rule.
fn table_rows(markdown: &str) -> Vec<Vec<String>> {
    let begin = markdown
        .find("<!-- compare:begin -->")
        .expect("the begin marker is written");
    let end = markdown
        .find("<!-- compare:end -->")
        .expect("the end marker is written");
    assert!(begin < end, "the begin marker comes before the end marker");
    markdown[begin..end]
        .lines()
        .filter(|line| line.starts_with('|'))
        .skip(2)
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn quick_run_fills_attend_cells() {
    let root = repo_root();
    let dir = std::env::temp_dir().join(format!("attend-compare-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the temporary folder can be made");
    let out = dir.join("BENCHMARKS.md");
    std::fs::write(&out, "# Benchmarks\n\nText before the table stays.\n")
        .expect("the output file can be written");

    let output = Command::new("python3")
        .arg(root.join("bench/compare.py"))
        .args(["--quick", "--attend", env!("CARGO_BIN_EXE_attend")])
        .args(["--groups", "attention,decode", "--out"])
        .arg(&out)
        .output()
        .expect("python3 runs (it is needed by bench/compare.py)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench/compare.py --quick failed: {stderr}"
    );

    let markdown = std::fs::read_to_string(&out).expect("the table file is readable");
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        markdown.starts_with("# Benchmarks\n\nText before the table stays.\n"),
        "the text outside the markers is kept:\n{markdown}"
    );
    assert!(
        markdown.contains("f32 GEMM") && markdown.contains("GB/s"),
        "the machine limits are written:\n{markdown}"
    );

    let rows = table_rows(&markdown);
    let cases: Vec<&str> = rows.iter().map(|row| row[1].as_str()).collect();
    assert_eq!(
        cases,
        [
            "causal f32 h8 d64 N=512",
            "window 512 f32 h8 d64 N=4096",
            "GQA 32/8 d128 L=1024 f32",
        ],
        "one row per quick case:\n{markdown}"
    );
    for row in &rows {
        let (value, unit) = row[2]
            .split_once(' ')
            .unwrap_or_else(|| panic!("the attend cell {:?} is a value and a unit", row[2]));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("the attend cell {:?} starts with a number", row[2]));
        assert!(
            value.is_finite() && value > 0.0,
            "{}: attend took {value} {unit}",
            row[1]
        );
        assert_eq!(unit, "ms", "{}: attention and decode report ms", row[1]);
        let fraction: f64 = row[3]
            .split(' ')
            .next()
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("{}: the limit cell {:?} is a number", row[1], row[3]));
        assert!(fraction > 0.0, "{}: fraction {fraction}", row[1]);
        assert_eq!(
            row[5], "not run",
            "{}: no peer runs without --peer-python",
            row[1]
        );
    }
}
