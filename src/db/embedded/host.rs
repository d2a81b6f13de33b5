//! What the embedded server needs from the host: the PostgreSQL binaries,
//! folders the `postgres` user can reach, a free port, live processes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::{chown, User};

use super::EmbeddedError;
/// `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`, else PATH.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_server(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| has_server(dir))
}

/// The folders above relocated clusters. They must be searchable by the
/// `postgres` user (its cluster lives inside) but need not be listable.
const RELOCATION_PARENTS: [&str; 2] = ["/var/lib/livedesk", "/var/lib/livedesk/clusters"];

/// Where the cluster of an unreachable data folder lives instead: a folder
/// under /var/lib/livedesk named after the configured path. Its parents are
/// made (0711) or opened up to 0711 when they are ours and private; a parent
/// that stays unreachable is named by `check_reachable` afterwards.
pub(super) fn relocated(configured: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    for parent in RELOCATION_PARENTS {
        if let Err(error) = make_searchable(Path::new(parent)) {
            tracing::warn!(folder = parent, %error, "cannot prepare the folder for relocated clusters");
        }
    }
    let digest = Sha256::digest(configured.as_os_str().as_encoded_bytes());
    PathBuf::from(RELOCATION_PARENTS[1]).join(&hex::encode(digest)[..16])
}

/// Make a folder of ours searchable by others (mode 0711: enter, not list),
/// creating it when missing. A symlink, or a folder that is not ours or
/// that others may write in, is left alone (and refused later).
fn make_searchable(dir: &Path) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let folder_error = |source: std::io::Error| EmbeddedError::Folder {
        path: dir.to_path_buf(),
        source,
    };
    if fs::symlink_metadata(dir).is_err() {
        fs::DirBuilder::new()
            .mode(0o711)
            .create(dir)
            .map_err(folder_error)?;
    }
    check_private(dir, None)?;
    let mode = fs::symlink_metadata(dir).map_err(folder_error)?.mode() & 0o7777;
    if mode & 0o011 != 0o011 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o711)).map_err(folder_error)?;
    }
    Ok(())
}

/// The folder as an absolute path, made (0700) when missing.
pub(super) fn absolute(path: &Path) -> Result<PathBuf, EmbeddedError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| EmbeddedError::Folder {
            path: path.to_path_buf(),
            source,
        })?;
    path.canonicalize().map_err(|source| EmbeddedError::Folder {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn give_to(user: &User, dir: &Path) -> Result<(), EmbeddedError> {
    chown(dir, Some(user.uid), Some(user.gid)).map_err(|e| EmbeddedError::Folder {
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
        EmbeddedError::Folder {
            path: dir.to_path_buf(),
            source,
        }
    })
}

/// Ask the `postgres` user itself whether it can enter and write the folder.
pub(super) fn check_reachable(user: &User, dir: &Path) -> Result<(), EmbeddedError> {
    let status = Command::new("/bin/sh")
        .args(["-c", "test -x \"$1\" && test -w \"$1\"", "sh"])
        .arg(dir)
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .stdin(Stdio::null())
        .status()
        .map_err(|e| command_error("sh", e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        let blocked = dir
            .ancestors()
            .skip(1)
            .find(|p| {
                fs::metadata(p)
                    .map(|m| m.permissions().mode() & 0o001 == 0)
                    .unwrap_or(true)
            })
            .map(|p| format!("{} is not searchable by others", p.display()))
            .unwrap_or_else(|| "permission denied".into());
        Err(EmbeddedError::Unreachable {
            path: dir.to_path_buf(),
            reason: blocked,
        })
    }
}

pub(super) fn process_alive(pid: i32) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

pub(super) fn free_port() -> Result<u16, EmbeddedError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| command_error("bind", e.to_string()))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| command_error("bind", e.to_string()))
}

pub(super) fn command_error(program: &str, message: String) -> EmbeddedError {
    EmbeddedError::Command {
        program: program.into(),
        message,
    }
}

/// The cluster's own folders, `pg` and `run` (0700, real folders, never
/// symlinks), handed to the `postgres` user when livedesk runs as root.
pub(super) fn prepare_subfolders(root: &Path, user: Option<&User>) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::DirBuilderExt;
    for dir in [root.join("pg"), root.join("run")] {
        if fs::symlink_metadata(&dir).is_err() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|source| EmbeddedError::Folder {
                    path: dir.clone(),
                    source,
                })?;
        }
        check_private(&dir, user)?;
        if let Some(user) = user {
            give_to(user, &dir)?;
        }
    }
    Ok(())
}

/// Refuse a folder that another user could plant files (or symlinks) in:
/// it must be a real folder, owned by us or by the `postgres` user we run
/// the cluster as, and writable by nobody else. Everything livedesk opens
/// inside it as root is then ours.
pub(super) fn check_private(dir: &Path, run_as: Option<&User>) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::MetadataExt;
    let unsafe_folder = |reason: String| EmbeddedError::UnsafeFolder {
        path: dir.to_path_buf(),
        reason,
    };
    let meta = fs::symlink_metadata(dir).map_err(|source| EmbeddedError::Folder {
        path: dir.to_path_buf(),
        source,
    })?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(unsafe_folder(
            "it is not a folder (a symlink or a file)".into(),
        ));
    }
    let me = nix::unistd::Uid::effective().as_raw();
    if meta.uid() != me && run_as.is_none_or(|user| user.uid.as_raw() != meta.uid()) {
        return Err(unsafe_folder(format!(
            "it belongs to another user (uid {})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_folder(format!(
            "others may write in it (mode {:o}); chmod go-w it, or choose a private folder",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Open (create 0600) a file in a cluster folder for appending or writing,
/// never through a symlink; an existing file is made 0600 too (a log holds
/// colleagues' replies in LD001 details). With `owner`, the open file (not
/// the path) is handed to that user.
pub(super) fn open_private(
    path: &Path,
    append: bool,
    owner: Option<&User>,
) -> Result<fs::File, EmbeddedError> {
    use std::os::unix::fs::OpenOptionsExt;
    let folder_error = |source: std::io::Error| EmbeddedError::Folder {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    let file = options.open(path).map_err(folder_error)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(folder_error)?;
    if let Some(user) = owner {
        std::os::unix::fs::fchown(&file, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .map_err(folder_error)?;
    }
    Ok(file)
}
