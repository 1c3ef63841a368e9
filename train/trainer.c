/* trainer.c — one trainer on either device: the CPU runner with train_adamw_step, or the GPU's
 * train_cuda, behind the calls the training commands make (train.h, "one trainer"). The CPU
 * trains the model's parameter block in place and keeps the AdamW moments in host blocks; the
 * GPU keeps parameters, gradients and moments on the device, and the host blocks (the model's
 * parameters, the moments) are brought up to date only when a command asks for them: a
 * checkpoint, an evaluation, the end.
 *
 * Data parallel over processes: every process holds the whole model and sums its gradients with
 * the others' before each step. On the CPU that sum is the caller's (MPI, cli/mpi.c); on GPUs it
 * is an NCCL all-reduce on the device, on the trainer's stream, over a communicator the
 * processes join with an id that rank 0 makes and the caller hands to the others. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "train/train.h"

#ifdef NETLM_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

struct trainer {
    struct model *m;
    size_t n; /* floats in the parameter block */
    struct train_runner *cpu;
    struct train_cuda *gpu;
    float *mom, *vel; /* host moments: the CPU's own; the GPU's after trainer_moments */
    int world;
    /* The CPU's data-parallel sum: the processes' union of touched embedding rows, and the
     * gradient packed without the untouched ones (grown as needed). */
    uint8_t *row_union;
    float *packed;
    size_t packed_cap;
#ifdef NETLM_HAVE_NCCL
    ncclComm_t comm;
#endif
    char err[512];
};

static bool gpu_failed(struct trainer *t)
{
    snprintf(t->err, sizeof t->err, "%s", train_cuda_error(t->gpu));
    return false;
}

struct trainer *trainer_create(struct model *m, const struct trainer_options *o, char *err, size_t errlen)
{
    struct trainer *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->m = m;
    t->world = 1;
    model_params(m, &t->n);
    t->mom = calloc(t->n ? t->n : 1, sizeof(float));
    t->vel = calloc(t->n ? t->n : 1, sizeof(float));
    if (!t->mom || !t->vel) {
        snprintf(err, errlen, "out of memory for the optimizer's moments (%zu MiB)", 2 * t->n * sizeof(float) >> 20);
        trainer_free(t);
        return NULL;
    }
    const struct train_dropout none = {0};
    const struct train_dropout *d = o->dropout ? o->dropout : &none;
    if (o->device < 0) {
        t->cpu = train_runner_create(m, o->max_batch, o->max_seq, o->threads ? o->threads : 1, err, errlen);
        if (!t->cpu) {
            trainer_free(t);
            return NULL;
        }
        train_runner_set_dropout(t->cpu, d);
        return t;
    }
    t->gpu = train_cuda_create(m, o->device, o->bf16, o->max_batch, o->max_seq, err, errlen);
    if (!t->gpu) {
        trainer_free(t);
        return NULL;
    }
    if (!train_cuda_set_dropout(t->gpu, d)) {
        snprintf(err, errlen, "%s", train_cuda_error(t->gpu));
        trainer_free(t);
        return NULL;
    }
    return t;
}

void trainer_free(struct trainer *t)
{
    if (!t)
        return;
#ifdef NETLM_HAVE_NCCL
    if (t->comm)
        ncclCommDestroy(t->comm);
#endif
    train_runner_free(t->cpu);
    train_cuda_free(t->gpu);
    free(t->mom);
    free(t->vel);
    free(t->row_union);
    free(t->packed);
    free(t);
}

const char *trainer_error(const struct trainer *t) { return t->err; }
size_t trainer_param_count(const struct trainer *t) { return t->n; }

bool trainer_zero_grads(struct trainer *t)
{
    if (t->cpu) {
        train_zero_grads(t->cpu);
        return true;
    }
    return train_cuda_zero_grads(t->gpu) || gpu_failed(t);
}

bool trainer_forward_backward(struct trainer *t, enum train_objective objective, const struct train_batch *batch,
                              double *loss)
{
    if (t->cpu) {
        if (train_forward_backward(t->cpu, objective, batch, loss))
            return true;
        snprintf(t->err, sizeof t->err, "a batch outside the model (token ids, labels or lengths)");
        return false;
    }
    return train_cuda_forward_backward(t->gpu, objective, batch, loss) || gpu_failed(t);
}

bool trainer_grad_scale(struct trainer *t, float scale)
{
    if (t->cpu) {
        train_grad_scale(train_runner_grads(t->cpu), t->n, scale);
        return true;
    }
    return train_cuda_grad_scale(t->gpu, scale) || gpu_failed(t);
}

bool trainer_grad_norm(struct trainer *t, double *norm)
{
    if (t->cpu) {
        *norm = train_grad_norm(train_runner_grads(t->cpu), t->n);
        return true;
    }
    return train_cuda_grad_norm(t->gpu, norm) || gpu_failed(t);
}

bool trainer_adamw_step(struct trainer *t, uint64_t step, float lr, const struct train_adamw *o, int threads)
{
    if (t->cpu) {
        train_adamw_step(t->m, train_runner_grads(t->cpu), t->mom, t->vel, step, lr, o, threads);
        return true;
    }
    return train_cuda_adamw_step(t->gpu, step, lr, o) || gpu_failed(t);
}

bool trainer_sync_model(struct trainer *t)
{
    if (t->cpu)
        return true;
    return train_cuda_download(t->gpu, model_params(t->m, &(size_t){0}), NULL, NULL, NULL) || gpu_failed(t);
}

bool trainer_load_model(struct trainer *t)
{
    if (t->cpu)
        return true;
    return train_cuda_upload(t->gpu, model_params(t->m, &(size_t){0}), NULL, NULL) || gpu_failed(t);
}

bool trainer_moments(struct trainer *t, float **mom, float **vel)
{
    if (t->gpu && !train_cuda_download(t->gpu, NULL, NULL, t->mom, t->vel))
        return gpu_failed(t);
    *mom = t->mom;
    *vel = t->vel;
    return true;
}

bool trainer_load_moments(struct trainer *t)
{
    if (t->cpu)
        return true;
    return train_cuda_upload(t->gpu, NULL, t->mom, t->vel) || gpu_failed(t);
}

bool trainer_comm_id(struct trainer_comm_id *id, char *err, size_t errlen)
{
#ifdef NETLM_HAVE_NCCL
    _Static_assert(sizeof(ncclUniqueId) <= sizeof id->bytes, "trainer_comm_id holds an ncclUniqueId");
    ncclUniqueId u;
    const ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess) {
        snprintf(err, errlen, "nccl: cannot make a communicator id: %s", ncclGetErrorString(r));
        return false;
    }
    memset(id->bytes, 0, sizeof id->bytes);
    memcpy(id->bytes, &u, sizeof u);
    return true;
#else
    (void)id;
    snprintf(err, errlen, "this netlm was built without NCCL: training on several GPUs needs it (the CUDA "
                          "toolkit's libnccl, found at build time)");
    return false;
#endif
}

bool trainer_join(struct trainer *t, const struct trainer_comm_id *id, int rank, int world)
{
    if (world < 1 || rank < 0 || rank >= world) {
        snprintf(t->err, sizeof t->err, "rank %d outside a world of %d", rank, world);
        return false;
    }
    t->world = world;
    if (t->cpu)
        return true; /* the caller sums with MPI */
#ifdef NETLM_HAVE_NCCL
    ncclUniqueId u;
    memcpy(&u, id->bytes, sizeof u);
    const ncclResult_t r = ncclCommInitRank(&t->comm, world, u, rank);
    if (r != ncclSuccess) {
        t->comm = NULL;
        snprintf(t->err, sizeof t->err, "nccl: joining rank %d of %d failed: %s", rank, world, ncclGetErrorString(r));
        return false;
    }
    return true;
#else
    (void)id;
    snprintf(t->err, sizeof t->err, "this netlm was built without NCCL: training on several GPUs needs it");
    return false;
#endif
}

static bool row_in(const uint8_t *bitmap, uint32_t id) { return bitmap[id >> 3] >> (id & 7) & 1; }

/* n floats between the gradient block and the packed message, at *p, which moves past them:
 * into the message when gather, back out of it otherwise. */
static void move_span(float *block, float **p, size_t n, bool gather)
{
    memcpy(gather ? *p : block, gather ? block : *p, n * sizeof(float));
    *p += n;
}

/* The gradient block without the embedding rows outside t->row_union, between g and t->packed:
 * the part before the embedding, the union's rows in id order, the part after it. */
static void move_packed(struct trainer *t, float *g, size_t off, uint32_t V, uint32_t C, bool gather)
{
    float *p = t->packed, *emb = g + off, *after = emb + (size_t)V * C;
    move_span(g, &p, off, gather);
    for (uint32_t id = 0; id < V; id++)
        if (row_in(t->row_union, id))
            move_span(emb + (size_t)id * C, &p, C, gather);
    move_span(after, &p, t->n - off - (size_t)V * C, gather);
}

/* The CPU gradient block summed over the processes, the word-embedding rows no process touched
 * left out of the message (they are zero everywhere). */
static bool cpu_sum_grads(struct trainer *t, const struct trainer_host_reduce *host)
{
    float *g = train_runner_grads(t->cpu);
    size_t off;
    uint32_t V, C;
    const uint8_t *rows = train_runner_embedding_rows(t->cpu, &off, &V, &C);
    const size_t bitmap = V / 8 + 1;
    if (!host->or_bytes) {
        host->sum_floats(g, t->n);
        return true;
    }
    if (!t->row_union && !(t->row_union = malloc(bitmap + 1))) {
        snprintf(t->err, sizeof t->err, "out of memory for the embedding rows' union");
        return false;
    }
    /* The processes must agree on the message: the byte after the bitmap says that one of them
     * has a dense embedding gradient (a tied LM head), and then they all send everything. A
     * process with nothing to train this step (a short last batch) has no row set. */
    if (rows)
        memcpy(t->row_union, rows, bitmap);
    else
        memset(t->row_union, 0, bitmap);
    t->row_union[bitmap] = rows == NULL;
    host->or_bytes(t->row_union, bitmap + 1);
    if (t->row_union[bitmap]) {
        host->sum_floats(g, t->n);
        return true;
    }
    size_t k = 0;
    for (uint32_t id = 0; id < V; id++)
        k += row_in(t->row_union, id);
    const size_t need = t->n - (size_t)(V - k) * C;
    if (need > t->packed_cap) {
        float *p = realloc(t->packed, need * sizeof(float));
        if (!p) {
            snprintf(t->err, sizeof t->err, "out of memory for the packed gradient (%zu MiB)", need * 4 >> 20);
            return false;
        }
        t->packed = p;
        t->packed_cap = need;
    }
    move_packed(t, g, off, V, C, true);
    host->sum_floats(t->packed, need);
    move_packed(t, g, off, V, C, false);
    return true;
}

bool trainer_sum_grads(struct trainer *t, const struct trainer_host_reduce *host)
{
    if (t->cpu)
        return t->world > 1 && host ? cpu_sum_grads(t, host) : true;
#ifdef NETLM_HAVE_NCCL
    if (!t->comm)
        return true; /* one process: nothing to sum */
    float *g;
    size_t count;
    void *stream;
    if (!train_cuda_grad_buffer(t->gpu, &g, &count, &stream))
        return gpu_failed(t);
    ncclResult_t r = ncclAllReduce(g, g, count, ncclFloat, ncclSum, t->comm, (cudaStream_t)stream);
    if (r == ncclSuccess && cudaStreamSynchronize((cudaStream_t)stream) != cudaSuccess)
        r = ncclUnhandledCudaError;
    if (r != ncclSuccess) {
        snprintf(t->err, sizeof t->err, "nccl: summing the gradients failed: %s", ncclGetErrorString(r));
        return false;
    }
    return true;
#else
    (void)host;
    return true;
#endif
}
