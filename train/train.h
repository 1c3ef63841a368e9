/* train.h — training and evaluation. So far: the classification metrics (confusion matrix,
 * accuracy, per-class precision/recall/F1, macro-F1) that classify and finetune report. */
#ifndef NETLM_TRAIN_H
#define NETLM_TRAIN_H

#include <stdbool.h>
#include <stdint.h>

struct train_confusion {
    uint32_t classes;
    uint64_t *counts; /* [truth][predicted] */
    uint64_t total;
};
bool train_confusion_init(struct train_confusion *c, uint32_t classes);
void train_confusion_release(struct train_confusion *c);
void train_confusion_add(struct train_confusion *c, uint32_t truth, uint32_t predicted);

struct train_class_metrics {
    double precision, recall, f1; /* 0 when undefined (nothing predicted / no support) */
    uint64_t support;             /* rows whose truth is the class */
    uint64_t predicted;           /* rows predicted as the class */
};
double train_accuracy(const struct train_confusion *c);
/* Mean F1 over the classes that occur in the truth or the predictions (a class absent from
 * both says nothing about the model); per_class (optional, `classes` entries) gets every
 * class. */
double train_macro_f1(const struct train_confusion *c, struct train_class_metrics *per_class);

#endif
