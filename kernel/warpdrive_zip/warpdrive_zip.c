// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * warpdrive_zip: a uacce device with WarpDrive's emulated ZIP queue layout.
 *
 * It registers one device, "warpdrive_zip-<id>", through the kernel's uacce
 * framework (uacce_alloc/uacce_register), so that /sys/class/uacce/<name>
 * and /dev/<name> behave as for a HiSilicon ZIP device: open() takes a queue,
 * mmap() at region * PAGE_SIZE maps the MMIO region (region 0, two pages,
 * the doorbell at 0x1000) and the DUS region (region 1: SQ, CQ, status
 * page, the two stop words at its end; see docs/warpdrive.md section 2),
 * UACCE_CMD_QM_SET_QP_CTX sets the direction, UACCE_CMD_START_Q and
 * UACCE_CMD_PUT_Q start and stop it.
 *
 * The engine is one kernel thread per device. The regions are ordinary
 * kernel memory (vmalloc_user), so a doorbell store does not trap: the
 * thread polls the doorbell word of every started queue (with a short sleep
 * when idle), serves SQEs in order with the kernel's zlib, writes the
 * results into the SQE, posts the CQE with its phase bit and wakes poll().
 * Without SVA (flags 0) an SQE's addresses are byte offsets into the
 * queue's DUS region, inside the data area that follows the rings. See
 * README.md for the contract and how it differs from the emulator.
 */
#include <linux/bitmap.h>
#include <linux/crc32.h>
#include <linux/delay.h>
#include <linux/err.h>
#include <linux/kthread.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/platform_device.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uacce.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <linux/wait.h>
#include <linux/zlib.h>
#include <linux/zutil.h>
#include <uapi/misc/uacce/hisi_qm.h>

#define WDZ_NAME		"warpdrive_zip"
/*
 * Its own api string, not hisi_qm_v2: the rings are the QM's, but the SQE
 * carries the emulation's fields (level, page-fault address) and buffers
 * are offsets into the DUS region, not DMA addresses. A client must not
 * mistake a HiSilicon device for this one or this one for it.
 */
#define WDZ_API			"warpdrive_zip_v1"
#define WDZ_ALGORITHMS		"deflate\nzlib\ngzip"
#define WDZ_SQE_SIZE		128
#define WDZ_CQE_SIZE		16
#define WDZ_STATUS_SIZE		4096
#define WDZ_MMIO_SIZE		(2 * 4096)
#define WDZ_MAX_QUEUES		64
#define WDZ_DOORBELL		0x1000
#define WDZ_MAX_REQUEST		(8U << 20)	/* ZipSQE.maxRequestBytes */
#define WDZ_MAX_DATA_KIB	(256U << 10)	/* 256 MiB per queue at most */

/* SQE dwords, request types, status codes: shared with the VM checker. */
#include "warpdrive_zip_abi.h"

/*
 * Idle polling: after work, the engine checks the doorbells every
 * WDZ_FAST_POLL_US for WDZ_FAST_POLLS rounds (about 2 ms), then every
 * WDZ_SLOW_POLL_US; with no queue started it sleeps until one starts.
 */
#define WDZ_FAST_POLL_US	50
#define WDZ_FAST_POLLS		40
#define WDZ_SLOW_POLL_US	1000
/* Deflate input is fed in pieces of this size, with a reschedule between. */
#define WDZ_DEFLATE_CHUNK	(256U << 10)

static unsigned int queues = 4;
module_param(queues, uint, 0444);
MODULE_PARM_DESC(queues, "queue pairs of the device (1..64, default 4)");

static unsigned int depth = 1024;
module_param(depth, uint, 0444);
MODULE_PARM_DESC(depth, "entries per SQ and CQ (2..32768, default 1024)");

static unsigned int data_kib = 4096;
module_param(data_kib, uint, 0444);
MODULE_PARM_DESC(data_kib, "KiB of each queue's DUS data area after the rings, for request buffers (0..262144, rounded up to pages, default 4096)");

/*
 * Fault injection: while positive, each request served takes one off and
 * is treated as if its source address lay one DUS size further on (outside
 * the region): it completes with status 0x1f and that address, as a request
 * with a bad address does. Written at run time through
 * /sys/module/warpdrive_zip/parameters/bad_address_requests.
 */
static atomic_t bad_address_requests = ATOMIC_INIT(0);

static int wdz_set_bad_address_requests(const char *val, const struct kernel_param *kp)
{
	unsigned int n;
	int ret = kstrtouint(val, 0, &n);

	if (ret)
		return ret;
	if (n > INT_MAX)
		return -EINVAL;
	atomic_set(&bad_address_requests, n);
	return 0;
}

static int wdz_get_bad_address_requests(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&bad_address_requests));
}

static const struct kernel_param_ops wdz_bad_address_ops = {
	.set = wdz_set_bad_address_requests,
	.get = wdz_get_bad_address_requests,
};
module_param_cb(bad_address_requests, &wdz_bad_address_ops, NULL, 0644);
MODULE_PARM_DESC(bad_address_requests, "the next N requests fault on their source address (fault injection, default 0)");

struct wdz_device {
	struct platform_device *pdev;
	struct uacce_device *uacce;
	spinlock_t lock;		/* protects used */
	DECLARE_BITMAP(used, WDZ_MAX_QUEUES);
	unsigned int nqueues;
	unsigned int depth;
	size_t ring_size;		/* SQ + CQ + status page: RingLayout.dusSize */
	size_t data_size;		/* the data area, from ring_size to the end */
	size_t dus_size;		/* ring_size + data_size */

	/* The engine. */
	struct task_struct *engine;
	wait_queue_head_t engine_wait;	/* the engine sleeps here with nothing started */
	/*
	 * Held by the engine while it serves requests, and by start/stop to
	 * change active[]: once stop_queue returns, the engine no longer
	 * touches that queue's memory.
	 */
	struct mutex engine_lock;
	struct wdz_queue *active[WDZ_MAX_QUEUES];
	unsigned int nactive;
	unsigned int next;		/* round robin: where the next pass starts */
	atomic_t resets;		/* fences: writes to the reset attribute, and removal */
	atomic64_t requests;		/* requests served (a CQE posted), since load */
	z_stream strm;			/* the engine's stream; workspaces below */
	void *deflate_ws;
	void *inflate_ws;
};

struct wdz_queue {
	struct wdz_device *wdz;
	unsigned int qn;
	void *mmio;			/* region 0: doorbell page at 0x1000 */
	void *dus;			/* region 1: SQ, CQ, status page, stop words */
	u16 qc_type;
	bool ctx_set;
	struct uacce_queue *uq;

	/* Engine state, under wdz->engine_lock. */
	u64 last_doorbell;		/* the doorbell word as last seen */
	u32 sq_tail;			/* from the last valid SQ doorbell */
	u32 sq_head;			/* next SQ slot to serve */
	u32 cq_tail;			/* next CQ slot to post */
	u32 cq_phase;			/* phase of the CQEs being posted */
	u32 cq_head;			/* from the last CQ doorbell (informational) */
	/* poll(): completions posted, and how many a poll() has reported. */
	atomic_t posted;
	int polled;
	atomic_t bad_doorbells;
};

/* Ring geometry, the same as RingLayout in Sources/WarpDrive/Protocol. */
static size_t wdz_ring_size(unsigned int d)
{
	size_t raw = (size_t)d * (WDZ_SQE_SIZE + WDZ_CQE_SIZE) + WDZ_STATUS_SIZE;

	return PAGE_ALIGN(raw);
}

/* The engine: one kernel thread per device. */

struct wdz_result {
	u32 status;
	u32 consumed;
	u32 produced;
	u32 checksum;
	u32 isize;
	bool end_of_stream;
	u64 fault_address;
};

/*
 * An SQE address names [addr, addr + len) of the queue's DUS region; it must
 * lie inside the data area (ring_size .. dus_size). Returns the kernel
 * address, or NULL with the first address outside the area in *fault (the
 * address itself when it does not start inside).
 */
static void *wdz_translate(struct wdz_queue *wq, u64 addr, u32 len, u64 *fault)
{
	struct wdz_device *wdz = wq->wdz;

	if (addr < wdz->ring_size || addr > wdz->dus_size) {
		*fault = addr;
		return NULL;
	}
	if (len > wdz->dus_size - addr) {
		*fault = wdz->dus_size;
		return NULL;
	}
	return wq->dus + addr;
}

static unsigned int wdz_window_bits(unsigned int window)
{
	/* 4K, 8K, 16K, 24K (zlib has none: 16K, never more than asked), 32K */
	static const unsigned int bits[] = { 12, 13, 14, 14, 15 };

	return bits[window];
}

static u32 wdz_checksum(unsigned int type, const u8 *buf, u32 len)
{
	if (type == TYPE_ZLIB)
		return zlib_adler32(1, buf, len);
	if (type == TYPE_GZIP)
		return crc32_le(~0U, buf, len) ^ ~0U;
	return 0;
}

/* Raw deflate of the whole input; the status as the emulator's zlib path. */
static void wdz_deflate(struct wdz_device *wdz, unsigned int level,
			unsigned int window_bits, const u8 *in, u32 in_len,
			u8 *out, u32 cap, struct wdz_result *r)
{
	z_stream *s = &wdz->strm;
	u32 left = in_len;
	int rc;

	s->workspace = wdz->deflate_ws;
	if (zlib_deflateInit2(s, level, Z_DEFLATED, -(int)window_bits,
			      MAX_MEM_LEVEL, Z_DEFAULT_STRATEGY) != Z_OK) {
		r->status = ST_ENGINE_ERROR;
		return;
	}
	s->next_in = in;
	s->avail_in = 0;
	s->next_out = out;
	s->avail_out = cap;
	/*
	 * The input goes in pieces so that a large request at a high level
	 * reschedules now and then; the output is the same as in one call.
	 */
	for (;;) {
		u32 piece = min(left, WDZ_DEFLATE_CHUNK);

		s->avail_in += piece;
		left -= piece;
		rc = zlib_deflate(s, left ? Z_NO_FLUSH : Z_FINISH);
		if (!left || rc != Z_OK || (s->avail_out == 0 && s->avail_in))
			break;
		cond_resched();
	}
	r->isize = in_len;
	if (rc != Z_STREAM_END) {
		r->status = ST_DST_TOO_SMALL;
	} else {
		r->consumed = in_len;
		r->produced = s->total_out;
		r->status = r->produced > in_len ? ST_NEGATIVE : ST_OK;
	}
	zlib_deflateEnd(s);
}

/* Inflate of a whole raw deflate stream. */
static void wdz_inflate(struct wdz_device *wdz, const u8 *in, u32 in_len,
			u8 *out, u32 cap, struct wdz_result *r)
{
	z_stream *s = &wdz->strm;
	int rc;

	s->workspace = wdz->inflate_ws;
	if (zlib_inflateInit2(s, -MAX_WBITS) != Z_OK) {
		r->status = ST_ENGINE_ERROR;
		return;
	}
	s->next_in = in;
	s->avail_in = in_len;
	s->next_out = out;
	s->avail_out = cap;
	rc = zlib_inflate(s, Z_FINISH);
	r->consumed = in_len - s->avail_in;
	r->produced = cap - s->avail_out;
	if (rc == Z_STREAM_END) {
		r->status = ST_END_OF_STREAM;
		r->end_of_stream = true;
	} else if ((rc == Z_OK || rc == Z_BUF_ERROR) && s->avail_out == 0) {
		r->status = ST_DST_TOO_SMALL;
	} else {
		/* bad data, or input that ends before the stream does */
		r->status = ST_CORRUPT;
	}
	r->isize = r->produced;
	zlib_inflateEnd(s);
}

/* One request: w is the engine's own copy of the SQE (read once). */
static void wdz_execute(struct wdz_queue *wq, const u32 *w, struct wdz_result *r)
{
	struct wdz_device *wdz = wq->wdz;
	unsigned int type = w[SQE_TYPE_WORD] & 0xff;
	unsigned int window = (w[SQE_TYPE_WORD] >> 12) & 0xf;
	unsigned int level = (w[SQE_TYPE_WORD] >> 16) & 0xff;
	bool compress = wq->qc_type == 0;
	u32 in_len = w[SQE_IN_LEN];
	u32 cap = min(w[SQE_DST_CAP], WDZ_MAX_REQUEST);
	u64 src = w[SQE_SRC_LO] | (u64)w[SQE_SRC_HI] << 32;
	u64 dst = w[SQE_DST_LO] | (u64)w[SQE_DST_HI] << 32;
	u8 *in, *out;

	memset(r, 0, sizeof(*r));
	if (type < TYPE_DEFLATE || type > TYPE_GZIP || window > 4 ||
	    (compress && level > 9) || in_len > WDZ_MAX_REQUEST) {
		r->status = ST_BAD_REQUEST;
		return;
	}
	if (atomic_add_unless(&bad_address_requests, -1, 0))
		src += wdz->dus_size;
	in = wdz_translate(wq, src, in_len, &r->fault_address);
	if (!in) {
		r->status = ST_PAGE_FAULT;
		return;
	}
	out = wdz_translate(wq, dst, cap, &r->fault_address);
	if (!out) {
		r->status = ST_PAGE_FAULT;
		return;
	}
	if (compress) {
		wdz_deflate(wdz, level, wdz_window_bits(window), in, in_len,
			    out, cap, r);
		if (r->status == ST_OK || r->status == ST_NEGATIVE)
			r->checksum = wdz_checksum(type, in, in_len);
	} else {
		wdz_inflate(wdz, in, in_len, out, cap, r);
		if (r->produced > 0 || r->status == ST_END_OF_STREAM)
			r->checksum = wdz_checksum(type, out, r->produced);
	}
}

/*
 * Reads the queue's doorbell word. The regions are plain memory, so a store
 * does not trap and a later store replaces an earlier one: the engine acts
 * on the word's value. An SQ doorbell (cmd 0) sets the tail; a CQ doorbell
 * (cmd 1) is recorded only (the engine needs none: it posts in SQ order and
 * a client keeps one SQ slot free, so the CQ never holds more than
 * depth - 1 unconsumed entries). A word for another queue or with an index
 * out of range is counted and ignored, as by the emulator.
 */
static void wdz_read_doorbell(struct wdz_queue *wq)
{
	u64 raw = smp_load_acquire((u64 *)(wq->mmio + WDZ_DOORBELL));
	unsigned int qn = raw & 0x3ff, cmd = (raw >> 12) & 0xf;
	unsigned int index = (raw >> 32) & 0xffff;

	if (raw == wq->last_doorbell)
		return;
	wq->last_doorbell = raw;
	if (qn != wq->qn || index >= wq->wdz->depth || cmd > 1) {
		atomic_inc(&wq->bad_doorbells);
		return;
	}
	if (cmd == 0)
		wq->sq_tail = index;
	else
		wq->cq_head = index;
}

/* Serves the SQE at sq_head and posts its CQE. */
static void wdz_serve_one(struct wdz_queue *wq)
{
	struct wdz_device *wdz = wq->wdz;
	u32 slot = wq->sq_head;
	__le32 *sqe = wq->dus + (size_t)slot * WDZ_SQE_SIZE;
	__le32 *cqe = wq->dus + (size_t)wdz->depth * WDZ_SQE_SIZE +
		      (size_t)wq->cq_tail * WDZ_CQE_SIZE;
	struct wdz_result r;
	u32 w[WDZ_SQE_SIZE / 4];
	unsigned int i;

	/* One read of the entry: the client shares it. */
	for (i = 0; i < ARRAY_SIZE(w); i++)
		w[i] = le32_to_cpu(READ_ONCE(sqe[i]));
	wdz_execute(wq, w, &r);
	atomic64_inc(&wdz->requests);

	/* Only the device's words, whole, as the hardware writes them. */
	WRITE_ONCE(sqe[SQE_CONSUMED], cpu_to_le32(r.consumed));
	WRITE_ONCE(sqe[SQE_PRODUCED], cpu_to_le32(r.produced));
	WRITE_ONCE(sqe[SQE_STATUS], cpu_to_le32(r.status | (r.end_of_stream ? 1U << 8 : 0)));
	WRITE_ONCE(sqe[SQE_FAULT_LO], cpu_to_le32(lower_32_bits(r.fault_address)));
	WRITE_ONCE(sqe[SQE_FAULT_HI], cpu_to_le32(upper_32_bits(r.fault_address)));
	WRITE_ONCE(sqe[SQE_ISIZE], cpu_to_le32(r.isize));
	WRITE_ONCE(sqe[SQE_CHECKSUM], cpu_to_le32(r.checksum));

	/* The CQE: sq_head | sq_num << 16 in word 2, the phase word last. */
	WRITE_ONCE(cqe[0], 0);
	WRITE_ONCE(cqe[1], 0);
	WRITE_ONCE(cqe[2], cpu_to_le32(slot | wq->qn << 16));
	smp_store_release(&cqe[3], cpu_to_le32(wq->cq_phase << 16));

	wq->sq_head = (slot + 1) % wdz->depth;
	if (++wq->cq_tail == wdz->depth) {
		wq->cq_tail = 0;
		wq->cq_phase ^= 1;
	}
	/*
	 * The status page's interrupt counter (word 0) moves once per
	 * completion, so a client that spins on it sees progress; sleeping
	 * waiters are woken through poll() only (no futex wake from here).
	 */
	atomic_inc((atomic_t *)(wq->dus + (size_t)wdz->depth * (WDZ_SQE_SIZE + WDZ_CQE_SIZE)));
	atomic_inc(&wq->posted);
	wake_up_interruptible(&wq->uq->wait);
}

/*
 * One pass over the started queues, from where the last pass left off:
 * each queue with work gets one request. Returns the requests served.
 */
static unsigned int wdz_engine_pass(struct wdz_device *wdz)
{
	unsigned int i, served = 0;

	mutex_lock(&wdz->engine_lock);
	for (i = 0; i < wdz->nqueues; i++) {
		unsigned int qn = (wdz->next + i) % wdz->nqueues;
		struct wdz_queue *wq = wdz->active[qn];

		if (!wq)
			continue;
		wdz_read_doorbell(wq);
		if (wq->sq_head != wq->sq_tail) {
			wdz_serve_one(wq);
			served++;
		}
	}
	wdz->next = (wdz->next + 1) % wdz->nqueues;
	mutex_unlock(&wdz->engine_lock);
	return served;
}

static int wdz_engine(void *data)
{
	struct wdz_device *wdz = data;
	unsigned int idle = 0;

	while (!kthread_should_stop()) {
		if (!READ_ONCE(wdz->nactive)) {
			wait_event_interruptible(wdz->engine_wait,
						 READ_ONCE(wdz->nactive) ||
						 kthread_should_stop());
			continue;
		}
		if (wdz_engine_pass(wdz)) {
			idle = 0;
			cond_resched();
			continue;
		}
		/* Idle: poll the doorbells with a short sleep (no interrupt to wait for). */
		if (idle < WDZ_FAST_POLLS) {
			idle++;
			usleep_idle_range(WDZ_FAST_POLL_US, 2 * WDZ_FAST_POLL_US);
		} else {
			usleep_idle_range(WDZ_SLOW_POLL_US, 2 * WDZ_SLOW_POLL_US);
		}
	}
	return 0;
}

static int wdz_get_available_instances(struct uacce_device *uacce)
{
	struct wdz_device *wdz = uacce->priv;
	int n;

	spin_lock(&wdz->lock);
	n = wdz->nqueues - bitmap_weight(wdz->used, wdz->nqueues);
	spin_unlock(&wdz->lock);
	return n;
}

static int wdz_get_queue(struct uacce_device *uacce, unsigned long pasid,
			 struct uacce_queue *q)
{
	struct wdz_device *wdz = uacce->priv;
	struct wdz_queue *wq;
	unsigned int qn;

	wq = kzalloc(sizeof(*wq), GFP_KERNEL);
	if (!wq)
		return -ENOMEM;
	wq->mmio = vmalloc_user(WDZ_MMIO_SIZE);
	wq->dus = vmalloc_user(wdz->dus_size);
	if (!wq->mmio || !wq->dus)
		goto nomem;

	spin_lock(&wdz->lock);
	qn = find_first_zero_bit(wdz->used, wdz->nqueues);
	if (qn >= wdz->nqueues) {
		spin_unlock(&wdz->lock);
		vfree(wq->mmio);
		vfree(wq->dus);
		kfree(wq);
		return -EBUSY;
	}
	set_bit(qn, wdz->used);
	spin_unlock(&wdz->lock);

	wq->wdz = wdz;
	wq->qn = qn;
	wq->uq = q;
	q->priv = wq;
	return 0;

nomem:
	vfree(wq->mmio);
	vfree(wq->dus);
	kfree(wq);
	return -ENOMEM;
}

/*
 * Called on the last close() and by uacce_remove() (the device going away
 * with the queue open). In the latter case uacce has already zapped the
 * user mappings, so later accesses fault; the pages themselves go when the
 * last reference to them does.
 */
static void wdz_put_queue(struct uacce_queue *q)
{
	struct wdz_queue *wq = q->priv;
	struct wdz_device *wdz = wq->wdz;

	spin_lock(&wdz->lock);
	clear_bit(wq->qn, wdz->used);
	spin_unlock(&wdz->lock);
	vfree(wq->mmio);
	vfree(wq->dus);
	kfree(wq);
	q->priv = NULL;
}

/*
 * START_Q needs both regions mapped, as WarpDrive's Queue.start() does. The
 * queue starts empty: the CQ is cleared, the first CQEs carry phase 1, and
 * a doorbell word stored before the start is taken as seen (as the
 * emulator ignores doorbells of a queue not started).
 */
static int wdz_start_queue(struct uacce_queue *q)
{
	struct wdz_queue *wq = q->priv;
	struct wdz_device *wdz = wq->wdz;

	if (!q->qfrs[UACCE_QFRT_MMIO] || !q->qfrs[UACCE_QFRT_DUS])
		return -EINVAL;
	mutex_lock(&wdz->engine_lock);
	memset(wq->dus + (size_t)wdz->depth * WDZ_SQE_SIZE, 0,
	       (size_t)wdz->depth * WDZ_CQE_SIZE);
	wq->last_doorbell = READ_ONCE(*(u64 *)(wq->mmio + WDZ_DOORBELL));
	wq->sq_tail = 0;
	wq->sq_head = 0;
	wq->cq_tail = 0;
	wq->cq_phase = 1;
	wq->cq_head = 0;
	atomic_set(&wq->posted, 0);
	wq->polled = 0;
	wdz->active[wq->qn] = wq;
	wdz->nactive++;
	mutex_unlock(&wdz->engine_lock);
	wake_up(&wdz->engine_wait);
	return 0;
}

/*
 * PUT_Q, close() and device removal: the engine finishes the request it is
 * serving (it holds engine_lock meanwhile) and never looks at the queue
 * again. Requests not yet served are dropped.
 */
static void wdz_stop_queue(struct uacce_queue *q)
{
	struct wdz_queue *wq = q->priv;
	struct wdz_device *wdz = wq->wdz;

	mutex_lock(&wdz->engine_lock);
	if (wdz->active[wq->qn] == wq) {
		wdz->active[wq->qn] = NULL;
		wdz->nactive--;
	}
	mutex_unlock(&wdz->engine_lock);
}

/*
 * A reset, as the HiSilicon QM's (qm_set_qp_disable): every started queue
 * is taken from the engine (the request being served finishes first: the
 * engine holds engine_lock), its two stop words at the end of the ring part
 * of the DUS region (ring_size - 8: rx, ring_size - 4: tx) are set to 1,
 * and its waiters are woken (the interrupt counter moves and poll() reports
 * readiness once), so a client sees the reset at its next look at the
 * queue. Requests not yet served are dropped. A fenced queue stays open but
 * is never served again: its client opens a new one, which works normally.
 * Returns the number of queues fenced.
 */
static unsigned int wdz_fence(struct wdz_device *wdz)
{
	unsigned int qn, fenced = 0;

	mutex_lock(&wdz->engine_lock);
	for (qn = 0; qn < wdz->nqueues; qn++) {
		struct wdz_queue *wq = wdz->active[qn];
		u32 *stop;

		if (!wq)
			continue;
		wdz->active[qn] = NULL;
		wdz->nactive--;
		stop = wq->dus + wdz->ring_size - 8;
		WRITE_ONCE(stop[0], cpu_to_le32(1));
		WRITE_ONCE(stop[1], cpu_to_le32(1));
		smp_wmb();
		atomic_inc((atomic_t *)(wq->dus + (size_t)wdz->depth * (WDZ_SQE_SIZE + WDZ_CQE_SIZE)));
		atomic_inc(&wq->posted);
		wake_up_interruptible(&wq->uq->wait);
		fenced++;
	}
	atomic_inc(&wdz->resets);
	mutex_unlock(&wdz->engine_lock);
	return fenced;
}

/* /sys/devices/platform/warpdrive_zip/reset: writing 1 resets the device. */
static ssize_t reset_store(struct device *dev, struct device_attribute *attr,
			   const char *buf, size_t count)
{
	struct wdz_device *wdz = dev_get_drvdata(dev);
	unsigned int v, n;
	int ret = kstrtouint(buf, 0, &v);

	if (ret)
		return ret;
	if (v != 1)
		return -EINVAL;
	n = wdz_fence(wdz);
	dev_info(dev, "reset: %u started queue%s fenced\n", n, n == 1 ? "" : "s");
	return count;
}
static DEVICE_ATTR_WO(reset);

/* .../resets: how many resets there have been since the module loaded. */
static ssize_t resets_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct wdz_device *wdz = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%d\n", atomic_read(&wdz->resets));
}
static DEVICE_ATTR_RO(resets);

/* .../requests: how many requests the engine has served since the module loaded. */
static ssize_t requests_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct wdz_device *wdz = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%lld\n", (long long)atomic64_read(&wdz->requests));
}
static DEVICE_ATTR_RO(requests);

static struct attribute *wdz_attrs[] = {
	&dev_attr_reset.attr,
	&dev_attr_resets.attr,
	&dev_attr_requests.attr,
	NULL,
};
ATTRIBUTE_GROUPS(wdz);

/*
 * poll() readiness, as hisi_qm reports it: true once for the completions
 * posted since the last poll() that reported some (uacce calls this under
 * the queue's mutex). A client reaps everything after each readiness; it
 * may see a readiness whose completions it already reaped (harmless).
 */
static int wdz_is_q_updated(struct uacce_queue *q)
{
	struct wdz_queue *wq = q->priv;
	int posted = atomic_read(&wq->posted);

	if (posted == wq->polled)
		return 0;
	wq->polled = posted;
	return 1;
}

static int wdz_mmap(struct uacce_queue *q, struct vm_area_struct *vma,
		    struct uacce_qfile_region *qfr)
{
	struct wdz_queue *wq = q->priv;
	size_t size = vma->vm_end - vma->vm_start;
	void *buf;
	size_t max;

	switch (qfr->type) {
	case UACCE_QFRT_MMIO:
		buf = wq->mmio;
		max = WDZ_MMIO_SIZE;
		break;
	case UACCE_QFRT_DUS:
		buf = wq->dus;
		max = wq->wdz->dus_size;
		break;
	default:
		return -EINVAL;
	}
	if (size > max)
		return -EINVAL;
	/*
	 * vm_pgoff is the region number, not an offset into the region: map
	 * from the region's start (the explicit 0).
	 */
	return remap_vmalloc_range(vma, buf, 0);
}

static long wdz_ioctl(struct uacce_queue *q, unsigned int cmd,
		      unsigned long arg)
{
	struct wdz_queue *wq = q->priv;
	struct hisi_qp_ctx ctx;
	struct hisi_qp_info info;

	switch (cmd) {
	case UACCE_CMD_QM_SET_QP_CTX:
		if (q->state != UACCE_Q_INIT)
			return -EINVAL;
		if (copy_from_user(&ctx, (void __user *)arg, sizeof(ctx)))
			return -EFAULT;
		if (ctx.qc_type > 1)
			return -EINVAL;
		wq->qc_type = ctx.qc_type;
		wq->ctx_set = true;
		ctx.id = wq->qn;
		if (copy_to_user((void __user *)arg, &ctx, sizeof(ctx)))
			return -EFAULT;
		return 0;
	case UACCE_CMD_QM_SET_QP_INFO:
		/* As on hisi_qm: reports the geometry, sets nothing. */
		memset(&info, 0, sizeof(info));
		info.sqe_size = WDZ_SQE_SIZE;
		info.sq_depth = wq->wdz->depth;
		info.cq_depth = wq->wdz->depth;
		if (copy_to_user((void __user *)arg, &info, sizeof(info)))
			return -EFAULT;
		return 0;
	default:
		return -EINVAL;
	}
}

static const struct uacce_ops wdz_uacce_ops = {
	.get_available_instances = wdz_get_available_instances,
	.get_queue = wdz_get_queue,
	.put_queue = wdz_put_queue,
	.start_queue = wdz_start_queue,
	.stop_queue = wdz_stop_queue,
	.is_q_updated = wdz_is_q_updated,
	.mmap = wdz_mmap,
	.ioctl = wdz_ioctl,
};

static int wdz_probe(struct platform_device *pdev)
{
	struct uacce_interface interface = {
		.name = WDZ_NAME,
		.flags = 0,	/* no SVA: there is no IOMMU behind this device */
		.ops = &wdz_uacce_ops,
	};
	struct wdz_device *wdz;
	struct uacce_device *uacce;
	int ret;

	wdz = devm_kzalloc(&pdev->dev, sizeof(*wdz), GFP_KERNEL);
	if (!wdz)
		return -ENOMEM;
	spin_lock_init(&wdz->lock);
	wdz->pdev = pdev;
	wdz->nqueues = queues;
	wdz->depth = depth;
	wdz->ring_size = wdz_ring_size(depth);
	wdz->data_size = PAGE_ALIGN((size_t)data_kib << 10);
	wdz->dus_size = wdz->ring_size + wdz->data_size;
	mutex_init(&wdz->engine_lock);
	init_waitqueue_head(&wdz->engine_wait);
	wdz->deflate_ws = vzalloc(zlib_deflate_workspacesize(MAX_WBITS, MAX_MEM_LEVEL));
	wdz->inflate_ws = vzalloc(zlib_inflate_workspacesize());
	if (!wdz->deflate_ws || !wdz->inflate_ws) {
		ret = -ENOMEM;
		goto free_ws;
	}

	uacce = uacce_alloc(&pdev->dev, &interface);
	if (IS_ERR(uacce)) {
		ret = PTR_ERR(uacce);
		goto free_ws;
	}
	uacce->priv = wdz;
	uacce->api_ver = WDZ_API;
	uacce->algs = WDZ_ALGORITHMS;
	uacce->qf_pg_num[UACCE_QFRT_MMIO] = WDZ_MMIO_SIZE >> PAGE_SHIFT;
	uacce->qf_pg_num[UACCE_QFRT_DUS] = wdz->dus_size >> PAGE_SHIFT;
	wdz->uacce = uacce;

	/* The engine runs before the device is visible: START_Q can come at once. */
	wdz->engine = kthread_run(wdz_engine, wdz, "%s", WDZ_NAME);
	if (IS_ERR(wdz->engine)) {
		ret = PTR_ERR(wdz->engine);
		uacce_remove(uacce);
		goto free_ws;
	}
	ret = uacce_register(uacce);
	if (ret) {
		uacce_remove(uacce);
		kthread_stop(wdz->engine);
		goto free_ws;
	}
	platform_set_drvdata(pdev, wdz);
	dev_info(&pdev->dev, "%s: %u queues of depth %u, DUS %zu bytes (rings %zu, data %zu)\n",
		 dev_name(&uacce->dev), wdz->nqueues, wdz->depth,
		 wdz->dus_size, wdz->ring_size, wdz->data_size);
	return 0;

free_ws:
	vfree(wdz->deflate_ws);
	vfree(wdz->inflate_ws);
	return ret;
}

static int wdz_remove(struct platform_device *pdev)
{
	struct wdz_device *wdz = platform_get_drvdata(pdev);

	/*
	 * Open queues first see a reset (stop words set, waiters woken), as
	 * when the device fails; uacce_remove then zaps their mappings (a
	 * later access is SIGBUS), stops and puts them (stop_queue: the engine
	 * lets go of them), and their ioctls answer ENXIO.
	 */
	wdz_fence(wdz);
	uacce_remove(wdz->uacce);
	kthread_stop(wdz->engine);
	vfree(wdz->deflate_ws);
	vfree(wdz->inflate_ws);
	return 0;
}

static struct platform_driver wdz_driver = {
	.probe = wdz_probe,
	.remove = wdz_remove,
	.driver = { .name = WDZ_NAME, .dev_groups = wdz_groups },
};

static struct platform_device *wdz_pdev;

static int __init wdz_init(void)
{
	int ret;

	if (queues < 1 || queues > WDZ_MAX_QUEUES || depth < 2 ||
	    depth > 32768 || data_kib > WDZ_MAX_DATA_KIB)
		return -EINVAL;
	ret = platform_driver_register(&wdz_driver);
	if (ret)
		return ret;
	/* The device this module stands for: one, with no resources. */
	wdz_pdev = platform_device_register_simple(WDZ_NAME, -1, NULL, 0);
	if (IS_ERR(wdz_pdev)) {
		platform_driver_unregister(&wdz_driver);
		return PTR_ERR(wdz_pdev);
	}
	/* The probe ran synchronously; loading fails if it failed. */
	if (!platform_get_drvdata(wdz_pdev)) {
		platform_device_unregister(wdz_pdev);
		platform_driver_unregister(&wdz_driver);
		return -ENODEV;
	}
	return 0;
}

static void __exit wdz_exit(void)
{
	platform_device_unregister(wdz_pdev);
	platform_driver_unregister(&wdz_driver);
}

module_init(wdz_init);
module_exit(wdz_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("WarpDrive ZIP queue device on the uacce framework");
MODULE_SOFTDEP("pre: uacce");
