//! Compile-fail tests: every shape contract of the library is a compile error (as is changing a
//! model while `PackedWeights` of it exist), checked against
//! the message in the `.stderr` beside each case. Regenerate with `TRYBUILD=overwrite` and
//! review the diff.

#[test]
fn shape_contracts_fail_to_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/contracts/*.rs");
}

/// Every mistake in a `transformer!` declaration (and a misused `#[derive(Model)]`) is reported
/// at `cargo check`, at the offending token.
#[test]
fn architecture_mistakes_fail_to_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/macro/*.rs");
}
