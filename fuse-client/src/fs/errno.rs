//! The errno the kernel gets. [`ClientError::errno`] is the one mapping of
//! client errors to POSIX; this module turns it into fuser's type and logs
//! why an EIO happened, since EIO says nothing by itself.

use fuser::Errno;

use crate::client::ClientError;

/// The kernel's errno for a failed client call.
pub fn errno(e: ClientError) -> Errno {
    let code = e.errno();
    if code == libc::EIO {
        tracing::warn!(error = %e, "answering EIO");
    }
    Errno::from_i32(code)
}

/// The kernel's errno for a POSIX error code.
pub fn err(code: i32) -> Errno {
    Errno::from_i32(code)
}
