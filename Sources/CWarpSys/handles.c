#define _GNU_SOURCE
#include "CWarpSys.h"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

/* A struct file_handle with room for WD_HANDLE_MAX bytes of f_handle. */
union wd_handle {
    struct file_handle fh;
    unsigned char room[sizeof(struct file_handle) + WD_HANDLE_MAX];
};

int wd_handle_of(int fd, int *type, unsigned char *bytes, unsigned *len) {
    union wd_handle h;
    int mount_id;
    h.fh.handle_bytes = WD_HANDLE_MAX;
    if (name_to_handle_at(fd, "", &h.fh, &mount_id, AT_EMPTY_PATH) != 0) return -errno;
    if (h.fh.handle_bytes > *len) return -EOVERFLOW;
    memcpy(bytes, h.fh.f_handle, h.fh.handle_bytes);
    *len = h.fh.handle_bytes;
    *type = h.fh.handle_type;
    return 0;
}

int wd_open_handle(int mount_fd, int type, const unsigned char *bytes, unsigned len, int flags) {
    union wd_handle h;
    if (len > WD_HANDLE_MAX) return -EINVAL;
    h.fh.handle_bytes = len;
    h.fh.handle_type = type;
    memcpy(h.fh.f_handle, bytes, len);
    int fd = open_by_handle_at(mount_fd, &h.fh, flags);
    return fd < 0 ? -errno : fd;
}
