//! The embedded default's folders as an attacker on the same host would try
//! them (contract §5a, issue "hardened embedded folders"): a folder others
//! can write to, or that belongs to someone else, is refused before anything
//! is written; a symlink planted where the log goes is not followed (and the
//! file it points to keeps its owner); the log is private (0600).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use livedesk::db::embedded::{EmbeddedError, EmbeddedOptions, EmbeddedPostgres};

fn temp(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

fn start(dir: &std::path::Path) -> Result<EmbeddedPostgres, EmbeddedError> {
    let mut options = EmbeddedOptions::new(dir);
    options.unsafe_fast = true;
    EmbeddedPostgres::start(options)
}

#[test]
fn a_folder_others_can_write_is_refused() {
    let dir = temp("livedesk-shared-");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let error = start(dir.path()).unwrap_err();
    assert!(
        matches!(error, EmbeddedError::UnsafeFolder { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("others may write"), "{error}");
    assert!(
        !error.to_string().contains("/tmp)"),
        "no suggestion of /tmp: {error}"
    );
    assert!(
        fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was written"
    );
}

#[test]
fn a_folder_of_another_user_is_refused() {
    if !nix::unistd::Uid::effective().is_root() {
        return; // only root can give a folder away
    }
    let dir = temp("livedesk-foreign-");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    nix::unistd::chown(dir.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    let error = start(dir.path()).unwrap_err();
    assert!(
        error.to_string().contains("belongs to another user"),
        "{error}"
    );
}

#[test]
fn a_planted_log_symlink_is_not_followed_and_the_log_is_private() {
    let dir = temp("livedesk-planted-");
    // A first start makes the cluster; its log is 0600.
    let mut pg = start(dir.path()).unwrap();
    let log = dir.path().join("postgres.log");
    assert_eq!(fs::metadata(&log).unwrap().mode() & 0o777, 0o600);
    pg.stop();
    drop(pg);
    // Someone replaces the log with a symlink to a file of theirs (a
    // system file, in the attack).
    let victim = dir.path().join("victim");
    fs::write(&victim, "secret").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    let before = fs::metadata(&victim).unwrap();
    fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let error = start(dir.path()).unwrap_err();
    assert!(error.to_string().contains("postgres.log"), "{error}");
    let after = fs::metadata(&victim).unwrap();
    assert_eq!((after.uid(), after.mode()), (before.uid(), before.mode()));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "secret");
}
