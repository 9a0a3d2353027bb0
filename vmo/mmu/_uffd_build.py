"""cffi (API mode) build script for the raw userfaultfd and memory binding.

The binding is compiled at install time against the real system headers, like
pyca/cryptography's ``src/_cffi_src``: every constant, ioctl number and struct layout below is
declared with cffi's ``#define X ...`` / ``struct { ...; }`` / ``typedef int... T;`` forms, so
the C compiler fills in the values from ``<linux/userfaultfd.h>``, ``<sys/mman.h>``,
``<fcntl.h>``... and nothing is copied by hand. The one exception is the compatibility block
at the top of the C source: the installed headers may predate features that the running kernel
offers (Linux 6.1 headers on a 6.18 kernel here), and each definition there is guarded by
``#ifndef`` and says which kernel introduced it.

The C source also carries a handful of helpers (``vmo_*``), each small enough to audit:

- ``vmo_copy`` and ``vmo_touch_*``: plain loads and stores that run *without the GIL* (cffi
  releases the GIL around every call in API mode). A Python thread that touches a
  userfaultfd-registered page while holding the GIL would deadlock the fault handler thread,
  which needs the GIL to resolve the fault.
- ``vmo_copy_checked`` and ``vmo_touch_checked``: the same copy under a per-thread
  ``sigsetjmp`` guard, so that an access which gets SIGBUS (a ``UFFD_FEATURE_SIGBUS`` region, a
  poisoned page, a mapping past the end of a truncated memfd) or SIGSEGV returns the faulting
  address instead of killing the process. The signal handler chains to the previously installed
  handler (e.g. Python's ``faulthandler``) for every fault that is not inside a guarded copy.
- ``vmo_uffd_read_events``: one ``read(2)`` of ``struct uffd_msg`` records, decoded into a flat
  struct. ``uffd_msg`` is a packed struct of unions, which cffi cannot check field by field; the
  C compiler decodes it with the header's own field names instead.

Build with ``pip install -e .`` (``setup.py`` names this file in ``cffi_modules``) or run this
file directly to build the module in place.
"""

from __future__ import annotations

import cffi

MODULE_NAME = "vmo.mmu._uffd_cffi"

# ---------------------------------------------------------------------------------------------
# Declarations visible from Python. `...` means "ask the C compiler".
# ---------------------------------------------------------------------------------------------
CDEF = """
typedef int... __u8;
typedef int... __u32;
typedef int... __u64;
typedef int... __s64;
typedef int... off_t;

/* <linux/userfaultfd.h>: syscall flags, /dev/userfaultfd */
#define UFFD_USER_MODE_ONLY ...
#define USERFAULTFD_IOC_NEW ...

/* <linux/userfaultfd.h>: API handshake */
#define UFFD_API ...

#define UFFD_FEATURE_PAGEFAULT_FLAG_WP ...
#define UFFD_FEATURE_EVENT_FORK ...
#define UFFD_FEATURE_EVENT_REMAP ...
#define UFFD_FEATURE_EVENT_REMOVE ...
#define UFFD_FEATURE_MISSING_HUGETLBFS ...
#define UFFD_FEATURE_MISSING_SHMEM ...
#define UFFD_FEATURE_EVENT_UNMAP ...
#define UFFD_FEATURE_SIGBUS ...
#define UFFD_FEATURE_THREAD_ID ...
#define UFFD_FEATURE_MINOR_HUGETLBFS ...
#define UFFD_FEATURE_MINOR_SHMEM ...
#define UFFD_FEATURE_EXACT_ADDRESS ...
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM ...
#define UFFD_FEATURE_WP_UNPOPULATED ...
#define UFFD_FEATURE_POISON ...
#define UFFD_FEATURE_WP_ASYNC ...
#define UFFD_FEATURE_MOVE ...

/* ioctl numbers (bit positions in the `ioctls` masks the kernel returns) */
#define _UFFDIO_REGISTER ...
#define _UFFDIO_UNREGISTER ...
#define _UFFDIO_WAKE ...
#define _UFFDIO_COPY ...
#define _UFFDIO_ZEROPAGE ...
#define _UFFDIO_MOVE ...
#define _UFFDIO_WRITEPROTECT ...
#define _UFFDIO_CONTINUE ...
#define _UFFDIO_POISON ...
#define _UFFDIO_API ...

/* ioctl request codes */
#define UFFDIO_API ...
#define UFFDIO_REGISTER ...
#define UFFDIO_UNREGISTER ...
#define UFFDIO_WAKE ...
#define UFFDIO_COPY ...
#define UFFDIO_ZEROPAGE ...
#define UFFDIO_MOVE ...
#define UFFDIO_WRITEPROTECT ...
#define UFFDIO_CONTINUE ...
#define UFFDIO_POISON ...

/* modes */
#define UFFDIO_REGISTER_MODE_MISSING ...
#define UFFDIO_REGISTER_MODE_WP ...
#define UFFDIO_REGISTER_MODE_MINOR ...
#define UFFDIO_COPY_MODE_DONTWAKE ...
#define UFFDIO_COPY_MODE_WP ...
#define UFFDIO_ZEROPAGE_MODE_DONTWAKE ...
#define UFFDIO_WRITEPROTECT_MODE_WP ...
#define UFFDIO_WRITEPROTECT_MODE_DONTWAKE ...
#define UFFDIO_CONTINUE_MODE_DONTWAKE ...
#define UFFDIO_CONTINUE_MODE_WP ...
#define UFFDIO_MOVE_MODE_DONTWAKE ...
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ...
#define UFFDIO_POISON_MODE_DONTWAKE ...

/* events read from the descriptor */
#define UFFD_EVENT_PAGEFAULT ...
#define UFFD_EVENT_FORK ...
#define UFFD_EVENT_REMAP ...
#define UFFD_EVENT_REMOVE ...
#define UFFD_EVENT_UNMAP ...
#define UFFD_PAGEFAULT_FLAG_WRITE ...
#define UFFD_PAGEFAULT_FLAG_WP ...
#define UFFD_PAGEFAULT_FLAG_MINOR ...

struct uffdio_api {
    __u64 api;
    __u64 features;
    __u64 ioctls;
    ...;
};
struct uffdio_range {
    __u64 start;
    __u64 len;
    ...;
};
struct uffdio_register {
    struct uffdio_range range;
    __u64 mode;
    __u64 ioctls;
    ...;
};
struct uffdio_copy {
    __u64 dst;
    __u64 src;
    __u64 len;
    __u64 mode;
    __s64 copy;
    ...;
};
struct uffdio_zeropage {
    struct uffdio_range range;
    __u64 mode;
    __s64 zeropage;
    ...;
};
struct uffdio_writeprotect {
    struct uffdio_range range;
    __u64 mode;
    ...;
};
struct uffdio_continue {
    struct uffdio_range range;
    __u64 mode;
    __s64 mapped;
    ...;
};
struct uffdio_move {
    __u64 dst;
    __u64 src;
    __u64 len;
    __u64 mode;
    __s64 move;
    ...;
};
struct uffdio_poison {
    struct uffdio_range range;
    __u64 mode;
    __s64 updated;
    ...;
};
/* Only its size is used from Python; vmo_uffd_read_events decodes it in C. */
struct uffd_msg {
    __u8 event;
    ...;
};

/* A decoded struct uffd_msg (our own type: the fields depend on `event`). */
struct vmo_uffd_event {
    uint32_t event;     /* UFFD_EVENT_* */
    uint64_t flags;     /* PAGEFAULT: UFFD_PAGEFAULT_FLAG_* */
    uint64_t arg0;      /* PAGEFAULT: address; FORK: ufd; REMAP: from; REMOVE/UNMAP: start */
    uint64_t arg1;      /* PAGEFAULT: ptid; REMAP: to; REMOVE/UNMAP: end */
    uint64_t arg2;      /* REMAP: len */
};

/* <sys/mman.h> */
#define PROT_NONE ...
#define PROT_READ ...
#define PROT_WRITE ...
#define PROT_EXEC ...
#define MAP_SHARED ...
#define MAP_PRIVATE ...
#define MAP_FIXED ...
#define MAP_FIXED_NOREPLACE ...
#define MAP_ANONYMOUS ...
#define MAP_NORESERVE ...
#define MAP_POPULATE ...
#define MADV_NORMAL ...
#define MADV_DONTNEED ...
#define MADV_REMOVE ...
#define MADV_DONTFORK ...
#define MADV_WILLNEED ...
#define MADV_POPULATE_READ ...
#define MADV_POPULATE_WRITE ...
#define MFD_CLOEXEC ...
#define MFD_ALLOW_SEALING ...
#define MREMAP_MAYMOVE ...
#define MREMAP_FIXED ...
#define MREMAP_DONTUNMAP ...
static void *const MAP_FAILED;

void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
int munmap(void *addr, size_t length);
int mprotect(void *addr, size_t len, int prot);
int madvise(void *addr, size_t length, int advice);
int memfd_create(const char *name, unsigned int flags);
int vmo_mremap(void *old_address, size_t old_size, size_t new_size, int flags,
               void *new_address, void **result);

/* <fcntl.h>, <unistd.h> */
#define O_RDONLY ...
#define O_RDWR ...
#define O_CLOEXEC ...
#define O_NONBLOCK ...
#define FALLOC_FL_KEEP_SIZE ...
#define FALLOC_FL_PUNCH_HOLE ...
#define SEEK_SET ...
#define SEEK_DATA ...
#define SEEK_HOLE ...
int fallocate(int fd, int mode, off_t offset, off_t len);
off_t lseek(int fd, off_t offset, int whence);
long sysconf(int name);
#define _SC_PAGESIZE ...

/* <sys/syscall.h>, <sys/ioctl.h> (non-variadic wrappers, see the C source) */
#define SYS_userfaultfd ...
int vmo_userfaultfd(int flags);
int vmo_ioctl_ptr(int fd, unsigned long request, void *arg);
int vmo_ioctl_int(int fd, unsigned long request, unsigned long arg);
int vmo_uffd_read_events(int fd, struct vmo_uffd_event *out, int max);
#define VMO_UFFD_READ_MAX ...

/* The fault handler's hot path: integer arguments, no struct to fill from Python. */
int vmo_uffd_read_faults(int fd, uint64_t *out, int max);
int vmo_uffd_read_faults_spin(int fd, uint64_t *out, int max, int64_t spin_ns);
int64_t vmo_uffd_copy(int fd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode);
int vmo_uffd_writeprotect(int fd, uint64_t start, uint64_t len, uint64_t mode);

/* <signal.h> */
#define SIGBUS ...
#define SIGSEGV ...
#define SIGKILL ...
#define SIGTERM ...

/* prctl(PR_SET_PDEATHSIG): 0, or -errno. A workload process dies with its host. */
int vmo_set_pdeathsig(int sig);

/* The in-process deadlock watchdog (see vmo.mmu.fault_handler): a thread without the GIL
   that fails page faults of this process's own windows left unread for `timeout_ns`. */
int vmo_wd_start(int64_t timeout_ns);
void vmo_wd_set_timeout(int64_t timeout_ns);
int vmo_wd_add(int fd);
void vmo_wd_remove(int fd);
int vmo_wd_take(uint64_t *out, int max);
extern volatile int vmo_wd_pending;
extern volatile uint64_t vmo_wd_failed_total;

/* Copies and touches that run without the GIL. */
int vmo_copy(void *dst, const void *src, size_t n);
uint64_t vmo_touch_read(const void *addr, size_t len, size_t stride);
void vmo_touch_write(void *addr, size_t len, size_t stride, uint8_t value);

/* Guarded variants: 0, or the signal number (SIGBUS/SIGSEGV) with *fault_addr set, or -1
   with errno set if the signal handler could not be installed. */
int vmo_guard_install(void);
int vmo_copy_checked(void *dst, const void *src, size_t n, uintptr_t *fault_addr);
int vmo_touch_checked(void *addr, size_t len, size_t stride, int write, uint8_t value,
                      uintptr_t *fault_addr);
"""

# ---------------------------------------------------------------------------------------------
# The C source handed to the compiler.
# ---------------------------------------------------------------------------------------------
C_SOURCE = r"""
#ifndef _GNU_SOURCE  /* Python.h, included first by cffi, usually defines it */
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>

/* ---- Compatibility with headers older than the running kernel -------------------------------
 * The installed <linux/userfaultfd.h> may be older than the kernel (Linux 6.1 headers on a 6.18
 * kernel when this was written). Values below are the kernel's ABI, as in the uapi header of the
 * kernel release named in each comment; each is used only when the header lacks it. */

#ifndef UFFD_USER_MODE_ONLY            /* Linux 5.11 */
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW            /* Linux 6.1: /dev/userfaultfd */
#define USERFAULTFD_IOC 0xAA
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED    /* Linux 6.4 */
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFDIO_CONTINUE_MODE_WP        /* Linux 6.4 */
#define UFFDIO_CONTINUE_MODE_WP ((__u64)1 << 1)
#endif
#ifndef UFFD_FEATURE_POISON            /* Linux 6.6 */
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFDIO_POISON                  /* Linux 6.6 */
#define _UFFDIO_POISON (0x08)
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
struct uffdio_poison {
    struct uffdio_range range;
    __u64 mode;
    __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC          /* Linux 6.7 */
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE              /* Linux 6.8 */
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef UFFDIO_MOVE                    /* Linux 6.8 */
#define _UFFDIO_MOVE (0x05)
#define UFFDIO_MOVE_MODE_DONTWAKE ((__u64)1 << 0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ((__u64)1 << 1)
struct uffdio_move {
    __u64 dst;
    __u64 src;
    __u64 len;
    __u64 mode;
    __s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif
#ifndef MADV_POPULATE_READ             /* Linux 5.14, glibc 2.35 */
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

/* ---- System call wrappers -------------------------------------------------------------------
 * syscall(2) and ioctl(2) are variadic; fixed-signature wrappers keep the cffi calls simple
 * and typed. */

static int vmo_userfaultfd(int flags)
{
    return (int)syscall(SYS_userfaultfd, flags);
}

static int vmo_ioctl_ptr(int fd, unsigned long request, void *arg)
{
    return ioctl(fd, request, arg);
}

static int vmo_ioctl_int(int fd, unsigned long request, unsigned long arg)
{
    return ioctl(fd, request, arg);
}

/* mremap's fifth argument is variadic too; the result goes through an out-parameter so that
   MAP_FAILED can be told from a valid address without a cast on the Python side. */
static int vmo_mremap(void *old_address, size_t old_size, size_t new_size, int flags,
                      void *new_address, void **result)
{
    void *p = mremap(old_address, old_size, new_size, flags, new_address);
    if (p == MAP_FAILED)
        return -1;
    *result = p;
    return 0;
}

/* ---- Reading events -------------------------------------------------------------------------- */

/* Held around every read(2) of a userfaultfd, so that the deadlock watchdog (below) and the
   fault handler never read the same descriptor at once. */
static pthread_mutex_t vmo_wd_read_lock = PTHREAD_MUTEX_INITIALIZER;

#define VMO_UFFD_READ_MAX 64

struct vmo_uffd_event {
    uint32_t event;
    uint64_t flags;
    uint64_t arg0;
    uint64_t arg1;
    uint64_t arg2;
};

/* Reads up to `max` messages with one read(2) and decodes them into `out`. Returns the number
   of events, or -1 with errno set (EAGAIN on a non-blocking descriptor with nothing pending). */
static int vmo_uffd_read_msgs(int fd, struct uffd_msg *msgs, int max)
{
    ssize_t n;

    if (max <= 0) {
        errno = EINVAL;
        return -1;
    }
    if (max > VMO_UFFD_READ_MAX)
        max = VMO_UFFD_READ_MAX;
    pthread_mutex_lock(&vmo_wd_read_lock);
    n = read(fd, msgs, sizeof(msgs[0]) * (size_t)max);
    pthread_mutex_unlock(&vmo_wd_read_lock);
    if (n < 0)
        return -1;
    if ((size_t)n % sizeof(msgs[0]) != 0) {
        /* The kernel only ever returns whole messages. */
        errno = EIO;
        return -1;
    }
    return (int)((size_t)n / sizeof(msgs[0]));
}

static int vmo_uffd_read_events(int fd, struct vmo_uffd_event *out, int max)
{
    struct uffd_msg msgs[VMO_UFFD_READ_MAX];
    int i, count = vmo_uffd_read_msgs(fd, msgs, max);

    for (i = 0; i < count; i++) {
        const struct uffd_msg *m = &msgs[i];
        struct vmo_uffd_event *e = &out[i];
        memset(e, 0, sizeof(*e));
        e->event = m->event;
        switch (m->event) {
        case UFFD_EVENT_PAGEFAULT:
            e->flags = m->arg.pagefault.flags;
            e->arg0 = m->arg.pagefault.address;
            e->arg1 = m->arg.pagefault.feat.ptid;
            break;
        case UFFD_EVENT_FORK:
            e->arg0 = m->arg.fork.ufd;
            break;
        case UFFD_EVENT_REMAP:
            e->arg0 = m->arg.remap.from;
            e->arg1 = m->arg.remap.to;
            e->arg2 = m->arg.remap.len;
            break;
        case UFFD_EVENT_REMOVE:
        case UFFD_EVENT_UNMAP:
            e->arg0 = m->arg.remove.start;
            e->arg1 = m->arg.remove.end;
            break;
        default:
            /* An event this build does not know: hand the raw words up. */
            e->arg0 = m->arg.reserved.reserved1;
            e->arg1 = m->arg.reserved.reserved2;
            e->arg2 = m->arg.reserved.reserved3;
            break;
        }
    }
    return count;
}

/* Reads up to `max` messages with one read(2) into two words each: out[2i] = event | flags << 8
   (flags: UFFD_PAGEFAULT_FLAG_* of a page fault, 0 for other events), out[2i + 1] = the fault
   address (other events: their first argument). Returns the count, or -1 with errno set. The
   fault handler reads these words through a memoryview: no Python object per event. */
static int vmo_uffd_read_faults(int fd, uint64_t *out, int max)
{
    struct uffd_msg msgs[VMO_UFFD_READ_MAX];
    int i, count = vmo_uffd_read_msgs(fd, msgs, max);

    for (i = 0; i < count; i++) {
        const struct uffd_msg *m = &msgs[i];
        if (m->event == UFFD_EVENT_PAGEFAULT) {
            out[2 * i] = (uint64_t)m->event | ((uint64_t)m->arg.pagefault.flags << 8);
            out[2 * i + 1] = m->arg.pagefault.address;
        } else if (m->event == UFFD_EVENT_REMOVE || m->event == UFFD_EVENT_UNMAP) {
            /* The range's end in the upper bits: user addresses fit in 56 bits. */
            out[2 * i] = (uint64_t)m->event | ((uint64_t)m->arg.remove.end << 8);
            out[2 * i + 1] = m->arg.remove.start;
        } else {
            out[2 * i] = (uint64_t)m->event;
            out[2 * i + 1] = m->arg.reserved.reserved1;
        }
    }
    return count;
}

/* vmo_uffd_read_faults on a non-blocking descriptor, retried without sleeping for up to
   `spin_ns` nanoseconds while nothing is pending (the fault handler's busy poll, in C: no
   return to Python per empty read). Returns as vmo_uffd_read_faults: -1 with errno EAGAIN
   when nothing came in time. */
static int vmo_uffd_read_faults_spin(int fd, uint64_t *out, int max, int64_t spin_ns)
{
    struct timespec t0, t;
    int n = vmo_uffd_read_faults(fd, out, max);

    if (n >= 0 || errno != EAGAIN || spin_ns <= 0)
        return n;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        n = vmo_uffd_read_faults(fd, out, max);
        if (n >= 0 || errno != EAGAIN)
            return n;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((int64_t)(t.tv_sec - t0.tv_sec) * 1000000000 + (t.tv_nsec - t0.tv_nsec) >= spin_ns) {
            errno = EAGAIN;
            return -1;
        }
    }
}

/* UFFDIO_COPY of `len` bytes from `src` to `dst`: returns the bytes copied (`len` when all
   were), or -errno when none were. A partial copy (EAGAIN, or an error after some pages)
   returns the positive count; the caller continues from there. */
static int64_t vmo_uffd_copy(int fd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode)
{
    struct uffdio_copy c;

    c.dst = dst;
    c.src = src;
    c.len = len;
    c.mode = mode;
    c.copy = 0;
    if (ioctl(fd, UFFDIO_COPY, &c) == 0)
        return (int64_t)len;
    if (c.copy > 0)
        return c.copy;
    return -(int64_t)errno;
}

/* UFFDIO_WRITEPROTECT of [start, start + len) with `mode`: 0, or -errno. */
static int vmo_uffd_writeprotect(int fd, uint64_t start, uint64_t len, uint64_t mode)
{
    struct uffdio_writeprotect w;

    w.range.start = start;
    w.range.len = len;
    w.mode = mode;
    if (ioctl(fd, UFFDIO_WRITEPROTECT, &w) == 0)
        return 0;
    return -errno;
}

/* ---- Plain copies and touches (run without the GIL) ------------------------------------------ */

static int vmo_copy(void *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
    return 0;
}

static uint64_t vmo_touch_read(const void *addr, size_t len, size_t stride)
{
    const volatile uint8_t *p = (const volatile uint8_t *)addr;
    uint64_t sum = 0;
    size_t off;

    if (stride == 0)
        stride = 1;
    for (off = 0; off < len; off += stride)
        sum += p[off];
    return sum;
}

static void vmo_touch_write(void *addr, size_t len, size_t stride, uint8_t value)
{
    volatile uint8_t *p = (volatile uint8_t *)addr;
    size_t off;

    if (stride == 0)
        stride = 1;
    for (off = 0; off < len; off += stride)
        p[off] = value;
}

/* ---- Guarded copies -------------------------------------------------------------------------
 * A guarded call publishes a jump buffer in a thread-local pointer, copies, and withdraws it.
 * The SIGBUS/SIGSEGV handler jumps back if the faulting thread has a guard published and chains
 * to the handler it replaced otherwise. The thread-local uses the initial-exec TLS model so that
 * reading it from the signal handler never allocates (dynamic TLS of a dlopen()ed module may be
 * allocated lazily by __tls_get_addr, which is not async-signal-safe). */

struct vmo_guard {
    sigjmp_buf jb;
    volatile uintptr_t addr;
    volatile int signo;
};

static __thread __attribute__((tls_model("initial-exec"))) struct vmo_guard *volatile
    vmo_current_guard;

/* The handlers we replaced, to chain to. Written under vmo_guard_lock only when our handler
   is (re)installed -- once, unless someone displaces it -- and read by the signal handler
   without the lock: a fault racing a re-installation may see a half-written record. */
static pthread_mutex_t vmo_guard_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction vmo_prev_bus, vmo_prev_segv;

#define VMO_BARRIER() __asm__ __volatile__("" ::: "memory")

static void vmo_fault_handler(int signo, siginfo_t *si, void *uc);

/* The fault this thread last handed to the previous handler (0 if none). If that handler
   returns without fixing the fault, or re-raises the signal itself (Python's faulthandler
   restores the handler it replaced -- possibly ours -- and calls raise()), we come back here;
   handing it over a second time could loop forever between two handlers that each chain to
   the other, so the second time takes the default action instead. */
static __thread __attribute__((tls_model("initial-exec"))) uintptr_t vmo_chained_addr;
static __thread __attribute__((tls_model("initial-exec"))) int vmo_chained_signo;

static void vmo_default_action(int signo, siginfo_t *si)
{
    struct sigaction dfl;

    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(signo, &dfl, NULL);
    /* A real fault re-executes the instruction on return and dies with the default action; a
       signal sent by kill()/raise() has to be sent again (it stays pending while this handler
       runs and is delivered on return). */
    if (si->si_code <= 0)
        raise(signo);
}

static void vmo_chain(int signo, siginfo_t *si, void *uc)
{
    const struct sigaction *prev = signo == SIGBUS ? &vmo_prev_bus : &vmo_prev_segv;
    int foreign = (prev->sa_flags & SA_SIGINFO)
                      ? (prev->sa_sigaction != NULL && prev->sa_sigaction != vmo_fault_handler)
                      : (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN);

    if (vmo_chained_signo == signo &&
        (si->si_code <= 0 || (uintptr_t)si->si_addr == vmo_chained_addr)) {
        /* Second visit for the same fault: see above. */
        vmo_chained_signo = 0;
        vmo_default_action(signo, si);
        return;
    }
    if (foreign) {
        if (si->si_code > 0) {
            vmo_chained_signo = signo;
            vmo_chained_addr = (uintptr_t)si->si_addr;
        }
        if (prev->sa_flags & SA_SIGINFO)
            prev->sa_sigaction(signo, si, uc);
        else
            prev->sa_handler(signo);
        return;
    }
    if (prev->sa_handler == SIG_IGN && si->si_code <= 0)
        return; /* sent by kill() and ignored before we came: keep ignoring it */
    vmo_default_action(signo, si);
}

static void vmo_fault_handler(int signo, siginfo_t *si, void *uc)
{
    struct vmo_guard *g = vmo_current_guard;

    if (g != NULL) {
        vmo_current_guard = NULL;
        g->addr = (uintptr_t)si->si_addr;
        g->signo = signo;
        siglongjmp(g->jb, 1);
    }
    vmo_chain(signo, si, uc);
}

static int vmo_install_one(int signo, struct sigaction *prev)
{
    struct sigaction cur, sa;

    if (sigaction(signo, NULL, &cur) != 0)
        return -1;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == vmo_fault_handler)
        return 0;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = vmo_fault_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    /* Someone (e.g. faulthandler.enable()) may have replaced our handler since the last call:
       it becomes the handler we chain to. */
    return sigaction(signo, &sa, prev);
}

/* Idempotent: installs the handler for SIGBUS and SIGSEGV unless it is already installed.
   Returns 0, or -1 with errno set. */
static int vmo_guard_install(void)
{
    int rc;

    pthread_mutex_lock(&vmo_guard_lock);
    rc = vmo_install_one(SIGBUS, &vmo_prev_bus);
    if (rc == 0)
        rc = vmo_install_one(SIGSEGV, &vmo_prev_segv);
    pthread_mutex_unlock(&vmo_guard_lock);
    return rc;
}

static int vmo_copy_checked(void *dst, const void *src, size_t n, uintptr_t *fault_addr)
{
    struct vmo_guard g;

    if (vmo_guard_install() != 0)
        return -1;
    g.addr = 0;
    g.signo = 0;
    if (sigsetjmp(g.jb, 1) != 0) {
        *fault_addr = g.addr;
        return g.signo;
    }
    vmo_current_guard = &g;
    VMO_BARRIER();
    memcpy(dst, src, n);
    VMO_BARRIER();
    vmo_current_guard = NULL;
    return 0;
}

static int vmo_touch_checked(void *addr, size_t len, size_t stride, int write, uint8_t value,
                             uintptr_t *fault_addr)
{
    struct vmo_guard g;

    if (vmo_guard_install() != 0)
        return -1;
    g.addr = 0;
    g.signo = 0;
    if (sigsetjmp(g.jb, 1) != 0) {
        *fault_addr = g.addr;
        return g.signo;
    }
    vmo_current_guard = &g;
    VMO_BARRIER();
    if (write)
        vmo_touch_write(addr, len, stride, value);
    else
        (void)vmo_touch_read(addr, len, stride);
    VMO_BARRIER();
    vmo_current_guard = NULL;
    return 0;
}

/* ---- The parent-death signal ------------------------------------------------------------------ */

static int vmo_set_pdeathsig(int sig)
{
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0UL, 0UL, 0UL) != 0)
        return -errno;
    return 0;
}

/* ---- The in-process deadlock watchdog -----------------------------------------------------------
 * A thread of this process that holds the GIL and touches an absent page of one of its own
 * windows waits for the fault handler, which needs the GIL to serve it: neither ever runs again.
 * Nothing in Python can see it, so this C thread (it never takes the GIL) watches the
 * userfaultfds of this process's own windows: a fault message that stays unread for `timeout`
 * means the handler cannot run. It reads the message, says so on stderr, and fails the fault
 * with UFFDIO_POISON (the access gets SIGBUS, as any failed fault does). The handler learns of
 * the pages it poisoned through vmo_wd_take. */

#define VMO_WD_MAX_FDS 1024
#define VMO_WD_MAX_FAILED 256

static pthread_mutex_t vmo_wd_lock = PTHREAD_MUTEX_INITIALIZER;
static int vmo_wd_fds[VMO_WD_MAX_FDS];
static int64_t vmo_wd_since[VMO_WD_MAX_FDS];  /* readable without a break since (ns), or 0 */
static int vmo_wd_nfds;
static int vmo_wd_started;
static int64_t vmo_wd_timeout = 3000000000LL;
static uint64_t vmo_wd_failed[2 * VMO_WD_MAX_FAILED];
volatile int vmo_wd_pending;
volatile uint64_t vmo_wd_failed_total;

static int64_t vmo_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void vmo_wd_fail(int fd, uint64_t address)
{
    char msg[512];
    struct uffdio_poison p;
    uint64_t page = address & ~(uint64_t)(sysconf(_SC_PAGESIZE) - 1);
    int len;

    len = snprintf(msg, sizeof msg,
        "vmo: deadlock: a thread of this process touched mapped memory at %#llx while holding "
        "the GIL, which the fault handler needs to serve the fault (left unread %.1f s). The "
        "access is failed with SIGBUS. In this process touch mappings only through "
        "Mapping.read/Mapping.write (they release the GIL); plain loads and stores (ctypes, "
        "numpy, memoryview of the address) belong in a workload process "
        "(vmo.mmu.workload.Workload).\n",
        (unsigned long long)address, (double)vmo_wd_timeout / 1e9);
    if (len > 0)
        (void)!write(2, msg, (size_t)(len < (int)sizeof msg ? len : (int)sizeof msg - 1));
    /* A write-protect marker would refuse the poison: clear it first, without waking. */
    (void)vmo_uffd_writeprotect(fd, page, (uint64_t)sysconf(_SC_PAGESIZE),
                                UFFDIO_WRITEPROTECT_MODE_DONTWAKE);
    memset(&p, 0, sizeof p);
    p.range.start = page;
    p.range.len = (uint64_t)sysconf(_SC_PAGESIZE);
    p.mode = 0;
    if (ioctl(fd, UFFDIO_POISON, &p) != 0) {
        struct uffdio_range r;
        r.start = page;
        r.len = (uint64_t)sysconf(_SC_PAGESIZE);
        (void)ioctl(fd, UFFDIO_WAKE, &r);  /* present after all: let the access retry */
    }
    if (vmo_wd_pending < VMO_WD_MAX_FAILED) {
        vmo_wd_failed[2 * vmo_wd_pending] = (uint64_t)fd;
        vmo_wd_failed[2 * vmo_wd_pending + 1] = page;
        vmo_wd_pending++;
    }
    vmo_wd_failed_total++;
}

static void *vmo_wd_main(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec tick = {0, 100000000L};
        int64_t now;
        int i;

        nanosleep(&tick, NULL);
        now = vmo_now_ns();
        pthread_mutex_lock(&vmo_wd_lock);
        for (i = 0; i < vmo_wd_nfds; i++) {
            struct pollfd pfd;
            pfd.fd = vmo_wd_fds[i];
            pfd.events = POLLIN;
            pfd.revents = 0;
            if (poll(&pfd, 1, 0) != 1 || !(pfd.revents & POLLIN)) {
                vmo_wd_since[i] = 0;
                continue;
            }
            if (vmo_wd_since[i] == 0) {
                vmo_wd_since[i] = now;
                continue;
            }
            if (now - vmo_wd_since[i] < vmo_wd_timeout)
                continue;
            {
                struct uffd_msg msgs[VMO_UFFD_READ_MAX];
                int n, j;
                pthread_mutex_lock(&vmo_wd_read_lock);
                n = (int)read(pfd.fd, msgs, sizeof msgs);
                pthread_mutex_unlock(&vmo_wd_read_lock);
                for (j = 0; n > 0 && j < n / (int)sizeof(msgs[0]); j++)
                    if (msgs[j].event == UFFD_EVENT_PAGEFAULT)
                        vmo_wd_fail(pfd.fd, msgs[j].arg.pagefault.address);
            }
            vmo_wd_since[i] = 0;
        }
        pthread_mutex_unlock(&vmo_wd_lock);
    }
    return NULL;
}

static int vmo_wd_start(int64_t timeout_ns)
{
    int rc = 0;
    pthread_mutex_lock(&vmo_wd_lock);
    if (timeout_ns > 0)
        vmo_wd_timeout = timeout_ns;
    if (!vmo_wd_started) {
        pthread_t t;
        pthread_attr_t a;
        sigset_t all, old;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        /* Signals are for Python's threads, never this one. */
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        rc = pthread_create(&t, &a, vmo_wd_main, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&a);
        if (rc == 0)
            vmo_wd_started = 1;
        else
            rc = -rc;
    }
    pthread_mutex_unlock(&vmo_wd_lock);
    return rc;
}

static void vmo_wd_set_timeout(int64_t timeout_ns)
{
    pthread_mutex_lock(&vmo_wd_lock);
    if (timeout_ns > 0)
        vmo_wd_timeout = timeout_ns;
    pthread_mutex_unlock(&vmo_wd_lock);
}

static int vmo_wd_add(int fd)
{
    int rc = -ENOSPC;
    pthread_mutex_lock(&vmo_wd_lock);
    if (vmo_wd_nfds < VMO_WD_MAX_FDS) {
        vmo_wd_fds[vmo_wd_nfds] = fd;
        vmo_wd_since[vmo_wd_nfds] = 0;
        vmo_wd_nfds++;
        rc = 0;
    }
    pthread_mutex_unlock(&vmo_wd_lock);
    return rc;
}

/* Must be called before `fd` is closed. */
static void vmo_wd_remove(int fd)
{
    int i;
    pthread_mutex_lock(&vmo_wd_lock);
    for (i = 0; i < vmo_wd_nfds; i++) {
        if (vmo_wd_fds[i] == fd) {
            vmo_wd_nfds--;
            vmo_wd_fds[i] = vmo_wd_fds[vmo_wd_nfds];
            vmo_wd_since[i] = vmo_wd_since[vmo_wd_nfds];
            break;
        }
    }
    pthread_mutex_unlock(&vmo_wd_lock);
}

/* The faults failed since the last call: pairs (fd, page address) into `out`; returns the
   count of pairs. */
static int vmo_wd_take(uint64_t *out, int max)
{
    int n;
    pthread_mutex_lock(&vmo_wd_lock);
    n = vmo_wd_pending < max ? vmo_wd_pending : max;
    memcpy(out, vmo_wd_failed, sizeof(uint64_t) * 2 * (size_t)n);
    memmove(vmo_wd_failed, vmo_wd_failed + 2 * n,
            sizeof(uint64_t) * 2 * (size_t)(vmo_wd_pending - n));
    vmo_wd_pending -= n;
    pthread_mutex_unlock(&vmo_wd_lock);
    return n;
}
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    MODULE_NAME,
    C_SOURCE,
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
