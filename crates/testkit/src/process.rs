//! Child processes that cannot outlive their owner.

use std::{
    os::unix::{fs::MetadataExt, process::CommandExt},
    process::{Child, Command},
};

/// The unprivileged account servers run as when the tests run as root (PostgreSQL refuses
/// to start as root): `nobody`/`nogroup` on Debian.
pub const UNPRIVILEGED: (u32, u32) = (65534, 65534);

pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Spawns `command` so that the kernel kills it when the spawning thread's process dies,
/// even by SIGKILL, and puts it in its own process group.
pub fn spawn_owned(command: &mut Command) -> std::io::Result<Child> {
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, _exit) as `pre_exec` requires.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() == 1 {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    command.process_group(0).spawn()
}

/// SIGKILL and reap; used by `Drop`, where nothing can be awaited.
pub fn kill_now(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILL to the whole process group of `child` (spawned by [`spawn_owned`], so its leader),
/// then reaped: a child with children of its own (a worker pool, a VM and its helpers).
pub fn kill_group_now(child: &mut Child) {
    // SAFETY: kill(2) signals only the process group this process created for `child`.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

/// A child process killed and reaped when this is dropped, so a failed assertion leaves no
/// process behind.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_now(&mut self.0);
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// SIGTERM (or SIGINT) and wait up to `grace`, then SIGKILL. The exit status if the process
/// exited by itself within `grace`.
pub fn stop_gracefully(
    child: &mut Child,
    signal: i32,
    grace: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a pid we own and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    kill_now(child);
    None
}

/// Makes `path` (a directory tree) owned by `uid:gid`.
pub fn chown_tree(path: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}
