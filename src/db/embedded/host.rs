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

/// Where the cluster of an unreachable data folder lives instead: a folder
/// under /var/lib/livedesk named after the configured path.
pub(super) fn relocated(configured: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(configured.as_os_str().as_encoded_bytes());
    PathBuf::from("/var/lib/livedesk/clusters").join(&hex::encode(digest)[..16])
}

pub(super) fn absolute(path: &Path) -> Result<PathBuf, EmbeddedError> {
    fs::create_dir_all(path).map_err(|source| EmbeddedError::Folder {
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

/// The cluster's own folders, `pg` and `run`, handed to the `postgres` user
/// when livedesk runs as root.
pub(super) fn prepare_subfolders(root: &Path, user: Option<&User>) -> Result<(), EmbeddedError> {
    for dir in [root.join("pg"), root.join("run")] {
        fs::create_dir_all(&dir).map_err(|source| EmbeddedError::Folder {
            path: dir.clone(),
            source,
        })?;
        if let Some(user) = user {
            give_to(user, &dir)?;
        }
    }
    Ok(())
}
