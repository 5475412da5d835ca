//! `sol!` reads the contract artifacts at compile time, but cargo does not
//! know: without this, a recompiled artifact leaves stale bindings.
fn main() {
    println!("cargo:rerun-if-changed=artifacts");
}
