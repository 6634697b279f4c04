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
 * This first stage has no engine: nothing reads the doorbell or the SQ yet
 * (see README.md). The regions are ordinary kernel memory (vmalloc_user),
 * so a "doorbell" store is a plain store that an engine thread will have to
 * poll for; there is no device interrupt.
 */
#include <linux/bitmap.h>
#include <linux/err.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/platform_device.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uacce.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <uapi/misc/uacce/hisi_qm.h>

#define WDZ_NAME		"warpdrive_zip"
#define WDZ_API			HISI_QM_API_VER2_BASE
#define WDZ_ALGORITHMS		"deflate\nzlib\ngzip"
#define WDZ_SQE_SIZE		128
#define WDZ_CQE_SIZE		16
#define WDZ_STATUS_SIZE		4096
#define WDZ_MMIO_SIZE		(2 * 4096)
#define WDZ_MAX_QUEUES		64

static unsigned int queues = 4;
module_param(queues, uint, 0444);
MODULE_PARM_DESC(queues, "queue pairs of the device (1..64, default 4)");

static unsigned int depth = 1024;
module_param(depth, uint, 0444);
MODULE_PARM_DESC(depth, "entries per SQ and CQ (2..32768, default 1024)");

struct wdz_device {
	struct platform_device *pdev;
	struct uacce_device *uacce;
	spinlock_t lock;		/* protects used */
	DECLARE_BITMAP(used, WDZ_MAX_QUEUES);
	unsigned int nqueues;
	unsigned int depth;
	size_t dus_size;
};

struct wdz_queue {
	struct wdz_device *wdz;
	unsigned int qn;
	void *mmio;			/* region 0: doorbell page at 0x1000 */
	void *dus;			/* region 1: SQ, CQ, status page, stop words */
	u16 qc_type;
	bool ctx_set;
};

/* DUS geometry, the same as RingLayout in Sources/WarpDrive/Protocol. */
static size_t wdz_dus_size(unsigned int d)
{
	size_t raw = (size_t)d * (WDZ_SQE_SIZE + WDZ_CQE_SIZE) + WDZ_STATUS_SIZE;

	return PAGE_ALIGN(raw);
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

/* START_Q needs both regions mapped, as WarpDrive's Queue.start() does. */
static int wdz_start_queue(struct uacce_queue *q)
{
	if (!q->qfrs[UACCE_QFRT_MMIO] || !q->qfrs[UACCE_QFRT_DUS])
		return -EINVAL;
	return 0;
}

static void wdz_stop_queue(struct uacce_queue *q)
{
}

/* No engine yet, so no completion is ever waiting. */
static int wdz_is_q_updated(struct uacce_queue *q)
{
	return 0;
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
	wdz->dus_size = wdz_dus_size(depth);

	uacce = uacce_alloc(&pdev->dev, &interface);
	if (IS_ERR(uacce))
		return PTR_ERR(uacce);
	uacce->priv = wdz;
	uacce->api_ver = WDZ_API;
	uacce->algs = WDZ_ALGORITHMS;
	uacce->qf_pg_num[UACCE_QFRT_MMIO] = WDZ_MMIO_SIZE >> PAGE_SHIFT;
	uacce->qf_pg_num[UACCE_QFRT_DUS] = wdz->dus_size >> PAGE_SHIFT;
	wdz->uacce = uacce;

	ret = uacce_register(uacce);
	if (ret) {
		uacce_remove(uacce);
		return ret;
	}
	platform_set_drvdata(pdev, wdz);
	dev_info(&pdev->dev, "%s: %u queues of depth %u, DUS %zu bytes\n",
		 dev_name(&uacce->dev), wdz->nqueues, wdz->depth,
		 wdz->dus_size);
	return 0;
}

static int wdz_remove(struct platform_device *pdev)
{
	struct wdz_device *wdz = platform_get_drvdata(pdev);

	uacce_remove(wdz->uacce);
	return 0;
}

static struct platform_driver wdz_driver = {
	.probe = wdz_probe,
	.remove = wdz_remove,
	.driver = { .name = WDZ_NAME },
};

static struct platform_device *wdz_pdev;

static int __init wdz_init(void)
{
	int ret;

	if (queues < 1 || queues > WDZ_MAX_QUEUES || depth < 2 ||
	    depth > 32768)
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
