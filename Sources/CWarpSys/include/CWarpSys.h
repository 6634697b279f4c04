#ifndef CWARPSYS_H
#define CWARPSYS_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <zlib.h>
#include <sys/xattr.h>
#include <linux/falloc.h>

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

#endif
