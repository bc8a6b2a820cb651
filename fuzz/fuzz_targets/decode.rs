#![no_main]
// The body, its properties and its corpus replay live in crates/fuzzing.
libfuzzer_sys::fuzz_target!(|data: &[u8]| capmesh_fuzzing::decode(data));
