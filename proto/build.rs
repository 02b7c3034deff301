//! Generates the tonic/prost code from `quizfs.proto`, with the protoc that
//! `protoc-bin-vendored` ships, so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    // A chunk's pieces are `Bytes`: a sender slices one buffer for every
    // node without copying it, and a receiver decodes them without copying
    // them out of the receive buffer.
    tonic_build::configure()
        .bytes([".quizfs.v1.PutPiece.data"])
        .compile_protos(&["quizfs.proto"], &["."])?;
    println!("cargo:rerun-if-changed=quizfs.proto");
    Ok(())
}
