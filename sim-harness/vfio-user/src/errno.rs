//! The errno of an error reply (vfio-user: the `error` field of a reply header with the ERROR
//! flag, QEMU docs/interop/vfio-user.rst "Header"), and the result type of a command handler.

use std::io;

/// An errno for an error reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", io::Error::from_raw_os_error(self.0), self.0)
    }
}

pub const EINVAL: Errno = Errno(libc::EINVAL);
pub const ENOSYS: Errno = Errno(libc::ENOSYS);
pub const E2BIG: Errno = Errno(libc::E2BIG);
pub const ENOTTY: Errno = Errno(libc::ENOTTY);
pub const EFBIG: Errno = Errno(libc::EFBIG);
pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
pub const EIO: Errno = Errno(libc::EIO);

/// What a command handler returns: the reply payload, or the errno of an error reply.
pub type Handled = Result<Vec<u8>, Errno>;
