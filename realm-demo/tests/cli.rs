//! `realm-demo --help` says what the demo is and that it is INSECURE.
//!
//! Having an integration test also makes `cargo test --workspace` build the
//! demo binary, so CI runs the demo on the binaries the tests built instead
//! of compiling them again with another feature set.

use std::process::Command;

#[test]
fn help_names_the_insecure_platform_and_the_json_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_realm-demo"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("INSECURE emulated CCA platform"), "{text}");
    assert!(text.contains("--json"), "{text}");
}
