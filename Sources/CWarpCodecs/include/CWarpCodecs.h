#ifndef CWARPCODECS_H
#define CWARPCODECS_H

/* The codec libraries the emulated ZIP device's engines call: ISA-L's igzip
   (deflate compression), libdeflate (whole-buffer deflate decompression and
   compression at the levels ISA-L lacks), zstd and lz4. Swift calls their
   functions directly; the helpers here stand in for what Swift cannot import
   (macro expressions) and are all static inline. */

#include <stddef.h>
#include <stdint.h>
#include <isa-l/igzip_lib.h>
#include <libdeflate.h>
#include <zstd.h>
#include <zstd_errors.h>
#include <lz4.h>
#include <lz4hc.h>

/* Bytes of the level buffer ISA-L needs for compression level 0...3
   (ISAL_DEF_LVLn_DEFAULT); 0 for level 0, which needs none, and for
   levels ISA-L does not have. */
static inline uint32_t wd_isal_level_buffer_size(int level) {
    switch (level) {
    case 1: return ISAL_DEF_LVL1_DEFAULT;
    case 2: return ISAL_DEF_LVL2_DEFAULT;
    case 3: return ISAL_DEF_LVL3_DEFAULT;
    default: return 0;
    }
}

/* Highest compression level of this ISA-L (ISAL_DEF_MAX_LEVEL). */
static inline int wd_isal_max_level(void) { return ISAL_DEF_MAX_LEVEL; }

/* The status codes of isal_deflate_stateless. */
static inline int wd_isal_comp_ok(void) { return COMP_OK; }
static inline int wd_isal_stateless_overflow(void) { return STATELESS_OVERFLOW; }

/* The zstd error code behind a size_t result (ZSTD_isError is a function;
   the code enum is in zstd_errors.h). */
static inline int wd_zstd_error_is_dst_too_small(size_t r) {
    return ZSTD_isError(r) && ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall;
}

/* Worst-case output of one LZ4 block of `n` bytes (LZ4_COMPRESSBOUND). */
static inline int wd_lz4_compress_bound(int n) { return LZ4_compressBound(n); }

#endif
