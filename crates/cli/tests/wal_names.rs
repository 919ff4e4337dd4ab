//! `pg wal-fetch FILE` joins FILE into a spool path and a storage key, so a
//! name that is not a WAL, timeline history or backup history file name is
//! refused (exit 2) before anything is read or written. No server needed.

mod common;

use std::fs;

use common::*;

#[test]
fn wal_fetch_refuses_names_that_are_not_wal_file_names() {
    let lb = Lifeboat::init();
    let data = lb.path("data");
    fs::create_dir_all(data.join("pg_wal")).unwrap();
    for name in [
        "../../etc/passwd",
        "../000000010000000000000001",
        "000000010000000000000001/../x",
        "a/b",
        "..",
        "",
        "RECOVERYXLOG",
        "00000001000000000000000g",
        "000000010000000000000001\u{e9}",
    ] {
        let args = ["pg", "wal-fetch", name, "pg_wal/RECOVERYXLOG"];
        let out = lb.std_cmd().current_dir(&data).args(args).output().unwrap();
        let err = assert_fails(&out, 2, args);
        assert!(err.contains("not a WAL"), "{err}");
        assert!(!data.join("pg_wal/RECOVERYXLOG").exists());
    }
}
