/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The queue protocol's numbers that the warpdrive_zip module and its VM
 * checker (kernel/vm/uacce_check.c) share: SQE words, request types and
 * completion status codes, as docs/warpdrive.md section 2 and the Swift
 * emulator (ZipSQE, CompletionStatus) define them. Only #defines, so the
 * kernel build and a static user-space build both include it.
 */
#ifndef WARPDRIVE_ZIP_ABI_H
#define WARPDRIVE_ZIP_ABI_H

#define SQE_WORDS		32

/* SQE words (ZipSQE). */
#define SQE_CONSUMED		0
#define SQE_PRODUCED		1
#define SQE_STATUS		3	/* 7:0 status, bit 8 end of stream */
#define SQE_IN_LEN		4
#define SQE_TYPE_WORD		9	/* 7:0 type, 15:12 window, 23:16 level */
#define SQE_DST_CAP		14
#define SQE_SRC_LO		18
#define SQE_SRC_HI		19
#define SQE_DST_LO		20
#define SQE_DST_HI		21
#define SQE_FAULT_LO		24
#define SQE_FAULT_HI		25
#define SQE_ISIZE		30
#define SQE_CHECKSUM		31

/* Request types (ZipSQE.RequestType); zstd 0x10 and lz4 0x11 are not offered. */
#define TYPE_DEFLATE		0x01
#define TYPE_ZLIB		0x02
#define TYPE_GZIP		0x03

/* Completion status codes (CompletionStatus). */
#define ST_OK			0x00
#define ST_BAD_REQUEST		0x01
#define ST_CORRUPT		0x02
#define ST_NEGATIVE		0x0d
#define ST_DST_TOO_SMALL	0x0e
#define ST_END_OF_STREAM	0x13
#define ST_ENGINE_ERROR		0x1e
#define ST_PAGE_FAULT		0x1f

#endif
