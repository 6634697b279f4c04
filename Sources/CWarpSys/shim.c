#define _GNU_SOURCE
#include "CWarpSys.h"
#include <spawn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <linux/capability.h>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

uint32_t wd_load_acquire_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void wd_store_release_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
uint64_t wd_load_acquire_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void wd_store_release_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
uint32_t wd_fetch_add_u32(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
void wd_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void wd_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

int wd_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    long r = syscall(SYS_futex, addr, FUTEX_WAIT, expected, tsp, NULL, 0);
    if (r == 0) return 0;
    if (errno == EAGAIN) return 0;
    return errno;
}

int wd_futex_wake(uint32_t *addr, int count) {
    return (int)syscall(SYS_futex, addr, FUTEX_WAKE, count, NULL, NULL, 0);
}

int wd_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING); }
int wd_memfd_seal_size(int fd) { return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL); }
int wd_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

int wd_eventfd_signal(int fd) {
    uint64_t one = 1;
    for (;;) {
        ssize_t n = write(fd, &one, sizeof one);
        if (n == (ssize_t)sizeof one) return 0;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 0; /* counter saturated: already readable */
        return -errno;
    }
}

uint64_t wd_eventfd_drain(int fd) {
    uint64_t v = 0;
    for (;;) {
        ssize_t n = read(fd, &v, sizeof v);
        if (n == (ssize_t)sizeof v) return v;
        if (n < 0 && errno == EINTR) continue;
        return 0;
    }
}

int wd_poll_in(int fd, int timeout_ms) {
    struct pollfd p = { .fd = fd, .events = POLLIN, .revents = 0 };
    for (;;) {
        int r = poll(&p, 1, timeout_ms);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        return -errno;
    }
}

ssize_t wd_vm_read(pid_t pid, void *local, const void *remote, size_t len) {
    struct iovec l = { .iov_base = local, .iov_len = len };
    struct iovec r = { .iov_base = (void *)remote, .iov_len = len };
    size_t done = 0;
    while (done < len) {
        l.iov_base = (char *)local + done; l.iov_len = len - done;
        r.iov_base = (char *)remote + done; r.iov_len = len - done;
        ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
        if (n < 0) { if (errno == EINTR) continue; return -errno; }
        if (n == 0) return -EFAULT;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

ssize_t wd_vm_write(pid_t pid, const void *remote_dst, const void *local, size_t len) {
    struct iovec l, r;
    size_t done = 0;
    while (done < len) {
        l.iov_base = (char *)local + done; l.iov_len = len - done;
        r.iov_base = (char *)remote_dst + done; r.iov_len = len - done;
        ssize_t n = process_vm_writev(pid, &l, 1, &r, 1, 0);
        if (n < 0) { if (errno == EINTR) continue; return -errno; }
        if (n == 0) return -EFAULT;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

static uint64_t clock_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}
uint64_t wd_now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }
uint64_t wd_thread_cpu_ns(void) { return clock_ns(CLOCK_THREAD_CPUTIME_ID); }
uint64_t wd_process_cpu_ns(void) { return clock_ns(CLOCK_PROCESS_CPUTIME_ID); }
pid_t wd_gettid(void) { return (pid_t)syscall(SYS_gettid); }

int wd_deflate_init2(z_stream *strm, int level, int window_bits, int mem_level, int strategy) {
    return deflateInit2(strm, level, Z_DEFLATED, window_bits, mem_level, strategy);
}
int wd_inflate_init2(z_stream *strm, int window_bits) { return inflateInit2(strm, window_bits); }

int wd_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned flags) {
    return (int)syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags);
}

int wd_start_writeback(int fd, int64_t offset, int64_t length) {
    return sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE);
}

int wd_fallocate(int fd, int mode, int64_t offset, int64_t length) { return fallocate(fd, mode, offset, length); }
int wd_syncfs(int fd) { return syncfs(fd); }

int64_t wd_probe_max_file_size(int dirfd) {
    int fd = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) return -errno;
    /* lo: a size known to be accepted; hi: the largest size not yet refused. */
    int64_t lo = 0, hi = INT64_MAX;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2 + 1;
        if (ftruncate(fd, mid) == 0) { lo = mid; continue; }
        if (errno == EINTR) continue;
        if (errno != EFBIG && errno != EINVAL) { int e = errno; close(fd); return -e; }
        hi = mid - 1;
    }
    (void)!ftruncate(fd, 0);
    close(fd);
    return lo;
}

/* This thread's capability sets (capget/capset act per thread). 0, or -1 with errno. */
static int caps_get(struct __user_cap_data_struct d[2]) {
    struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    return (int)syscall(SYS_capget, &h, d);
}

static int caps_set(const struct __user_cap_data_struct d[2]) {
    struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    return (int)syscall(SYS_capset, &h, d);
}

int wd_drop_effective_capability(int cap) {
    if (cap < 0 || cap >= 64) return -EINVAL;
    struct __user_cap_data_struct d[2];
    if (caps_get(d) < 0) return -errno;
    d[cap / 32].effective &= ~(1u << (cap % 32));
    return caps_set(d) < 0 ? -errno : 0;
}

int wd_has_effective_capability(int cap) {
    if (cap < 0 || cap >= 64) return -EINVAL;
    struct __user_cap_data_struct d[2];
    if (caps_get(d) < 0) return -errno;
    return (d[cap / 32].effective >> (cap % 32)) & 1;
}

/* CRC-32C, reflected polynomial 0x82F63B78. */
static uint32_t crc32c_table[8][256];
static int crc32c_ready;

static void crc32c_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc32c_table[0][n];
        for (int k = 1; k < 8; k++) { c = crc32c_table[0][c & 0xff] ^ (c >> 8); crc32c_table[k][n] = c; }
    }
    __atomic_store_n(&crc32c_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t crc32c_soft(uint32_t crc, const unsigned char *p, size_t n) {
    if (!__atomic_load_n(&crc32c_ready, __ATOMIC_ACQUIRE)) crc32c_init();
    while (n && ((uintptr_t)p & 7)) { crc = crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8); n--; }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc32c_table[7][w & 0xff] ^ crc32c_table[6][(w >> 8) & 0xff] ^ crc32c_table[5][(w >> 16) & 0xff]
            ^ crc32c_table[4][(w >> 24) & 0xff] ^ crc32c_table[3][(w >> 32) & 0xff] ^ crc32c_table[2][(w >> 40) & 0xff]
            ^ crc32c_table[1][(w >> 48) & 0xff] ^ crc32c_table[0][w >> 56];
        p += 8; n -= 8;
    }
    while (n--) crc = crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = crc;
    while (n && ((uintptr_t)p & 7)) { c = __builtin_ia32_crc32qi((uint32_t)c, *p++); n--; }
    while (n >= 8) { uint64_t w; memcpy(&w, p, 8); c = __builtin_ia32_crc32di(c, w); p += 8; n -= 8; }
    while (n--) c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

uint32_t wd_crc32c(uint32_t crc, const void *data, size_t length) {
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) return ~crc32c_hw(crc, data, length);
#endif
    return ~crc32c_soft(crc, data, length);
}

uint32_t wd_crc32c_table(uint32_t crc, const void *data, size_t length) { return ~crc32c_soft(~crc, data, length); }

static int unix_address(const char *path, struct sockaddr_un *a) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path) return -ENAMETOOLONG;
    strcpy(a->sun_path, path);
    return 0;
}

int wd_seqpacket_listen(const char *path, int backlog) {
    struct sockaddr_un a;
    int r = unix_address(path, &a);
    if (r < 0) return r;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, backlog) < 0) {
        int e = errno; close(fd); return -e;
    }
    return fd;
}

int wd_seqpacket_connect(const char *path) {
    struct sockaddr_un a;
    int r = unix_address(path, &a);
    if (r < 0) return r;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    while (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        if (errno == EINTR) continue;
        int e = errno; close(fd); return -e;
    }
    /* A daemon that is alive but does not answer must become an error, not
       a hang: replies (and sends into a full socket) wait at most 30 s,
       longer than any single request (8 MiB) takes an engine. */
    struct timeval tv = { .tv_sec = 30, .tv_usec = 0 };
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

int wd_accept(int fd) {
    for (;;) {
        int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) return c;
        if (errno == EINTR) continue;
        return -errno;
    }
}

ssize_t wd_send_message(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    struct iovec io = { .iov_base = (void *)buf, .iov_len = len };
    union { char b[CMSG_SPACE(8 * sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1 };
    if (nfds > 8) return -EINVAL;
    if (nfds > 0) {
        memset(&u, 0, sizeof u);
        m.msg_control = u.b;
        m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    for (;;) {
        ssize_t n = sendmsg(sock, &m, MSG_NOSIGNAL);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        return -errno;
    }
}

ssize_t wd_recv_message(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds) {
    struct iovec io = { .iov_base = buf, .iov_len = len };
    union { char b[CMSG_SPACE(8 * sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b };
    *nfds = 0;
    ssize_t n;
    for (;;) {
        n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
        if (n >= 0) break;
        if (errno == EINTR) continue;
        return -errno;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int got[8];
        if (k > 8) k = 8;
        memcpy(got, CMSG_DATA(c), k * sizeof(int));
        for (int i = 0; i < k; i++) {
            if (*nfds < maxfds) fds[(*nfds)++] = got[i];
            else close(got[i]);
        }
    }
    return n;
}

int wd_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred c;
    socklen_t l = sizeof c;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &c, &l) < 0) return -errno;
    *pid = c.pid; *uid = c.uid; *gid = c.gid;
    return 0;
}

int wd_allow_ptracer(pid_t pid) {
    unsigned long who = pid < 0 ? PR_SET_PTRACER_ANY : (unsigned long)pid;
    return prctl(PR_SET_PTRACER, who, 0, 0, 0) < 0 ? -errno : 0;
}

int wd_peer_gone(int sock) {
    struct pollfd p = { .fd = sock, .events = POLLRDHUP, .revents = 0 };
    int r = poll(&p, 1, 0);
    return r > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) ? 1 : 0;
}

int wd_seqpacket_listen_mode(const char *path, int backlog, unsigned mode, gid_t gid) {
    struct sockaddr_un a;
    int r = unix_address(path, &a);
    if (r < 0) return r;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    /* Created 0600: until the mode below is set, only our own user can connect. */
    mode_t old = umask(0177);
    r = bind(fd, (struct sockaddr *)&a, sizeof a);
    int e = errno;
    umask(old);
    if (r < 0) { close(fd); return -e; }
    struct stat st;
    if (lstat(path, &st) < 0) { e = errno; goto fail; }
    if (!S_ISSOCK(st.st_mode) || st.st_uid != geteuid()) { e = EEXIST; goto fail; }
    if (gid != (gid_t)-1 && lchown(path, (uid_t)-1, gid) < 0) { e = errno; goto fail; }
    if (fchmodat(AT_FDCWD, path, mode & 07777, AT_SYMLINK_NOFOLLOW) < 0) { e = errno; goto fail; }
    if (listen(fd, backlog) < 0) { e = errno; goto fail; }
    return fd;
fail:
    unlink(path);
    close(fd);
    return -e;
}

ssize_t wd_recv_message_nofds(int sock, void *buf, size_t len, int *truncated) {
    struct iovec io = { .iov_base = buf, .iov_len = len };
    struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = NULL, .msg_controllen = 0 };
    *truncated = 0;
    for (;;) {
        ssize_t n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
        if (n >= 0) {
            if (m.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) *truncated = 1;
            return n;
        }
        if (errno == EINTR) continue;
        return -errno;
    }
}

int wd_peer_pidfd(int sock) {
    int pidfd = -1;
    socklen_t l = sizeof pidfd;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &l) == 0 && pidfd >= 0) {
        int flags = fcntl(pidfd, F_GETFD);
        if (flags >= 0) (void)fcntl(pidfd, F_SETFD, flags | FD_CLOEXEC);
        return pidfd;
    }
    /* EINVAL/ESRCH from a kernel that has SO_PEERPIDFD: the peer process
       has already exited. Its pid may belong to another process by now, so
       no pidfd is made from it: the connection is refused. */
    if (errno == EINVAL || errno == ESRCH) return -ESRCH;
    if (errno != ENOPROTOOPT) return -errno;
    /* Older kernel: the pid may have been reused since connect(). Sound
       all the same: memory is reached with the client's credentials, or,
       for a client with the daemon's own credentials, by a user who could
       reach any process of its own. */
    struct ucred c;
    l = sizeof c;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &c, &l) < 0) return -errno;
    long fd = syscall(SYS_pidfd_open, c.pid, 0);
    if (fd < 0) return -errno;
    (void)fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    return (int)fd;
}

int wd_pidfd_alive(int pidfd) {
    if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) == 0) return 1;
    return errno == EPERM ? 1 : 0;   /* alive, but not ours to signal */
}

uint64_t wd_pidfd_inode(int pidfd) {
    struct stat st;
    return fstat(pidfd, &st) == 0 ? (uint64_t)st.st_ino : 0;
}


static void credentials_lost(const char *what) {
    char msg[256];
    int n = snprintf(msg, sizeof msg, "warpdrived: cannot restore this thread's credentials (%s: %s); aborting rather "
                     "than serving with a client's identity\n", what, strerror(errno));
    if (n > 0) (void)!write(2, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    abort();
}

/* Puts back the thread's capabilities and fs ids; aborts when it cannot. */
static void restore_thread(const struct __user_cap_data_struct saved[2], int fsuid, int fsgid) {
    if (caps_set(saved) < 0) credentials_lost("capset");
    if (fsuid >= 0) {
        syscall(SYS_setfsuid, (uid_t)fsuid);
        if ((int)syscall(SYS_setfsuid, (uid_t)-1) != fsuid) credentials_lost("setfsuid");
    }
    if (fsgid >= 0) {
        syscall(SYS_setfsgid, (gid_t)fsgid);
        if ((int)syscall(SYS_setfsgid, (gid_t)-1) != fsgid) credentials_lost("setfsgid");
    }
    /* Going back to fs uid 0 raised the file capabilities: set the exact set again. */
    if (caps_set(saved) < 0) credentials_lost("capset");
    struct __user_cap_data_struct now[2];
    if (caps_get(now) < 0 || memcmp(now, saved, sizeof now) != 0) credentials_lost("capget");
}

int wd_open_process_memory(int pidfd, pid_t pid, uid_t uid, gid_t gid, int switch_ids) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
    if (pidfd >= 0 && !wd_pidfd_alive(pidfd)) return -ESRCH;
    struct __user_cap_data_struct saved[2], none[2];
    if (caps_get(saved) < 0) return -errno;
    int oldfsuid = -1, oldfsgid = -1;
    if (switch_ids) {
        oldfsgid = (int)syscall(SYS_setfsgid, gid);
        if ((gid_t)syscall(SYS_setfsgid, (gid_t)-1) != gid) { restore_thread(saved, oldfsuid, oldfsgid); return -EPERM; }
        oldfsuid = (int)syscall(SYS_setfsuid, uid);
        if ((uid_t)syscall(SYS_setfsuid, (uid_t)-1) != uid) { restore_thread(saved, oldfsuid, oldfsgid); return -EPERM; }
    }
    memcpy(none, saved, sizeof none);
    none[0].effective = 0;
    none[1].effective = 0;
    if (caps_set(none) < 0) { int e = errno; restore_thread(saved, oldfsuid, oldfsgid); return -e; }
    int fd = open(path, O_RDWR | O_CLOEXEC);
    int e = errno;
    restore_thread(saved, oldfsuid, oldfsgid);
    if (fd < 0) return -e;
    if (pidfd >= 0 && !wd_pidfd_alive(pidfd)) { close(fd); return -ESRCH; }
    return fd;
}

ssize_t wd_mem_read(int memfd, void *local, uint64_t remote, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(memfd, (char *)local + done, len - done, (off_t)(remote + done));
        if (n < 0) { if (errno == EINTR) continue; return done > 0 ? (ssize_t)done : -errno; }
        if (n == 0) return done > 0 ? (ssize_t)done : -EFAULT;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

ssize_t wd_mem_write(int memfd, uint64_t remote, const void *local, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(memfd, (const char *)local + done, len - done, (off_t)(remote + done));
        if (n < 0) { if (errno == EINTR) continue; return done > 0 ? (ssize_t)done : -errno; }
        if (n == 0) return done > 0 ? (ssize_t)done : -EFAULT;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

int wd_mem_alive(int memfd) {
    /* Address 0 is never mapped: a live address space answers EIO, a gone one 0 bytes. */
    unsigned char b;
    return pread(memfd, &b, 1, 0) != 0;
}

ssize_t wd_vm_read_checked(int pidfd, pid_t pid, void *local, const void *remote, size_t len) {
    if (!wd_pidfd_alive(pidfd)) return -ESRCH;
    ssize_t n = wd_vm_read(pid, local, remote, len);
    if (!wd_pidfd_alive(pidfd)) return -ESRCH;
    return n;
}

ssize_t wd_vm_write_checked(int pidfd, pid_t pid, const void *remote_dst, const void *local, size_t len) {
    if (!wd_pidfd_alive(pidfd)) return -ESRCH;
    ssize_t n = wd_vm_write(pid, remote_dst, local, len);
    if (!wd_pidfd_alive(pidfd)) return -ESRCH;
    return n;
}

int wd_process_has_capabilities(void) {
    struct __user_cap_data_struct d[2];
    if (caps_get(d) < 0) return 1;
    return (d[0].effective | d[1].effective | d[0].permitted | d[1].permitted) != 0;
}

int wd_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC) < 0 ? -errno : 0;
}

int wd_spawn_close_from(posix_spawn_file_actions_t *actions, int lowfd) {
    return posix_spawn_file_actions_addclosefrom_np(actions, lowfd);
}

/* ---- uacce queue ioctls ---- */
#include <sys/ioctl.h>
#include <errno.h>

struct wd_hisi_qp_ctx { uint16_t id; uint16_t qc_type; };
struct wd_hisi_qp_info { uint32_t sqe_size; uint16_t sq_depth; uint16_t cq_depth; uint64_t reserved; };
#define WD_UACCE_CMD_START_Q _IO('W', 0)
#define WD_UACCE_CMD_PUT_Q _IO('W', 1)
#define WD_UACCE_CMD_QM_SET_QP_CTX _IOWR('H', 10, struct wd_hisi_qp_ctx)
#define WD_UACCE_CMD_QM_SET_QP_INFO _IOWR('H', 11, struct wd_hisi_qp_info)

int wd_uacce_start_q(int fd) { return ioctl(fd, WD_UACCE_CMD_START_Q) == 0 ? 0 : -errno; }
int wd_uacce_put_q(int fd) { return ioctl(fd, WD_UACCE_CMD_PUT_Q) == 0 ? 0 : -errno; }

int wd_uacce_set_qp_ctx(int fd, uint16_t qc_type, uint16_t *queue_id)
{
	struct wd_hisi_qp_ctx ctx = { .id = 0, .qc_type = qc_type };

	if (ioctl(fd, WD_UACCE_CMD_QM_SET_QP_CTX, &ctx) != 0)
		return -errno;
	*queue_id = ctx.id;
	return 0;
}

int wd_uacce_qp_info(int fd, uint32_t *sqe_size, uint16_t *sq_depth, uint16_t *cq_depth)
{
	struct wd_hisi_qp_info info = { 0 };

	if (ioctl(fd, WD_UACCE_CMD_QM_SET_QP_INFO, &info) != 0)
		return -errno;
	*sqe_size = info.sqe_size;
	*sq_depth = info.sq_depth;
	*cq_depth = info.cq_depth;
	return 0;
}
