//! The process's allocator, chosen by subcommand.
//!
//! mimalloc serves the control plane and the instances service: under the API server's load
//! glibc's malloc spends a tenth of the CPU on arena contention. But mimalloc keeps a page
//! per size class ready, and a small, long-lived heap pays for that: `berth agent` with 20
//! pods held 5.4 MiB resident in mimalloc's arena for at most 1.0 MB live (a dhat profile,
//! `--features dhat-heap`). So `berth agent` gets the C library's malloc.
//!
//! The choice is made at the first allocation, before `main`, from /proc/self/cmdline read
//! into a stack buffer, so every block is freed by the allocator that made it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use mimalloc::MiMalloc;

pub struct ByRole;

const UNDECIDED: u8 = 0;
const MIMALLOC: u8 = 1;
const SYSTEM: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// Whether this process uses the C library's malloc.
#[inline]
fn system() -> bool {
    match CHOICE.load(Ordering::Relaxed) {
        MIMALLOC => false,
        SYSTEM => true,
        _ => {
            let choice = if invoked_as_agent() { SYSTEM } else { MIMALLOC };
            // Only the main thread runs this early; a second caller would decide the same.
            CHOICE.store(choice, Ordering::Relaxed);
            choice == SYSTEM
        }
    }
}

/// Whether the first argument is `agent`, read without allocating.
fn invoked_as_agent() -> bool {
    let mut buf = [0u8; 256];
    // SAFETY: a NUL-terminated path, a buffer of the length given, and the descriptor closed.
    let n = unsafe {
        let fd = libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return false;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return false;
    }
    let mut args = buf[..n as usize].split(|b| *b == 0);
    args.next();
    args.next() == Some(b"agent".as_slice())
}

// SAFETY: every call goes to one allocator for the life of the process (see `system`), and
// both uphold GlobalAlloc's contract.
unsafe impl GlobalAlloc for ByRole {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if system() {
                System.alloc(layout)
            } else {
                MiMalloc.alloc(layout)
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if system() {
                System.alloc_zeroed(layout)
            } else {
                MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe {
            if system() {
                System.dealloc(ptr, layout)
            } else {
                MiMalloc.dealloc(ptr, layout)
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            if system() {
                System.realloc(ptr, layout, new_size)
            } else {
                MiMalloc.realloc(ptr, layout, new_size)
            }
        }
    }
}
