//! Key files are plaintext JSON read before any password is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_repo::KeyFile;

fuzz_target!(|data: &[u8]| {
    // Readers refuse a stored object over this size before reading it
    // (lifeboat_repo::limits, docs/security.md): larger inputs never reach
    // the decoder.
    if data.len() as u64 > lifeboat_repo::limits::MAX_KEY_FILE_LEN + 1 {
        return;
    }
    if let Ok(kf) = KeyFile::decode("keys/fuzz", data) {
        let p = kf.kdf_params();
        // Unwrapping runs Argon2 with the file's parameters; the decoder
        // accepts only the defaults and up (64 MiB, 3 passes; and, in
        // builds with debug assertions, exactly the test parameters), which
        // is too slow for a fuzzer, so only cheap ones are unwrapped here.
        if p.memory_kib <= 256 && p.iterations <= 2 && p.parallelism <= 2 {
            let _ = kf.unwrap_key(b"password");
        }
        let again =
            KeyFile::decode("keys/fuzz", &kf.encode()).expect("re-encoded key file decodes");
        assert_eq!(again.kdf_params(), p);
    }
});
