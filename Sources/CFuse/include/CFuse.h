#ifndef CFUSE_H
#define CFUSE_H

/* libfuse3's low-level API at version 3.5, plus small functions for what
   Swift cannot call directly (macros, variadics, the loop configuration). */
#define FUSE_USE_VERSION 35
#include <fuse3/fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

/* Runs the multithreaded loop; clone_fd 0/1; max_idle_threads. */
int wf_session_loop_mt(struct fuse_session *se, int clone_fd, unsigned max_idle_threads);

/* Sets the capability bits WarpFS wants on init. export_support: the file
   system can find a node from its id alone (LOOKUP "." after FORGET). */
void wf_init_conn(struct fuse_conn_info *conn, int writeback_cache, unsigned max_write, int export_support);

/* POSIX ACLs: with on, asks for FUSE_CAP_POSIX_ACL (the kernel enforces
   ACLs, read through getxattr) and FUSE_CAP_DONT_MASK (the kernel sends the
   umask instead of applying it, so a default ACL can replace it); without,
   asks for neither. Returns what was granted: 1 POSIX_ACL, 2 DONT_MASK. */
int wf_init_acl(struct fuse_conn_info *conn, int on);

/* Sends libfuse's own messages (fuse_log: a failed mount, a bad request)
   to sink, one formatted line each without the newline, with their
   fuse_log_level; the debug trace (-o debug) stays on standard error. */
void wf_route_log(void (*sink)(int level, const char *line));

/* fuse_file_info bitfields, which Swift cannot reach. */
void wf_fi_set_keep_cache(struct fuse_file_info *fi, int on);
/* Whether a write is the kernel's write-back of cached pages (FUSE_WRITE_CACHE). */
int wf_fi_writepage(const struct fuse_file_info *fi);

#endif
