#ifndef CWARPSYS_H
#define CWARPSYS_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <zlib.h>
#include <sys/xattr.h>
#include <linux/falloc.h>
#include <dirent.h>

/* The name of an entry readdir(3) returned, read in place. An entry is
   only d_reclen bytes long, not sizeof(struct dirent): copying the whole
   struct (as `e.pointee.d_name` by value does in Swift) can read past the
   end of the stream's buffer and fault on the last entry of a page. */
static inline const char *wd_dirent_name(const struct dirent *e) { return e->d_name; }

/* GNU constants the Swift importer does not see without _GNU_SOURCE. */
enum {
    WD_O_PATH = 010000000,
    WD_AT_EMPTY_PATH = 0x1000,
    WD_SEEK_DATA = 3,
    WD_SEEK_HOLE = 4,
    WD_UTIME_NOW = 1073741823,
    WD_UTIME_OMIT = 1073741822
};

/* fallocate(2). Returns 0 or -1 with errno. */
int wd_fallocate(int fd, int mode, int64_t offset, int64_t length);
/* syncfs(2): commits the file system holding fd. */
int wd_syncfs(int fd);

/* sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE): starts
   write-back of the range's dirty pages without waiting for it. Returns 0
   or -1 with errno. */
int wd_start_writeback(int fd, int64_t offset, int64_t length);

/* The largest size a file of the file system holding directory `dirfd` may
   have (s_maxbytes, or RLIMIT_FSIZE when lower): found by ftruncate on an
   unnamed O_TMPFILE there, which allocates nothing. Returns the size or
   -errno (e.g. -EOPNOTSUPP where O_TMPFILE is not supported, -EROFS). */
int64_t wd_probe_max_file_size(int dirfd);

/* Clears capability `cap` from the calling thread's effective set (threads
   created afterwards inherit it). Returns 0 or -errno. */
int wd_drop_effective_capability(int cap);
/* 1 if `cap` is in the calling thread's effective set, 0 if not, -errno. */
int wd_has_effective_capability(int cap);

/* Atomics on memory Swift does not own as a value (shared ring memory). */
uint32_t wd_load_acquire_u32(const uint32_t *p);
void wd_store_release_u32(uint32_t *p, uint32_t v);
uint64_t wd_load_acquire_u64(const uint64_t *p);
void wd_store_release_u64(uint64_t *p, uint64_t v);
uint32_t wd_fetch_add_u32(uint32_t *p, uint32_t v);
void wd_fence_seq_cst(void);
void wd_cpu_relax(void);

/* Futex on a 32-bit word (shared, so it works across processes on a memfd).
   wait: returns 0 when woken or the value differed, ETIMEDOUT on time-out,
   EINTR when interrupted. timeout_ns < 0 waits for ever. */
int wd_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns);
int wd_futex_wake(uint32_t *addr, int count);

/* memfd_create with MFD_CLOEXEC | MFD_ALLOW_SEALING. Returns fd or -1. */
int wd_memfd_create(const char *name);
/* Seal a memfd against shrinking and growing. Returns 0 or -1. */
int wd_memfd_seal_size(int fd);
/* eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK). */
int wd_eventfd(void);
/* Adds 1 to an eventfd; returns 0 or -errno. */
int wd_eventfd_signal(int fd);
/* Reads and resets an eventfd counter; returns the count, 0 if none. */
uint64_t wd_eventfd_drain(int fd);
/* poll() one fd for POLLIN; returns 1 ready, 0 time-out, -errno. */
int wd_poll_in(int fd, int timeout_ms);

/* Cross-address-space copies (the IOMMU emulation). Return bytes copied or
   -errno (EFAULT for an unmapped address, ESRCH for a gone process). */
ssize_t wd_vm_read(pid_t pid, void *local, const void *remote, size_t len);
ssize_t wd_vm_write(pid_t pid, const void *remote_dst, const void *local, size_t len);

/* Monotonic clock in nanoseconds; thread CPU time in nanoseconds. */
uint64_t wd_now_ns(void);
uint64_t wd_thread_cpu_ns(void);
uint64_t wd_process_cpu_ns(void);
/* gettid(). */
pid_t wd_gettid(void);

/* renameat2(2) (RENAME_NOREPLACE = 1, RENAME_EXCHANGE = 2). */
int wd_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned flags);

/* File handles of the backing file system (name_to_handle_at(2),
   open_by_handle_at(2)); handle bytes are at most WD_HANDLE_MAX. */
enum { WD_HANDLE_MAX = 128 };
/* The handle of the object open as fd (an O_PATH descriptor will do):
   stores its type and up to *len bytes, sets *len. 0 or -errno
   (-EOVERFLOW: longer than *len; -EOPNOTSUPP: the file system has none). */
int wd_handle_of(int fd, int *type, unsigned char *bytes, unsigned *len);
/* open_by_handle_at(mount_fd, handle, flags): mount_fd is any descriptor
   on the file system that is not O_PATH. Needs CAP_DAC_READ_SEARCH.
   Returns a descriptor or -errno (-ESTALE: no such object). */
int wd_open_handle(int mount_fd, int type, const unsigned char *bytes, unsigned len, int flags);

/* CRC-32C (Castagnoli), the format's checksum: the SSE4.2 instruction when
   the CPU has it (about 10x zlib's CRC-32 here), a table otherwise.
   Pass 0 as the initial crc; chains like zlib's crc32(). */
uint32_t wd_crc32c(uint32_t crc, const void *data, size_t length);
/* The table implementation alone (for tests of the instruction path). */
uint32_t wd_crc32c_table(uint32_t crc, const void *data, size_t length);

/* zlib's macro entry points as functions. */
int wd_deflate_init2(z_stream *strm, int level, int window_bits, int mem_level, int strategy);
int wd_inflate_init2(z_stream *strm, int window_bits);

/* Unix SOCK_SEQPACKET sockets for warpdrived (CMSG and ucred are macros and
   GNU structs Swift does not see). All fds are close-on-exec.
   listen/connect/accept return an fd or -errno. */
int wd_seqpacket_listen(const char *path, int backlog);
int wd_seqpacket_connect(const char *path);
int wd_accept(int fd);
/* Sends one message with up to 8 fds (SCM_RIGHTS), MSG_NOSIGNAL.
   Returns bytes sent or -errno. */
ssize_t wd_send_message(int sock, const void *buf, size_t len, const int *fds, int nfds);
/* Receives one message and up to maxfds fds (stored in fds, count in *nfds;
   extra fds are closed). Returns bytes, 0 at end of stream, or -errno. */
ssize_t wd_recv_message(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds);
/* SO_PEERCRED of a connected Unix socket. Returns 0 or -errno. */
int wd_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid);
/* prctl(PR_SET_PTRACER, pid): lets pid (or any process, pid = -1) use
   process_vm_readv/writev on us under Yama ptrace_scope 1. 0 or -errno. */
int wd_allow_ptracer(pid_t pid);
/* 1 when the peer of a connected socket has gone (POLLHUP/POLLRDHUP/POLLERR), else 0. */
int wd_peer_gone(int sock);

/* warpdrived's socket: like wd_seqpacket_listen, but the socket file is
   created with mode 0600 (bound under umask 0177, so no other user can
   connect in between), then given group `gid` (unless (gid_t)-1) and
   finally `mode`. Returns fd or -errno. Changes the process umask briefly:
   call it before starting threads that create files. */
int wd_seqpacket_listen_mode(const char *path, int backlog, unsigned mode, gid_t gid);
/* Like wd_recv_message, but accepts no descriptors: any the peer sends are
   dropped by the kernel without being installed (so never closed here,
   which for a FUSE file would wait on its server). *truncated is set to 1
   when descriptors or bytes past len were dropped. */
ssize_t wd_recv_message_nofds(int sock, void *buf, size_t len, int *truncated);

/* Client processes of warpdrived: a pidfd names one process for its whole
   life, a pid number only until it is reused. */
/* A pidfd for the peer of a connected Unix socket: SO_PEERPIDFD (the
   process that connected, whatever happened since), or, on kernels without
   it, pidfd_open of the SO_PEERCRED pid. Returns fd (close-on-exec) or -errno. */
int wd_peer_pidfd(int sock);
/* 1 while the process a pidfd names is alive (pidfd_send_signal with
   signal 0 succeeds), else 0. */
int wd_pidfd_alive(int pidfd);
/* The pidfd's inode number (unique per process on pidfs, kernel 6.9+), 0 on error. */
uint64_t wd_pidfd_inode(int pidfd);
/* Opens /proc/PID/mem read-write as the user uid:gid would: the calling
   thread alone switches its fs uid and gid (when switch_ids) and drops its
   effective capabilities for the open, so the kernel's ptrace access check
   (PTRACE_MODE_ATTACH_FSCREDS: the target's real, effective and saved ids
   all equal to the caller's, the target dumpable) decides. The real uid
   never changes, so the client gets no right to signal the thread. The
   pidfd must name a live process before and after the open (-ESRCH
   otherwise). The fd keeps the address space of that moment: after the
   process execs or exits, reads and writes through it fail. A failure to
   restore the thread's ids or capabilities aborts the process.
   Returns fd or -errno. */
int wd_open_process_memory(int pidfd, pid_t pid, uid_t uid, gid_t gid, int switch_ids);
/* Reads or writes len bytes at address remote of the address space open as
   memfd (wd_open_process_memory). Returns bytes copied or -errno (EIO,
   EFAULT, or a short count for an unmapped address; 0 bytes is -EFAULT). */
ssize_t wd_mem_read(int memfd, void *local, uint64_t remote, size_t len);
ssize_t wd_mem_write(int memfd, uint64_t remote, const void *local, size_t len);
/* 1 while the address space open as memfd still exists (it is someone's
   address space), 0 once its process exec'd or exited. */
int wd_mem_alive(int memfd);
/* wd_vm_read/wd_vm_write on pid, refused (-ESRCH) unless pidfd names a live
   process both before and after the copy: a pid reused by another process
   is never read from, and a write that raced one is reported as failed. */
ssize_t wd_vm_read_checked(int pidfd, pid_t pid, void *local, const void *remote, size_t len);
ssize_t wd_vm_write_checked(int pidfd, pid_t pid, const void *remote_dst, const void *local, size_t len);
/* Whether the calling thread holds any effective or permitted capability
   (1) or none (0). */
int wd_process_has_capabilities(void);

/* pipe2(fds, O_CLOEXEC): a pipe no concurrently spawned child inherits. 0 or -errno. */
int wd_pipe_cloexec(int fds[2]);

/* Adds "close every descriptor from lowfd up" to spawn file actions, so a
   child started while other threads hold files open inherits none of them
   (a child holding a file of a FUSE mount keeps that mount busy). 0 or an errno. */
#include <spawn.h>
int wd_spawn_close_from(posix_spawn_file_actions_t *actions, int lowfd);

/* The uacce and HiSilicon QM queue ioctls (their numbers are macros Swift
   cannot import; values as in <misc/uacce/uacce.h> and <misc/uacce/hisi_qm.h>).
   Each returns 0 or -errno. */
int wd_uacce_start_q(int fd);
int wd_uacce_put_q(int fd);
/* UACCE_CMD_QM_SET_QP_CTX with qc_type; *queue_id gets the queue number. */
int wd_uacce_set_qp_ctx(int fd, uint16_t qc_type, uint16_t *queue_id);
/* UACCE_CMD_QM_SET_QP_INFO: the SQE size and SQ/CQ depths the device reports. */
int wd_uacce_qp_info(int fd, uint32_t *sqe_size, uint16_t *sq_depth, uint16_t *cq_depth);

/* Revocable mappings: device memory (a uacce queue's MMIO and DUS regions)
   the kernel may revoke while it is mapped (unmap_mapping_range when the
   driver goes), after which any access raises SIGBUS. A SIGBUS inside a
   registered mapping replaces that mapping in place with anonymous zero
   memory (read-write, private), sets its two stop words to 1, and retries
   the access, so the process lives on and the queue code sees a reset.
   Any other SIGBUS goes to the action installed before the first
   registration (for SIG_DFL, the process still dies by SIGBUS). */
enum { WD_REVOCABLE_SLOTS = 256 };
/* Registers [base, base + length): base page-aligned, length a non-zero
   multiple of the page size, not overlapping a registered range.
   stop_offset is the byte offset of two consecutive uint32 stop words in
   the mapping (4-byte aligned, stop_offset + 8 <= length), or -1 for none.
   Installs the SIGBUS handler on first use. Returns 0, or -1 with errno
   (EINVAL, EEXIST: overlaps, ENOSPC: all WD_REVOCABLE_SLOTS in use). */
int wd_revocable_add(void *base, size_t length, long stop_offset);
/* Unregisters the mapping starting at base (no-op if none); call it before
   munmap. Waits for a replacement in progress to finish. */
void wd_revocable_remove(void *base);
/* How many mappings the handler has replaced so far. */
uint64_t wd_revocable_revocations(void);
/* Replacements begun so far (counted after the slot is marked, before the
   mapping is replaced). A reader that reads it, finds its mapping not
   revoked (wd_revocable_is_revoked), reads the mapping, and reads the
   count again unchanged knows its reads were of the device's memory, not
   the zeros. */
uint64_t wd_revocable_epoch(void);
/* 1 when the revocable mapping at `base` is being or has been replaced. */
int wd_revocable_is_revoked(const void *base);

#endif
