/* A minimal parallel-for over pthreads for the medchain native loops.
 *
 * Why not OpenMP: GNU libgomp keeps a thread pool alive between parallel regions, and a process
 * forked after one has run (multiprocessing's default start method on Linux) hangs in its next
 * parallel region. Here threads are started and joined within each call, so nothing outlives
 * the call and fork() is always safe. Starting a thread costs tens of microseconds, which is why
 * callers only go parallel for batches that take milliseconds.
 *
 * Work is handed out in chunks of `grain` items from an atomic counter, so a slow item does not
 * leave the other threads idle. The calling thread works too (tid 0). If a thread cannot be
 * started, the threads that did start (at least the caller) do all the work.
 * pthread_join makes every write done by a worker visible to the caller.
 */
#ifndef MEDCHAIN_PARALLEL_H
#define MEDCHAIN_PARALLEL_H

#include <pthread.h>
#include <stddef.h>

#define MEDCHAIN_MAX_THREADS 64

typedef void (*medchain_task_fn)(void *arg, size_t begin, size_t end, int tid);

typedef struct {
    medchain_task_fn fn;
    void *arg;
    size_t n;
    size_t grain;
    size_t next; /* advanced atomically */
} medchain_job;

typedef struct {
    medchain_job *job;
    int tid;
} medchain_worker;

static void medchain_drain(medchain_job *job, int tid)
{
    for (;;) {
        size_t begin = __atomic_fetch_add(&job->next, job->grain, __ATOMIC_RELAXED);
        if (begin >= job->n)
            return;
        size_t end = (job->n - begin > job->grain) ? begin + job->grain : job->n;
        job->fn(job->arg, begin, end, tid);
    }
}

static void *medchain_worker_main(void *p)
{
    medchain_worker *w = (medchain_worker *)p;
    medchain_drain(w->job, w->tid);
    return NULL;
}

/* Run fn over [0, n) on up to nthreads threads (tids 0 .. nthreads-1). Returns threads used. */
static int medchain_parallel_for(size_t n, int nthreads, size_t grain, medchain_task_fn fn, void *arg)
{
    medchain_job job;
    pthread_t threads[MEDCHAIN_MAX_THREADS];
    medchain_worker workers[MEDCHAIN_MAX_THREADS];
    int started = 0;

    job.fn = fn;
    job.arg = arg;
    job.n = n;
    job.grain = grain ? grain : 1;
    job.next = 0;
    if (nthreads > MEDCHAIN_MAX_THREADS)
        nthreads = MEDCHAIN_MAX_THREADS;
    if ((size_t)nthreads > (n + job.grain - 1) / job.grain)
        nthreads = (int)((n + job.grain - 1) / job.grain);
    for (int t = 1; t < nthreads; t++) {
        workers[started].job = &job;
        workers[started].tid = started + 1;
        if (pthread_create(&threads[started], NULL, medchain_worker_main, &workers[started]) != 0)
            break;
        started++;
    }
    medchain_drain(&job, 0);
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    return started + 1;
}

#endif
