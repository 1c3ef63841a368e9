/* make_capture.c — builds the benchmark captures: the labeled USTC-TFC2016 sessions replicated
 * N times with rewritten addresses, so every copy is a distinct set of sessions, and with
 * timestamps rewritten to advance steadily (10 µs a frame) as a busy link's would.
 *
 * usage: netlm_make_capture SESSIONS_DIR COPIES OUT_DIR
 * writes OUT_DIR/all.pcap (every class, copy after copy) and OUT_DIR/classes/<Class>/<Class>.pcap. */
#include <dirent.h>
#include <errno.h>
#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "capture/capture.h"

struct frame {
    struct pcap_pkthdr hdr;
    uint8_t *data;
    struct cap_layers layers;
};

struct class_frames {
    char name[256];
    struct frame *frames;
    size_t n;
};

/* mkdir -p: the output folder may be several levels new. */
static void make_dirs(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(buf, 0755);
            *p = '/';
        }
    }
    mkdir(buf, 0755);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(((const struct class_frames *)a)->name, ((const struct class_frames *)b)->name);
}

static int load_class(const char *dir, struct class_frames *c)
{
    char path[4096], err[PCAP_ERRBUF_SIZE];
    if (snprintf(path, sizeof path, "%s/%s/%s.pcap", dir, c->name, c->name) >= (int)sizeof path)
        return -1;
    pcap_t *p = pcap_open_offline(path, err);
    if (!p) {
        fprintf(stderr, "make_capture: %s: %s\n", path, err);
        return -1;
    }
    size_t cap = 1024;
    c->frames = malloc(cap * sizeof *c->frames);
    struct pcap_pkthdr *h;
    const u_char *d;
    struct cap_decode_opts opts = {0};
    while (pcap_next_ex(p, &h, &d) == 1) {
        if (c->n == cap) {
            cap *= 2;
            c->frames = realloc(c->frames, cap * sizeof *c->frames);
        }
        struct frame *f = &c->frames[c->n++];
        f->hdr = *h;
        f->data = malloc(h->caplen);
        memcpy(f->data, d, h->caplen);
        struct cap_packet pkt;
        cap_decode(&opts, (uint16_t)pcap_datalink(p), f->data, h->caplen, h->len, 0, &pkt);
        f->layers = pkt.layers;
    }
    pcap_close(p);
    return 0;
}

/* Copy k gets its own address space: the second and third address bytes are XORed with k, the
 * same for both directions, so sessions stay sessions and copies never collide. */
static void rewrite(uint8_t *d, uint32_t caplen, const struct cap_layers *l, uint32_t k)
{
    if (l->l3_off == CAP_ABSENT)
        return;
    uint32_t src, len;
    if (l->ip_version == 4) {
        src = l->l3_off + 12;
        len = 4;
    } else if (l->ip_version == 6) {
        src = l->l3_off + 8;
        len = 16;
    } else {
        return;
    }
    for (uint32_t a = 0; a < 2; a++) {
        uint32_t off = src + a * len;
        if (off + 3 <= caplen) {
            d[off + 1] ^= (uint8_t)(k >> 8);
            d[off + 2] ^= (uint8_t)k;
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SESSIONS_DIR COPIES OUT_DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1], *out = argv[3];
    int copies = atoi(argv[2]);
    if (copies < 1 || copies > 65535) {
        fprintf(stderr, "make_capture: COPIES must be 1..65535\n");
        return 2;
    }
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "make_capture: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    struct class_frames classes[64];
    int n_classes = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n_classes < 64) {
        if (e->d_name[0] == '.')
            continue;
        memset(&classes[n_classes], 0, sizeof classes[0]);
        snprintf(classes[n_classes].name, sizeof classes[0].name, "%s", e->d_name);
        n_classes++;
    }
    closedir(d);
    qsort(classes, (size_t)n_classes, sizeof classes[0], cmp_names);
    for (int c = 0; c < n_classes; c++)
        if (load_class(dir, &classes[c]) != 0)
            return 1;
    char path[4096];
    snprintf(path, sizeof path, "%s/classes", out);
    make_dirs(path);
    pcap_t *dead = pcap_open_dead_with_tstamp_precision(DLT_EN10MB, 65535, PCAP_TSTAMP_PRECISION_MICRO);
    snprintf(path, sizeof path, "%s/all.pcap", out);
    pcap_dumper_t *all = pcap_dump_open(dead, path);
    pcap_dumper_t *per_class[64];
    for (int c = 0; c < n_classes; c++) {
        if (snprintf(path, sizeof path, "%s/classes/%s", out, classes[c].name) >= (int)sizeof path)
            return 1;
        mkdir(path, 0755);
        if (snprintf(path, sizeof path, "%s/classes/%s/%s.pcap", out, classes[c].name, classes[c].name) >=
            (int)sizeof path)
            return 1;
        per_class[c] = pcap_dump_open(dead, path);
        if (!per_class[c] || !all) {
            fprintf(stderr, "make_capture: %s: %s\n", path, pcap_geterr(dead));
            return 1;
        }
    }
    uint64_t frames = 0, class_frames[64] = {0};
    uint8_t buf[65536];
    for (int k = 0; k < copies; k++) {
        for (int c = 0; c < n_classes; c++) {
            for (size_t i = 0; i < classes[c].n; i++) {
                struct frame *f = &classes[c].frames[i];
                struct pcap_pkthdr h = f->hdr;
                memcpy(buf, f->data, h.caplen);
                rewrite(buf, h.caplen, &f->layers, (uint32_t)k + 1);
                uint64_t us = 1000000ull * 1000000 + frames * 10; /* a steady clock for the whole file */
                h.ts.tv_sec = (time_t)(us / 1000000);
                h.ts.tv_usec = (suseconds_t)(us % 1000000);
                pcap_dump((u_char *)all, &h, buf);
                us = 1000000ull * 1000000 + class_frames[c] * 10;
                h.ts.tv_sec = (time_t)(us / 1000000);
                h.ts.tv_usec = (suseconds_t)(us % 1000000);
                pcap_dump((u_char *)per_class[c], &h, buf);
                frames++;
                class_frames[c]++;
            }
        }
    }
    pcap_dump_close(all);
    for (int c = 0; c < n_classes; c++)
        pcap_dump_close(per_class[c]);
    pcap_close(dead);
    printf("{\"frames\":%llu,\"copies\":%d,\"classes\":%d}\n", (unsigned long long)frames, copies, n_classes);
    return 0;
}
