//! Fuzzes the archive reader: opening (footer, seek table, manifest) and full
//! verification of every frame must return an error, never panic or hang, and
//! never allocate more than the input justifies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = amistore_core::archive::decode::fuzz_open_and_verify(data);
});
