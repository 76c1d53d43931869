//! For the crates' property tests (`crates/*/tests/fuzz_*.rs`), not the fuzz
//! targets: the case count and the replay of saved inputs.

/// How many cases a property runs: `BERTH_FUZZ_CASES` (`make fuzz` sets it
/// high), else `default` (a few hundred, so `make test` stays fast).
pub fn cases(default: u32) -> u32 {
    std::env::var("BERTH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `check` on every input saved under `fuzz/regressions/TARGET/`
/// (inputs that once failed) and `fuzz/seeds/TARGET/` (the fuzzer's
/// starting corpus). `manifest_dir` is the crate's `CARGO_MANIFEST_DIR`.
pub fn replay(manifest_dir: &str, target: &str, check: fn(&[u8])) {
    let root = std::path::Path::new(manifest_dir).join("../../fuzz");
    let mut inputs = Vec::new();
    for dir in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                inputs.push(path);
            }
        }
    }
    inputs.sort();
    assert!(!inputs.is_empty(), "no saved inputs for {target}");
    for path in inputs {
        let bytes = std::fs::read(&path).unwrap();
        let run = std::panic::catch_unwind(|| check(&bytes));
        assert!(run.is_ok(), "saved input {} fails", path.display());
    }
}
