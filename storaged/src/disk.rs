//! The space of the disk holding a directory.

use std::path::Path;

/// Total and free bytes of the file system holding `dir`.
pub fn space(dir: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    #[allow(unsafe_code)]
    // SAFETY: statvfs is plain old data, so all-zero is a valid value; `c`
    // is a NUL-terminated path and `s` a valid statvfs for the call to fill.
    let (rc, s) = unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut s), s)
    };
    if rc != 0 {
        return (0, 0);
    }
    // Both fields are u64 on Linux.
    (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize)
}
