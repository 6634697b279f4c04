#include "CFuse.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int wf_session_loop_mt(struct fuse_session *se, int clone_fd, unsigned max_idle_threads) {
    struct fuse_loop_config cfg;
    cfg.clone_fd = clone_fd;
    cfg.max_idle_threads = max_idle_threads;
    return fuse_session_loop_mt(se, &cfg);
}


void wf_init_conn(struct fuse_conn_info *conn, int writeback_cache, unsigned max_write, int export_support) {
    if (writeback_cache && (conn->capable & FUSE_CAP_WRITEBACK_CACHE))
        conn->want |= FUSE_CAP_WRITEBACK_CACHE;
    else
        conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
    if (export_support && (conn->capable & FUSE_CAP_EXPORT_SUPPORT))
        conn->want |= FUSE_CAP_EXPORT_SUPPORT;
    else
        conn->want &= ~FUSE_CAP_EXPORT_SUPPORT;
    if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
    if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO) conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
    if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
    if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
    if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
    if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA) conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
    /* No asynchronous direct I/O: with it the kernel completes an
       asynchronous O_DIRECT write (io_submit, io_uring) from the reply
       (fuse_aio_complete) without invalidating the page cache of the range,
       and generic_file_direct_write skips its own invalidation after the
       write for -EIOCBQUEUED; a buffered read that ran while the write was
       in flight leaves the old bytes cached for good (keep_cache). Without
       it every direct write is waited for inside the call, which then
       invalidates the written range before it completes. */
    conn->want &= ~FUSE_CAP_ASYNC_DIO;
    if (max_write) conn->max_write = max_write;
    conn->max_readahead = 1u << 20;
}

int wf_init_acl(struct fuse_conn_info *conn, int on) {
    const unsigned both = FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK;
    conn->want &= ~both;
    if (on && (conn->capable & FUSE_CAP_POSIX_ACL)) conn->want |= conn->capable & both;
    return ((conn->want & FUSE_CAP_POSIX_ACL) ? 1 : 0) | ((conn->want & FUSE_CAP_DONT_MASK) ? 2 : 0);
}

void wf_fi_set_keep_cache(struct fuse_file_info *fi, int on) { fi->keep_cache = on ? 1 : 0; }
int wf_fi_writepage(const struct fuse_file_info *fi) { return fi->writepage; }

static void (*wf_log_sink)(int, const char *);

static void wf_log(enum fuse_log_level level, const char *fmt, va_list ap) {
    if (level >= FUSE_LOG_DEBUG || !wf_log_sink) {
        vfprintf(stderr, fmt, ap);
        return;
    }
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && line[n - 1] == '\n') line[--n] = 0;
    if (n > 0) wf_log_sink((int)level, line);
}

void wf_route_log(void (*sink)(int level, const char *line)) {
    wf_log_sink = sink;
    fuse_set_log_func(wf_log);
}
