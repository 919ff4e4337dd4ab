//! Storage credentials that cannot do everything, against moto's S3 server
//! with IAM enforced (`MotoServer::start_with_iam`): read-only credentials
//! run every reading command and a backup fails saying why (issue 13), and
//! the append-only bucket policy docs/security.md §11.4 gives lets a host
//! back up and restore while no delete or forget of its gets through
//! (issue 16).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Lifeboat, PASSWORD, assert_fails, assert_ok, describe, restored, write};
use lifeboat_testkit::services::MotoServer;

const BUCKET: &str = "lifeboat-iam";
const PREFIX: &str = "repo";

/// The policy of the user that owns the repository.
fn full_policy() -> String {
    format!(
        r#"{{"Version": "2012-10-17", "Statement": [
  {{"Effect": "Allow", "Action": "s3:*", "Resource": ["arn:aws:s3:::{BUCKET}", "arn:aws:s3:::{BUCKET}/*"]}}]}}"#
    )
}

/// Read-only: list the bucket, get objects.
fn read_only_policy() -> String {
    format!(
        r#"{{"Version": "2012-10-17", "Statement": [
  {{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::{BUCKET}"}},
  {{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::{BUCKET}/{PREFIX}/*"}}]}}"#
    )
}

/// Append-only, as docs/security.md §11.4 gives it: list, read and add
/// objects under the repository's prefix; delete only under `locks/`
/// (lock objects and the open-time probe).
fn append_only_policy() -> String {
    format!(
        r#"{{"Version": "2012-10-17", "Statement": [
  {{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::{BUCKET}"}},
  {{"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": "arn:aws:s3:::{BUCKET}/{PREFIX}/*"}},
  {{"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::{BUCKET}/{PREFIX}/locks/*"}}]}}"#
    )
}

struct Setup {
    moto: MotoServer,
    lb: Lifeboat,
    /// (access key, secret) per user.
    writer: (String, String),
    reader: (String, String),
    appender: (String, String),
}

impl Setup {
    /// A bucket, three users, IAM enforced, and a repository the writer
    /// made with one backup of `src`.
    fn start() -> Option<(Self, PathBuf)> {
        let moto = MotoServer::start_with_iam()?;
        moto.python(&format!("s3.create_bucket(Bucket='{BUCKET}')"));
        let writer = moto.create_user("writer", &full_policy());
        let reader = moto.create_user("reader", &read_only_policy());
        let appender = moto.create_user("appender", &append_only_policy());
        moto.enforce_iam();
        let lb =
            Lifeboat::new().with_repo(PathBuf::from(moto.location_url(BUCKET, PREFIX)), PASSWORD);
        let s = Setup {
            moto,
            lb,
            writer,
            reader,
            appender,
        };
        let src = s.lb.path("src");
        write(src.join("a.txt"), b"alpha\n");
        write(src.join("sub/b.bin"), common::random_bytes(300_000, 7));
        s.ok(&s.writer, &["init"]);
        s.ok(&s.writer, &["backup", src.to_str().unwrap()]);
        Some((s, src))
    }

    /// lifeboat as the user `who`, with a cache directory of its own (so
    /// no probe result or metadata is shared between users).
    fn run(&self, who: &(String, String), args: &[&str]) -> Output {
        self.lb
            .cmd()
            .envs(self.moto.env_as(&who.0, &who.1))
            .env("XDG_CACHE_HOME", self.lb.path(&format!("cache-{}", who.0)))
            .args(args)
            .output()
            .expect("run lifeboat")
    }

    fn ok(&self, who: &(String, String), args: &[&str]) -> Output {
        let out = self.run(who, args);
        assert_ok(&out, args);
        out
    }

    /// boto3 as `who`; true when the call went through.
    fn boto(&self, who: &(String, String), call: &str) -> bool {
        let (ok, out) = self.moto.python_as(&who.0, &who.1, call);
        assert!(
            ok || out.contains("AccessDenied"),
            "{call}: failed other than by a denial: {out}"
        );
        ok
    }

    fn first_pack(&self) -> String {
        let (ok, out) = self.moto.python_as(
            &self.writer.0,
            &self.writer.1,
            &format!(
                "print(s3.list_objects_v2(Bucket='{BUCKET}', Prefix='{PREFIX}/data/')['Contents'][0]['Key'])"
            ),
        );
        assert!(ok, "{out}");
        out.trim().to_string()
    }

    fn snapshot_count(&self) -> usize {
        let out = self.ok(&self.writer, &["snapshots", "--json"]);
        common::parse_json(&out).as_array().unwrap().len()
    }
}

fn restore(s: &Setup, who: &(String, String), src: &Path, name: &str) {
    let target = s.lb.path(name);
    s.ok(
        who,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    common::assert_same_tree(src, &restored(&target, src));
}

#[test]
fn read_only_s3_credentials_read_everything_and_a_backup_says_why_it_fails() {
    let Some((s, src)) = Setup::start() else {
        return;
    };
    // The server enforces it: the reader may read but not write or delete.
    let pack = s.first_pack();
    assert!(s.boto(
        &s.reader,
        &format!("s3.get_object(Bucket='{BUCKET}', Key='{pack}')")
    ));
    assert!(!s.boto(
        &s.reader,
        &format!("s3.put_object(Bucket='{BUCKET}', Key='{PREFIX}/locks/x', Body=b'x')")
    ));
    assert!(!s.boto(
        &s.reader,
        &format!("s3.delete_object(Bucket='{BUCKET}', Key='{pack}')")
    ));

    let out = s.ok(&s.reader, &["snapshots", "--json"]);
    assert_eq!(common::parse_json(&out).as_array().unwrap().len(), 1);
    s.ok(&s.reader, &["ls", "latest"]);
    restore(&s, &s.reader, &src, "restored");
    s.ok(&s.reader, &["check", "--read-data"]);

    write(src.join("new.txt"), b"new\n");
    let out = s.run(&s.reader, &["backup", src.to_str().unwrap()]);
    let err = assert_fails(&out, 12, "backup with read-only credentials");
    assert!(
        err.contains("access denied") && err.contains("read-only"),
        "{}",
        describe(&out)
    );
    assert_eq!(s.snapshot_count(), 1);
}

#[test]
fn append_only_s3_credentials_back_up_and_restore_but_cannot_delete() {
    let Some((s, src)) = Setup::start() else {
        return;
    };
    write(src.join("c.txt"), b"gamma\n");
    s.ok(&s.appender, &["backup", src.to_str().unwrap()]);
    restore(&s, &s.appender, &src, "restored");
    s.ok(&s.appender, &["check"]);
    assert_eq!(s.snapshot_count(), 2);

    // lifeboat itself, with the repository's full password: forgetting
    // deletes a record, which the storage refuses; nothing is lost.
    let out = s.run(&s.appender, &["forget", "--keep-last", "1"]);
    let err = assert_fails(&out, 12, "forget with append-only credentials");
    assert!(err.contains("access denied"), "{}", describe(&out));
    assert_eq!(s.snapshot_count(), 2);

    // A plain S3 client with the same credentials cannot delete a pack, a
    // snapshot record or a key; it can delete under locks/ only.
    let pack = s.first_pack();
    for key in [pack.as_str(), &format!("{PREFIX}/config")] {
        assert!(
            !s.boto(
                &s.appender,
                &format!("s3.delete_object(Bucket='{BUCKET}', Key='{key}')")
            ),
            "deleted {key}"
        );
    }
    assert!(s.boto(
        &s.appender,
        &format!(
            "s3.put_object(Bucket='{BUCKET}', Key='{PREFIX}/locks/mine', Body=b'x')\n\
             s3.delete_object(Bucket='{BUCKET}', Key='{PREFIX}/locks/mine')"
        )
    ));
    s.ok(&s.writer, &["check", "--read-data"]);
    restore(&s, &s.writer, &src, "restored-by-owner");
}
