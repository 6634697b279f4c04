// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * uacce_check: run inside the test VM (static, no Swift yet) against the
 * warpdrive_zip uacce device. It checks what the kernel side of WarpDrive's
 * queue lifecycle must do (docs/warpdrive.md section 1 and the uacce facts in
 * the reference): sysfs attributes, instances counting down and "busy",
 * region mapping once each, the queue-context ioctls, the INIT/STARTED
 * rules, PUT_Q, and revocation of the mappings when the device goes away.
 *
 *   uacce_check            all checks but removal
 *   uacce_check --remove   also rmmod the device module with a queue open
 *
 * Prints "ok - ..." / "not ok - ..." per check and a last line
 * "UACCE_CHECK PASS" or "UACCE_CHECK FAIL (n failed)".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <misc/uacce/uacce.h>
#include <misc/uacce/hisi_qm.h>

#define DEVICE_PREFIX "warpdrive_zip-"
#define EXPECT_QUEUES 4
#define EXPECT_DEPTH 1024
#define PAGE 4096
#define DATA_KIB_PARAM "/sys/module/warpdrive_zip/parameters/data_kib"

static int failures;
static char name[256], sysdir[300], devpath[300];

static void check(int cond, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void check(int cond, const char *fmt, ...)
{
	va_list ap;

	printf("%s - ", cond ? "ok" : "not ok");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (!cond)
		failures++;
}

/* The attribute's first line, or "" if it cannot be read. */
static const char *attr(const char *file, char *buf, size_t len)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", sysdir, file);
	buf[0] = 0;
	f = fopen(path, "r");
	if (!f)
		return buf;
	if (!fgets(buf, (int)len, f))
		buf[0] = 0;
	fclose(f);
	buf[strcspn(buf, "\n")] = 0;
	return buf;
}

static long attr_long(const char *file)
{
	char buf[64];

	attr(file, buf, sizeof(buf));
	return buf[0] ? strtol(buf, NULL, 10) : -1;
}

static long file_long(const char *path)
{
	char buf[64] = "";
	FILE *f = fopen(path, "r");

	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
	}
	return buf[0] ? strtol(buf, NULL, 10) : -1;
}

static int find_device(void)
{
	DIR *d = opendir("/sys/class/uacce");
	struct dirent *e;

	if (!d)
		return -1;
	while ((e = readdir(d))) {
		if (!strncmp(e->d_name, DEVICE_PREFIX, strlen(DEVICE_PREFIX))) {
			snprintf(name, sizeof(name), "%s", e->d_name);
			break;
		}
	}
	closedir(d);
	if (!name[0])
		return -1;
	snprintf(sysdir, sizeof(sysdir), "/sys/class/uacce/%s", name);
	snprintf(devpath, sizeof(devpath), "/dev/%s", name);
	return 0;
}

static sigjmp_buf fault_jump;

static void on_fault(int sig)
{
	siglongjmp(fault_jump, sig);
}

/* Reads a word through a mapping; returns the signal it raised, or 0. */
static int touch(volatile uint32_t *p)
{
	struct sigaction sa = { .sa_handler = on_fault }, old_bus, old_segv;
	int sig;

	sigaction(SIGBUS, &sa, &old_bus);
	sigaction(SIGSEGV, &sa, &old_segv);
	sig = sigsetjmp(fault_jump, 1);
	if (!sig)
		(void)*p;
	sigaction(SIGBUS, &old_bus, NULL);
	sigaction(SIGSEGV, &old_segv, NULL);
	return sig;
}

int main(int argc, char **argv)
{
	int remove = argc > 1 && !strcmp(argv[1], "--remove");
	char buf[256];
	long mmio_size, dus_size;
	int fd, fds[EXPECT_QUEUES + 1], i, r;
	void *mmio, *dus, *again;
	struct hisi_qp_ctx ctx;
	struct hisi_qp_info info;
	struct pollfd pfd;
	size_t sq_bytes, cq_bytes, ring_bytes, data_bytes;

	setvbuf(stdout, NULL, _IOLBF, 0);
	check(find_device() == 0, "a %s* device under /sys/class/uacce", DEVICE_PREFIX);
	if (!name[0])
		goto out;
	printf("# device %s\n", name);
	{
		static const char *files[] = { "api", "flags", "algorithms",
			"available_instances", "region_mmio_size",
			"region_dus_size" };
		for (i = 0; i < (int)(sizeof(files) / sizeof(files[0])); i++) {
			/* algorithms has one name a line: print them joined */
			char path[512], all[256] = "";
			FILE *f;

			snprintf(path, sizeof(path), "%s/%s", sysdir, files[i]);
			f = fopen(path, "r");
			while (f && fgets(buf, sizeof(buf), f)) {
				buf[strcspn(buf, "\n")] = 0;
				if (all[0])
					strncat(all, " ", sizeof(all) - strlen(all) - 1);
				strncat(all, buf, sizeof(all) - strlen(all) - 1);
			}
			if (f)
				fclose(f);
			printf("# %s = %s\n", files[i], all);
		}
	}
	check(!strcmp(attr("api", buf, sizeof(buf)), "hisi_qm_v2"), "api is hisi_qm_v2 (%s)", buf);
	check(attr_long("flags") == 0, "flags is 0 (no SVA)");
	check(!strcmp(attr("algorithms", buf, sizeof(buf)), "deflate"), "algorithms start with deflate");
	check(attr_long("available_instances") == EXPECT_QUEUES, "available_instances is %d", EXPECT_QUEUES);
	mmio_size = attr_long("region_mmio_size");
	dus_size = attr_long("region_dus_size");
	sq_bytes = (size_t)EXPECT_DEPTH * 128;
	cq_bytes = (size_t)EXPECT_DEPTH * 16;
	ring_bytes = (sq_bytes + cq_bytes + PAGE + PAGE - 1) / PAGE * PAGE;
	data_bytes = (size_t)file_long(DATA_KIB_PARAM) * 1024;
	data_bytes = (data_bytes + PAGE - 1) / PAGE * PAGE;
	check(mmio_size == 2 * PAGE, "region_mmio_size is two pages (%ld)", mmio_size);
	check(dus_size == (long)(ring_bytes + data_bytes) && data_bytes >= 1 << 20,
	      "region_dus_size is SQ + CQ + status page + data area of data_kib (%ld = %zu + %zu)",
	      dus_size, ring_bytes, data_bytes);
	check(access(devpath, F_OK) == 0, "%s exists", devpath);

	fd = open(devpath, O_RDWR | O_CLOEXEC);
	check(fd >= 0, "open %s (%s)", devpath, fd < 0 ? strerror(errno) : "");
	if (fd < 0)
		goto out;
	check(attr_long("available_instances") == EXPECT_QUEUES - 1, "an open queue takes an instance");

	r = ioctl(fd, UACCE_CMD_START_Q);
	check(r < 0 && errno == EINVAL, "START_Q before the regions are mapped is EINVAL");

	mmio = mmap(NULL, mmio_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0 * PAGE);
	check(mmio != MAP_FAILED, "mmap region 0 (MMIO) (%s)", mmio == MAP_FAILED ? strerror(errno) : "");
	dus = mmap(NULL, dus_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 1 * PAGE);
	check(dus != MAP_FAILED, "mmap region 1 (DUS) (%s)", dus == MAP_FAILED ? strerror(errno) : "");
	if (mmio == MAP_FAILED || dus == MAP_FAILED)
		goto out;
	again = mmap(NULL, mmio_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	check(again == MAP_FAILED && errno == EEXIST, "a second map of region 0 is EEXIST");
	again = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 2 * PAGE);
	check(again == MAP_FAILED && errno == EINVAL, "region 2 does not exist (EINVAL)");

	check(((volatile uint32_t *)dus)[(ring_bytes - 8) / 4] == 0 &&
	      ((volatile uint32_t *)dus)[(ring_bytes - 4) / 4] == 0, "the stop words (at the end of the rings) are 0");
	memset(dus, 0x5a, sq_bytes);
	check(((uint8_t *)dus)[sq_bytes - 1] == 0x5a, "the SQ is writable memory");
	*(volatile uint64_t *)((char *)mmio + 0x1000) = 0; /* a doorbell for qn 0, SQ tail 0 */

	memset(&info, 0, sizeof(info));
	r = ioctl(fd, UACCE_CMD_QM_SET_QP_INFO, &info);
	check(r == 0 && info.sqe_size == 128 && info.sq_depth == EXPECT_DEPTH && info.cq_depth == EXPECT_DEPTH,
	      "SET_QP_INFO reports sqe 128, depth %d (%u, %u, %u)", EXPECT_DEPTH, info.sqe_size, info.sq_depth, info.cq_depth);
	ctx.id = 0xffff;
	ctx.qc_type = 2;
	r = ioctl(fd, UACCE_CMD_QM_SET_QP_CTX, &ctx);
	check(r < 0 && errno == EINVAL, "SET_QP_CTX with qc_type 2 is EINVAL");
	ctx.qc_type = 0;
	r = ioctl(fd, UACCE_CMD_QM_SET_QP_CTX, &ctx);
	check(r == 0 && ctx.id < EXPECT_QUEUES, "SET_QP_CTX compress returns the queue number (%u)", ctx.id);

	r = ioctl(fd, UACCE_CMD_START_Q);
	check(r == 0, "START_Q (%s)", r ? strerror(errno) : "");
	r = ioctl(fd, UACCE_CMD_START_Q);
	check(r < 0 && errno == EINVAL, "START_Q twice is EINVAL");
	r = ioctl(fd, UACCE_CMD_QM_SET_QP_CTX, &ctx);
	check(r < 0 && errno == EINVAL, "SET_QP_CTX once started is EINVAL");
	pfd.fd = fd;
	pfd.events = POLLIN;
	r = poll(&pfd, 1, 0);
	check(r == 0, "poll: no completion waiting");

	for (i = 0; i < EXPECT_QUEUES; i++)
		fds[i] = open(devpath, O_RDWR | O_CLOEXEC);
	check(fds[0] >= 0 && fds[1] >= 0 && fds[2] >= 0, "three more queues open");
	check(fds[3] < 0 && errno == EBUSY, "the fifth open is EBUSY (all queues busy)");
	check(attr_long("available_instances") == 0, "available_instances is 0");
	for (i = 0; i < EXPECT_QUEUES; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	check(attr_long("available_instances") == EXPECT_QUEUES - 1, "closing gives the instances back");

	r = ioctl(fd, UACCE_CMD_PUT_Q);
	check(r == 0, "PUT_Q");
	munmap(mmio, mmio_size);
	munmap(dus, dus_size);
	close(fd);
	check(attr_long("available_instances") == EXPECT_QUEUES, "close gives the last instance back");

	if (remove) {
		fd = open(devpath, O_RDWR | O_CLOEXEC);
		dus = mmap(NULL, dus_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 1 * PAGE);
		check(fd >= 0 && dus != MAP_FAILED, "a queue open and mapped for the removal");
		if (fd < 0 || dus == MAP_FAILED)
			goto out;
		check(touch(dus) == 0, "its DUS region reads");
		r = system("rmmod warpdrive_zip");
		check(r == 0, "rmmod warpdrive_zip with the queue open");
		r = touch(dus);
		check(r == SIGBUS, "the DUS mapping is revoked: a read raises SIGBUS (signal %d)", r);
		r = ioctl(fd, UACCE_CMD_START_Q);
		check(r < 0 && errno == ENXIO, "START_Q on the removed device is ENXIO (%s)", r ? strerror(errno) : "no error");
		check(access(sysdir, F_OK) != 0, "%s is gone", sysdir);
		munmap(dus, dus_size);
		check(close(fd) == 0, "close after removal");
	}
out:
	if (failures)
		printf("UACCE_CHECK FAIL (%d failed)\n", failures);
	else
		printf("UACCE_CHECK PASS\n");
	return failures ? 1 : 0;
}
