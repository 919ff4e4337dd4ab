//! S3 Object Lock end to end, against moto's S3 server (which keeps
//! versions and enforces retention), with an attacker who holds the same
//! credentials and uses a plain S3 client (boto3).
//!
//! "After the lock period" is modelled honestly without waiting a day:
//! the repository is locked in governance mode, and the test (standing in
//! for the clock, not for lifeboat) uses governance bypass to move the
//! retain-until date of the old versions to two seconds ahead, then waits
//! those seconds. lifeboat itself never bypasses anything: it sees
//! versions whose lock has expired, exactly as it would a day later.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::{
    KillOnDrop, Lifeboat, PASSWORD, assert_same_tree, free_port, http_get, restored, write,
};
use lifeboat_testkit::services::MotoServer;

const PREFIX: &str = "repo";

struct Setup {
    moto: MotoServer,
    lb: Lifeboat,
    bucket: &'static str,
}

impl Setup {
    /// A moto server, a bucket (created with object lock and the default
    /// retention `lock` = (mode, days) when given), and a lifeboat
    /// environment pointed at `s3://BUCKET/repo`. The default retention is
    /// set here, by the bucket's creator, because moto only accepts it on
    /// an empty bucket and opening any S3 repository writes (and deletes)
    /// probe objects first; AWS has no such limit, and `init` then finds
    /// the default equal to what it asks for and keeps it.
    fn start(bucket: &'static str, lock: Option<(&str, u32)>) -> Option<Self> {
        Self::start_with(bucket, lock.is_some(), lock)
    }

    /// [`Setup::start`] with object lock `enabled` on the bucket whether or
    /// not a default retention is set.
    fn start_with(bucket: &'static str, enabled: bool, lock: Option<(&str, u32)>) -> Option<Self> {
        let moto = MotoServer::start()?;
        moto.python(&format!(
            "s3.create_bucket(Bucket='{bucket}', ObjectLockEnabledForBucket={})",
            if enabled { "True" } else { "False" }
        ));
        if let Some((mode, days)) = lock {
            moto.python(&format!(
                "s3.put_object_lock_configuration(Bucket='{bucket}', ObjectLockConfiguration={{\
                 'ObjectLockEnabled': 'Enabled', 'Rule': {{'DefaultRetention': \
                 {{'Mode': '{mode}', 'Days': {days}}}}}}})"
            ));
        }
        let lb =
            Lifeboat::new().with_repo(PathBuf::from(moto.location_url(bucket, PREFIX)), PASSWORD);
        Some(Self { moto, lb, bucket })
    }

    fn run(&self, args: &[&str]) -> Output {
        self.lb
            .cmd()
            .envs(self.moto.env())
            .args(args)
            .output()
            .expect("run lifeboat")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lifeboat {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).expect("JSON output")
    }

    /// Every version under the repository prefix as
    /// `[key, version id, is latest, retention mode, retain-until]`.
    /// Asserts that the bucket holds an object of each kind (a path part
    /// such as `/keys/`) and that every version is locked in `mode`.
    fn assert_every_kind_locked(&self, kinds: &[&str], mode: &str) {
        let versions = self.versions();
        for kind in kinds {
            assert!(
                versions
                    .iter()
                    .any(|v| v[0].as_str().unwrap().contains(kind)),
                "no {kind} object in {versions:?}"
            );
        }
        for v in &versions {
            assert_eq!(v[3], mode, "not locked in {mode}: {v:?}");
        }
    }

    fn versions(&self) -> Vec<serde_json::Value> {
        let out = self.moto.python(&format!(
            "out = []\n\
             for v in s3.list_object_versions(Bucket='{b}', Prefix='{PREFIX}/').get('Versions', []):\n\
             \x20   h = s3.head_object(Bucket='{b}', Key=v['Key'], VersionId=v['VersionId'])\n\
             \x20   out.append([v['Key'], v['VersionId'], v['IsLatest'], h.get('ObjectLockMode'), str(h.get('ObjectLockRetainUntilDate'))])\n\
             print(json.dumps(out))",
            b = self.bucket
        ));
        serde_json::from_str(&out).unwrap()
    }

    /// A repository with object lock and one backup of a source made with
    /// `seed`; returns each current version's retain-until date, read a
    /// second before the call returns (so an extension after it moves
    /// every date).
    fn locked_repository_with_a_backup(&self, seed: u8) -> HashMap<String, String> {
        self.ok(&["init", "--object-lock", "1"]);
        let src = source(&self.lb, "src", seed);
        self.ok(&["backup", src.to_str().unwrap()]);
        let until = self
            .versions()
            .iter()
            .map(|v| (version_key(v), v[4].as_str().unwrap().to_string()))
            .collect();
        std::thread::sleep(Duration::from_millis(1100));
        until
    }

    /// A repository with object lock in `mode` (the bucket's default) and
    /// one backup, every kind of object checked locked; then the attacker,
    /// with the same credentials and a plain S3 client, tries to delete
    /// every version for good (all refused), overwrites the packs, snapshot
    /// records and config, adds delete markers over packs, index and keys,
    /// and plants a fake snapshot record. Returns the source and a time
    /// between the backup and the attack.
    fn attacked_repository(&self, mode: &str) -> (PathBuf, String) {
        let init = self.json(&["init", "--object-lock", "1", "--lock-mode", mode]);
        assert_eq!(init["object_lock"]["days"], 1);
        assert_eq!(init["object_lock"]["mode"], mode);
        let src = source(&self.lb, "src", 0);
        self.ok(&["backup", src.to_str().unwrap()]);

        // Every object written (config, key, packs, index, snapshot record,
        // audit records) carries a retention about a day ahead.
        self.assert_every_kind_locked(
            &[
                "/config",
                "/keys/",
                "/data/",
                "/index/",
                "/snapshots/",
                "/audit/",
            ],
            &mode.to_uppercase(),
        );

        std::thread::sleep(Duration::from_millis(1500));
        let before_attack = jiff::Timestamp::now().to_string();
        std::thread::sleep(Duration::from_millis(1500));

        let attack = self.moto.python(&format!(
            "b = '{b}'\n\
             vs = s3.list_object_versions(Bucket=b, Prefix='{PREFIX}/').get('Versions', [])\n\
             refused = 0\n\
             for v in vs:\n\
             \x20   try:\n\
             \x20       s3.delete_object(Bucket=b, Key=v['Key'], VersionId=v['VersionId'])\n\
             \x20   except Exception as e:\n\
             \x20       refused += 1 if 'AccessDenied' in str(e) else 0\n\
             overwritten = deleted = 0\n\
             for v in vs:\n\
             \x20   k = v['Key']\n\
             \x20   if '/snapshots/' in k or '/data/' in k or k.endswith('/config'):\n\
             \x20       s3.put_object(Bucket=b, Key=k, Body=b'encrypted by ransomware')\n\
             \x20       overwritten += 1\n\
             \x20   if '/data/' in k or '/index/' in k or '/keys/' in k:\n\
             \x20       s3.delete_object(Bucket=b, Key=k)\n\
             \x20       deleted += 1\n\
             s3.put_object(Bucket=b, Key='{PREFIX}/snapshots/' + 'f' * 64, Body=b'a fake snapshot')\n\
             print(json.dumps({{'versions': len(vs), 'refused': refused, 'overwritten': overwritten, 'deleted': deleted}}))",
            b = self.bucket
        ));
        let attack: serde_json::Value = serde_json::from_str(&attack).unwrap();
        assert_eq!(
            attack["refused"], attack["versions"],
            "every permanent delete of a locked version is refused: {attack}"
        );
        assert!(attack["overwritten"].as_u64().unwrap() >= 3, "{attack}");
        assert!(attack["deleted"].as_u64().unwrap() >= 3, "{attack}");
        (src, before_attack)
    }

    /// Every current version that existed `before` is locked longer now.
    fn assert_extended_since(&self, before: &HashMap<String, String>) {
        for v in self.versions().into_iter().filter(|v| v[2] == true) {
            let Some(was) = before.get(&version_key(&v)) else {
                continue; // written since: the extension's audit record
            };
            let now = v[4].as_str().unwrap();
            assert!(now > was.as_str(), "{v:?} was locked until {was}");
        }
    }

    fn restore(&self, extra: &[&str], src: &std::path::Path) -> PathBuf {
        let target = self.lb.path(&format!("restore-{}", extra.len()));
        let target_s = target.to_str().unwrap().to_string();
        let mut args = vec!["restore", "latest", "--target", &target_s];
        args.extend_from_slice(extra);
        self.ok(&args);
        restored(&target, src)
    }
}

/// A version of [`Setup::versions`] as "key version-id".
fn version_key(v: &serde_json::Value) -> String {
    format!("{} {}", v[0], v[1])
}

fn source(lb: &Lifeboat, name: &str, seed: u8) -> PathBuf {
    let src = lb.path(name);
    write(src.join("hello.txt"), format!("hello {name}\n").as_bytes());
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect();
    write(src.join("sub/big.bin"), &big);
    src
}

#[test]
fn init_object_lock_refuses_a_bucket_without_object_lock() {
    let Some(s) = Setup::start("plain", None) else {
        return;
    };
    let out = s.run(&["init", "--object-lock", "1"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no object lock"), "{err}");
    assert!(err.contains("--object-lock-enabled-for-bucket"), "{err}");
    // Nothing was written: no config, no key.
    assert!(s.versions().is_empty(), "{:?}", s.versions());
}

/// A bucket with object lock but no default retention: `init` sets the
/// default itself (`PutObjectLockConfiguration`), and everything it and
/// the first backup write is locked in the mode asked for.
///
/// moto accepts a default retention only on a bucket with no object at
/// all (AWS has no such limit), and opening an S3 repository probes it
/// by writing and deleting objects under `locks/`, which on a versioned
/// bucket leaves versions. So a first command fills lifeboat's probe
/// memo (the cache directory), the test removes every version it left,
/// and `init`, finding the memo, writes nothing before it sets the
/// default.
#[test]
fn init_object_lock_sets_the_default_retention_on_a_bucket_without_one() {
    let Some(s) = Setup::start_with("nodefault", true, None) else {
        return;
    };
    let out = s.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(10), "no repository yet: {out:?}");
    s.moto.python(&format!(
        "r = s3.list_object_versions(Bucket='{b}')\n\
         for v in r.get('Versions', []) + r.get('DeleteMarkers', []):\n\
         \x20   s3.delete_object(Bucket='{b}', Key=v['Key'], VersionId=v['VersionId'])",
        b = s.bucket
    ));
    let init = s.json(&["init", "--object-lock", "2", "--lock-mode", "governance"]);
    assert_eq!(init["object_lock"]["days"], 2, "{init}");
    let rule = s.moto.python(&format!(
        "print(json.dumps(s3.get_object_lock_configuration(Bucket='{b}')\
         ['ObjectLockConfiguration']['Rule']['DefaultRetention']))",
        b = s.bucket
    ));
    let rule: serde_json::Value = serde_json::from_str(rule.trim()).unwrap();
    // moto adds `"Years": 0`.
    assert_eq!(rule["Mode"], "GOVERNANCE", "{rule}");
    assert_eq!(rule["Days"], 2, "{rule}");

    let src = source(&s.lb, "src", 5);
    s.ok(&["backup", src.to_str().unwrap()]);
    s.assert_every_kind_locked(
        &["/config", "/keys/", "/data/", "/snapshots/", "/audit/"],
        "GOVERNANCE",
    );
    // A second init (another repository prefix in the same bucket) finds
    // the default equal and keeps it; a different one is refused.
    let other = Lifeboat::new().with_repo(
        PathBuf::from(s.moto.location_url(s.bucket, "other")),
        PASSWORD,
    );
    let out = other
        .cmd()
        .envs(s.moto.env())
        .args(["init", "--object-lock", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already has a default retention of 2 days in governance mode"),
        "{err}"
    );
}

#[test]
fn every_object_is_locked_and_an_attacker_cannot_destroy_a_snapshot() {
    let Some(s) = Setup::start("locked", Some(("COMPLIANCE", 1))) else {
        return;
    };
    let (src, before_attack) = s.attacked_repository("compliance");

    // A plain open sees the attacker's work.
    let plain = s.run(&["snapshots"]);
    assert!(!plain.status.success(), "the plain view is damaged");

    // The point-in-time view reads the locked versions back.
    let snaps = s.json(&["snapshots", "--storage-as-of", &before_attack]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    let back = s.restore(&["--storage-as-of", &before_attack], &src);
    assert_same_tree(&src, &back);
    s.ok(&["check", "--read-data", "--storage-as-of", &before_attack]);
    // The view is read-only.
    let out = s.run(&[
        "backup",
        src.to_str().unwrap(),
        "--storage-as-of",
        &before_attack,
    ]);
    assert!(
        !out.status.success(),
        "writes through the as-of view are refused"
    );
}

/// `lock restore --as-of` after the same attack: every deleted or
/// overwritten object gets its version of that time back on top (a new,
/// locked version), the planted snapshot record is hidden, and then plain
/// commands work again without `--storage-as-of`.
#[test]
fn lock_restore_puts_the_locked_versions_back_after_an_attack() {
    let Some(s) = Setup::start("lockrestore", Some(("GOVERNANCE", 1))) else {
        return;
    };
    let (src, before_attack) = s.attacked_repository("governance");
    assert!(!s.run(&["snapshots"]).status.success(), "damaged");

    let dry = s.json(&["lock", "restore", "--as-of", &before_attack, "--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(
        dry["overwritten"], 2,
        "the snapshot record and config: {dry}"
    );
    assert!(
        dry["undeleted"].as_u64().unwrap() >= 3,
        "packs (overwritten, then deleted), index and key: {dry}"
    );
    assert_eq!(dry["hidden"], 1, "the fake snapshot record: {dry}");
    assert!(
        !s.run(&["snapshots"]).status.success(),
        "a dry run changes nothing"
    );

    let done = s.json(&["lock", "restore", "--as-of", &before_attack]);
    assert_eq!(done["dry_run"], false, "{done}");
    for field in ["overwritten", "undeleted", "hidden", "bytes_copied"] {
        assert_eq!(done[field], dry[field], "{field}: {dry}\n{done}");
    }

    // Plain commands work again: one snapshot (the fake one is hidden), a
    // byte-identical restore, a clean check.
    let snaps = s.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    let back = s.restore(&[], &src);
    assert_same_tree(&src, &back);
    s.ok(&["check", "--read-data"]);

    // The copies are locked like everything else, and `lock extend`
    // moves every current object's retention, the copies' included.
    s.assert_every_kind_locked(&["/config", "/keys/", "/data/", "/index/"], "GOVERNANCE");
    let until: HashMap<String, String> = s
        .versions()
        .iter()
        .filter(|v| v[2] == true)
        .map(|v| (version_key(v), v[4].as_str().unwrap().to_string()))
        .collect();
    std::thread::sleep(Duration::from_millis(1100));
    s.ok(&["lock", "extend"]);
    s.assert_extended_since(&until);

    // The restore is in the audit log, and the log verifies.
    let log = s.json(&["audit", "log", "--op", "lock-restore"]);
    assert_eq!(log.as_array().unwrap().len(), 1, "{log}");
    s.ok(&["audit", "verify"]);

    // Nothing is left to put back.
    let again = s.json(&["lock", "restore", "--as-of", &before_attack, "--dry-run"]);
    for field in ["overwritten", "undeleted", "hidden"] {
        assert_eq!(again[field], 0, "{field}: {again}");
    }
}

#[test]
fn prune_defers_locked_versions_and_reclaims_them_after_the_lock_expires() {
    let Some(s) = Setup::start("lockprune", Some(("GOVERNANCE", 1))) else {
        return;
    };
    s.ok(&["init", "--object-lock", "1"]);
    let first = source(&s.lb, "first", 1);
    let second = source(&s.lb, "second", 2);
    s.ok(&["backup", first.to_str().unwrap()]);
    s.ok(&["backup", second.to_str().unwrap()]);
    let snaps = s.json(&["snapshots"]);
    let old = snaps[0]["short_id"].as_str().unwrap().to_string();
    s.ok(&["forget", &old]);

    // While the old versions are locked, prune deletes the packs (delete
    // markers) but defers the versions behind them.
    let p1 = s.json(&["prune"]);
    assert!(p1["packs_deleted"].as_u64().unwrap() >= 1, "{p1}");
    let lock1 = &p1["object_lock"];
    assert_eq!(lock1["reclaim"]["versions_deleted"], 0, "{p1}");
    let deferred = lock1["reclaim"]["versions_deferred"].as_u64().unwrap();
    assert!(
        deferred >= 2,
        "the forgotten pack and snapshot record: {p1}"
    );
    assert!(lock1["extend"]["objects"].as_u64().unwrap() >= 4, "{p1}");

    // The lock period passes for the old versions (see the module doc).
    s.moto.python(&format!(
        "b = '{b}'\n\
         soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)\n\
         for v in s3.list_object_versions(Bucket=b, Prefix='{PREFIX}/').get('Versions', []):\n\
         \x20   if not v['IsLatest']:\n\
         \x20       s3.put_object_retention(Bucket=b, Key=v['Key'], VersionId=v['VersionId'],\n\
         \x20           Retention={{'Mode': 'GOVERNANCE', 'RetainUntilDate': soon}}, BypassGovernanceRetention=True)",
        b = s.bucket
    ));
    std::thread::sleep(Duration::from_secs(3));

    let p2 = s.json(&["prune"]);
    let lock2 = &p2["object_lock"]["reclaim"];
    assert!(
        lock2["versions_deleted"].as_u64().unwrap() >= deferred,
        "every version deferred before is reclaimed now: {p2}"
    );
    assert_eq!(lock2["versions_deferred"], 0, "{p2}");
    assert!(
        lock2["bytes_deleted"].as_u64().unwrap()
            >= lock1["reclaim"]["bytes_deferred"].as_u64().unwrap(),
        "{p1}\n{p2}"
    );
    // What is left is current (live) data only, all still locked; lock
    // files (this prune's own, released after its reclaim step) and the
    // storage probe's leftovers wait for a later prune.
    let left: Vec<_> = s
        .versions()
        .into_iter()
        .filter(|v| !v[0].as_str().unwrap().contains("/locks/"))
        .collect();
    assert!(left.iter().all(|v| v[2] == true), "{left:?}");
    assert!(left.iter().all(|v| v[3] == "GOVERNANCE"), "{left:?}");
    let back = s.restore(&[], &second);
    assert_same_tree(&second, &back);
}

#[test]
fn lock_extend_moves_every_current_objects_retention_forward() {
    let Some(s) = Setup::start("lockextend", Some(("GOVERNANCE", 1))) else {
        return;
    };
    let until_before = s.locked_repository_with_a_backup(3);
    let e = s.json(&["lock", "extend"]);
    assert!(e["objects"].as_u64().unwrap() >= 5, "{e}");
    assert_eq!(
        e["extended"].as_u64().unwrap() + e["already_locked"].as_u64().unwrap(),
        e["objects"].as_u64().unwrap(),
        "{e}"
    );
    assert!(e["extended"].as_u64().unwrap() >= 5, "{e}");
    s.assert_extended_since(&until_before);
}

/// The daemon extends the retention of every current object of an
/// object-lock repository on its own schedule (at start, then a third of
/// the lock period later), shows it in /metrics, and alerts when it
/// cannot (a repository whose bucket is gone).
#[test]
fn the_daemon_extends_object_lock_retention_and_alerts_when_it_cannot() {
    let Some(s) = Setup::start("lockdaemon", Some(("GOVERNANCE", 1))) else {
        return;
    };
    let until_before = s.locked_repository_with_a_backup(4);

    let sink = lifeboat_testkit::sinks::HttpSink::start();
    write(s.lb.path("pw"), PASSWORD.as_bytes());
    let port = free_port();
    let config = s.lb.path("lifeboat.toml");
    write(
        &config,
        format!(
            r#"state-dir = "{state}"
[repository.locked]
location = "{locked}"
password-file = "{pw}"
[repository.gone]
location = "{gone}"
password-file = "{pw}"
[alert.ops]
webhook = "{hook}"
[daemon]
listen = "127.0.0.1:{port}"
time-zone = "UTC"
"#,
            state = s.lb.path("state").display(),
            locked = s.moto.location_url(s.bucket, PREFIX),
            gone = s.moto.location_url("no-such-bucket", PREFIX),
            pw = s.lb.path("pw").display(),
            hook = sink.url(),
        )
        .as_bytes(),
    );
    let _daemon = KillOnDrop(
        s.lb.std_bare_cmd()
            .envs(s.moto.env())
            .arg("--config")
            .arg(&config)
            .arg("daemon")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut text = String::new();
    lifeboat_testkit::wait::wait_until(
        Duration::from_secs(120),
        "the daemon's first lock extensions in /metrics",
        || {
            text = http_get(port, "/metrics")
                .map(|(_, body)| body)
                .unwrap_or_default();
            text.contains(
                "lifeboat_lock_extend_last_success_timestamp_seconds{repository=\"locked\"}",
            ) && text.contains("lifeboat_lock_extend_failing{repository=\"gone\"} 1")
        },
    );
    assert!(
        text.contains("lifeboat_lock_extend_failing{repository=\"locked\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("lifeboat_lock_extend_until_timestamp_seconds{repository=\"locked\"}"),
        "{text}"
    );
    // Every object that was current before is locked longer now.
    s.assert_extended_since(&until_before);
    // The extension is in the audit log.
    let log = s.ok(&["audit", "log", "--op", "lock-extend"]);
    assert!(log.contains("lock-extend"), "{log}");
    // The failure alerted, naming the repository.
    let alerts = sink.wait_for(1);
    assert!(
        alerts
            .iter()
            .any(|r| r.body.contains("lock-extend-failed")
                && r.body.contains("\"repository\":\"gone\"")),
        "{alerts:?}"
    );
}
