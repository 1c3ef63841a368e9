/* mpi.c — multi-process data parallel training with Open MPI (`mpirun -np N netlm pretrain ...`):
 * every process holds the whole model, reads its own slice of each global batch, and the
 * gradients are summed across processes before every optimizer step, so all processes take the
 * same step. Started only when mpirun launched the process; otherwise one process, no MPI. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"

#ifdef NETLM_HAVE_MPI
#include <mpi.h>

static int world_size = 1;
#endif

static int launched_size(void)
{
    const char *v = getenv("OMPI_COMM_WORLD_SIZE");
    if (!v)
        v = getenv("PMI_SIZE");
    return v ? atoi(v) : 0;
}

bool cli_mpi_start(const char *cmd, int *rank, int *world)
{
    *rank = 0;
    *world = 1;
    if (launched_size() == 0)
        return true;
#ifdef NETLM_HAVE_MPI
    int provided;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        cli_error(cmd, "MPI_Init failed");
        return false;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, world);
    world_size = *world;
    return true;
#else
    if (launched_size() > 1) {
        cli_error(cmd, "launched by mpirun with %d processes, but this netlm was built without MPI "
                       "(apt-get install libopenmpi-dev, then rebuild)", launched_size());
        return false;
    }
    return true;
#endif
}

#ifdef NETLM_HAVE_MPI
/* x[0 .. n) reduced in place across the processes, in chunks an int count can hold. */
static void allreduce(void *x, size_t n, size_t size, MPI_Datatype type, MPI_Op op)
{
    for (size_t done = 0; world_size > 1 && done < n;) {
        int chunk = n - done > (size_t)INT_MAX ? INT_MAX : (int)(n - done);
        MPI_Allreduce(MPI_IN_PLACE, (char *)x + done * size, chunk, type, op, MPI_COMM_WORLD);
        done += (size_t)chunk;
    }
}
#define ALLREDUCE(x, n, type, op) allreduce((x), (n), sizeof *(x), (type), (op))
#else
#define ALLREDUCE(x, n, type, op) ((void)(x), (void)(n)) /* one process: nothing to reduce */
#endif

void cli_mpi_sum_floats(float *x, size_t n) { ALLREDUCE(x, n, MPI_FLOAT, MPI_SUM); }
void cli_mpi_sum_doubles(double *x, size_t n) { ALLREDUCE(x, n, MPI_DOUBLE, MPI_SUM); }
void cli_mpi_sum_u64(uint64_t *x, size_t n) { ALLREDUCE(x, n, MPI_UINT64_T, MPI_SUM); }
void cli_mpi_min_doubles(double *x, size_t n) { ALLREDUCE(x, n, MPI_DOUBLE, MPI_MIN); }
void cli_mpi_or_bytes(uint8_t *x, size_t n) { ALLREDUCE(x, n, MPI_UINT8_T, MPI_BOR); }

void cli_mpi_broadcast(void *bytes, size_t n)
{
#ifdef NETLM_HAVE_MPI
    if (world_size > 1)
        MPI_Bcast(bytes, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
#else
    (void)bytes;
    (void)n;
#endif
}

void cli_mpi_stop(bool failed)
{
#ifdef NETLM_HAVE_MPI
    if (world_size > 1 || launched_size() > 0) {
        if (failed && world_size > 1)
            MPI_Abort(MPI_COMM_WORLD, 1); /* the others would wait for this one forever */
        MPI_Finalize();
    }
#else
    (void)failed;
#endif
}
