/*
 * uffd_bench: the baseline of bench/bench_faults.py -- a minimal userfaultfd fault handler in C.
 *
 * It serves the same kind of memory the same way the vmo fault handler does, with nothing
 * else: a MAP_SHARED memfd window registered for missing and write-protect faults; a handler
 * thread that polls the userfaultfd, reads fault messages in batches, and resolves each with
 * one ioctl (UFFDIO_COPY of one page, write-protected, for a missing fault; UFFDIO_WRITEPROTECT
 * clear for a store to a write-protected page). The main thread touches one byte of every page,
 * first loading (one missing fault per page), then storing (one write-protect fault per page).
 *
 *   uffd_bench uffd SIZE_BYTES    the handler above
 *   uffd_bench anon SIZE_BYTES    first touch of plain anonymous memory, no userfaultfd
 *
 * Prints one line of JSON: {"read_s": ..., "write_s": ..., "read_faults": ..., "write_faults": ...}
 * Built by bench_faults.py with `gcc -O2 -pthread` into a temporary directory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif

static long page_size;
static int uffd = -1;
static volatile int stopping;
static uint64_t read_faults, write_faults;
static char *src_page;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void *handler(void *arg)
{
    struct uffd_msg msgs[64];
    struct pollfd pfd = {.fd = uffd, .events = POLLIN};
    (void)arg;

    while (!stopping) {
        int r = poll(&pfd, 1, 100);
        if (r < 0 && errno != EINTR)
            die("poll");
        if (r <= 0)
            continue;
        ssize_t n = read(uffd, msgs, sizeof(msgs));
        if (n < 0) {
            if (errno == EAGAIN)
                continue;
            die("read");
        }
        for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++) {
            struct uffd_msg *m = &msgs[i];
            if (m->event != UFFD_EVENT_PAGEFAULT)
                continue;
            uint64_t page = m->arg.pagefault.address & ~(uint64_t)(page_size - 1);
            if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
                struct uffdio_writeprotect wp = {
                    .range = {.start = page, .len = page_size}, .mode = 0};
                if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0)
                    die("UFFDIO_WRITEPROTECT");
                write_faults++;
            } else {
                struct uffdio_copy cp = {.dst = page, .src = (uint64_t)(uintptr_t)src_page,
                                         .len = page_size, .mode = UFFDIO_COPY_MODE_WP};
                if (ioctl(uffd, UFFDIO_COPY, &cp) != 0 && errno != EEXIST)
                    die("UFFDIO_COPY");
                read_faults++;
            }
        }
    }
    return NULL;
}

static void touch(volatile char *p, size_t size, int write, uint64_t *sum)
{
    for (size_t off = 0; off < size; off += page_size) {
        if (write)
            p[off] = 1;
        else
            *sum += p[off];
    }
}

int main(int argc, char **argv)
{
    uint64_t sum = 0;
    double t0, t1, t2;

    if (argc != 3) {
        fprintf(stderr, "usage: %s uffd|anon SIZE_BYTES\n", argv[0]);
        return 2;
    }
    page_size = sysconf(_SC_PAGESIZE);
    size_t size = strtoull(argv[2], NULL, 0);
    size -= size % page_size;

    if (strcmp(argv[1], "anon") == 0) {
        char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            die("mmap");
        t0 = now();
        touch(p, size, 0, &sum);
        t1 = now();
        touch(p, size, 1, &sum);
        t2 = now();
        printf("{\"read_s\": %.9f, \"write_s\": %.9f, \"read_faults\": 0, \"write_faults\": 0, "
               "\"sum\": %llu}\n", t1 - t0, t2 - t1, (unsigned long long)sum);
        return 0;
    }

    int fd = memfd_create("uffd-bench-window", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, size) != 0)
        die("memfd");
    char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        die("mmap");
    src_page = aligned_alloc(page_size, page_size);
    memset(src_page, 0, page_size);

    uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0)
        die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM};
    if (ioctl(uffd, UFFDIO_API, &api) != 0)
        die("UFFDIO_API");
    struct uffdio_register reg = {
        .range = {.start = (uint64_t)(uintptr_t)p, .len = size},
        .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0)
        die("UFFDIO_REGISTER");

    pthread_t th;
    if (pthread_create(&th, NULL, handler, NULL) != 0)
        die("pthread_create");
    t0 = now();
    touch(p, size, 0, &sum);
    t1 = now();
    touch(p, size, 1, &sum);
    t2 = now();
    stopping = 1;
    pthread_join(th, NULL);
    printf("{\"read_s\": %.9f, \"write_s\": %.9f, \"read_faults\": %llu, \"write_faults\": %llu, "
           "\"sum\": %llu}\n", t1 - t0, t2 - t1, (unsigned long long)read_faults,
           (unsigned long long)write_faults, (unsigned long long)sum);
    return 0;
}
