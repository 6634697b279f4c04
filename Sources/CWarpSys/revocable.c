#define _GNU_SOURCE
#include "CWarpSys.h"
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <ucontext.h>
#include <sys/mman.h>
#include <unistd.h>

/* Revocable mappings: a SIGBUS inside one replaces it with anonymous zero
   memory and sets its stop words; any other SIGBUS goes to the action that
   was installed before.

   The handler reads the table without locks. Each slot's `word` holds a
   generation (bits 3 and up) and a state (bits 0-2). wd_revocable_add
   claims a free slot with a new generation, writes the range, then
   publishes it ACTIVE; the handler reads the word, the range, and the word
   again, and trusts the range only when both words agree (a sequence lock),
   so a slot removed and reused meanwhile is never mistaken for the old
   one. Add and remove are serialised by a mutex, which the handler never
   takes. */

enum {
    SLOT_FREE = 0,      /* unused */
    SLOT_CLAIMED = 1,   /* being filled in by add */
    SLOT_ACTIVE = 2,    /* registered, still the device's mapping */
    SLOT_REPLACING = 3, /* a handler is mapping zero memory over it */
    SLOT_REVOKED = 4,   /* replaced: accesses no longer fault */
    STATE_BITS = 3,
    STATE_MASK = (1 << STATE_BITS) - 1
};

struct slot {
    _Atomic uint64_t word;
    _Atomic uintptr_t base;
    _Atomic size_t length;
    _Atomic long stop_offset;
};

static struct slot slots[WD_REVOCABLE_SLOTS];
static _Atomic uint64_t revocations;
/* Replacements begun: moved before the mmap, so a reader that finds it
   unchanged after its reads knows they were of the device's memory. */
static _Atomic uint64_t epoch;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static int handler_installed;          /* under table_lock */
static struct sigaction previous;      /* written once, before the handler is installed */

static uint64_t make_word(uint64_t generation, unsigned state) { return generation << STATE_BITS | state; }
static unsigned state_of(uint64_t word) { return (unsigned)(word & STATE_MASK); }

/* Restores SIGBUS's default action (async-signal-safe). */
static void reset_default(void) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, NULL);
}

/* 1 when `address` lies in a registered mapping that is (now) replaced by
   zero memory, so the faulting access can be retried; 0 when it lies in
   none (or the replacement failed). Only the matching slot is touched. */
static int revoke_at(uintptr_t address) {
    for (int i = 0; i < WD_REVOCABLE_SLOTS; i++) {
        struct slot *s = &slots[i];
        for (;;) {
            uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
            unsigned state = state_of(w);
            if (state == SLOT_FREE || state == SLOT_CLAIMED) break;
            uintptr_t base = atomic_load_explicit(&s->base, memory_order_relaxed);
            size_t length = atomic_load_explicit(&s->length, memory_order_relaxed);
            long stop = atomic_load_explicit(&s->stop_offset, memory_order_relaxed);
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&s->word, memory_order_relaxed) != w) continue;  /* changed: read again */
            if (address < base || address - base >= length) break;
            if (state == SLOT_REVOKED) return 1;   /* another thread replaced it first */
            if (state == SLOT_REPLACING) {         /* another thread is replacing it */
                while (atomic_load_explicit(&s->word, memory_order_acquire) == w) sched_yield();
                continue;
            }
            uint64_t replacing = make_word(w >> STATE_BITS, SLOT_REPLACING);
            if (!atomic_compare_exchange_strong(&s->word, &w, replacing)) continue;
            atomic_fetch_add_explicit(&epoch, 1, memory_order_seq_cst);
            void *p = mmap((void *)base, length, PROT_READ | PROT_WRITE,
                           MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) {
                atomic_store_explicit(&s->word, w, memory_order_release);
                return 0;
            }
            if (stop >= 0) {
                _Atomic uint32_t *words = (_Atomic uint32_t *)(base + (uintptr_t)stop);
                atomic_store_explicit(&words[0], 1, memory_order_release);
                atomic_store_explicit(&words[1], 1, memory_order_release);
            }
            atomic_fetch_add_explicit(&revocations, 1, memory_order_relaxed);
            atomic_store_explicit(&s->word, make_word(w >> STATE_BITS, SLOT_REVOKED), memory_order_release);
            return 1;
        }
    }
    return 0;
}

/* The signal mask the previous handler would have run with: the
   interrupted code's, plus its sa_mask, plus SIGBUS unless SA_NODEFER. The
   Swift runtime's crash handler (SA_NODEFER) needs SIGBUS unblocked: the
   thread it starts to read memory for the backtracer inherits the mask and
   must catch its own SIGBUS. */
static void previous_mask(int sig, void *context) {
    sigset_t mask;
    if (context != NULL) mask = ((ucontext_t *)context)->uc_sigmask;
    else pthread_sigmask(SIG_SETMASK, NULL, &mask);
    for (int n = 1; n < NSIG; n++)
        if (sigismember(&previous.sa_mask, n) == 1) sigaddset(&mask, n);
    if (previous.sa_flags & SA_NODEFER) sigdelset(&mask, sig);
    else sigaddset(&mask, sig);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
}

/* Passes a SIGBUS that is not a revocation to the previous action; for
   SIG_DFL the process still dies by SIGBUS. */
static void chain(int sig, siginfo_t *info, void *context) {
    void (*h)(int) = previous.sa_handler;   /* shares storage with sa_sigaction */
    if (h != SIG_DFL && h != SIG_IGN) {
        if (previous.sa_flags & SA_RESETHAND) reset_default();
        previous_mask(sig, context);   /* undone by the return from on_sigbus */
        if (previous.sa_flags & SA_SIGINFO) previous.sa_sigaction(sig, info, context);
        else h(sig);
        return;
    }
    int sent = info == NULL || info->si_code <= 0;   /* kill, tkill, sigqueue */
    if (h == SIG_IGN && sent) return;   /* ignored before us, ignored now */
    reset_default();
    /* A fault re-executes its instruction on return and faults again, now
       fatally; a SIGBUS that was sent (or an asynchronous machine-check
       report) is sent again, and delivered when the handler returns. */
    if (sent || info->si_code == BUS_MCEERR_AO) raise(sig);
}

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    int saved = errno;
    if (info == NULL || info->si_code <= 0 || !revoke_at((uintptr_t)info->si_addr))
        chain(sig, info, context);
    errno = saved;
}

/* Installs on_sigbus once, keeping the previous action. Under table_lock. */
static int install_handler(void) {
    if (handler_installed) return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    if (sigaction(SIGBUS, &sa, &previous) != 0) return -1;
    handler_installed = 1;
    return 0;
}

int wd_revocable_add(void *base, size_t length, long stop_offset) {
    uintptr_t b = (uintptr_t)base;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (base == NULL || length == 0 || b % page != 0 || length % page != 0 || b + length < b
        || stop_offset < -1 || (stop_offset >= 0 && ((size_t)stop_offset > length || length - (size_t)stop_offset < 8))
        || (stop_offset >= 0 && stop_offset % 4 != 0)) {
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&table_lock);
    int rc = -1, err = 0;
    if (install_handler() != 0) { err = errno; goto out; }
    struct slot *free_slot = NULL;
    for (int i = 0; i < WD_REVOCABLE_SLOTS; i++) {
        struct slot *s = &slots[i];
        unsigned state = state_of(atomic_load(&s->word));
        if (state == SLOT_FREE) { if (free_slot == NULL) free_slot = s; continue; }
        uintptr_t sb = atomic_load(&s->base);
        size_t sl = atomic_load(&s->length);
        if (b < sb + sl && sb < b + length) { err = EEXIST; goto out; }
    }
    if (free_slot == NULL) { err = ENOSPC; goto out; }
    uint64_t w = atomic_load(&free_slot->word);
    uint64_t generation = (w >> STATE_BITS) + 1;
    atomic_store(&free_slot->word, make_word(generation, SLOT_CLAIMED));
    atomic_thread_fence(memory_order_release);   /* the handler sees CLAIMED before any new field */
    atomic_store_explicit(&free_slot->base, b, memory_order_relaxed);
    atomic_store_explicit(&free_slot->length, length, memory_order_relaxed);
    atomic_store_explicit(&free_slot->stop_offset, stop_offset, memory_order_relaxed);
    atomic_store_explicit(&free_slot->word, make_word(generation, SLOT_ACTIVE), memory_order_release);
    rc = 0;
out:
    pthread_mutex_unlock(&table_lock);
    if (rc != 0) errno = err;
    return rc;
}

void wd_revocable_remove(void *base) {
    uintptr_t b = (uintptr_t)base;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < WD_REVOCABLE_SLOTS; i++) {
        struct slot *s = &slots[i];
        uint64_t w = atomic_load(&s->word);
        unsigned state = state_of(w);
        if (state == SLOT_FREE || atomic_load(&s->base) != b) continue;
        /* A replacement in progress finishes first, so the caller's munmap
           cannot be followed by the handler's mmap over the same range. */
        for (;;) {
            if (state_of(w) == SLOT_REPLACING) { sched_yield(); w = atomic_load(&s->word); continue; }
            if (atomic_compare_exchange_strong(&s->word, &w, make_word(w >> STATE_BITS, SLOT_FREE))) break;
        }
        break;
    }
    pthread_mutex_unlock(&table_lock);
}

uint64_t wd_revocable_revocations(void) {
    return atomic_load_explicit(&revocations, memory_order_relaxed);
}

uint64_t wd_revocable_epoch(void) {
    return atomic_load_explicit(&epoch, memory_order_seq_cst);
}

int wd_revocable_is_revoked(const void *base) {
    uintptr_t b = (uintptr_t)base;
    for (int i = 0; i < WD_REVOCABLE_SLOTS; i++) {
        struct slot *s = &slots[i];
        uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
        unsigned state = state_of(w);
        if (state == SLOT_FREE || state == SLOT_CLAIMED || atomic_load_explicit(&s->base, memory_order_relaxed) != b) continue;
        return state == SLOT_REPLACING || state == SLOT_REVOKED;
    }
    return 0;
}
