/* A CPU burner with known function names for the profiling tests, built by the tests with
 * frame pointers (gcc -O0 -fno-omit-frame-pointer), so user stacks unwind. -O0 because gcc
 * gives a leaf function such as hot_inner no frame at -O1 even with -fno-omit-frame-pointer,
 * and its caller then drops out of the stack.
 *
 *   hot burn SECS            burn in hot_inner (called from hot_outer) for SECS, exit 0
 *   hot threads N SECS       N threads burn; the main thread waits in pthread_join
 *   hot burn-then-idle B I   burn B seconds, then sleep I seconds
 *   hot crash SECS           burn SECS, then die of SIGSEGV
 *   hot leader-exits-first exit|crash
 *                            the main thread ends first (pthread_exit); a worker named
 *                            "worker-last" ends the process 300 ms later, by exiting or
 *                            by SIGSEGV
 *
 * It prints "ready" once started, so a test can profile it from the start. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void hot_inner(void) {
    for (unsigned long i = 0; i < 200000; i++)
        sink += i * i;
}

__attribute__((noinline)) void hot_outer(double secs) {
    double end = now() + secs;
    while (now() < end)
        hot_inner();
}

static void *last_worker(void *arg) {
    usleep(300000);
    if (*(int *)arg)
        *(volatile int *)0 = 1;
    return NULL;
}

static void *worker(void *arg) {
    hot_outer(*(double *)arg);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: hot burn|threads|burn-then-idle|crash ...\n");
        return 2;
    }
    printf("ready\n");
    fflush(stdout);
    if (!strcmp(argv[1], "burn")) {
        hot_outer(atof(argv[2]));
    } else if (!strcmp(argv[1], "threads") && argc == 4) {
        int n = atoi(argv[2]);
        double secs = atof(argv[3]);
        pthread_t t[64];
        for (int i = 0; i < n && i < 64; i++)
            pthread_create(&t[i], NULL, worker, &secs);
        for (int i = 0; i < n && i < 64; i++)
            pthread_join(t[i], NULL);
    } else if (!strcmp(argv[1], "burn-then-idle") && argc == 4) {
        hot_outer(atof(argv[2]));
        usleep((useconds_t)(atof(argv[3]) * 1e6));
    } else if (!strcmp(argv[1], "leader-exits-first")) {
        static int crash;
        crash = !strcmp(argv[2], "crash");
        pthread_t t;
        pthread_create(&t, NULL, last_worker, &crash);
        pthread_setname_np(t, "worker-last");
        pthread_exit(NULL);
    } else if (!strcmp(argv[1], "crash")) {
        hot_outer(atof(argv[2]));
        *(volatile int *)0 = 1;
    } else {
        return 2;
    }
    return 0;
}
