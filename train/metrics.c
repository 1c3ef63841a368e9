/* metrics.c — classification metrics from a confusion matrix. */
#include <stdlib.h>

#include "train/train.h"

bool train_confusion_init(struct train_confusion *c, uint32_t classes)
{
    c->classes = classes;
    c->total = 0;
    c->counts = calloc((size_t)classes * classes, sizeof(uint64_t));
    return c->counts != NULL;
}

void train_confusion_release(struct train_confusion *c)
{
    free(c->counts);
    c->counts = NULL;
}

void train_confusion_add(struct train_confusion *c, uint32_t truth, uint32_t predicted)
{
    if (truth < c->classes && predicted < c->classes) {
        c->counts[(size_t)truth * c->classes + predicted]++;
        c->total++;
    }
}

double train_accuracy(const struct train_confusion *c)
{
    uint64_t right = 0;
    for (uint32_t i = 0; i < c->classes; i++)
        right += c->counts[(size_t)i * c->classes + i];
    return c->total ? (double)right / (double)c->total : 0.0;
}

double train_macro_f1(const struct train_confusion *c, struct train_class_metrics *per_class)
{
    double sum = 0.0;
    uint32_t counted = 0;
    for (uint32_t k = 0; k < c->classes; k++) {
        uint64_t tp = c->counts[(size_t)k * c->classes + k], support = 0, predicted = 0;
        for (uint32_t j = 0; j < c->classes; j++) {
            support += c->counts[(size_t)k * c->classes + j];
            predicted += c->counts[(size_t)j * c->classes + k];
        }
        struct train_class_metrics m = {0};
        m.support = support;
        m.predicted = predicted;
        m.precision = predicted ? (double)tp / (double)predicted : 0.0;
        m.recall = support ? (double)tp / (double)support : 0.0;
        m.f1 = m.precision + m.recall > 0 ? 2 * m.precision * m.recall / (m.precision + m.recall) : 0.0;
        if (per_class)
            per_class[k] = m;
        if (support || predicted) {
            sum += m.f1;
            counted++;
        }
    }
    return counted ? sum / counted : 0.0;
}
