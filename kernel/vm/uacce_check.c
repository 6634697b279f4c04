// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * uacce_check: run inside the test VM (static, no Swift yet) against the
 * warpdrive_zip uacce device. It checks what the kernel side of WarpDrive's
 * queue lifecycle must do (docs/warpdrive.md section 1 and the uacce facts in
 * the reference): sysfs attributes, instances counting down and "busy",
 * region mapping once each, the queue-context ioctls, the INIT/STARTED
 * rules, PUT_Q, and revocation of the mappings when the device goes away;
 * then the engine (section 2's ring protocol, buffers in the DUS data
 * area): deflate, zlib and gzip round trips through a compress and a
 * decompress queue, checksums, bad addresses and requests, a destination
 * too small, corrupt input, a full ring completing in order across the
 * wrap, poll() readiness, and close with requests in flight.
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
#define BAD_ADDRESS_PARAM "/sys/module/warpdrive_zip/parameters/bad_address_requests"

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

/* ---- The engine: the ring protocol of docs/warpdrive.md section 2. ---- */

#include "warpdrive_zip_abi.h"
#define WAIT_MS 20000

/* A started queue, user side, as WarpDrive's Queue keeps it. */
struct uq {
	int fd;
	void *mmio, *dus;
	uint32_t qn, depth;
	uint32_t tail, head, cq_head, phase;
	size_t dus_size, ring_bytes;
};

static int uq_open(struct uq *q, int qc_type, size_t dus_size, size_t ring_bytes)
{
	struct hisi_qp_ctx ctx = { .qc_type = qc_type };

	memset(q, 0, sizeof(*q));
	q->depth = EXPECT_DEPTH;
	q->phase = 1;
	q->dus_size = dus_size;
	q->ring_bytes = ring_bytes;
	q->fd = open(devpath, O_RDWR | O_CLOEXEC);
	if (q->fd < 0)
		return -1;
	q->mmio = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, q->fd, 0);
	q->dus = mmap(NULL, dus_size, PROT_READ | PROT_WRITE, MAP_SHARED, q->fd, PAGE);
	if (q->mmio == MAP_FAILED || q->dus == MAP_FAILED)
		return -1;
	if (ioctl(q->fd, UACCE_CMD_QM_SET_QP_CTX, &ctx) || ioctl(q->fd, UACCE_CMD_START_Q))
		return -1;
	q->qn = ctx.id;
	return 0;
}

static void uq_close(struct uq *q)
{
	munmap(q->mmio, 2 * PAGE);
	munmap(q->dus, q->dus_size);
	close(q->fd);
}

static uint8_t *data(struct uq *q, size_t off)
{
	return (uint8_t *)q->dus + q->ring_bytes + off;
}

static void doorbell(struct uq *q, unsigned cmd, uint32_t index)
{
	uint64_t raw = (q->qn & 0x3ff) | (uint64_t)(cmd & 0xf) << 12 | (uint64_t)index << 32;

	__atomic_store_n((uint64_t *)((char *)q->mmio + 0x1000), raw, __ATOMIC_RELEASE);
}

/*
 * A CQ doorbell, by this device's contract: the doorbell is a word of
 * memory the engine polls, so the CQ doorbell would hide an SQ doorbell the
 * engine has not read yet; the last SQ doorbell is stored again after it.
 */
static void cq_doorbell(struct uq *q)
{
	doorbell(q, 1, q->cq_head);
	doorbell(q, 0, q->tail);
}

static volatile uint32_t *sqe_at(struct uq *q, uint32_t slot)
{
	return (volatile uint32_t *)((char *)q->dus + (size_t)slot * 128);
}

/* Writes a request into the slot at the tail; ring says whether to ring now. */
static uint32_t submit(struct uq *q, unsigned type, unsigned level, uint64_t src,
		       uint32_t in_len, uint64_t dst, uint32_t cap, int ring)
{
	uint32_t w[SQE_WORDS] = { 0 }, slot = q->tail;

	w[4] = in_len;
	w[7] = 1u << 25 | 3u << 28;			/* flush finish, SQE type 3 */
	w[9] = type | 4u << 12 | level << 16;		/* 32K window */
	w[14] = cap;
	w[18] = (uint32_t)src;
	w[19] = (uint32_t)(src >> 32);
	w[20] = (uint32_t)dst;
	w[21] = (uint32_t)(dst >> 32);
	w[26] = slot;					/* tag */
	memcpy((void *)sqe_at(q, slot), w, sizeof(w));
	q->tail = (q->tail + 1) % q->depth;
	if (ring)
		doorbell(q, 0, q->tail);
	return slot;
}

static uint32_t cqe_word(struct uq *q, uint32_t slot, int word)
{
	uint32_t *cq = (uint32_t *)((char *)q->dus + (size_t)q->depth * 128);

	return __atomic_load_n(&cq[slot * 4 + word], __ATOMIC_ACQUIRE);
}

/*
 * Waits (poll()) for the next CQE; returns its SQ slot, or -1 after
 * WAIT_MS. *polled counts the poll() calls that reported POLLIN.
 */
static int reap(struct uq *q, int *polled)
{
	struct pollfd pfd = { .fd = q->fd, .events = POLLIN };
	int waited = 0;

	for (;;) {
		uint32_t w3 = cqe_word(q, q->cq_head, 3);

		if ((w3 >> 16 & 1) == q->phase) {
			uint32_t w2 = cqe_word(q, q->cq_head, 2);
			int slot = w2 & 0xffff;

			if ((w2 >> 16) != q->qn)
				return -2;
			if (++q->cq_head == q->depth) {
				q->cq_head = 0;
				q->phase ^= 1;
			}
			q->head = (slot + 1) % q->depth;
			return slot;
		}
		if (waited >= WAIT_MS)
			return -1;
		if (poll(&pfd, 1, 100) > 0 && (pfd.revents & POLLIN) && polled)
			++*polled;
		waited += 100;
	}
}

static unsigned status_of(struct uq *q, uint32_t slot) { return sqe_at(q, slot)[3] & 0xff; }
static uint32_t word(struct uq *q, uint32_t slot, int i) { return sqe_at(q, slot)[i]; }

static uint32_t adler32(const uint8_t *p, size_t n)
{
	uint32_t a = 1, b = 0;

	while (n--) {
		a = (a + *p++) % 65521;
		b = (b + a) % 65521;
	}
	return b << 16 | a;
}

static uint32_t crc32(const uint8_t *p, size_t n)
{
	uint32_t c = ~0u;
	int k;

	while (n--) {
		c ^= *p++;
		for (k = 0; k < 8; k++)
			c = c >> 1 ^ (0xedb88320u & -(c & 1));
	}
	return ~c;
}

#define TEXT_BYTES (64 << 10)

static void make_text(uint8_t *p, size_t n)
{
	static const char *words[] = { "warp", "drive", "queue", "ring", "deflate",
		"kernel", "doorbell", "phase", "completion", "the", "a", "of" };
	size_t i = 0;
	unsigned x = 12345;

	while (i < n) {
		const char *w;
		size_t l;

		x = x * 1103515245 + 12345;
		w = words[(x >> 16) % 12];
		l = strlen(w);

		if (i + l + 1 > n)
			l = n - i - 1;
		memcpy(p + i, w, l);
		i += l;
		p[i++] = (x >> 8) % 9 ? ' ' : '\n';
	}
}

/* Compress on c, inflate back on d, compare; checks type's checksum. */
static void round_trip(struct uq *c, struct uq *d, unsigned type, const char *name,
		       const uint8_t *text)
{
	size_t R = c->ring_bytes;
	uint32_t slot, produced;
	int polled = 0, s;
	struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
	uint32_t want = type == TYPE_ZLIB ? adler32(text, TEXT_BYTES) :
			type == TYPE_GZIP ? crc32(text, TEXT_BYTES) : 0;

	memcpy(data(c, 0), text, TEXT_BYTES);
	slot = submit(c, type, 6, R, TEXT_BYTES, R + 128 * 1024, 128 * 1024, 1);
	s = reap(c, &polled);
	check(s == (int)slot, "%s: a CQE names SQ slot %u and the queue (%d)", name, slot, s);
	if (s < 0)
		return;
	produced = word(c, slot, 1);
	check(status_of(c, slot) == ST_OK && word(c, slot, 0) == TEXT_BYTES && produced > 0 &&
	      produced < TEXT_BYTES / 2,
	      "%s: 64 KiB of text compress (status 0x%02x, consumed %u, produced %u)", name,
	      status_of(c, slot), word(c, slot, 0), produced);
	check(word(c, slot, 31) == want && word(c, slot, 30) == TEXT_BYTES,
	      "%s: checksum 0x%08x and isize %u", name, word(c, slot, 31), word(c, slot, 30));
	if (type == TYPE_DEFLATE) {
		check(polled >= 1, "poll() reported the completion (%d)", polled);
		check(poll(&pfd, 1, 0) == 0, "poll() after reaping reports nothing");
		check(*(volatile uint32_t *)((char *)c->dus + (size_t)c->depth * 144) == 1,
		      "the status page's interrupt counter is 1");
	}

	memcpy(data(d, 0), data(c, 128 * 1024), produced);
	memset(data(d, 128 * 1024), 0, TEXT_BYTES + 1);
	slot = submit(d, type, 0, R, produced, R + 128 * 1024, TEXT_BYTES, 1);
	s = reap(d, NULL);
	check(s == (int)slot && status_of(d, slot) == ST_END_OF_STREAM && (word(d, slot, 3) >> 8 & 1) &&
	      word(d, slot, 1) == TEXT_BYTES && word(d, slot, 0) == produced,
	      "%s: inflating through the device reaches the end of the stream (status 0x%02x, consumed %u, produced %u)",
	      name, s >= 0 ? status_of(d, slot) : 0xff, word(d, slot, 0), word(d, slot, 1));
	check(!memcmp(data(d, 128 * 1024), text, TEXT_BYTES) && data(d, 128 * 1024)[TEXT_BYTES] == 0,
	      "%s: the output is the input, and nothing past it is written", name);
	check(word(d, slot, 31) == want && word(d, slot, 30) == TEXT_BYTES,
	      "%s: inflate's checksum 0x%08x and isize %u", name, word(d, slot, 31), word(d, slot, 30));
}

/* Submits one request, waits for it, returns its status (0xff: none came). */
static unsigned one(struct uq *q, unsigned type, unsigned level, uint64_t src, uint32_t in_len,
		    uint64_t dst, uint32_t cap, uint64_t *fault)
{
	uint32_t slot = submit(q, type, level, src, in_len, dst, cap, 1);
	int s = reap(q, NULL);

	if (s != (int)slot)
		return 0xff;
	if (fault)
		*fault = word(q, slot, 24) | (uint64_t)word(q, slot, 25) << 32;
	return status_of(q, slot);
}

static void engine_checks(long dus_size, size_t ring_bytes)
{
	struct uq c, d;
	uint8_t *text = malloc(TEXT_BYTES);
	size_t R = ring_bytes, data_bytes = dus_size - ring_bytes;
	uint64_t fault;
	unsigned st;
	uint32_t i, n, first, ok, order;
	int s;

	make_text(text, TEXT_BYTES);
	check(uq_open(&c, 0, dus_size, ring_bytes) == 0, "a compress queue starts");
	check(uq_open(&d, 1, dus_size, ring_bytes) == 0, "a decompress queue starts");
	if (c.fd < 0 || d.fd < 0)
		return;
	round_trip(&c, &d, TYPE_DEFLATE, "deflate", text);
	round_trip(&c, &d, TYPE_ZLIB, "zlib", text);
	round_trip(&c, &d, TYPE_GZIP, "gzip", text);

	/* Level 0 stores: output larger than the input is 0x0d, not an error. */
	st = one(&c, TYPE_DEFLATE, 0, R, 100, R + 4096, 4096, NULL);
	check(st == 0x0d, "level 0 on 100 bytes: output larger than input (0x%02x)", st);
	st = one(&c, TYPE_DEFLATE, 6, R, TEXT_BYTES, R + 128 * 1024, 100, NULL);
	check(st == ST_DST_TOO_SMALL, "a destination too small is 0x0e (0x%02x)", st);
	memset(data(&d, 0), 0xff, 4096);
	st = one(&d, TYPE_DEFLATE, 0, R, 4096, R + 8192, 65536, NULL);
	check(st == ST_CORRUPT, "inflating garbage is 0x02 (0x%02x)", st);
	st = one(&c, 0x10, 1, R, 100, R + 4096, 4096, NULL);
	check(st == ST_BAD_REQUEST, "zstd (not offered) is 0x01 (0x%02x)", st);
	st = one(&c, TYPE_DEFLATE, 10, R, 100, R + 4096, 4096, NULL);
	check(st == ST_BAD_REQUEST, "level 10 is 0x01 (0x%02x)", st);

	/* Addresses are offsets into the DUS region, inside its data area. */
	st = one(&c, TYPE_DEFLATE, 1, 0, 100, R + 4096, 4096, &fault);
	check(st == ST_PAGE_FAULT && fault == 0, "a source in the rings is 0x1f at 0 (0x%02x, 0x%llx)",
	      st, (unsigned long long)fault);
	st = one(&c, TYPE_DEFLATE, 1, R, 100, R - 4096, 4096, &fault);
	check(st == ST_PAGE_FAULT && fault == R - 4096, "a destination in the status page is 0x1f (0x%02x, 0x%llx)",
	      st, (unsigned long long)fault);
	st = one(&c, TYPE_DEFLATE, 1, dus_size - 10, 100, R + 4096, 4096, &fault);
	check(st == ST_PAGE_FAULT && fault == (uint64_t)dus_size,
	      "a source running past the region is 0x1f at its end (0x%02x, 0x%llx)", st, (unsigned long long)fault);
	st = one(&c, TYPE_DEFLATE, 1, R, 100, dus_size - 100, 4096, &fault);
	check(st == ST_PAGE_FAULT && fault == (uint64_t)dus_size,
	      "a destination capacity running past the region is 0x1f (0x%02x, 0x%llx)", st, (unsigned long long)fault);
	st = one(&c, TYPE_DEFLATE, 1, 0xffffffffffffff00ull, 0x200, R + 4096, 4096, &fault);
	check(st == ST_PAGE_FAULT && fault == 0xffffffffffffff00ull, "an offset that wraps 64 bits is 0x1f (0x%02x)", st);
	st = one(&c, TYPE_DEFLATE, 1, (uint64_t)(uintptr_t)data(&c, 0), 100, R + 4096, 4096, &fault);
	check(st == ST_PAGE_FAULT, "the data area's process address is 0x1f: addresses are offsets (0x%02x)", st);
	st = one(&c, TYPE_DEFLATE, 1, R, 100, R + 4096, 4096, NULL);
	check(st == ST_OK, "the queue serves the next request after the faults (0x%02x)", st);

	/*
	 * A full ring: depth - 1 requests in flight (one slot stays free),
	 * each compressing a different 256-byte piece as zlib, rung one by
	 * one; they complete in SQ order (the checksum says which input each
	 * took). Then more, so SQ, CQ and the phase wrap.
	 */
	for (i = 0; i < (uint32_t)(data_bytes / 2 / 256) && i < 2 * EXPECT_DEPTH; i++)
		memcpy(data(&c, i * 256), text + (i * 97) % (TEXT_BYTES - 256), 256);
	n = EXPECT_DEPTH - 1;
	first = c.tail;
	for (i = 0; i < n; i++)
		submit(&c, TYPE_ZLIB, 1, R + (size_t)i * 256, 256,
		       R + data_bytes / 2 + (size_t)i * 512, 512, 1);
	check((c.tail + 1) % c.depth == c.head, "the SQ is full (%u in flight)", n);
	ok = order = 0;
	for (i = 0; i < n; i++) {
		uint32_t want_slot = (first + i) % c.depth;

		s = reap(&c, NULL);
		if (s != (int)want_slot)
			break;
		order++;
		if (status_of(&c, s) == ST_OK &&
		    word(&c, s, 31) == adler32(text + (i * 97) % (TEXT_BYTES - 256), 256))
			ok++;
		if (i % 64 == 63)
			cq_doorbell(&c);	/* now and then, while SQ doorbells may be unread */
	}
	check(order == n, "%u of %u completions come in SQ order", order, n);
	check(ok == n, "%u of %u have status 0 and their own input's Adler-32", ok, n);
	/* Past the wrap, one SQ doorbell for all, a CQ doorbell right after. */
	first = c.tail;
	for (i = 0; i < 40; i++)
		submit(&c, TYPE_ZLIB, 1, R + (size_t)i * 256, 256,
		       R + data_bytes / 2 + (size_t)i * 512, 512, 0);
	doorbell(&c, 0, c.tail);
	cq_doorbell(&c);
	ok = 0;
	for (i = 0; i < 40; i++) {
		s = reap(&c, NULL);
		if (s < 0)
			break;	/* fail in WAIT_MS, not 40 times that */
		if (s == (int)((first + i) % c.depth) && status_of(&c, s) == ST_OK &&
		    word(&c, s, 31) == adler32(text + (i * 97) % (TEXT_BYTES - 256), 256))
			ok++;
	}
	check(ok == 40 && c.phase == 0, "40 more across the wrap complete in order with phase 0 (%u, phase %u)",
	      ok, c.phase);

	/* close with requests in flight: the queue goes, the device stays. */
	for (i = 0; i < 100; i++)
		submit(&c, TYPE_DEFLATE, 9, R, TEXT_BYTES, R + data_bytes / 2, 128 * 1024, 1);
	uq_close(&c);
	uq_close(&d);
	check(attr_long("available_instances") == EXPECT_QUEUES,
	      "closing queues with requests in flight gives their instances back");
	check(uq_open(&c, 0, dus_size, ring_bytes) == 0 &&
	      one(&c, TYPE_DEFLATE, 1, R, 100, R + 4096, 4096, NULL) == ST_OK,
	      "a new queue serves after that");
	uq_close(&c);
	free(text);
}

static int write_file(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), ok;

	if (fd < 0)
		return -1;
	ok = write(fd, value, strlen(value)) == (ssize_t)strlen(value);
	close(fd);
	return ok ? 0 : -1;
}

static uint32_t stop_word(struct uq *q, int which)
{
	return __atomic_load_n((uint32_t *)((char *)q->dus + q->ring_bytes - 8 + 4 * which), __ATOMIC_ACQUIRE);
}

/*
 * Faults the device can be made to show (docs/warpdrive.md, "Faults from
 * the kernel"): a reset through the parent device's reset attribute, and
 * requests whose source address the engine takes as bad.
 */
static void fault_checks(long dus_size, size_t ring_bytes)
{
	char reset_path[400], resets_path[400];
	struct uq c, idle, fresh;
	struct pollfd pfd;
	size_t R = ring_bytes;
	uint64_t fault;
	uint32_t slot, irq;
	unsigned st;
	long resets;
	int s, r;

	snprintf(reset_path, sizeof(reset_path), "%s/device/reset", sysdir);
	snprintf(resets_path, sizeof(resets_path), "%s/device/resets", sysdir);

	/* Bad addresses: the next two requests fault, the third is served. */
	check(uq_open(&c, 0, dus_size, ring_bytes) == 0, "a queue for the bad-address requests");
	if (c.fd < 0)
		return;
	memset(data(&c, 0), 'a', 4096);
	check(write_file(BAD_ADDRESS_PARAM, "2") == 0 && file_long(BAD_ADDRESS_PARAM) == 2,
	      "bad_address_requests takes 2");
	st = one(&c, TYPE_DEFLATE, 1, R, 4096, R + 8192, 8192, &fault);
	check(st == ST_PAGE_FAULT && fault == R + (uint64_t)dus_size,
	      "a request with a bad address is 0x1f at that address (0x%02x, 0x%llx)", st, (unsigned long long)fault);
	st = one(&c, TYPE_DEFLATE, 1, R, 4096, R + 8192, 8192, &fault);
	check(st == ST_PAGE_FAULT && file_long(BAD_ADDRESS_PARAM) == 0,
	      "so is the second, and the count is used up (0x%02x, %ld)", st, file_long(BAD_ADDRESS_PARAM));
	st = one(&c, TYPE_DEFLATE, 1, R, 4096, R + 8192, 8192, NULL);
	check(st == ST_OK, "the queue serves the next request (0x%02x)", st);
	check(write_file(BAD_ADDRESS_PARAM, "-1") != 0 && file_long(BAD_ADDRESS_PARAM) == 0,
	      "bad_address_requests refuses -1");

	/*
	 * A reset: the started queue is fenced (stop words, a wake-up, never
	 * served again); a queue still in INIT is not; new queues work.
	 */
	memset(&idle, 0, sizeof(idle));
	idle.fd = open(devpath, O_RDWR | O_CLOEXEC);
	check(idle.fd >= 0, "a second queue opened, not started");
	resets = file_long(resets_path);
	check(resets >= 0, "%s reads (%ld)", resets_path, resets);
	check(stop_word(&c, 0) == 0 && stop_word(&c, 1) == 0, "the stop words are 0 before the reset");
	irq = *(volatile uint32_t *)((char *)c.dus + (size_t)c.depth * 144);
	check(write_file(reset_path, "2") != 0, "writing 2 to reset is refused");
	check(write_file(reset_path, "1") == 0, "writing 1 to %s", reset_path);
	check(file_long(resets_path) == resets + 1, "resets counts it (%ld)", file_long(resets_path));
	check(stop_word(&c, 0) == 1 && stop_word(&c, 1) == 1, "the started queue's stop words are set");
	check(*(volatile uint32_t *)((char *)c.dus + (size_t)c.depth * 144) == irq + 1,
	      "its interrupt counter moved");
	pfd.fd = c.fd;
	pfd.events = POLLIN;
	pfd.revents = 0;
	r = poll(&pfd, 1, 1000);
	check(r == 1 && (pfd.revents & POLLIN), "poll() reports the reset (%d)", r);
	memset(data(&c, 0), 'b', 4096);
	slot = submit(&c, TYPE_DEFLATE, 1, R, 4096, R + 8192, 8192, 1);
	usleep(100 * 1000);
	check((cqe_word(&c, c.cq_head, 3) >> 16 & 1) != c.phase && status_of(&c, slot) == 0 && word(&c, slot, 1) == 0,
	      "a request on the fenced queue is never served");
	check(ioctl(c.fd, UACCE_CMD_START_Q) < 0 && errno == EINVAL, "START_Q on the fenced queue is EINVAL");
	if (idle.fd >= 0) {
		struct hisi_qp_ctx ctx = { .qc_type = 0 };

		idle.depth = EXPECT_DEPTH;
		idle.phase = 1;
		idle.dus_size = dus_size;
		idle.ring_bytes = ring_bytes;
		idle.mmio = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, idle.fd, 0);
		idle.dus = mmap(NULL, dus_size, PROT_READ | PROT_WRITE, MAP_SHARED, idle.fd, PAGE);
		r = idle.mmio == MAP_FAILED || idle.dus == MAP_FAILED ||
		    ioctl(idle.fd, UACCE_CMD_QM_SET_QP_CTX, &ctx) || ioctl(idle.fd, UACCE_CMD_START_Q);
		idle.qn = ctx.id;
		check(!r && stop_word(&idle, 0) == 0, "the queue that was in INIT starts after the reset");
		if (!r) {
			memset(data(&idle, 0), 'c', 4096);
			st = one(&idle, TYPE_DEFLATE, 1, R, 4096, R + 8192, 8192, NULL);
			check(st == ST_OK, "and is served (0x%02x)", st);
		}
		uq_close(&idle);
	}
	uq_close(&c);
	check(uq_open(&fresh, 0, dus_size, ring_bytes) == 0, "a queue opened after the reset starts");
	if (fresh.fd >= 0) {
		st = one(&fresh, TYPE_DEFLATE, 1, R, 100, R + 4096, 4096, NULL);
		check(st == ST_OK && stop_word(&fresh, 0) == 0, "and is served (0x%02x)", st);
		/* A reset with requests queued: none completes, the stop words say why. */
		for (s = 0; s < 50; s++)
			submit(&fresh, TYPE_DEFLATE, 9, R, TEXT_BYTES, R + 128 * 1024, 128 * 1024, 1);
		check(write_file(reset_path, "1") == 0, "a reset with 50 level-9 requests queued");
		usleep(200 * 1000);
		for (s = 0; s < 50 && (cqe_word(&fresh, fresh.cq_head, 3) >> 16 & 1) == fresh.phase; s++)
			fresh.cq_head++;
		usleep(200 * 1000);
		check(s < 50 && (cqe_word(&fresh, fresh.cq_head, 3) >> 16 & 1) != fresh.phase &&
		      stop_word(&fresh, 0) == 1 && stop_word(&fresh, 1) == 1,
		      "%d of 50 completed before the fence, none after; the stop words are set", s);
		uq_close(&fresh);
	}
	check(attr_long("available_instances") == EXPECT_QUEUES, "every instance is back after the resets");
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
	check(!strcmp(attr("api", buf, sizeof(buf)), "warpdrive_zip_v1"), "api is warpdrive_zip_v1 (%s)", buf);
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

	engine_checks(dus_size, ring_bytes);
	fault_checks(dus_size, ring_bytes);

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
