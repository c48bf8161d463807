//! Fuzzes the EC2 Query parser the way every action consumes it: any bytes
//! must give parameters or a clean error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    amistore_api::query::fuzz_parse_and_consume(data);
});
