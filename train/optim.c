/* optim.c — AdamW (standard and the seed's UER variant), gradient norm and clipping, and the
 * learning-rate schedules. */
#include <math.h>
#include <string.h>

#include "model/model_internal.h"
#include "train/train.h"

void train_adamw_defaults(struct train_adamw *o)
{
    *o = (struct train_adamw){.lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                              .weight_decay = 0.01f, .uer = false};
}

void train_adamw_uer(struct train_adamw *o)
{
    train_adamw_defaults(o);
    o->eps = 1e-6f;
    o->uer = true;
}

void train_adamw_step(struct model *m, const float *grads, float *mom, float *vel, uint64_t step,
                      float lr, const struct train_adamw *o, int threads)
{
    const double bc1 = 1.0 - pow(o->beta1, (double)step), bc2 = 1.0 - pow(o->beta2, (double)step);
    const float b1 = o->beta1, b2 = o->beta2;
    for (size_t t = 0; t < m->layout.count; t++) {
        const struct model_tensor *tensor = &m->layout.tensors[t];
        /* biases and norm weights are not decayed (the seed's rule, names without "bias",
         * "gamma", "beta") */
        const bool decay = tensor->kind == MODEL_TENSOR_MATRIX || tensor->kind == MODEL_TENSOR_EMBEDDING;
        const float wd = decay ? o->weight_decay : 0.0f;
        float *p = m->params + tensor->offset, *mt = mom + tensor->offset, *vt = vel + tensor->offset;
        const float *g = grads + tensor->offset;
        const size_t n = tensor->numel;
        if (o->uer) {
#pragma omp parallel for num_threads(threads) schedule(static)
            for (size_t i = 0; i < n; i++) {
                mt[i] = b1 * mt[i] + (1.0f - b1) * g[i];
                vt[i] = b2 * vt[i] + (1.0f - b2) * g[i] * g[i];
                p[i] -= lr * mt[i] / (sqrtf(vt[i]) + o->eps);
                p[i] -= lr * wd * p[i];
            }
        } else {
            const float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
#pragma omp parallel for num_threads(threads) schedule(static)
            for (size_t i = 0; i < n; i++) {
                p[i] *= 1.0f - lr * wd;
                mt[i] = b1 * mt[i] + (1.0f - b1) * g[i];
                vt[i] = b2 * vt[i] + (1.0f - b2) * g[i] * g[i];
                p[i] -= step_size * mt[i] / (sqrtf(vt[i]) / bc2_sqrt + o->eps);
            }
        }
    }
}

double train_grad_norm(const float *grads, size_t n)
{
    double ss = 0.0;
    for (size_t i = 0; i < n; i++)
        ss += (double)grads[i] * grads[i];
    return sqrt(ss);
}

void train_grad_scale(float *grads, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        grads[i] *= scale;
}

float train_schedule_lr(enum train_schedule kind, float base_lr, uint64_t step, uint64_t warmup,
                        uint64_t total)
{
    if (step < warmup)
        return base_lr * (float)step / (float)warmup;
    if (kind == TRAIN_SCHEDULE_CONSTANT)
        return base_lr;
    if (step >= total || total <= warmup)
        return 0.0f;
    const double progress = (double)(step - warmup) / (double)(total - warmup);
    if (kind == TRAIN_SCHEDULE_COSINE)
        return (float)(base_lr * 0.5 * (1.0 + cos(M_PI * progress)));
    return (float)(base_lr * (1.0 - progress));
}
