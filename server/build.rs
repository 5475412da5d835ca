//! Compiles the study API's `.proto` files with protox (a Rust protobuf
//! compiler), so that building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["cohort/v1/cohort.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The web page's JSON is these same messages.
        .type_attribute(".cohort.v1", "#[derive(serde::Serialize)]")
        .compile_fds(files)?;
    Ok(())
}
